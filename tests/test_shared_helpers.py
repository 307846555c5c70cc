"""The helpers of issue 18: the cell plate, the library prior, one likelihood convention, lazy PPC draws."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import pyrovi
from pyrovi._checks import check_int
from pyrovi.criticism._rng import replaying, rng_state
from pyrovi.module.base import cell_plate, library_prior, observed_library, register_library_prior
from pyrovi.module.distributions import COUNT_LIKELIHOODS, LikelihoodInputs, gene_likelihood


def test_cell_plate_scales_a_minibatch_to_the_data_set():
    def model():
        with cell_plate(4, torch.arange(4), n_obs=100):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.zeros(4))

    site = poutine.trace(model).get_trace().nodes["x"]
    assert site["scale"] == pytest.approx(25.0)
    with cell_plate(3) as rows:  # a query: the minibatch is the data set
        assert rows.tolist() == [0, 1, 2]


def test_library_helpers():
    module = torch.nn.Module()
    with pytest.raises(ValueError, match="latent library needs"):
        register_library_prior(module, None, np.ones(2))
    register_library_prior(module, np.array([1.0, 2.0]), np.array([4.0, 9.0]))
    prior = library_prior(module, torch.tensor([1, 1, 0]))
    assert prior.base_dist.loc.squeeze(-1).tolist() == [2.0, 2.0, 1.0]
    assert prior.base_dist.scale.squeeze(-1).tolist() == [3.0, 3.0, 2.0]
    assert observed_library(torch.ones(2, 3), torch.tensor([5.0, 6.0])).tolist() == [[5.0], [6.0]]


def test_callables_get_the_mean_and_built_ins_the_log_mean():
    library, log_rho = torch.tensor([[3.0], [7.0]]), torch.log_softmax(torch.randn(2, 5), -1)
    inputs = LikelihoodInputs(library, log_rho.exp(), torch.full((2, 5), 2.0), torch.zeros(2, 5), log_rho=log_rho)
    seen = {}

    def mine(mu, theta, zi_logits):
        seen.update(mu=mu, theta=theta, zi_logits=zi_logits)
        return dist.Poisson(mu)

    gene_likelihood(mine, inputs)
    assert torch.equal(seen["mu"], library * log_rho.exp()) and seen["theta"] is inputs.theta
    assert torch.equal(inputs.log_mu, log_rho + torch.log(library + 1e-8))
    x = torch.poisson(torch.full((2, 5), 1.0))
    for name in COUNT_LIKELIHOODS:
        d = gene_likelihood(name, inputs)
        assert d.batch_shape == (2, 5) and torch.isfinite(d.log_prob(x)).all()
    # no log-space input: the log mean is log(mu + eps), as for TOTALVAE's softmax decoder
    linear = LikelihoodInputs(library, log_rho.exp(), inputs.theta, None)
    assert torch.equal(linear.log_mu, torch.log(linear.mu + 1e-8))


def test_check_int_wording():
    with pytest.raises(ValueError, match="^n_hidden must be a positive integer, got 0.$"):
        check_int("n_hidden", 0, expected="a positive integer")
    with pytest.raises(ValueError, match="^k must be an integer >= 1, got 2.0.$"):
        check_int("k", 2.0)


def test_replaying_gives_the_draws_of_the_saved_state():
    state = rng_state()
    first = torch.rand(3)
    mine = torch.rand(1)
    torch.set_rng_state(state["torch"])
    torch.rand(3)
    with replaying(state):  # the stream moved on: the block replays, the caller's stream is kept
        again = torch.rand(3)
    assert torch.equal(again, first) and torch.equal(torch.rand(1), mine)
    state = rng_state()
    with replaying(state):  # nothing drew since: the block continues the stream
        block = torch.rand(2)
    after = torch.rand(1)
    torch.set_rng_state(state["torch"])
    assert torch.equal(torch.rand(2), block) and torch.equal(torch.rand(1), after)


def test_posterior_predictive_check_draws_on_first_use():
    adata = pyrovi.datasets.synthetic_iid(n_cells=60, n_genes=20, seed=0)
    pyrovi.model.SCVI.setup_anndata(adata)
    model = pyrovi.model.SCVI(adata, n_latent=2, n_hidden=8)
    model.train(max_epochs=1, batch_size=30, enable_progress_bar=False)
    pyrovi.settings.seed = 5
    eager = pyrovi.criticism.PosteriorPredictiveCheck(adata, {"m": model}, n_samples=3).draw()
    pyrovi.settings.seed = 5
    lazy = pyrovi.criticism.PosteriorPredictiveCheck(adata, {"m": model}, n_samples=3)
    assert lazy._replicates is None  # construction sampled nothing
    torch.rand(100), np.random.rand(10)  # other random draws in between change nothing
    for key in eager.keys:
        np.testing.assert_array_equal(lazy.replicates[key], eager.replicates[key])
