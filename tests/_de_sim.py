"""Counts with known differential expression, for the differential expression tests.

Three cell groups share a baseline profile. Between ``A`` and ``B`` a known set of genes changes by
``|log2 FC|`` in [1, 2] (half up in ``B``, half down); the others are unchanged. ``C`` has its own marker
genes (so one-vs-rest has something to find) and, only within ``C``, a co-regulated gene module driven by a
per-cell factor (so feature correlation has a known answer). The module lives in ``C`` alone so that
within-group heterogeneity does not blur the A-vs-B truth.
"""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp


def _balanced_de(rng: np.random.Generator, baseline: np.ndarray, n_de: int) -> tuple[np.ndarray, np.ndarray]:
    """Pick DE genes and log2 FCs (half up, half down, |FC| in [1, 2]) that leave the softmax normaliser
    unchanged to within 2**0.05.

    Otherwise the genes that gain mass would shrink every other gene's share of rho, and "unchanged"
    genes would have a real log fold change in normalised expression (a compositional effect). Redraws
    until balanced (about one draw in ten is).
    """
    n_genes = baseline.size
    rho = np.exp(baseline - baseline.max())
    rho /= rho.sum()
    for _ in range(10_000):
        genes = rng.permutation(n_genes)
        lfc = np.zeros(n_genes)
        magnitude = rng.uniform(1.0, 2.0, n_de)
        lfc[genes[:n_de]] = np.where(np.arange(n_de) < n_de // 2, magnitude, -magnitude)
        if abs(np.log2((rho * 2.0**lfc).sum())) < 0.05:
            return genes, lfc
    raise RuntimeError("could not balance the DE genes; use fewer DE genes or more genes.")


def simulate_de(
    n_cells: int = 480,
    n_genes: int = 100,
    n_de: int = 20,
    n_markers_c: int = 6,
    n_module: int = 8,
    module_sd: float = 0.8,
    library_mean: float = 1500.0,
    dispersion: float = 10.0,
    seed: int = 0,
) -> anndata.AnnData:
    """Simulate NB counts (scVI's parameterisation) for groups ``A``, ``B``, ``C`` with known DE genes.

    ``rho = softmax(baseline + effects)`` per group, counts ``NB(mean=library * rho, theta=dispersion)``
    with a log-normal library around ``library_mean``.

    Returns
    -------
    AnnData with ``obs["group"]`` (categorical A/B/C, equal sizes, shuffled), ``obs["batch"]`` (b0/b1 at
    random, no effect), ``obs["factor"]`` (the module's per-cell driver, used in C only) and ``var`` columns
    ``true_lfc`` (log2 FC of B over A), ``is_de`` (``|true_lfc| >= 1``), ``is_marker_c`` and ``in_module``.
    """
    rng = np.random.default_rng(seed)
    baseline = rng.normal(0.0, 1.0, n_genes)
    genes, true_lfc = _balanced_de(rng, baseline, n_de)
    de, markers, module = np.split(genes[: n_de + n_markers_c + n_module], [n_de, n_de + n_markers_c])
    logits_by_group = {
        "A": baseline,
        "B": baseline + true_lfc * np.log(2),  # true_lfc is also the log2 FC of rho: see _balanced_de
        "C": baseline + np.where(np.isin(np.arange(n_genes), markers), 1.5 * np.log(2), 0.0),
    }
    group = rng.permutation(np.resize(np.array(["A", "B", "C"]), n_cells))
    logits = np.stack([logits_by_group[g] for g in group])
    in_c = group == "C"
    factor = rng.normal(size=n_cells)
    logits[np.ix_(in_c, module)] += module_sd * factor[in_c, None]

    rho = np.exp(logits - logits.max(1, keepdims=True))
    rho /= rho.sum(1, keepdims=True)
    library = rng.lognormal(np.log(library_mean) - 0.3**2 / 2, 0.3, n_cells)
    mean = library[:, None] * rho
    counts = rng.poisson(rng.gamma(dispersion, mean / dispersion)).astype(np.float32)

    obs = pd.DataFrame(
        {
            "group": pd.Categorical(group, categories=["A", "B", "C"]),
            # two batches without any batch effect, so that batch-aware models and batch_correction run
            "batch": pd.Categorical(rng.choice(["b0", "b1"], n_cells)),
            "factor": factor,
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(
        {
            "true_lfc": true_lfc,
            "is_de": np.abs(true_lfc) >= 1,
            "is_marker_c": np.isin(np.arange(n_genes), markers),
            "in_module": np.isin(np.arange(n_genes), module),
        },
        index=[f"gene_{i}" for i in range(n_genes)],
    )
    return anndata.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
