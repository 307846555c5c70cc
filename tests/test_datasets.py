"""Tests of the bundled PBMC datasets and of synthetic_iid's shape, reproducibility and structure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.spatial import cKDTree

from pyrovi.datasets._pbmc import pbmc68k_reduced, pbmc_small
from pyrovi.datasets._synthetic import synthetic_iid


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _assert_integer_counts(x) -> None:
    values = x.data if sp.issparse(x) else x
    assert values.dtype == np.float32
    assert values.min() >= 0
    np.testing.assert_array_equal(values, np.round(values))


@pytest.mark.parametrize(
    ("loader", "shape", "obs_keys", "licence"),
    [
        (pbmc68k_reduced, (700, 765), ["cell_type", "louvain", "n_counts_total", "batch"], "BSD-3"),
        (pbmc_small, (80, 230), ["groups", "batch"], "MIT"),
    ],
)
def test_bundled_data(loader, shape, obs_keys, licence):
    adata = loader()
    assert adata.shape == shape
    assert sp.isspmatrix_csr(adata.X) or isinstance(adata.X, sp.csr_array)
    _assert_integer_counts(adata.X)
    assert all(key in adata.obs for key in obs_keys)
    assert licence in adata.uns["source"]["license"]
    assert np.all(np.asarray(adata.X.sum(axis=1)).ravel() > 0)


def test_bundled_data_is_fresh_each_call():
    first = pbmc_small()
    first.obs["groups"] = "changed"
    first.X.data[:] = 0
    second = pbmc_small()
    assert (second.obs["groups"] != "changed").all()
    assert second.X.sum() > 0


def test_pbmc68k_library_sizes_exceed_gene_subset():
    adata = pbmc68k_reduced()
    fraction = np.asarray(adata.X.sum(axis=1)).ravel() / adata.obs["n_counts_total"].to_numpy()
    assert 0.1 < np.median(fraction) < 0.35  # the 765 HVGs hold about 20 % of the UMIs


@pytest.mark.parametrize("sparse", [True, False])
def test_synthetic_shapes_and_annotations(sparse):
    adata = synthetic_iid(n_cells=120, n_genes=30, n_batches=3, n_labels=4, n_latent=6, sparse=sparse, seed=2)
    assert adata.shape == (120, 30)
    assert sp.issparse(adata.X) == sparse
    _assert_integer_counts(adata.X)
    assert list(adata.obs["batch"].cat.categories) == ["batch_0", "batch_1", "batch_2"]
    assert list(adata.obs["labels"].cat.categories) == [f"label_{i}" for i in range(4)]
    assert adata.obs_names[0] == "cell_0" and adata.var_names[-1] == "gene_29"
    assert adata.obsm["z_true"].shape == (120, 6)
    assert (adata.obs["library_true"] > 0).all()
    params = adata.uns["synthetic"]
    assert params["n_latent"] == 6 and params["seed"] == 2
    json.dumps(params)  # only JSON-able scalars, so it survives write_h5ad


def test_synthetic_is_reproducible():
    a, b = synthetic_iid(seed=5), synthetic_iid(seed=5)
    np.testing.assert_array_equal(_dense(a.X), _dense(b.X))
    np.testing.assert_array_equal(a.obs["labels"], b.obs["labels"])
    np.testing.assert_array_equal(a.obsm["z_true"], b.obsm["z_true"])
    assert not np.array_equal(_dense(a.X), _dense(synthetic_iid(seed=6).X))


def test_synthetic_library_mean():
    adata = synthetic_iid(n_cells=1000, library_mean=1500.0)
    assert 1350 < np.asarray(adata.X.sum(axis=1)).mean() < 1650


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_cells": 0}, "n_cells"), ({"dispersion": 0.0}, "dispersion"), ({"batch_effect": -1.0}, "batch_effect")],
)
def test_synthetic_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_iid(**kwargs)


def _knn_scores(adata, k: int = 15, n_pcs: int = 10, centre_batches: bool = False) -> tuple[float, float]:
    """Label majority-vote accuracy and same-batch fraction of kNN in PCA of log-normalised counts.

    ``centre_batches`` removes each batch's mean per gene: a crude batch correction that a per-gene shift
    in logit space (the simulated batch effect) should yield to.
    """
    x = _dense(adata.X)
    x = np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)
    batches = adata.obs["batch"].cat.codes.to_numpy()
    groups = batches if centre_batches else np.zeros_like(batches)
    for group in np.unique(groups):
        x[groups == group] -= x[groups == group].mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    _, neighbours = cKDTree(u[:, :n_pcs] * s[:n_pcs]).query(u[:, :n_pcs] * s[:n_pcs], k=k + 1)
    neighbours = neighbours[:, 1:]  # the first neighbour is the cell itself
    labels = adata.obs["labels"].cat.codes.to_numpy()
    votes = np.array([np.bincount(labels[row]).argmax() for row in neighbours])
    return float((votes == labels).mean()), float((batches[neighbours] == batches[:, None]).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_synthetic_structure_labels_and_batches(seed):
    # Defaults (3 labels, 2 batches): measured label accuracy ~0.99 and same-batch fraction ~0.80-0.82.
    label_accuracy, same_batch = _knn_scores(synthetic_iid(seed=seed))
    assert label_accuracy > 0.9  # chance is 1/3
    assert same_batch > 0.7  # chance is 1/2: batches are visibly apart


def test_synthetic_without_batch_effect_mixes_batches():
    label_accuracy, same_batch = _knn_scores(synthetic_iid(batch_effect=0.0, seed=0))
    assert label_accuracy > 0.9
    assert same_batch < 0.6


def test_synthetic_batch_effect_is_removable_by_a_per_gene_shift():
    label_accuracy, same_batch = _knn_scores(synthetic_iid(seed=0), centre_batches=True)
    assert label_accuracy > 0.9
    assert same_batch < 0.6
