"""Posterior queries called the way scvi-tools' documentation calls them: signatures, return types, columns.

Small data, one epoch: these check the API and the statistics' definitions, not the fit.
"""

import numpy as np
import pandas as pd
import pytest

import pyrovi
from pyrovi.data import synthetic_iid
from pyrovi.model import SCVI, TOTALVI
from pyrovi.model.base._differential import (
    de_statistics,
    estimate_delta,
    estimate_pseudocounts,
    highest_density_interval,
    robust_inliers,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scvi_model():
    pyrovi.settings.seed = 0
    adata = synthetic_iid(batch_size=60, n_genes=30, seed=0)
    SCVI.setup_anndata(adata, batch_key="batch", labels_key="labels")
    model = SCVI(adata, n_latent=4, n_hidden=16)
    model.train(max_epochs=2, progress_bar=False)
    return model


@pytest.fixture(scope="module")
def totalvi_model():
    pyrovi.settings.seed = 0
    adata = synthetic_iid(batch_size=60, n_genes=30, n_proteins=8, seed=0)
    TOTALVI.setup_anndata(adata, protein_expression_obsm_key="protein_expression",
                          protein_names_uns_key="protein_names", batch_key="batch")  # fmt: skip
    model = TOTALVI(adata, n_latent=4, n_hidden=16)
    model.train(max_epochs=2, progress_bar=False)
    return model


def test_fit_queries_return_0d_floats(scvi_model):
    elbo = scvi_model.get_elbo()
    assert elbo.ndim == 0 and isinstance(elbo, float) and np.isfinite(float(elbo))
    assert scvi_model.get_elbo(return_mean=False).shape == (120,)
    ll = scvi_model.get_marginal_ll(n_mc_samples=4, n_mc_samples_per_pass=2)
    assert ll.ndim == 0 and ll > elbo - 50
    rec = scvi_model.get_reconstruction_error()["reconstruction_loss"]
    assert rec.ndim == 0 and rec > 0
    assert scvi_model.get_reconstruction_error(return_mean=False)["reconstruction_loss"].shape == (120,)


def test_marginal_ll_per_pass_estimates_the_same_quantity(scvi_model):
    cells = np.arange(20)
    pyrovi.settings.seed = 1
    one = scvi_model.get_marginal_ll(indices=cells, n_mc_samples=40, return_mean=False)
    pyrovi.settings.seed = 2
    many = scvi_model.get_marginal_ll(indices=cells, n_mc_samples=40, n_mc_samples_per_pass=20, return_mean=False)
    assert np.abs(one - many).mean() < 1.0  # independent estimates of log p(x), in nats per cell


def test_latent_return_dist_and_dataloader(scvi_model):
    mean, var = scvi_model.get_latent_representation(return_dist=True)
    assert mean.shape == var.shape == (120, 4) and (var > 0).all()
    np.testing.assert_allclose(scvi_model.get_latent_representation(), mean, rtol=1e-5)
    loader = scvi_model._make_data_loader(indices=np.arange(10))
    np.testing.assert_allclose(scvi_model.get_latent_representation(dataloader=loader), mean[:10], rtol=1e-5)
    with pytest.raises(ValueError, match="either adata or dataloader"):
        scvi_model.get_latent_representation(scvi_model.adata, dataloader=loader)


def test_normalized_expression_samples_overall_and_importance(scvi_model):
    cells = np.flatnonzero(scvi_model.adata.obs["labels"] == "label_0")
    draws = scvi_model.get_normalized_expression(indices=cells, n_samples_overall=50)
    assert isinstance(draws, np.ndarray) and draws.shape == (50, 30)
    np.testing.assert_allclose(draws.sum(1), 1, rtol=1e-4)
    weighted = scvi_model.get_normalized_expression(
        indices=cells[:5], n_samples_overall=30, weights="importance", n_mc_samples=5, max_cells=3
    )
    assert weighted.shape == (30, 30) and np.isfinite(weighted).all()
    with pytest.raises(ValueError, match="weights must be"):
        scvi_model.get_normalized_expression(indices=cells, n_samples_overall=5, weights="bayes")
    per_draw = scvi_model.get_normalized_expression(n_samples=3, return_mean=False)
    assert per_draw.shape == (3, 120, 30)


def test_posterior_predictive_transform_batch(scvi_model):
    one = scvi_model.posterior_predictive_sample(indices=[1, 2, 3], gene_list=["gene_1", "gene_2"], n_samples=3,
                                                 transform_batch=["batch_1"])  # fmt: skip
    assert one.shape == (3, 2, 3) and np.array_equal(one, np.round(one))
    averaged = scvi_model.posterior_predictive_sample(transform_batch=["batch_1", "batch_0"])
    assert averaged.shape == (120, 30)
    with pytest.raises(ValueError, match="not a batch"):
        scvi_model.posterior_predictive_sample(transform_batch="batch_7")


def test_de_default_vanilla_columns(scvi_model):
    pyrovi.settings.seed = 0
    de = scvi_model.differential_expression(groupby="labels", group1="label_1", silent=True)
    for column in ["proba_m1", "proba_m2", "bayes_factor", "scale1", "scale2", "raw_mean1", "raw_mean2",
                   "non_zeros_proportion1", "non_zeros_proportion2", "raw_normalized_mean1",
                   "raw_normalized_mean2", "comparison", "group1", "group2"]:  # fmt: skip
        assert column in de.columns
    assert "proba_de" not in de.columns


def test_de_change_columns_pseudocounts_delta(scvi_model):
    pyrovi.settings.seed = 0
    de = scvi_model.differential_expression(groupby="labels", group1="label_1", mode="change", pseudocounts=1e-4,
                                            cred_interval_lvls=[0.9], silent=True)  # fmt: skip
    for column in ["proba_de", "proba_not_de", "bayes_factor", "scale1", "scale2", "pseudocounts", "delta",
                   "lfc_mean", "lfc_median", "lfc_std", "lfc_min", "lfc_max", "is_de_fdr_0.05",
                   "lfc_confidence_interval_0.9_min", "lfc_confidence_interval_0.9_max"]:  # fmt: skip
        assert column in de.columns
    assert (de["pseudocounts"] == 1e-4).all() and (de["delta"] == 0.25).all()
    assert (de["lfc_confidence_interval_0.9_min"] <= de["lfc_median"]).all()
    estimated = scvi_model.differential_expression(idx1="labels == 'label_1'", mode="change", delta=None,
                                                   n_samples_overall=500, silent=True)  # fmt: skip
    assert (estimated["pseudocounts"] > 0).all() and (estimated["delta"] >= 0.1).all()


def test_de_batch_correction_with_batch_ids_and_outliers(scvi_model):
    pyrovi.settings.seed = 0
    de = scvi_model.differential_expression(groupby="labels", group1="label_0", batch_correction=True,
                                            batchid1=["batch_0"], batchid2=["batch_0"], n_samples_overall=300,
                                            filter_outlier_cells=True, silent=True)  # fmt: skip
    assert len(de) == 30
    with pytest.raises(ValueError, match="batch_correction=True"):
        scvi_model.differential_expression(groupby="labels", batchid1=["batch_0"], silent=True)
    importance = scvi_model.differential_expression(idx1=[0, 1, 2], idx2=[3, 4, 5], weights="importance",
                                                    n_samples_overall=40, silent=True,
                                                    importance_weighting_kwargs={"n_mc_samples": 5})  # fmt: skip
    assert np.isfinite(importance["bayes_factor"]).all()


def test_totalvi_queries(totalvi_model):
    n = totalvi_model.adata.n_obs
    assert totalvi_model.get_latent_library_size(indices=[1, 2, 3]).shape == (3, 1)
    np.testing.assert_allclose(totalvi_model.get_latent_library_size()[:, 0],
                               np.asarray(totalvi_model.adata.X.sum(1)).ravel(), rtol=1e-5)  # fmt: skip
    replicates = totalvi_model.posterior_predictive_sample(n_samples=2)
    assert replicates["rna"].shape == (n, 30, 2) and replicates["protein"].shape == (n, 8, 2)
    rna, protein = totalvi_model.get_normalized_expression(scale_protein=True, transform_batch=["batch_0", "batch_1"])
    np.testing.assert_allclose(protein.sum(1), 1, rtol=1e-4)
    picked, _ = totalvi_model.get_normalized_expression(n_samples_overall=7)
    assert picked.shape == (7, 30)


def test_totalvi_de_defaults_to_change_with_protein_rows(totalvi_model):
    pyrovi.settings.seed = 0
    de = totalvi_model.differential_expression(groupby="labels", group1="label_1", n_samples_overall=300, silent=True)
    assert "proba_de" in de.columns and (de["pseudocounts"] == 1e-5).all()
    proteins = [name for name in de.index if name.endswith("_protein")]
    assert len(proteins) == 8 and de.loc[proteins, "raw_normalized_mean1"].isna().all()
    only = totalvi_model.differential_expression(groupby="labels", group1="label_1", use_field=["protein"],
                                                 n_samples_overall=100, silent=True)  # fmt: skip
    assert sorted(only.index) == sorted(proteins)


# ---------------------------------------------------------------------------------------------------
# the statistics


def test_three_way_test_is_the_larger_direction():
    rng = np.random.default_rng(0)
    draws2 = np.exp(rng.normal(0, 0.3, size=(20_000, 1)))
    lfc = rng.normal(0.2, 1.0, size=(20_000, 1))
    draws1 = draws2 * 2.0**lfc
    three = de_statistics(draws1, draws2, mode="change", delta=0.5)
    two = de_statistics(draws1, draws2, mode="change", delta=0.5, test_mode="two")
    up, down = (lfc >= 0.5).mean(), (lfc < -0.5).mean()
    assert three["proba_de"][0] == pytest.approx(max(up, down), abs=0.01)
    assert two["proba_de"][0] == pytest.approx(up + down, abs=0.01)


def test_estimate_delta_and_pseudocounts():
    rng = np.random.default_rng(1)
    means = np.concatenate([rng.normal(-3, 0.2, 40), rng.normal(0, 0.2, 400), rng.normal(3, 0.2, 40)])
    assert estimate_delta(means) == pytest.approx(0.6 * 3, abs=0.15)
    assert estimate_delta(np.zeros(10)) == 0.1
    draws = np.tile(np.array([[1e-3, 0.5, 0.499]]), (10, 1))
    assert estimate_pseudocounts(draws, draws, np.array([True, False, False]), np.zeros(3, bool)) == pytest.approx(
        1e-3 / 3
    )


def test_highest_density_interval_and_robust_inliers():
    draws = np.random.default_rng(2).normal(size=(20_000, 1))
    low, high = highest_density_interval(draws, 0.95)
    assert low[0] == pytest.approx(-1.96, abs=0.05) and high[0] == pytest.approx(1.96, abs=0.05)
    rng = np.random.default_rng(3)
    points = np.vstack([rng.normal(size=(90, 3)), rng.normal(10, 0.1, size=(10, 3))])
    keep = robust_inliers(points)
    assert not keep[90:].any() and keep.sum() == 90
    assert robust_inliers(points[:3]) is None
    assert isinstance(pd.Series(keep), pd.Series)
