"""SCVI options, setup errors and reproducibility, on small data and few epochs."""

import json

import numpy as np
import pyro.distributions as dist
import pytest
import torch

import pyrovi
from pyrovi.model import SCVI
from pyrovi.module import VAE


@pytest.fixture
def adata():
    data = pyrovi.datasets.synthetic_iid(n_cells=120, n_genes=30, seed=1)
    data.obs["cont"] = np.linspace(0, 1, data.n_obs)
    data.obs["cat"] = np.where(np.arange(data.n_obs) % 3 == 0, "a", "b")
    data.obs["sf"] = np.asarray(data.X.sum(1)).ravel() / 1000
    return data


@pytest.mark.parametrize(
    "kwargs",
    [
        {"gene_likelihood": "zinb", "dispersion": "gene-batch"},
        {"gene_likelihood": "poisson"},
        {"gene_likelihood": "nb", "dispersion": "gene-cell", "use_observed_lib_size": False},
        {"gene_likelihood": "zinb", "dispersion": "gene-label", "encode_covariates": True, "n_layers": 2},
    ],
)
def test_variants_train_and_answer_queries(adata, kwargs):
    SCVI.setup_anndata(adata, batch_key="batch", labels_key="labels",
                       categorical_covariate_keys=["cat"], continuous_covariate_keys=["cont"])
    model = SCVI(adata, n_latent=3, **kwargs)
    model.train(max_epochs=3, progress_bar=False)
    assert np.isfinite(model.history["elbo_validation"].to_numpy()).all()
    assert model.get_latent_representation().shape == (120, 3)
    assert model.posterior_predictive_sample(indices=np.arange(10)).shape == (10, 30)
    params = model.get_likelihood_parameters(indices=np.arange(5))
    assert ("dropout" in params) == (kwargs["gene_likelihood"] == "zinb")
    if kwargs.get("use_observed_lib_size") is False:
        library = model.get_latent_library_size(indices=np.arange(5))
        assert library.shape == (5, 1) and (library > 0).all()


def test_size_factor_replaces_the_library(adata):
    SCVI.setup_anndata(adata, size_factor_key="sf")
    model = SCVI(adata, n_latent=2)
    np.testing.assert_allclose(model.get_latent_library_size()[:, 0], adata.obs["sf"], rtol=1e-6)
    rho = model.get_normalized_expression(library_size="latent", indices=np.arange(4), return_numpy=True)
    assert rho.shape == (4, 30)


def test_model_needs_setup_for_its_own_class(adata):
    with pytest.raises(ValueError, match=r"SCVI.setup_anndata\(adata"):
        SCVI(adata)
    SCVI.setup_anndata(adata)
    registry = json.loads(adata.uns["_pyrovi_registry"])
    registry["model_name"] = "TOTALVI"
    adata.uns["_pyrovi_registry"] = json.dumps(registry)
    with pytest.raises(ValueError, match="set up for TOTALVI, not SCVI"):
        SCVI(adata)


def test_same_seed_same_training(adata):
    runs = []
    for _ in range(2):
        pyrovi.settings.seed = 7
        SCVI.setup_anndata(adata)
        model = SCVI(adata, n_latent=2)
        model.train(max_epochs=2, progress_bar=False)
        runs.append((model.history["elbo_train"].to_numpy(), model.get_latent_representation()))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_early_stopping_and_default_epochs(adata):
    from pyrovi.model.base._base_model import max_epochs_heuristic

    assert max_epochs_heuristic(700) == 400
    assert max_epochs_heuristic(200_000) == 40
    SCVI.setup_anndata(adata)
    model = SCVI(adata, n_latent=2)
    model.train(max_epochs=300, early_stopping=True, progress_bar=False,
                plan_kwargs={"lr": 0.05}, early_stopping_patience=3)
    assert len(model.history["elbo_validation"]) < 300


def test_plateau_scheduler_gradient_clipping_and_train_terms(adata):
    SCVI.setup_anndata(adata, batch_key="batch")
    model = SCVI(adata, n_latent=2)
    model.train(max_epochs=3, progress_bar=False, gradient_clip_val=1.0,
                plan_kwargs={"reduce_lr_on_plateau": True, "log_train_terms": True,
                             "n_steps_kl_warmup": 5})
    history = model.history
    assert {"reconstruction_loss_train", "kl_local_train"} <= set(history)
    # 108 training cells make one minibatch per epoch: three steps of a five-step warm-up
    assert history["kl_weight"]["kl_weight"].to_numpy() == pytest.approx([0.0, 0.2, 0.4], abs=1e-6)
    one = model.get_normalized_expression(indices=np.arange(3), return_mean=False)
    assert one.shape == (3, 30)  # a single draw is still a cells x genes table


@pytest.mark.parametrize("dispersion", ["gene", "gene-cell"])
def test_poisson_has_no_dispersion_parameters_and_every_parameter_learns(adata, dispersion):
    # an unused parameter never gets a gradient, which DDP refuses without find_unused_parameters
    SCVI.setup_anndata(adata)
    model = SCVI(adata, n_latent=3, gene_likelihood="poisson", dispersion=dispersion)
    names = [name for name, _ in model.module.named_parameters()]
    assert not any("log_theta" in name for name in names), names
    model.train(max_epochs=1, progress_bar=False)
    batch = next(iter(model._make_data_loader(batch_size=32)))
    args, kwargs = model._fn_args(batch)
    loss = pyrovi.train.TrainingPlan(model.module)._elbo(*args, n_obs=adata.n_obs, **kwargs)
    loss.backward()
    assert all(p.grad is not None for p in model.module.parameters())
    # files written before the unused dispersion was dropped still load, strictly, to the same model
    state = dict(model.module.state_dict())
    state["log_theta"] = torch.zeros(30)
    state["decoder.log_theta.weight"] = torch.zeros(30, 128)
    state["decoder.log_theta.bias"] = torch.zeros(30)
    fresh = VAE(n_input=30, n_latent=3, gene_likelihood="poisson", dispersion=dispersion)
    fresh.load_state_dict(state, strict=True)
    for key, value in model.module.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_dispersion_prior_with_poisson_is_refused(adata):
    SCVI.setup_anndata(adata)
    with pytest.raises(ValueError, match="no dispersion"):
        SCVI(adata, gene_likelihood="poisson", dispersion_prior=dist.LogNormal(2.0, 1.0))
