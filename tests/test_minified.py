"""Minified models (issue 20, item 3): queries answered from the stored latent posterior, without counts."""

from __future__ import annotations

import anndata
import numpy as np
import pytest
import torch

import pyrovi
from pyrovi.model import SCVI, TOTALVI

UNS_KEY = "_scvi_adata_minify_type"


@pytest.fixture(scope="module")
def saved_scvi(tmp_path_factory):
    """A trained SCVI (2 epochs, 120 cells x 40 genes, a counts layer) saved once; loaded afresh per test."""
    adata = pyrovi.datasets.synthetic_iid(n_cells=120, n_genes=40, seed=3)
    adata.layers["counts"] = adata.X.copy()
    SCVI.setup_anndata(adata, layer="counts", batch_key="batch", labels_key="labels")
    model = SCVI(adata, n_latent=4)
    model.train(max_epochs=2, enable_progress_bar=False)
    path = tmp_path_factory.mktemp("scvi")
    model.save(str(path), save_anndata=True)
    return path


@pytest.fixture
def scvi_model(saved_scvi):
    model = SCVI.load(str(saved_scvi))
    model.module.eval()
    return model


def _seeded(fn, *args, **kwargs):
    torch.manual_seed(7)
    return fn(*args, **kwargs)


def test_minify_stores_the_posterior_and_drops_the_counts(scvi_model):
    full = scvi_model.adata
    qzm, qzv = scvi_model.get_latent_representation(return_dist=True)
    library = np.asarray(full.layers["counts"].sum(1)).reshape(-1)
    assert scvi_model.minified_data_type is None
    scvi_model.minify_adata()
    mini = scvi_model.adata
    assert scvi_model.minified_data_type == "latent_posterior_parameters"
    assert mini is not full and UNS_KEY not in full.uns and full.layers["counts"].sum() > 0  # original untouched
    assert mini.uns[UNS_KEY] == "latent_posterior_parameters"
    assert mini.shape == full.shape and mini.X.nnz == 0 and mini.layers["counts"].nnz == 0
    np.testing.assert_array_equal(mini.obsm["scvi_latent_qzm"], qzm)
    np.testing.assert_array_equal(mini.obsm["scvi_latent_qzv"], qzv)
    np.testing.assert_allclose(mini.obs["observed_lib_size"], library)
    assert mini.obs.drop(columns="observed_lib_size").equals(full.obs)


def test_minified_queries_equal_the_full_models_under_the_same_draws(scvi_model):
    """The guide's q(z) is N(qzm, sqrt(qzv)) either way: the same seed gives the same z, hence the same answers."""
    full = {
        "mean": scvi_model.get_latent_representation(),
        "dist": scvi_model.get_latent_representation(return_dist=True),
        "draw": _seeded(scvi_model.get_latent_representation, give_mean=False),
        "rho": _seeded(scvi_model.get_normalized_expression, n_samples=3, return_numpy=True),
        "latent_lib": _seeded(scvi_model.get_normalized_expression, library_size="latent", return_numpy=True),
        "ppc": _seeded(scvi_model.posterior_predictive_sample, n_samples=2),
        "corr": _seeded(scvi_model.get_feature_correlation_matrix, n_samples=3),
        "de": _seeded(scvi_model.differential_expression, groupby="labels", group1="label_0", silent=True),
        "library": scvi_model.get_latent_library_size(),
    }
    scvi_model.minify_adata()
    np.testing.assert_array_equal(scvi_model.get_latent_representation(), full["mean"])
    qzm, qzv = scvi_model.get_latent_representation(return_dist=True)
    np.testing.assert_array_equal(qzm, full["dist"][0])
    np.testing.assert_allclose(qzv, full["dist"][1], rtol=1e-6)  # stored as a variance, drawn with its root
    np.testing.assert_allclose(_seeded(scvi_model.get_latent_representation, give_mean=False), full["draw"], rtol=1e-5)
    rho = _seeded(scvi_model.get_normalized_expression, n_samples=3, return_numpy=True)
    np.testing.assert_allclose(rho, full["rho"], rtol=1e-5)
    # the stored library sizes replace the counts' totals
    latent = _seeded(scvi_model.get_normalized_expression, library_size="latent", return_numpy=True)
    np.testing.assert_allclose(latent, full["latent_lib"], rtol=1e-5)
    np.testing.assert_array_equal(_seeded(scvi_model.posterior_predictive_sample, n_samples=2), full["ppc"])
    corr = _seeded(scvi_model.get_feature_correlation_matrix, n_samples=3)
    np.testing.assert_allclose(corr.to_numpy(), full["corr"].to_numpy(), atol=1e-5)
    de = _seeded(scvi_model.differential_expression, groupby="labels", group1="label_0", silent=True)
    np.testing.assert_allclose(de["lfc_mean"], full["de"]["lfc_mean"], atol=1e-4)
    assert de["raw_mean1"].isna().all()  # no counts to describe: the raw statistics are missing, not zeros
    np.testing.assert_allclose(scvi_model.get_latent_library_size(), full["library"])


@pytest.mark.parametrize("query", ["get_elbo", "get_reconstruction_error", "get_marginal_ll", "train"])
def test_queries_that_need_counts_refuse_minified_data(scvi_model, query):
    scvi_model.minify_adata()
    with pytest.raises(ValueError, match="minified"):
        getattr(scvi_model, query)()


def test_a_minified_model_still_reads_full_data(scvi_model):
    full = scvi_model.adata
    elbo = scvi_model.get_elbo()
    z = scvi_model.get_latent_representation()
    scvi_model.minify_adata()
    assert scvi_model.get_elbo(full) == pytest.approx(elbo, rel=0.05)
    np.testing.assert_allclose(scvi_model.get_latent_representation(full), z, rtol=1e-6)


def test_minified_with_counts_keeps_the_counts(scvi_model):
    full = scvi_model.adata
    scvi_model.minify_adata(minified_data_type="latent_posterior_parameters_with_counts")
    assert scvi_model.minified_data_type == "latent_posterior_parameters_with_counts"
    assert scvi_model.adata.layers["counts"].sum() == full.layers["counts"].sum()
    assert np.isfinite(scvi_model.get_elbo())  # the stored posterior is a guide: the ELBO is still a bound
    with pytest.raises(ValueError, match="minified"):
        scvi_model.train(max_epochs=1)


def test_save_and_load_keep_the_minified_state(scvi_model, tmp_path):
    z = scvi_model.get_latent_representation()
    scvi_model.minify_adata()
    scvi_model.save(str(tmp_path / "mini"), save_anndata=True)
    loaded = SCVI.load(str(tmp_path / "mini"))
    assert loaded.minified_data_type == "latent_posterior_parameters"
    assert loaded.adata.X.nnz == 0
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)
    with pytest.raises(ValueError, match="minified"):
        loaded.get_elbo()


def test_h5ad_round_trip_of_a_minified_anndata(scvi_model, saved_scvi, tmp_path):
    z = scvi_model.get_latent_representation()
    rho = _seeded(scvi_model.get_normalized_expression, return_numpy=True)
    scvi_model.minify_adata()
    scvi_model.save(str(tmp_path / "mini"))
    scvi_model.adata.write_h5ad(tmp_path / "mini.h5ad")
    back = anndata.read_h5ad(tmp_path / "mini.h5ad")
    np.testing.assert_array_equal(scvi_model.get_latent_representation(back), z)  # a query of the read-back data
    loaded = SCVI.load(str(tmp_path / "mini"), adata=back)
    assert loaded.minified_data_type == "latent_posterior_parameters"
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)
    np.testing.assert_allclose(_seeded(loaded.get_normalized_expression, return_numpy=True), rho, rtol=1e-5)
    # the full model saved before minification does not take it: nothing says the posterior is its own
    with pytest.raises(ValueError, match="non-minified model with minified adata"):
        SCVI.load(str(saved_scvi), adata=anndata.read_h5ad(tmp_path / "mini.h5ad"))
    full_model = SCVI.load(str(saved_scvi))
    with pytest.raises(ValueError, match="minified"):
        full_model.get_latent_representation(back)


def test_loading_a_minified_model_with_full_data_gives_a_full_model(scvi_model, saved_scvi, tmp_path):
    full = scvi_model.adata.copy()
    scvi_model.minify_adata()
    scvi_model.save(str(tmp_path / "mini"))
    loaded = SCVI.load(str(tmp_path / "mini"), adata=full)
    assert loaded.minified_data_type is None
    assert np.isfinite(loaded.get_elbo())


def test_minify_reads_the_posterior_from_obsm(scvi_model):
    qzm, qzv = scvi_model.get_latent_representation(return_dist=True)
    scvi_model.adata.obsm["X_latent_qzm"] = qzm + 1.0
    scvi_model.adata.obsm["X_latent_qzv"] = qzv
    scvi_model.minify_adata()
    np.testing.assert_allclose(scvi_model.get_latent_representation(), qzm + 1.0, rtol=1e-6)


def test_hostile_minification(scvi_model):
    with pytest.raises(ValueError, match="minified_data_type must be one of"):
        scvi_model.minify_adata(minified_data_type="latent")
    scvi_model.adata.obsm["X_latent_qzm"] = np.zeros((scvi_model.adata.n_obs, 4), dtype=np.float32)
    with pytest.raises(KeyError, match="X_latent_qzv"):
        scvi_model.minify_adata()
    scvi_model.adata.obsm["X_latent_qzv"] = np.ones((scvi_model.adata.n_obs, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        scvi_model.minify_adata()
    del scvi_model.adata.obsm["X_latent_qzm"], scvi_model.adata.obsm["X_latent_qzv"]
    z = scvi_model.get_latent_representation()
    scvi_model.minify_adata()
    scvi_model.minify_adata()  # twice: the stored posterior and library sizes are kept as they are
    np.testing.assert_array_equal(scvi_model.get_latent_representation(), z)
    assert scvi_model.adata.obs["observed_lib_size"].min() > 0
    with pytest.raises(ValueError, match="cannot be kept"):
        scvi_model.minify_adata(minified_data_type="latent_posterior_parameters_with_counts")


def test_untrained_and_latent_library_models_refuse(saved_scvi):
    adata = SCVI.load(str(saved_scvi)).adata
    with pytest.raises(ValueError, match="not trained"):
        SCVI(adata, n_latent=4).minify_adata()
    model = SCVI(adata, n_latent=4, use_observed_lib_size=False)
    model.train(max_epochs=1, enable_progress_bar=False)
    with pytest.raises(ValueError, match="latent library"):
        model.minify_adata()


def test_totalvi_minified_queries_equal_the_full_models():
    """As scvi-tools does for an AnnData, TOTALVI's minified data drop the RNA counts and keep the proteins."""
    adata = pyrovi.data.synthetic_iid(batch_size=50, n_genes=30, n_proteins=6, seed=2)
    TOTALVI.setup_anndata(adata, protein_expression_obsm_key="protein_expression", batch_key="batch")
    model = TOTALVI(adata, n_latent=4)
    model.train(max_epochs=2, enable_progress_bar=False)
    model.module.eval()
    z = model.get_latent_representation()
    rna, proteins = _seeded(model.get_normalized_expression, n_samples=2, return_numpy=True)
    predictive = _seeded(model.posterior_predictive_sample)
    model.minify_adata()
    assert model.minified_data_type == "latent_posterior_parameters"
    assert model.adata.X.nnz == 0 and "totalvi_latent_qzm" in model.adata.obsm
    np.testing.assert_array_equal(model.adata.obsm["protein_expression"], adata.obsm["protein_expression"])
    np.testing.assert_array_equal(model.get_latent_representation(), z)
    rna_m, proteins_m = _seeded(model.get_normalized_expression, n_samples=2, return_numpy=True)
    np.testing.assert_allclose(rna_m, rna, rtol=1e-5)
    np.testing.assert_allclose(proteins_m, proteins, rtol=1e-5)
    predictive_m = _seeded(model.posterior_predictive_sample)
    np.testing.assert_array_equal(predictive_m["rna"], predictive["rna"])
    with pytest.raises(ValueError, match="minified"):
        model.get_reconstruction_error()


def test_posterior_predictive_check_refuses_minified_data(scvi_model):
    from pyrovi.criticism import PosteriorPredictiveCheck

    scvi_model.minify_adata()
    with pytest.raises(ValueError, match="minified"):
        PosteriorPredictiveCheck(scvi_model.adata, {"scvi": scvi_model}, n_samples=2)
