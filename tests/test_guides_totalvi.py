"""Guide families of TOTALVI (issue 22): low-rank Gaussian and normalising-flow guides of q(u | x, y)."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch

import pyrovi
from pyrovi.model import TOTALVI
from pyrovi.module import TOTALVAE
from pyrovi.train import SplitTraceMeanField_ELBO

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOWRANK = {"rank": 2}
FLOW = {"n_flows": 2, "hidden_dims": [16]}


@pytest.fixture(scope="module")
def adata():
    # protein 0 is missing from batch_1's panel: the heads read the masked joint counts too
    ad = pyrovi.datasets.synthetic_citeseq(n_cells=120, n_genes=30, n_proteins=6, seed=1, missing_proteins={1: [0]})
    TOTALVI.setup_anndata(ad, "protein_expression", batch_key="batch")
    return ad


def _seeded(fn, *args, **kwargs):
    """``fn`` called under fixed seeds (the flow's posterior mean is a Monte Carlo estimate)."""
    pyro.set_rng_seed(0)
    return fn(*args, **kwargs)


@pytest.mark.parametrize(
    ("guide", "kwargs", "latent_distribution"),
    [("normal", None, "normal"), ("lowrank", LOWRANK, "normal"), ("flow", FLOW, "normal"),
     ("lowrank", LOWRANK, "ln"), ("flow", FLOW, "ln")],
)
def test_queries_are_finite_and_save_load_is_exact(adata, guide, kwargs, latent_distribution, tmp_path):
    pyro.set_rng_seed(0)
    model = TOTALVI(adata, n_latent=3, n_hidden=16, guide=guide, guide_kwargs=kwargs,
                    latent_distribution=latent_distribution)
    model.train(max_epochs=2, batch_size=60, progress_bar=False)
    assert model.module.guide_family == guide
    z = _seeded(model.get_latent_representation)
    draw = model.get_latent_representation(give_mean=False)
    mean, var = model.get_latent_representation(return_dist=True)
    n_base = 3 if latent_distribution == "normal" else 2
    assert z.shape == draw.shape == (120, 3) and mean.shape == var.shape == (120, n_base)
    assert np.isfinite(z).all() and np.isfinite(draw).all() and np.isfinite(mean).all() and (var > 0).all()
    if latent_distribution == "ln":  # proportions on the simplex
        np.testing.assert_allclose(z.sum(1), 1.0, rtol=1e-5)
    rna, proteins = model.get_normalized_expression(n_samples=2, return_numpy=True)
    foreground = model.get_protein_foreground_probability(n_samples=2, return_numpy=True)
    assert rna.shape == (120, 30) and proteins.shape == foreground.shape == (120, 6)
    assert np.isfinite(rna).all() and np.isfinite(proteins).all()
    assert ((foreground >= 0) & (foreground <= 1)).all()
    marginal_ll = model.get_marginal_ll(n_mc_samples=5)
    assert np.isfinite(marginal_ll) and np.isfinite(model.get_elbo())

    model.save(tmp_path, overwrite=True)
    loaded = TOTALVI.load(tmp_path, adata=adata)
    assert loaded.module.guide_family == guide and loaded.module.guide_kwargs == model.module.guide_kwargs
    before, after = model.module.state_dict(), loaded.module.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k].cpu(), after[k].cpu()) for k in before)
    np.testing.assert_array_equal(_seeded(loaded.get_latent_representation), z)


@pytest.mark.parametrize(("guide", "kwargs"), [("lowrank", {"rank": 3}), ("flow", FLOW)])
def test_the_richer_heads_start_at_the_mean_field_guide(guide, kwargs):
    """Zero-initialised heads: q(u | x, y) is the encoder's Normal until training moves them."""
    pyro.set_rng_seed(0)
    module = TOTALVAE(n_input_genes=20, n_input_proteins=5, n_latent=3, guide=guide, guide_kwargs=kwargs).eval()
    rna, proteins = torch.poisson(torch.full((4, 20), 2.0)), torch.poisson(torch.full((4, 5), 20.0))
    batch = torch.zeros(4, 1, dtype=torch.long)
    q = module.latent_posterior(rna, proteins, batch)
    loc, scale = module.latent_params(rna, proteins, batch)
    u = q.rsample((5,))
    expected = torch.distributions.Normal(loc, scale).log_prob(u).sum(-1)
    torch.testing.assert_close(q.log_prob(u), expected, atol=1e-5, rtol=1e-5)
    if guide == "lowrank":
        cov = q.covariance_matrix
        torch.testing.assert_close(cov, torch.diag_embed(scale.square()))


def test_a_trained_lowrank_guide_is_correlated_and_its_monte_carlo_kl_adds_up(adata):
    """After training the low-rank factor is non-zero; the ELBO's KL of z is the sampled log q - log p."""
    pyro.set_rng_seed(0)
    model = TOTALVI(adata, n_latent=3, n_hidden=16, guide="lowrank", guide_kwargs={"rank": 1})
    model.train(max_epochs=3, batch_size=60, progress_bar=False)
    module = model.module.eval()
    batch = next(iter(model._make_data_loader(adata, batch_size=32)))
    args, kwargs = module._get_fn_args_from_batch(batch)
    q = module.latent_posterior(*args, kwargs["batch_index"])
    off_diagonal = q.covariance_matrix - torch.diag_embed(q.variance)
    assert off_diagonal.abs().max() > 1e-4  # the mean field has none
    elbo = SplitTraceMeanField_ELBO()
    loss = elbo.differentiable_loss(module.model, module.guide, *args, **kwargs)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, sum(elbo.last_terms), rtol=1e-5, atol=1e-3)


def test_a_richer_guide_trains_with_vectorised_particles(adata):
    pyro.set_rng_seed(0)
    model = TOTALVI(adata, n_latent=3, n_hidden=16, guide="flow", guide_kwargs=FLOW)
    model.train(max_epochs=1, batch_size=60, progress_bar=False, plan_kwargs={"objective": "iwelbo", "num_particles": 3})
    assert np.isfinite(model.history["elbo_train"].to_numpy()).all()
    assert all(torch.isfinite(p).all() for p in model.module.z_guide_head.parameters())


def test_minified_lowrank_model_keeps_its_posterior_means(adata):
    """Minified data keep the guide's mean and marginal variances: the latent means are unchanged."""
    pyro.set_rng_seed(0)
    model = TOTALVI(adata.copy(), n_latent=3, n_hidden=16, guide="lowrank")
    model.train(max_epochs=2, batch_size=60, progress_bar=False)
    z = model.get_latent_representation()
    model.minify_adata()
    assert model.minified_data_type == "latent_posterior_parameters"
    np.testing.assert_array_equal(model.get_latent_representation(), z)
    rna, proteins = model.get_normalized_expression(n_samples=2, return_numpy=True)
    assert np.isfinite(rna).all() and np.isfinite(proteins).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"guide": "fullrank"}, "is not one of"),
        ({"guide": "lowrank", "guide_kwargs": {"rank": 0}}, "rank"),
        ({"guide": "lowrank", "guide_kwargs": {"rank": 4}}, "latent dimension 3"),
        ({"guide": "lowrank", "guide_kwargs": {"n_flows": 2}}, "not options"),
        ({"guide": "flow", "guide_kwargs": {"n_flows": 0}}, "n_flows"),
        ({"guide": "flow", "guide_kwargs": [1]}, "dict"),
        ({"guide": "flow", "n_latent": 2, "latent_distribution": "ln"}, "at least 2 dimensions"),
    ],
)
def test_bad_guide_arguments_are_refused_clearly(adata, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        TOTALVI(adata, **{"n_latent": 3, **kwargs})
