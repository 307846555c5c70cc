"""The SVI training plan: KL warm-up, full-data ELBO scaling and its agreement with per-cell terms."""

import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from pyrovi.module import VAE
from pyrovi.module.base import per_cell_elbo_terms, per_cell_log_weights, trace_pair
from pyrovi.train import TrainingPlan
from pyrovi.train._trainingplan import _kl_weight


def _batch(n=32, g=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(n, g, generator=gen) * 10)
    return {
        "X": x,
        "batch": torch.randint(0, 2, (n,), generator=gen),
        "indices": torch.arange(n),
    }


def test_kl_weight_warms_up_linearly_and_stays_positive():
    assert _kl_weight(0, 0, 10, None, 0.0, 1.0) > 0  # Pyro needs a positive scale
    assert _kl_weight(0, 0, 10, None, 0.0, 1.0) < 1e-6
    assert _kl_weight(5, 999, 10, None, 0.0, 1.0) == pytest.approx(0.5)
    assert _kl_weight(50, 0, 10, None, 0.0, 1.0) == 1.0
    assert _kl_weight(3, 25, 10, 100, 0.0, 1.0) == pytest.approx(0.25)  # steps take precedence
    assert _kl_weight(3, 0, None, None, 0.0, 1.0) == 1.0


def test_subsampled_plate_scales_minibatch_elbo_to_the_full_data():
    torch.manual_seed(0)
    vae = VAE(n_input=40, n_batch=2).eval()
    args, kwargs = VAE._get_fn_args_from_batch(_batch())
    elbo = TraceMeanField_ELBO()(vae.model, vae.guide)
    losses = []
    for n_obs in (32, 320):
        pyro.set_rng_seed(1)
        losses.append(elbo(*args, n_obs=n_obs, **kwargs).item())
    assert losses[1] == pytest.approx(10 * losses[0], rel=1e-5)


def test_per_cell_terms_add_up_to_the_pyro_elbo():
    torch.manual_seed(0)
    vae = VAE(n_input=40, n_batch=2, use_observed_lib_size=False,
              library_log_means=[5.0, 5.0], library_log_vars=[0.5, 0.5]).eval()
    args, kwargs = VAE._get_fn_args_from_batch(_batch())
    pyro.set_rng_seed(3)
    loss = TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, *args, **kwargs).item()
    pyro.set_rng_seed(3)
    terms = per_cell_elbo_terms(*trace_pair(vae.model, vae.guide, args, kwargs))
    assert terms["elbo"].shape == (32,)
    assert -terms["elbo"].sum().item() == pytest.approx(loss, rel=1e-5)
    assert bool((terms["kl_local"] > 0).all())
    # the importance weight of a draw averages to the ELBO: Monte Carlo KL agrees with the analytic KL
    draws = [trace_pair(vae.model, vae.guide, args, kwargs) for _ in range(300)]
    mc = torch.stack([per_cell_log_weights(*d) for d in draws]).mean(0)
    analytic = torch.stack([per_cell_elbo_terms(*d)["elbo"] for d in draws]).mean(0)
    assert mc.mean().item() == pytest.approx(analytic.mean().item(), rel=0.005)


def test_warmup_scales_local_latents_in_model_and_guide():
    torch.manual_seed(0)
    vae = VAE(n_input=40).eval()
    args, kwargs = VAE._get_fn_args_from_batch(_batch())
    elbo = TraceMeanField_ELBO()
    pyro.set_rng_seed(2)
    full = elbo.differentiable_loss(vae.model, vae.guide, *args, **kwargs).item()
    pyro.set_rng_seed(2)
    half = elbo.differentiable_loss(vae.model, vae.guide, *args, kl_weight=0.5, **kwargs).item()
    pyro.set_rng_seed(2)
    terms = per_cell_elbo_terms(*trace_pair(vae.model, vae.guide, args, kwargs))
    kl = terms["kl_local"].sum().item()
    assert full - half == pytest.approx(0.5 * kl, rel=1e-4)


def test_plan_returns_the_per_cell_loss_and_builds_adam():
    torch.manual_seed(0)
    vae = VAE(n_input=40, n_batch=2)
    plan = TrainingPlan(vae, lr=2e-3, n_epochs_kl_warmup=None)
    plan.n_obs_training = 1000
    batch = _batch()
    pyro.set_rng_seed(5)
    loss = plan._loss(batch, 1000, 1.0)
    args, kwargs = VAE._get_fn_args_from_batch(batch)
    pyro.set_rng_seed(5)
    reference = TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, *args, n_obs=1000, **kwargs)
    assert loss.item() == pytest.approx(reference.item() / 1000, rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in vae.z_encoder.parameters())
    opt = plan.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["lr"] == 2e-3 and opt.param_groups[0]["eps"] == 0.01
    sched = TrainingPlan(vae, reduce_lr_on_plateau=True).configure_optimizers()
    assert sched["lr_scheduler"]["monitor"] == "elbo_validation"
    with pytest.raises(ValueError, match="optimizer"):
        TrainingPlan(vae, optimizer="SGD-with-typo").configure_optimizers()
