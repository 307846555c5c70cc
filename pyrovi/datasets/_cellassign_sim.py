"""Counts simulated from CellAssign's generative process, with known cell types."""

from __future__ import annotations

from collections.abc import Sequence

import anndata
import numpy as np
import pandas as pd
from scipy import sparse as sp


def synthetic_cellassign(
    n_cells: int = 1000,
    n_types: int = 4,
    n_markers_per_type: int = 5,
    n_shared_markers: int = 2,
    proportions: Sequence[float] | None = None,
    delta_range: tuple[float, float] = (2.0, 3.5),
    dispersion: float = 10.0,
    batch_shift: float = 0.3,
    n_batches: int = 2,
    seed: int = 0,
) -> anndata.AnnData:
    """Marker-gene counts from the CellAssign model with known types, for tests and examples.

    Each type has ``n_markers_per_type`` markers of its own; ``n_shared_markers`` further genes mark two
    consecutive types each (markers are rarely exclusive). A cell of type ``c`` expresses gene ``g`` with
    log mean ``log s_n + beta_g + batch shift + rho_gc delta_gc``, where ``beta_g ~ N(0.5, 0.5)`` is the
    baseline, ``delta_gc ~ Uniform(delta_range)`` the over-expression of a marker in its types and the
    size factor ``s_n ~ LogNormal(0, 0.3)``; counts are negative binomial with inverse dispersion
    ``dispersion``.

    Parameters
    ----------
    n_cells, n_types
        Numbers of cells and of types (named ``"type_0"``...).
    n_markers_per_type, n_shared_markers
        Marker design.
    proportions
        Type proportions (default equal); e.g. ``[0.49, 0.49, 0.02]`` for a rare type.
    delta_range
        Range of the markers' log fold changes.
    dispersion
        Inverse dispersion of the counts.
    batch_shift, n_batches
        Batches with a random per-gene log shift of this scale.
    seed
        Seed of the simulation.

    Returns
    -------
    AnnData with counts in ``X`` (CSR), ``obs["cell_type"]`` (truth), ``obs["size_factor"]`` (the simulated
    size factor), ``obs["batch"]``, and the marker table as a genes x types DataFrame of 0/1 in
    ``varm["cell_type_markers"]``.

    Examples
    --------
    >>> adata = synthetic_cellassign(n_cells=200, proportions=[0.45, 0.45, 0.05, 0.05])
    >>> adata.varm["cell_type_markers"].shape
    (22, 4)
    """
    rng = np.random.default_rng(seed)
    types = [f"type_{c}" for c in range(n_types)]
    n_genes = n_types * n_markers_per_type + n_shared_markers
    rho = np.zeros((n_genes, n_types))
    for c in range(n_types):
        rho[c * n_markers_per_type : (c + 1) * n_markers_per_type, c] = 1
    for k in range(n_shared_markers):
        first = k % n_types
        rho[n_types * n_markers_per_type + k, [first, (first + 1) % n_types]] = 1
    probs = np.full(n_types, 1 / n_types) if proportions is None else np.asarray(proportions, float)
    if probs.shape != (n_types,) or np.any(probs < 0) or not np.isclose(probs.sum(), 1):
        raise ValueError(f"proportions must be {n_types} non-negative numbers summing to 1, got {proportions}.")
    cell_type = rng.choice(n_types, size=n_cells, p=probs)
    batch = rng.integers(0, n_batches, size=n_cells)
    size_factor = rng.lognormal(0.0, 0.3, size=n_cells)
    beta = rng.normal(0.5, 0.5, size=n_genes)
    shifts = rng.normal(0.0, batch_shift, size=(n_batches, n_genes))
    delta = rng.uniform(*delta_range, size=(n_genes, n_types)) * rho
    log_mu = np.log(size_factor)[:, None] + beta[None] + shifts[batch] + delta[:, cell_type].T
    mu = np.exp(log_mu)
    counts = rng.poisson(rng.gamma(dispersion, mu / dispersion)).astype(np.float32)
    genes = [f"marker_{g}" for g in range(n_genes)]
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([types[c] for c in cell_type], categories=types),
            "size_factor": size_factor.astype(np.float32),
            "batch": pd.Categorical([f"batch_{b}" for b in batch]),
        },
        index=[f"cell_{n}" for n in range(n_cells)],
    )
    adata = anndata.AnnData(sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes))
    adata.varm["cell_type_markers"] = pd.DataFrame(rho.astype(int), index=genes, columns=types)
    adata.uns["synthetic_cellassign"] = {"seed": seed, "dispersion": dispersion, "delta_range": list(delta_range)}
    return adata
