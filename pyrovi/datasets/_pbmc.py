"""Small real PBMC datasets bundled with pyrovi (raw counts; see ``data/PROVENANCE.md``)."""

from __future__ import annotations

from importlib import resources

import anndata
import numpy as np
import scipy.sparse as sp


def _read_bundled(filename: str) -> anndata.AnnData:
    """Read a bundled file afresh, so every call returns an object the caller may modify freely."""
    resource = resources.files("pyrovi.datasets").joinpath("data", filename)
    if not resource.is_file():
        raise FileNotFoundError(
            f"bundled dataset {filename!r} is missing from the pyrovi installation; reinstall pyrovi "
            "(the file is shipped as package data under pyrovi/datasets/data)."
        )
    # as_file gives a real path even when the package is installed as a zip.
    with resources.as_file(resource) as path:
        adata = anndata.read_h5ad(path)
    # Models expect counts as float32 CSR whatever the file stores.
    counts = adata.X if sp.issparse(adata.X) else sp.csr_matrix(adata.X)
    adata.X = sp.csr_matrix(counts, dtype=np.float32)
    return adata


def pbmc68k_reduced() -> anndata.AnnData:
    """700 peripheral blood mononuclear cells x 765 genes, with cell types, as raw UMI counts.

    The 68k PBMC subset (10x Genomics) that scanpy 1.9.8 ships as ``pbmc68k_reduced`` (BSD-3-Clause). scanpy
    stores it log-normalised; the integer counts here were reconstructed from its 3-decimal
    ``log1p(count / n_counts * 1e4)`` values. The 765 genes are highly variable genes that hold about 20 % of
    each cell's UMIs; ``obs["n_counts_total"]`` keeps every cell's full library size. ``obs`` also has
    ``"cell_type"``, ``"louvain"``, ``"phase"`` and ``"batch"``; ``uns["source"]`` records the origin.

    Returns
    -------
    A new AnnData with counts in ``X`` (float32 CSR) on every call.

    Examples
    --------
    >>> from pyrovi.datasets import pbmc68k_reduced
    >>> adata = pbmc68k_reduced()
    >>> adata.shape
    (700, 765)
    >>> adata.obs["cell_type"].value_counts().head(3)
    cell_type
    Dendritic         240
    CD14+ Monocyte    129
    CD19+ B            95
    Name: count, dtype: int64
    """
    return _read_bundled("pbmc68k_reduced_counts.h5ad")


def pbmc_small() -> anndata.AnnData:
    """80 peripheral blood mononuclear cells x 230 genes as raw UMI counts: a tiny dataset for quick checks.

    The PBMC3k subset (10x Genomics) shipped as ``pbmc_small`` by the R package SeuratObject 4.1.3 (MIT).
    ``obs`` has ``"groups"`` (``"g1"``/``"g2"``), Seurat's clusters and ``"batch"``; ``uns["source"]`` records
    the origin.

    Returns
    -------
    A new AnnData with counts in ``X`` (float32 CSR) on every call.

    Examples
    --------
    >>> from pyrovi.datasets import pbmc_small
    >>> adata = pbmc_small()
    >>> adata.shape
    (80, 230)
    """
    return _read_bundled("pbmc_small.h5ad")
