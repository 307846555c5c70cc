"""Training objectives (issue 22): the ELBO, the importance-weighted bound and Rényi's α bound."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, Trace_ELBO

import pyrovi
from pyrovi.model import SCANVI, SCVI
from pyrovi.module import VAE
from pyrovi.module.priors import HierarchicalNormal
from pyrovi.train import SplitTraceMeanField_ELBO, TrainingPlan
from pyrovi.train._renyi_elbo import CellRenyiELBO

TRAIN = {"max_epochs": 8, "check_val_every_n_epoch": 1, "batch_size": 128}


@pytest.fixture(scope="module")
def adata():
    data = pyrovi.datasets.synthetic_iid(n_cells=300, n_genes=40, seed=1)
    SCVI.setup_anndata(data, batch_key="batch")
    return data


@pytest.fixture(scope="module")
def fitted(adata):
    pyro.set_rng_seed(0)
    model = SCVI(adata, n_latent=4, n_hidden=32)
    model.train(max_epochs=15, batch_size=128, plan_kwargs={"n_epochs_kl_warmup": None})
    return model


def _minibatch(adata, n=64):
    x = torch.as_tensor(np.asarray(adata.X[:n].todense()), dtype=torch.float32)
    batch = torch.as_tensor(adata.obs["batch"].cat.codes.to_numpy()[:n, None].copy(), dtype=torch.long)
    return (x,), {"batch_index": batch, "indices": torch.arange(n), "n_obs": n}


def test_the_importance_weighted_bound_is_above_the_elbo(fitted, adata):
    """log p(x) >= IWELBO_50 >= ELBO: mean over 20 estimates each, fixed seed; the gap exceeds 4 standard errors."""
    module = fitted.module.eval()
    args, kwargs = _minibatch(adata)
    pyro.set_rng_seed(0)
    iw = np.array([CellRenyiELBO(alpha=0.0, num_particles=50).loss(module.model, module.guide, *args, **kwargs)
                   for _ in range(20)])
    elbo = np.array([Trace_ELBO().loss(module.model, module.guide, *args, **kwargs) for _ in range(20)])
    gap = elbo.mean() - iw.mean()  # losses: the negative bounds
    se = np.sqrt(iw.var(ddof=1) / 20 + elbo.var(ddof=1) / 20)
    assert gap > 4 * se, (gap, se)
    # with one particle the importance-weighted bound is the ELBO (same expectation, within 4 standard errors)
    one = np.array([CellRenyiELBO(alpha=0.0, num_particles=1).loss(module.model, module.guide, *args, **kwargs)
                    for _ in range(20)])
    assert abs(one.mean() - elbo.mean()) < 4 * np.sqrt(one.var(ddof=1) / 20 + elbo.var(ddof=1) / 20)
    # Renyi's bound lies between: alpha = 0.5 is looser than alpha = 0 and tighter than the ELBO
    renyi = np.array([CellRenyiELBO(alpha=0.5, num_particles=50).loss(module.model, module.guide, *args, **kwargs)
                      for _ in range(20)])
    assert iw.mean() < renyi.mean() < elbo.mean()


@pytest.mark.parametrize(
    ("objective", "extra"),
    [("elbo", {"num_particles": 4}), ("iwelbo", {"num_particles": 8}), ("renyi", {"num_particles": 8, "alpha": 0.5})],
)
def test_training_with_each_objective_raises_the_held_out_log_likelihood(adata, objective, extra):
    pyro.set_rng_seed(0)
    model = SCVI(adata, n_latent=4, n_hidden=32)
    cells = np.arange(200, 300)
    untrained = model.get_marginal_ll(indices=cells, n_mc_samples=20)
    model.train(**TRAIN, plan_kwargs={"objective": objective, **extra})
    trained = model.get_marginal_ll(indices=cells, n_mc_samples=20)
    assert trained > untrained + 5.0, (untrained, trained)  # nats per cell
    history = model.history["elbo_train"].to_numpy().ravel()
    assert np.isfinite(history).all() and history[-1] < history[0]  # the bound being optimised rises


def test_the_particles_are_one_vectorised_pass():
    vae = VAE(n_input=20, n_latent=3)
    x, idx = torch.poisson(torch.full((6, 20), 2.0)), torch.arange(6)
    calls = []

    def guide(*args, **kwargs):
        calls.append(1)
        return vae.guide(*args, **kwargs)

    bound = CellRenyiELBO(num_particles=8)
    bound.differentiable_loss(vae.model, guide, x, indices=idx, n_obs=6)  # the first call also guesses the nesting
    calls.clear()
    bound.differentiable_loss(vae.model, guide, x, indices=idx, n_obs=6)
    assert len(calls) == 1 and bound.max_plate_nesting == 2
    _, guide_trace = bound._get_vectorized_trace(vae.model, vae.guide, (x,), {"indices": idx, "n_obs": 6})
    assert tuple(guide_trace.nodes["z"]["value"].shape) == (8, 6, 3)


def test_the_particles_share_one_draw_of_the_global_latents():
    vae = VAE(n_input=20, n_latent=3, prior=HierarchicalNormal(), dispersion_prior=pyro.distributions.LogNormal(2.0, 1.0))
    x, idx = torch.poisson(torch.full((6, 20), 2.0)), torch.arange(6)
    bound = CellRenyiELBO(num_particles=5)
    loss = bound.differentiable_loss(vae.model, vae.guide, x, indices=idx, n_obs=60)
    assert torch.isfinite(loss)
    loss.backward()  # the global guide's parameters get a gradient through the shared draw
    _, guide_trace = bound._get_vectorized_trace(vae.model, vae.guide, (x,), {"indices": idx, "n_obs": 60})
    for name in ("prior_scale", "dispersion"):
        value = guide_trace.nodes[name]["value"]
        assert value.shape[0] == 5 and torch.equal(value, value[:1].expand_as(value)), name
    z = guide_trace.nodes["z"]["value"]
    assert not torch.equal(z[0], z[1])  # the local draws differ between particles


@pytest.mark.parametrize("guide", ["lowrank", "flow"])
def test_richer_guides_train_with_the_importance_weighted_bound(adata, guide):
    pyro.set_rng_seed(0)
    model = SCVI(adata, n_latent=4, n_hidden=32, guide=guide)
    model.train(max_epochs=2, batch_size=128, plan_kwargs={"objective": "iwelbo", "num_particles": 4})
    assert np.isfinite(model.history["elbo_train"].to_numpy()).all()


def test_the_default_objective_is_the_default_estimator():
    plan = TrainingPlan(VAE(n_input=10))
    assert type(plan.loss) is SplitTraceMeanField_ELBO and plan.loss.num_particles == 1
    plan = TrainingPlan(VAE(n_input=10), num_particles=3)
    assert plan.loss.num_particles == 3 and plan.loss.vectorize_particles
    plan = TrainingPlan(VAE(n_input=10), objective="iwelbo", num_particles=8)
    assert isinstance(plan.loss, CellRenyiELBO) and plan.loss.alpha == 0 and plan.loss.num_particles == 8
    plan = TrainingPlan(VAE(n_input=10), objective="renyi", num_particles=8)
    assert plan.loss.alpha == 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"objective": "iwae"}, "objective must be one of"),
        ({"objective": "iwelbo", "num_particles": 0}, "num_particles"),
        ({"objective": "renyi", "alpha": 1.0, "num_particles": 4}, "alpha=1 is the ELBO"),
        ({"objective": "iwelbo", "alpha": 0.5}, "objective='renyi' too"),
        ({"objective": "iwelbo", "loss": Trace_ELBO()}, "both given"),
        ({"objective": "iwelbo", "loss": TraceEnum_ELBO(max_plate_nesting=1)}, "discrete latent"),
        ({"loss": Trace_ELBO(), "num_particles": 4}, "on the loss itself"),
    ],
)
def test_bad_objective_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainingPlan(VAE(n_input=10), **kwargs)


def test_scanvi_refuses_the_importance_weighted_bound():
    data = pyrovi.datasets.synthetic_iid(n_cells=100, n_genes=20)
    SCANVI.setup_anndata(data, labels_key="labels", unlabeled_category="unknown", batch_key="batch")
    model = SCANVI(data, n_latent=3, n_hidden=16)
    with pytest.raises(ValueError, match="discrete latent"):
        model.train(max_epochs=1, plan_kwargs={"objective": "iwelbo", "num_particles": 4})


def test_a_model_trained_with_the_bound_saves_and_loads(adata, tmp_path):
    pyro.set_rng_seed(0)
    model = SCVI(adata, n_latent=4, n_hidden=32)
    model.train(max_epochs=2, batch_size=128, plan_kwargs={"objective": "iwelbo", "num_particles": 4})
    model.save(tmp_path / "iw", overwrite=True)
    loaded = SCVI.load(tmp_path / "iw", adata=adata)
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-5)
    # plan arguments are not saved: the loaded model trains again with any objective
    loaded.train(max_epochs=1, batch_size=128, plan_kwargs={"objective": "renyi", "num_particles": 2})
