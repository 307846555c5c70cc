"""Guide families of the VAE models (issue 22): low-rank Gaussian and normalising-flow guides."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch

import pyrovi
from pyrovi.model import SCANVI, SCVI
from pyrovi.module import VAE

FAMILIES = [("normal", None), ("lowrank", {"rank": 2}), ("flow", {"n_flows": 2, "hidden_dims": [16]})]


@pytest.fixture(scope="module")
def adata():
    ad = pyrovi.datasets.synthetic_iid(n_cells=120, n_genes=30, seed=1)
    SCVI.setup_anndata(ad, batch_key="batch", labels_key="labels")
    return ad


@pytest.mark.parametrize(("guide", "kwargs"), FAMILIES)
def test_queries_shapes_finite_and_save_load_exact(adata, guide, kwargs, tmp_path):
    pyro.set_rng_seed(0)
    model = SCVI(adata, n_latent=3, n_hidden=16, guide=guide, guide_kwargs=kwargs)
    model.train(max_epochs=2, batch_size=60)
    z = model.get_latent_representation()
    mean, var = model.get_latent_representation(return_dist=True)
    draw = model.get_latent_representation(give_mean=False)
    assert z.shape == mean.shape == var.shape == draw.shape == (120, 3)
    assert np.isfinite(z).all() and np.isfinite(draw).all() and (var > 0).all()
    assert np.isfinite(model.get_elbo()) and np.isfinite(model.get_marginal_ll(n_mc_samples=10))
    assert np.isfinite(model.get_normalized_expression().to_numpy()).all()
    model.save(tmp_path, overwrite=True)
    loaded = SCVI.load(tmp_path, adata=adata)
    assert loaded.module.guide_family == guide
    before, after = model.module.state_dict(), loaded.module.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k].cpu(), after[k].cpu()) for k in before)
    if guide != "flow":  # the flow's mean is a Monte Carlo estimate; its parameters are compared above
        np.testing.assert_array_equal(loaded.get_latent_representation(), z)


def test_lowrank_mean_is_loc_and_variance_is_marginal():
    vae = VAE(n_input=20, n_latent=4, guide="lowrank", guide_kwargs={"rank": 3})
    torch.nn.init.normal_(vae.z_guide_head.factor.weight)
    vae.eval()
    q = vae.latent_posterior(torch.poisson(torch.full((5, 20), 2.0)))
    cov = q.covariance_matrix
    assert torch.allclose(q.mean, q.loc)
    assert torch.allclose(q.scale.square(), torch.diagonal(cov, dim1=-2, dim2=-1), rtol=1e-5)
    assert cov[..., 0, 1].abs().max() > 0  # correlated, unlike the mean field


def test_flow_starts_as_the_mean_field_guide_and_log_prob_is_exact():
    pyro.set_rng_seed(0)
    vae = VAE(n_input=20, n_latent=3, guide="flow").eval()
    x = torch.poisson(torch.full((4, 20), 2.0))
    q = vae.latent_posterior(x)
    loc, scale = vae.latent_params(x)
    u = q.rsample()
    expected = torch.distributions.Normal(loc, scale).log_prob(u).sum(-1)
    assert torch.allclose(q.log_prob(u), expected, atol=1e-5)  # zero-initialised flows are the identity


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"guide": "fullrank"}, "is not one of"),
        ({"guide": "lowrank", "guide_kwargs": {"rank": 0}}, "rank"),
        ({"guide": "lowrank", "guide_kwargs": {"n_flows": 2}}, "not options"),
        ({"guide": "flow", "guide_kwargs": {"n_flows": 0}}, "n_flows"),
        ({"guide": "flow", "guide_kwargs": {"hidden_dims": [0]}}, "hidden_dims"),
        ({"guide": "flow", "guide_kwargs": [1]}, "dict"),
    ],
)
def test_bad_guide_arguments_are_refused_clearly(adata, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        SCVI(adata, **kwargs)


def test_scanvi_refuses_a_richer_guide():
    ad = pyrovi.datasets.synthetic_iid(n_cells=60, n_genes=20, seed=2)
    SCANVI.setup_anndata(ad, labels_key="labels", unlabeled_category="none", batch_key="batch")
    with pytest.raises(ValueError, match="guide='normal' only"):
        SCANVI(ad, guide="lowrank")
