"""Tests of synthetic_citeseq and of the empirical protein background prior (EM of 1-D Gaussian mixtures).

Measured with the defaults (500 cells, 20 proteins, 2 batches): over seeds 0-19 the background prior's
means are within 0.060 (mean absolute error on the log scale; 0.048-0.082 per seed) of the simulated
c[b, t]. Single entries can be off by up to ~0.6, for proteins whose foreground scale is small (~4) and
whose foreground is the majority: there the two modes overlap and the lower component of the best-fitting
mixture (higher likelihood than the true split) sits between them.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pyrovi.datasets import synthetic_citeseq, synthetic_iid
from pyrovi.model._protein_background import _fit_two_gaussians, protein_background_prior, protein_batch_mask


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _proteins(adata) -> np.ndarray:
    return adata.obsm["protein_expression"].to_numpy()


def _batch_codes(adata) -> np.ndarray:
    return adata.obs["batch"].cat.codes.to_numpy()


def _true_background(adata) -> np.ndarray:
    return np.asarray(adata.uns["synthetic_citeseq"]["protein_background_log_mean"])


@pytest.fixture(scope="module")
def default_data():
    return synthetic_citeseq(seed=0)


@pytest.mark.parametrize("sparse", [True, False])
def test_shapes_dtypes_and_annotations(sparse):
    adata = synthetic_citeseq(
        n_cells=150, n_genes=40, n_proteins=7, n_batches=3, n_labels=4, n_latent=6, sparse=sparse, seed=2
    )
    assert adata.shape == (150, 40)
    assert sp.issparse(adata.X) == sparse
    assert adata.var_names[0] == "gene_0"
    assert list(adata.obs["batch"].cat.categories) == ["batch_0", "batch_1", "batch_2"]
    assert list(adata.obs["labels"].cat.categories) == [f"label_{i}" for i in range(4)]

    proteins = adata.obsm["protein_expression"]
    assert isinstance(proteins, pd.DataFrame)
    assert proteins.index.equals(adata.obs_names)
    assert list(proteins.columns) == [f"protein_{t}" for t in range(7)] == adata.uns["protein_names"]
    assert (proteins.dtypes == np.float32).all()
    for counts in (_dense(adata.X), proteins.to_numpy()):
        assert counts.dtype == np.float32 and counts.min() >= 0
        np.testing.assert_array_equal(counts, np.round(counts))

    assert adata.obsm["z_true"].shape == (150, 6)
    assert adata.obsm["protein_foreground_true"].dtype == bool
    assert adata.obsm["protein_foreground_true"].shape == (150, 7)
    beta = adata.obsm["protein_background_mean_true"]
    assert beta.shape == (150, 7) and np.issubdtype(beta.dtype, np.floating) and (beta > 0).all()
    alpha = adata.obsm["protein_foreground_scale_true"]
    assert alpha.min() >= 3.0 and alpha.max() <= 15.0
    params = adata.uns["synthetic_citeseq"]
    assert np.shape(params["protein_background_log_mean"]) == (3, 7)
    on = np.asarray(params["protein_on_labels"])
    assert on.shape == (4, 7) and on.any(axis=0).all() and (~on).any(axis=0).all()
    json.dumps(params)  # only JSON-able values, so it survives write_h5ad


def test_subsetting_keeps_the_protein_frame_aligned():
    adata = synthetic_citeseq(n_cells=60, n_proteins=4, seed=3)
    subset = adata[adata.obs["batch"] == "batch_1"]
    assert subset.obsm["protein_expression"].index.equals(subset.obs_names)


def test_reproducible_and_rna_equals_synthetic_iid():
    a, b = synthetic_citeseq(seed=5), synthetic_citeseq(seed=5)
    np.testing.assert_array_equal(_dense(a.X), _dense(b.X))
    np.testing.assert_array_equal(_proteins(a), _proteins(b))
    np.testing.assert_array_equal(a.obsm["protein_foreground_true"], b.obsm["protein_foreground_true"])
    assert not np.array_equal(_proteins(a), _proteins(synthetic_citeseq(seed=6)))
    # the proteins use their own random stream, so the RNA part is synthetic_iid's, unchanged
    rna = synthetic_iid(n_cells=500, seed=5)
    np.testing.assert_array_equal(_dense(a.X), _dense(rna.X))
    np.testing.assert_array_equal(a.obsm["z_true"], rna.obsm["z_true"])
    np.testing.assert_array_equal(a.obs["labels"], rna.obs["labels"])


def test_foreground_is_clearly_above_background(default_data):
    counts = _proteins(default_data)
    foreground = default_data.obsm["protein_foreground_true"]
    # seed 0: 47 % foreground; medians 17 (background) vs 155 (foreground)
    assert 0.35 < foreground.mean() < 0.6
    background_median, foreground_median = np.median(counts[~foreground]), np.median(counts[foreground])
    assert 12 < background_median < 30
    assert foreground_median > 5 * background_median
    # and per protein, not just overall
    for t in range(counts.shape[1]):
        assert np.median(counts[foreground[:, t], t]) > 2 * np.median(counts[~foreground[:, t], t])


def test_foreground_follows_labels(default_data):
    on = np.asarray(default_data.uns["synthetic_citeseq"]["protein_on_labels"])
    labels = default_data.obs["labels"].cat.codes.to_numpy()
    expected = on[labels]
    foreground = default_data.obsm["protein_foreground_true"]
    assert abs(foreground[expected].mean() - 0.9) < 0.03
    assert abs(foreground[~expected].mean() - 0.05) < 0.02


def test_missing_proteins_are_zero_and_found_by_the_mask():
    missing = {1: [0, 3], 2: [3, 5]}
    adata = synthetic_citeseq(n_cells=300, n_proteins=8, n_batches=3, missing_proteins=missing, seed=4)
    counts, codes = _proteins(adata), _batch_codes(adata)
    expected = np.ones((3, 8), dtype=bool)
    for batch, proteins in missing.items():
        assert (counts[np.ix_(codes == batch, proteins)] == 0).all()
        expected[batch, proteins] = False
    np.testing.assert_array_equal(protein_batch_mask(counts, codes, 3), expected)
    np.testing.assert_array_equal(protein_batch_mask(sp.csr_matrix(counts), codes, 3), expected)
    np.testing.assert_array_equal(protein_batch_mask(adata.obsm["protein_expression"], codes, 3), expected)
    assert adata.uns["synthetic_citeseq"]["missing_proteins"] == {"1": [0, 3], "2": [3, 5]}
    # the truth keeps the simulated values
    assert (adata.obsm["protein_background_mean_true"][codes == 1, 0] > 0).all()
    # an empty batch gets a row of False
    assert not protein_batch_mask(counts, codes, 4)[3].any()


def test_invalid_arguments():
    with pytest.raises(ValueError, match="n_proteins"):
        synthetic_citeseq(n_proteins=0)
    with pytest.raises(ValueError, match="protein_dispersion"):
        synthetic_citeseq(protein_dispersion=0.0)
    with pytest.raises(ValueError, match="batch"):
        synthetic_citeseq(missing_proteins={2: [0]})
    with pytest.raises(ValueError, match="protein indices"):
        synthetic_citeseq(n_proteins=5, missing_proteins={0: [5]})


def test_em_recovers_a_known_mixture():
    rng = np.random.default_rng(0)
    n = 4000
    component = rng.random(n) < 0.3
    x = np.where(component, rng.normal(4.0, 0.8, n), rng.normal(1.0, 0.5, n))
    mix, means, sds = _fit_two_gaussians(x)
    np.testing.assert_allclose(mix[0], [0.7, 0.3], atol=0.02)
    np.testing.assert_allclose(means[0], [1.0, 4.0], atol=0.05)
    np.testing.assert_allclose(sds[0], [0.5, 0.8], atol=0.04)


def test_em_is_vectorised_over_columns_and_respects_weights():
    rng = np.random.default_rng(1)
    x = np.column_stack(
        [
            np.concatenate([rng.normal(0, 1, 600), rng.normal(6, 1, 400)]),
            np.concatenate([rng.normal(2, 0.3, 900), rng.normal(3.5, 0.3, 100)]),
            np.full(1000, 2.0),  # constant: no NaN, both components on it
        ]
    )
    together = _fit_two_gaussians(x)
    for t in range(3):
        alone = _fit_two_gaussians(x[:, t])
        for a, b in zip(together, alone):
            # close, not equal: the joint fit stops when all columns converge, so it may iterate longer
            np.testing.assert_allclose(a[t], b[0], rtol=1e-5, atol=1e-6)
    assert all(np.isfinite(a).all() for a in together)
    np.testing.assert_allclose(together[1][2], [2.0, 2.0])
    np.testing.assert_allclose(together[2][2], [0.05, 0.05])
    # zero weights leave observations out
    keep = rng.random(1000) < 0.5
    weighted = _fit_two_gaussians(x[:, :1], weights=keep[:, None].astype(float))
    subset = _fit_two_gaussians(x[keep, :1])
    for a, b in zip(weighted, subset):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_prior_recovers_simulated_background(default_data):
    mean, scale = protein_background_prior(_proteins(default_data), _batch_codes(default_data), n_batch=2)
    assert mean.shape == scale.shape == (2, 20)
    assert mean.dtype == scale.dtype == np.float32
    error = np.abs(mean - _true_background(default_data))
    assert error.mean() < 0.1  # measured 0.052 (seed 0); 0.048-0.082 over seeds 0-19
    assert np.median(error) < 0.1
    # the background sd of log(y + 1): sqrt(0.3^2 + 1/mu + 1/phi) ~ 0.5 for mu ~ 20, phi = 10
    assert 0.35 < np.median(scale) < 0.65
    assert scale.min() >= 0.05


def test_prior_borrows_for_masked_proteins_and_small_batches():
    missing = {1: [0, 3]}
    adata = synthetic_citeseq(n_cells=600, n_proteins=6, n_batches=3, missing_proteins=missing, seed=7)
    counts, codes = _proteins(adata), _batch_codes(adata)
    mean, scale = protein_background_prior(counts, codes, n_batch=3)
    for t in missing[1]:
        assert mean[1, t] == pytest.approx((mean[0, t] + mean[2, t]) / 2, rel=1e-6)
        assert scale[1, t] == pytest.approx((scale[0, t] + scale[2, t]) / 2, rel=1e-6)
    observed = np.ones((3, 6), dtype=bool)
    observed[1, missing[1]] = False
    error = np.abs(mean - _true_background(adata))[observed]
    assert error.mean() < 0.15

    # an explicit mask gives the same; a batch of fewer than min_cells cells borrows everything
    explicit = protein_background_prior(counts, codes, 3, protein_mask=protein_batch_mask(counts, codes, 3))
    np.testing.assert_array_equal(explicit[0], mean)
    small = codes.copy()
    small[np.flatnonzero(codes == 2)[5:]] = 0  # batch 2 keeps 5 cells
    mean_small, _ = protein_background_prior(counts, small, 3)
    np.testing.assert_allclose(mean_small[2, 1:3], mean_small[:2, 1:3].mean(axis=0), rtol=1e-6)

    # a protein fit in no batch: one pooled fit over the cells that measured it; measured nowhere: zeros
    only_batch_2 = np.ones((3, 6), dtype=bool)
    only_batch_2[:2, 4] = False
    only_batch_2[:, 5] = False
    pooled, pooled_scale = protein_background_prior(counts, small, 3, protein_mask=only_batch_2)
    expected = _fit_two_gaussians(np.log1p(counts[small == 2, 4]))[1][0, 0]
    np.testing.assert_allclose(pooled[:, 4], expected, rtol=1e-5)
    zeros = counts.copy()
    zeros[:, 5] = 0
    nowhere, nowhere_scale = protein_background_prior(zeros, codes, 3)
    np.testing.assert_allclose(nowhere[:, 5], 0.0, atol=1e-6)
    np.testing.assert_allclose(nowhere_scale[:, 5], 0.05, rtol=1e-6)
    assert np.isfinite(pooled).all() and np.isfinite(pooled_scale).all()
