"""Small multimodal test data with scvi-tools' ``synthetic_iid`` arguments and layout."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._checks import check_int

_SPARSE_FORMATS = {"csr_matrix": sp.csr_matrix, "csc_matrix": sp.csc_matrix}
#: Mean count of a feature, and the NB inverse dispersion every modality is drawn with.
_MEAN_COUNT, _THETA = 10.0, 5.0


def _nb(rng: np.random.Generator, mean: np.ndarray) -> np.ndarray:
    """Negative binomial counts with the given means (gamma-Poisson mixture, inverse dispersion 5)."""
    return rng.poisson(rng.gamma(shape=_THETA, scale=mean / _THETA)).astype(np.int64)


def _profiles(rng: np.random.Generator, n_groups: int, n_features: int) -> np.ndarray:
    """Per-group mean counts: the same baseline for every group, scaled by a log-normal fold change."""
    baseline = _MEAN_COUNT * rng.lognormal(0.0, 0.5, size=n_features)
    return baseline * rng.lognormal(0.0, 0.5, size=(max(n_groups, 1), n_features))


def synthetic_iid(
    batch_size: int = 200,
    n_genes: int = 100,
    n_proteins: int = 100,
    n_regions: int = 100,
    n_batches: int = 2,
    n_labels: int = 3,
    dropout_ratio: float = 0.7,
    sparse_format: str | None = None,
    generate_coordinates: bool = False,
    return_mudata: bool = False,
    seed: int | None = None,
    *,
    batch_key: str = "batch",
    labels_key: str = "labels",
    rna_key: str = "rna",
    gene_names_prefix: str = "gene",
    protein_expression_key: str = "protein_expression",
    protein_names_key: str = "protein_names",
    protein_names_prefix: str = "protein",
    accessibility_key: str = "accessibility",
    region_names_prefix: str = "region",
    coordinates_key: str = "coordinates",
    rna_dist: str = "nb",
):
    """Small RNA, protein and accessibility counts laid out as scvi-tools' ``synthetic_iid`` lays them out.

    Same arguments, defaults and output fields as :func:`scvi.data.synthetic_iid`, so scvi-tools' examples and
    tests run as written. Unlike scvi-tools' i.i.d. noise, the counts carry the labels: every label has its
    own mean profile (a shared baseline times a log-normal fold change per feature), each batch multiplies
    the RNA means by its own fold changes, and counts are negative binomial with inverse dispersion 5. RNA
    and accessibility entries are then set to zero independently with probability ``dropout_ratio``.

    Parameters
    ----------
    batch_size
        Cells per batch: the data has ``batch_size * n_batches`` cells, batch after batch.
    n_genes, n_proteins, n_regions
        Numbers of genes, proteins and accessibility regions (0 leaves a modality out).
    n_batches
        Number of batches, ``"batch_0"``, ``"batch_1"``, ...
    n_labels
        Number of cell-type labels, ``"label_0"``, ..., drawn uniformly for every cell (0: no labels).
    dropout_ratio
        Expected share of RNA and accessibility entries set to zero.
    sparse_format
        ``None`` (dense arrays), ``"csr_matrix"`` or ``"csc_matrix"``.
    generate_coordinates
        Add random 2-d spatial coordinates in ``obsm["coordinates"]``.
    return_mudata
        Return a :class:`mudata.MuData` with modalities ``"rna"``, ``"protein_expression"`` and
        ``"accessibility"`` instead of an AnnData.
    seed
        Seed of the generator; ``None`` draws from numpy's global generator, which ``pyrovi.settings.seed``
        seeds (as in scvi-tools).
    batch_key, labels_key, rna_key, protein_expression_key, protein_names_key, accessibility_key, coordinates_key
        Where the batches, labels and modalities go (keys of ``obs``, ``obsm``, ``uns`` or, with
        ``return_mudata``, of the modalities; ``rna_key`` names the RNA modality).
    gene_names_prefix, protein_names_prefix, region_names_prefix
        Feature names are ``f"{prefix}_{i}"``.
    rna_dist
        ``"nb"`` (counts) or ``"normal"``: continuous RNA values, normal around the same means with standard
        deviation 2 (for ``gene_likelihood="normal"``).

    Returns
    -------
    AnnData with integer counts in ``X`` (genes ``gene_0``, ...; cells ``"0"``, ``"1"``, ...),
    ``obs["batch"]`` and ``obs["labels"]`` (categorical), ``obsm["protein_expression"]`` with names in
    ``uns["protein_names"]``, ``obsm["accessibility"]`` and, if asked, ``obsm["coordinates"]``; or the
    MuData described above, with batch and labels in its ``obs``.

    Examples
    --------
    >>> from pyrovi.data import synthetic_iid
    >>> adata = synthetic_iid(batch_size=50, seed=0)
    >>> adata.shape, adata.obsm["protein_expression"].shape
    ((100, 100), (100, 100))
    """
    for name, value in {"batch_size": batch_size, "n_batches": n_batches, "n_genes": n_genes}.items():
        check_int(name, value, expected="a positive integer")
    for name, value in {"n_proteins": n_proteins, "n_regions": n_regions, "n_labels": n_labels}.items():
        check_int(name, value, minimum=0, expected="a non-negative integer")
    if not 0 <= dropout_ratio < 1:
        raise ValueError(f"dropout_ratio must be in [0, 1), got {dropout_ratio!r}.")
    if rna_dist not in ("nb", "normal"):
        raise ValueError(f"rna_dist must be 'nb' or 'normal', got {rna_dist!r}.")
    if sparse_format is not None and sparse_format not in _SPARSE_FORMATS:
        raise ValueError(f"sparse_format must be None, 'csr_matrix' or 'csc_matrix', got {sparse_format!r}.")
    rng = np.random.default_rng(np.random.randint(2**31) if seed is None else seed)
    store = _SPARSE_FORMATS.get(sparse_format, lambda a: a)

    n_obs = batch_size * n_batches
    batch = np.repeat(np.arange(n_batches), batch_size)
    label = rng.integers(max(n_labels, 1), size=n_obs)

    def counts(n_features: int, batch_effect: bool, dropout: bool, normal: bool = False) -> np.ndarray:
        mean = _profiles(rng, n_labels, n_features)[label]
        if batch_effect:
            mean = mean * rng.lognormal(0.0, 0.3, size=(n_batches, n_features))[batch]
        x = rng.normal(np.log1p(mean), 2.0) if normal else _nb(rng, mean)
        if dropout:
            x *= rng.random(x.shape) >= dropout_ratio
        return store(x)

    rna = anndata.AnnData(counts(n_genes, True, True, normal=rna_dist == "normal"))
    rna.var_names = [f"{gene_names_prefix}_{i}" for i in range(n_genes)]
    obs = pd.DataFrame(index=rna.obs_names)
    obs[batch_key] = pd.Categorical.from_codes(batch, [f"batch_{i}" for i in range(n_batches)])
    if n_labels > 0:
        obs[labels_key] = pd.Categorical.from_codes(label, [f"label_{i}" for i in range(n_labels)])
    modalities = {rna_key: rna}
    if n_proteins > 0:
        protein = anndata.AnnData(counts(n_proteins, False, False))
        protein.var_names = [f"{protein_names_prefix}_{i}" for i in range(n_proteins)]
        modalities[protein_expression_key] = protein
    if n_regions > 0:
        regions = anndata.AnnData(counts(n_regions, False, True))
        regions.var_names = [f"{region_names_prefix}_{i}" for i in range(n_regions)]
        modalities[accessibility_key] = regions

    if return_mudata:
        import mudata

        out = mudata.MuData(modalities)
        for key in obs:
            out.obs[key] = obs[key].values
    else:
        out = rna
        out.obs = obs
        if n_proteins > 0:
            out.obsm[protein_expression_key] = protein.X
            out.uns[protein_names_key] = np.asarray(protein.var_names)
        if n_regions > 0:
            out.obsm[accessibility_key] = regions.X
    if generate_coordinates:
        out.obsm[coordinates_key] = rng.normal(size=(n_obs, 2))
    return out
