"""CITE-seq counts (RNA and surface proteins) simulated from totalVI's generative process, with known truth."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anndata
import numpy as np
import pandas as pd

from .._checks import check_int, check_number
from ._synthetic import synthetic_iid

# Protein effect sizes, chosen to resemble real antibody-derived tag (ADT) counts: a background of ~20
# counts per protein that every cell shows (ambient antibodies, non-specific binding) and a foreground
# several-fold above it in the cells that express the protein, so that log counts are clearly bimodal.
#: Mean of the per-protein, per-batch background log mean c_{t,b}: exp(3) ~ 20 counts.
_BACKGROUND_LOG_MEAN = 3.0
#: Sd of c_{t,b} across proteins and batches: backgrounds differ ~ e^0.5-fold, batches shift them too.
_BACKGROUND_LOG_MEAN_SD = 0.5
#: Sd d of log beta_nt around c_{t,b}: cell-to-cell variation of the background.
_BACKGROUND_LOG_SD = 0.3
#: Range of the per-protein foreground scale alpha_t (foreground mean = alpha * background mean).
_FOREGROUND_SCALE_RANGE = (3.0, 15.0)
#: Strength of the cell-level modulation of alpha by the latent position (log alpha shifts by ~ +-0.2).
_FOREGROUND_Z_SCALE = 0.1
#: Probability that a cell shows a protein's foreground, in labels where the protein is "on" / "off".
_FOREGROUND_PROB_ON = 0.9
_FOREGROUND_PROB_OFF = 0.05
#: Extra entropy mixed into the seed for the protein stream, so the RNA part equals synthetic_iid(seed).
_PROTEIN_STREAM = 0xC17E


def _protein_on_labels(rng: np.random.Generator, n_labels: int, n_proteins: int) -> np.ndarray:
    """Bool ``(n_labels, n_proteins)``: which labels express each protein.

    Each label is on with probability 1/2; with two or more labels every protein is then made on in at
    least one label and off in at least one (by flipping one random label), so that every protein has both
    a foreground and a background population to learn from.
    """
    on = rng.random((n_labels, n_proteins)) < 0.5
    if n_labels >= 2:
        flip = rng.integers(n_labels, size=n_proteins)
        uniform = on.all(axis=0) | ~on.any(axis=0)
        on[flip[uniform], np.flatnonzero(uniform)] ^= True
    return on


def _check_missing(missing_proteins: Mapping[int, Sequence[int]] | None, n_batches: int, n_proteins: int):
    """``missing_proteins`` as ``{batch: sorted unique protein indices}``, with its indices checked."""
    checked: dict[int, list[int]] = {}
    for batch, proteins in (missing_proteins or {}).items():
        if not 0 <= int(batch) < n_batches:
            raise ValueError(f"missing_proteins has batch {batch!r}, not in [0, {n_batches}).")
        indices = sorted({int(t) for t in proteins})
        if indices and not (0 <= indices[0] and indices[-1] < n_proteins):
            raise ValueError(f"missing_proteins[{batch!r}] has protein indices outside [0, {n_proteins}).")
        if indices:  # an empty list means nothing is missing; it would only clutter uns
            checked[int(batch)] = indices
    return checked


def synthetic_citeseq(
    n_cells: int = 500,
    n_genes: int = 100,
    n_proteins: int = 20,
    n_batches: int = 2,
    n_labels: int = 3,
    n_latent: int = 5,
    protein_dispersion: float = 10.0,
    missing_proteins: dict[int, list[int]] | None = None,
    sparse: bool = True,
    seed: int = 0,
) -> anndata.AnnData:
    """Simulate CITE-seq data (RNA and protein counts of the same cells) from totalVI's generative process.

    **RNA.** Labels, batches, latent positions ``z`` and RNA counts are exactly those of
    :func:`~pyrovi.datasets.synthetic_iid` with the same arguments and ``seed`` (its default batch effect,
    RNA dispersion 5 and mean library size 2000): ``z = centre[label] + N(0, I)``, negative binomial counts
    with mean ``library * softmax(z @ W + b + shift[batch])``. The proteins come from a separate random
    stream, so they never change the RNA part.

    **Proteins** (protein ``t``, cell ``n`` in batch ``b_n`` with label ``k_n``):

    - background: ``log beta_nt ~ N(c[b_n, t], 0.3**2)`` with ``c[b, t] ~ N(3.0, 0.5**2)`` per protein and
      batch, i.e. about 20 counts;
    - foreground state: each protein is "on" in a random subset of labels (each label with probability 1/2,
      and, when ``n_labels >= 2``, at least one label on and one off); ``v_nt ~ Bernoulli(0.9)`` where the
      protein is on in the cell's label, ``Bernoulli(0.05)`` where it is off;
    - foreground scale: ``alpha_t ~ Uniform(3, 15)`` per protein, modulated mildly and smoothly by the
      latent position, ``alpha_nt = clip(alpha_t * exp(0.1 * z_n @ u_t), 3, 15)`` with
      ``u_t ~ N(0, I / n_latent)`` (a shift of about +-20 % in ``alpha``);
    - counts: ``y_nt ~ NB(mean = beta_nt * (alpha_nt if v_nt else 1), inverse dispersion =
      protein_dispersion)``, drawn as a gamma-Poisson mixture.

    With the defaults and seed 0, 47 % of the entries are foreground (0.9 times the fraction of on labels
    plus 0.05 times the rest; 45-51 % over seeds 0-4), and the median protein count is 17 in background
    entries against 155 in foreground entries (17-21 against 144-206 over seeds 0-4).

    Parameters
    ----------
    n_cells, n_genes, n_proteins
        Numbers of cells, genes and proteins.
    n_batches, n_labels
        Numbers of batches and labels (cell types).
    n_latent
        Dimension of the true latent space.
    protein_dispersion
        Inverse dispersion phi of the proteins' negative binomial (variance ``mu + mu**2 / phi``).
    missing_proteins
        ``{batch index: [protein indices]}``: those proteins' counts are set to zero for every cell of that
        batch, as when a batch was measured with a smaller antibody panel. The truth arrays keep the
        simulated values.
    sparse
        Store ``X`` as a float32 CSR matrix (else a dense float32 array).
    seed
        Seed of the numpy generators; the same seed gives the same data.

    Returns
    -------
    AnnData
        Integer RNA counts in ``X`` (``var_names`` ``"gene_0"``, ...), ``obs["batch"]``
        (``"batch_0"``, ...) and ``obs["labels"]`` (``"label_0"``, ...) as categoricals, and

        - ``obsm["protein_expression"]``: DataFrame of float32 integer protein counts, cells x proteins, columns
          ``"protein_0"``, ... (also listed in ``uns["protein_names"]``);
        - truth: ``obsm["z_true"]`` (float32), ``obs["library_true"]``, ``obsm["protein_foreground_true"]``
          (bool ``v``), ``obsm["protein_background_mean_true"]`` (float32 ``beta``, counts scale),
          ``obsm["protein_foreground_scale_true"]`` (float32 ``alpha_nt``);
        - parameters: ``uns["synthetic"]`` (those of the RNA part, as from :func:`synthetic_iid`) and
          ``uns["synthetic_citeseq"]``, JSON-able, including ``"protein_background_log_mean"`` (``c`` as a
          nested list, batches x proteins), ``"protein_on_labels"`` (labels x proteins), ``"foreground_scale"``
          (``alpha_t``) and ``"missing_proteins"`` (``{str(batch): [protein indices]}``).

    See Also
    --------
    pyrovi.model._protein_background.protein_background_prior : empirical prior of ``c`` and ``d``.

    Examples
    --------
    >>> from pyrovi.datasets import synthetic_citeseq
    >>> adata = synthetic_citeseq(n_cells=200, n_proteins=10, missing_proteins={1: [0, 3]}, seed=1)
    >>> adata.obsm["protein_expression"].shape
    (200, 10)
    >>> bool((adata.obsm["protein_expression"].loc[adata.obs["batch"] == "batch_1", "protein_3"] == 0).all())
    True
    """
    check_int("n_proteins", n_proteins, expected="a positive integer")
    check_number("protein_dispersion", protein_dispersion, 0.0, low_open=True)
    # synthetic_iid validates the other sizes; n_batches must be valid before missing_proteins is checked.
    adata = synthetic_iid(
        n_cells=n_cells, n_genes=n_genes, n_batches=n_batches, n_labels=n_labels, n_latent=n_latent,
        sparse=sparse, seed=seed,
    )  # fmt: skip
    missing = _check_missing(missing_proteins, n_batches, n_proteins)

    labels = adata.obs["labels"].cat.codes.to_numpy()
    batches = adata.obs["batch"].cat.codes.to_numpy()
    z = adata.obsm["z_true"].astype(np.float64)

    rng = np.random.default_rng([int(seed), _PROTEIN_STREAM])
    on = _protein_on_labels(rng, n_labels, n_proteins)
    foreground_prob = np.where(on[labels], _FOREGROUND_PROB_ON, _FOREGROUND_PROB_OFF)
    foreground = rng.random((n_cells, n_proteins)) < foreground_prob

    background_log_mean = rng.normal(_BACKGROUND_LOG_MEAN, _BACKGROUND_LOG_MEAN_SD, size=(n_batches, n_proteins))
    beta = np.exp(rng.normal(background_log_mean[batches], _BACKGROUND_LOG_SD))

    low, high = _FOREGROUND_SCALE_RANGE
    alpha_protein = rng.uniform(low, high, size=n_proteins)
    directions = rng.normal(scale=1 / np.sqrt(n_latent), size=(n_latent, n_proteins))
    # a smooth function of z, as totalVI's decoder makes it; clipped so alpha stays in the documented range
    alpha = np.clip(alpha_protein * np.exp(_FOREGROUND_Z_SCALE * z @ directions), low, high)

    mean = beta * np.where(foreground, alpha, 1.0)
    # NB(mean, phi) as a gamma-Poisson mixture: rate ~ Gamma(phi, mean / phi), counts ~ Poisson(rate).
    counts = rng.poisson(rng.gamma(shape=protein_dispersion, scale=mean / protein_dispersion)).astype(np.float32)
    for batch, proteins in missing.items():
        counts[np.ix_(batches == batch, proteins)] = 0.0

    protein_names = [f"protein_{t}" for t in range(n_proteins)]
    adata.obsm["protein_expression"] = pd.DataFrame(counts, index=adata.obs_names, columns=protein_names)
    adata.uns["protein_names"] = protein_names
    adata.obsm["protein_foreground_true"] = foreground
    adata.obsm["protein_background_mean_true"] = beta.astype(np.float32)
    adata.obsm["protein_foreground_scale_true"] = alpha.astype(np.float32)
    adata.uns["synthetic_citeseq"] = {
        "n_proteins": int(n_proteins),
        "protein_dispersion": float(protein_dispersion),
        "background_log_mean_loc": _BACKGROUND_LOG_MEAN,
        "background_log_mean_sd": _BACKGROUND_LOG_MEAN_SD,
        "background_log_sd": _BACKGROUND_LOG_SD,
        "protein_background_log_mean": background_log_mean.tolist(),
        "foreground_prob_on": _FOREGROUND_PROB_ON,
        "foreground_prob_off": _FOREGROUND_PROB_OFF,
        "protein_on_labels": on.tolist(),
        "foreground_scale_range": list(_FOREGROUND_SCALE_RANGE),
        "foreground_scale": alpha_protein.tolist(),
        "foreground_z_scale": _FOREGROUND_Z_SCALE,
        "missing_proteins": {str(batch): proteins for batch, proteins in missing.items()},
        "seed": int(seed),
    }
    return adata
