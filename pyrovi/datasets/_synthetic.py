"""Counts simulated from scVI's generative process, with known labels, batches and latent positions."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._checks import check_int, check_number

# Effect sizes of the simulation, chosen so that with the defaults PCA of log counts separates the labels
# clearly and the batches visibly, while the batch effect remains a per-gene shift a batch-aware decoder
# can absorb (tests/test_datasets.py measures both with kNN).
#: Distance of every label centre from the origin in latent space (within-label noise has sd 1).
_CENTRE_NORM = 4.0
#: Sd of the loadings W is this over sqrt(n_latent), so a cell's logit varies with sd ~ |z| / sqrt(n_latent).
_LOADING_SCALE = 0.5
#: Sd of the per-gene baseline logits b: genes differ ~ e-fold in mean expression.
_BASELINE_SD = 1.0
#: Sd of the per-batch per-gene logit shift when batch_effect = 1.
_BATCH_SHIFT_SD = 0.3
#: Sd of log library size: cells' totals vary by about +-30 %.
_LIBRARY_LOG_SD = 0.3


def _label_centres(rng: np.random.Generator, n_labels: int, n_latent: int) -> np.ndarray:
    """Centres of norm ``_CENTRE_NORM``, spread out so that every label is distinguishable.

    Orthogonal directions when they fit (all pairs equally far apart); otherwise farthest-point picks among
    random directions, since independent random directions would often put two labels almost on top of
    each other.
    """
    if n_labels <= n_latent:
        directions, _ = np.linalg.qr(rng.normal(size=(n_latent, n_latent)))
        return _CENTRE_NORM * directions[:, :n_labels].T
    candidates = rng.normal(size=(32 * n_labels, n_latent))
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    chosen = [0]
    nearest = np.linalg.norm(candidates - candidates[0], axis=1)
    for _ in range(n_labels - 1):
        chosen.append(int(nearest.argmax()))
        nearest = np.minimum(nearest, np.linalg.norm(candidates - candidates[chosen[-1]], axis=1))
    return _CENTRE_NORM * candidates[chosen]


def synthetic_iid(
    n_cells: int = 400,
    n_genes: int = 100,
    n_batches: int = 2,
    n_labels: int = 3,
    n_latent: int = 5,
    batch_effect: float = 1.0,
    dispersion: float = 5.0,
    library_mean: float = 2000.0,
    sparse: bool = True,
    seed: int = 0,
) -> anndata.AnnData:
    """Simulate counts from scVI's generative process with label and batch structure.

    Every cell gets a label and a batch uniformly at random. Each label has a centre of norm 4 in an
    ``n_latent``-dimensional space (orthogonal centres when ``n_labels <= n_latent``, else spread apart),
    and a cell's latent position is ``z = centre[label] + N(0, I)``. Gene logits are
    ``z @ W + b + shift[batch]`` with loadings ``W ~ N(0, 0.25 / n_latent)``, baselines ``b ~ N(0, 1)``
    and per-batch per-gene shifts ``shift ~ N(0, (0.3 * batch_effect)^2)``; ``rho = softmax(logits)`` over
    genes. The library size is log-normal with mean ``library_mean`` and log-sd 0.3, and the counts are
    negative binomial (a gamma-Poisson mixture) with mean ``library * rho`` and inverse dispersion
    ``dispersion``.

    With the defaults, PCA of log-normalised counts separates the labels clearly and the batches visibly,
    and because the batch effect is a per-gene logit shift, a model that conditions on batch can remove it.

    Parameters
    ----------
    n_cells, n_genes
        Size of the count matrix.
    n_batches, n_labels
        Numbers of batches and labels (cell types).
    n_latent
        Dimension of the true latent space.
    batch_effect
        Scale of the batch shifts; 0 simulates no batch effect.
    dispersion
        Inverse dispersion theta of the negative binomial (variance ``mu + mu**2 / theta``).
    library_mean
        Mean total count per cell. The default 2000 gives ~20 counts per gene for 100 genes.
    sparse
        Store ``X`` as a float32 CSR matrix (else a dense float32 array).
    seed
        Seed of the numpy generator; the same seed gives the same data.

    Returns
    -------
    AnnData with integer counts in ``X``; ``obs["batch"]`` (``"batch_0"``, ...) and ``obs["labels"]``
    (``"label_0"``, ...) as categoricals; the truth in ``obsm["z_true"]``, ``obs["library_true"]`` and the
    parameters used in ``uns["synthetic"]``.

    Examples
    --------
    >>> from pyrovi.datasets import synthetic_iid
    >>> adata = synthetic_iid(n_cells=200, n_genes=50, seed=1)
    >>> adata.obs["labels"].value_counts()
    labels
    label_2    75
    label_1    64
    label_0    61
    Name: count, dtype: int64
    """
    for name, value in {"n_cells": n_cells, "n_genes": n_genes, "n_batches": n_batches,
                        "n_labels": n_labels, "n_latent": n_latent}.items():  # fmt: skip
        check_int(name, value, expected="a positive integer")
    check_number("batch_effect", batch_effect, 0.0)
    for name, value in (("dispersion", dispersion), ("library_mean", library_mean)):
        check_number(name, value, 0.0, low_open=True)

    rng = np.random.default_rng(seed)
    labels = rng.integers(n_labels, size=n_cells)
    batches = rng.integers(n_batches, size=n_cells)

    centres = _label_centres(rng, n_labels, n_latent)
    z = centres[labels] + rng.normal(size=(n_cells, n_latent))
    loadings = rng.normal(scale=_LOADING_SCALE / np.sqrt(n_latent), size=(n_latent, n_genes))
    baseline = rng.normal(scale=_BASELINE_SD, size=n_genes)
    batch_shift = rng.normal(scale=_BATCH_SHIFT_SD * batch_effect, size=(n_batches, n_genes))

    logits = z @ loadings + baseline + batch_shift[batches]
    rho = np.exp(logits - logits.max(axis=1, keepdims=True))
    rho /= rho.sum(axis=1, keepdims=True)
    # mu chosen so the log-normal's mean is library_mean.
    log_mu = np.log(library_mean) - _LIBRARY_LOG_SD**2 / 2
    library = rng.lognormal(mean=log_mu, sigma=_LIBRARY_LOG_SD, size=n_cells)
    mean = library[:, None] * rho
    # NB(mean, theta) as a gamma-Poisson mixture: rate ~ Gamma(theta, mean / theta), counts ~ Poisson(rate).
    counts = rng.poisson(rng.gamma(shape=dispersion, scale=mean / dispersion)).astype(np.float32)

    obs = pd.DataFrame(
        {
            "batch": pd.Categorical.from_codes(batches, [f"batch_{i}" for i in range(n_batches)]),
            "labels": pd.Categorical.from_codes(labels, [f"label_{i}" for i in range(n_labels)]),
            "library_true": library,
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene_{i}" for i in range(n_genes)])
    adata = anndata.AnnData(X=sp.csr_matrix(counts) if sparse else counts, obs=obs, var=var)
    adata.obsm["z_true"] = z.astype(np.float32)
    adata.uns["synthetic"] = {
        "n_cells": int(n_cells),
        "n_genes": int(n_genes),
        "n_batches": int(n_batches),
        "n_labels": int(n_labels),
        "n_latent": int(n_latent),
        "batch_effect": float(batch_effect),
        "dispersion": float(dispersion),
        "library_mean": float(library_mean),
        "library_log_sd": _LIBRARY_LOG_SD,
        "centre_norm": _CENTRE_NORM,
        "batch_shift_sd": _BATCH_SHIFT_SD * float(batch_effect),
        "sparse": bool(sparse),
        "seed": int(seed),
    }
    return adata
