"""sample_posterior: shapes, agreement with closed forms and single draws, global sites, errors."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

import pyrovi
from pyrovi._constants import REGISTRY_KEYS
from pyrovi.data import LayerField
from pyrovi.model import SCVI, BaseModelClass
from pyrovi.module.base import CELL_PLATE, BaseModuleClass, trace_pair

N_CELLS, N_GENES, N_LATENT = 150, 30, 3


@pytest.fixture(scope="module")
def scvi():
    """A tiny SCVI with a latent library, so that z, log_library and rho are all sampled."""
    pyrovi.settings.seed = 0
    adata = pyrovi.datasets.synthetic_iid(n_cells=N_CELLS, n_genes=N_GENES, seed=0)
    SCVI.setup_anndata(adata, batch_key="batch")
    model = SCVI(adata, n_latent=N_LATENT, use_observed_lib_size=False)
    model.train(max_epochs=5, progress_bar=False)
    return model


def _guide_scales(model, site, batch_size=64):
    """Scale of the guide's Normal at ``site``, per cell, read off guide traces."""
    out = []
    for batch in model._make_data_loader(batch_size=batch_size):
        args, kwargs = model._fn_args(batch)
        with torch.no_grad():
            out.append(poutine.trace(model.module.guide).get_trace(*args, **kwargs).nodes[site]["fn"].base_dist.scale)
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------------------------------
# SCVI


def test_shapes_and_summaries(scvi):
    pyro.set_rng_seed(0)
    post = scvi.sample_posterior(num_samples=400, batch_size=64)
    assert set(post) == {"z", "log_library", "rho"}  # the observed x is never returned
    expected = {"z": (N_CELLS, N_LATENT), "log_library": (N_CELLS, 1), "rho": (N_CELLS, N_GENES)}
    for site, shape in expected.items():
        assert set(post[site]) == {"mean", "std", "q05", "q50", "q95"}
        for stat, value in post[site].items():
            assert isinstance(value, np.ndarray) and value.shape == shape, (site, stat, value.shape)
        assert (post[site]["q05"] <= post[site]["q50"]).all() and (post[site]["q50"] <= post[site]["q95"]).all()
    np.testing.assert_allclose(post["rho"]["mean"].sum(1), 1.0, rtol=1e-5)

    # the guide is Normal: the mean of the draws is its loc up to Monte Carlo error scale / sqrt(400)
    scale = _guide_scales(scvi, "z")
    z_error = (post["z"]["mean"] - scvi.get_latent_representation()) / (scale / np.sqrt(400))
    assert np.abs(z_error).max() < 5, np.abs(z_error).max()
    # the relative error of a standard deviation from n draws is about 1 / sqrt(2n), 3.5% here
    np.testing.assert_allclose(post["z"]["std"], scale, rtol=0.25)
    np.testing.assert_allclose(post["log_library"]["std"], _guide_scales(scvi, "log_library"), rtol=0.25)


def test_return_samples_layout(scvi):
    draws = scvi.sample_posterior(num_samples=20, indices=np.arange(70), batch_size=32, return_samples=True)
    assert draws["z"].shape == (70, 20, N_LATENT)
    assert draws["log_library"].shape == (70, 20, 1)
    assert draws["rho"].shape == (70, 20, N_GENES)
    np.testing.assert_allclose(draws["rho"].sum(-1), 1.0, rtol=1e-5)
    assert not np.allclose(draws["z"][:, 0], draws["z"][:, 1])  # draws differ
    only_z = scvi.sample_posterior(num_samples=5, return_sites=["z"], summary=["mean"])
    assert set(only_z) == {"z"} and set(only_z["z"]) == {"mean"}


def test_streaming_summaries_equal_summaries_of_samples(scvi):
    kwargs = {"num_samples": 60, "batch_size": 50, "sample_chunk_size": 16}
    pyro.set_rng_seed(3)
    draws = scvi.sample_posterior(return_samples=True, **kwargs)
    pyro.set_rng_seed(3)
    streamed = scvi.sample_posterior(summary=("mean", "std"), **kwargs)  # moments, chunk by chunk
    pyro.set_rng_seed(3)
    quantiles = scvi.sample_posterior(summary=("mean", "q10", "q97.5"), **kwargs)  # keeps the draws
    for site, samples in draws.items():
        np.testing.assert_allclose(streamed[site]["mean"], samples.mean(1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(streamed[site]["std"], samples.std(1), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(quantiles[site]["mean"], samples.mean(1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(quantiles[site]["q10"], np.quantile(samples, 0.1, axis=1), rtol=1e-6)
        np.testing.assert_allclose(quantiles[site]["q97.5"], np.quantile(samples, 0.975, axis=1), rtol=1e-6)


def test_vectorised_draws_match_single_draws(scvi):
    cells, n = np.arange(20), 400
    pyro.set_rng_seed(1)
    vectorised = scvi.sample_posterior(num_samples=n, indices=cells, return_sites=["rho"], summary=("mean", "std"))
    batch = next(iter(scvi._make_data_loader(indices=cells)))
    args, kwargs = scvi._fn_args(batch)
    with torch.no_grad():
        single = torch.stack(
            [trace_pair(scvi.module.model, scvi.module.guide, args, kwargs)[0].nodes["rho"]["value"] for _ in range(n)]
        ).numpy()
    mean, std = vectorised["rho"]["mean"], vectorised["rho"]["std"]
    z_score = (mean - single.mean(0)) / np.sqrt((std**2 + single.var(0)) / n + 1e-12)
    assert np.abs(z_score).max() < 5, np.abs(z_score).max()
    np.testing.assert_allclose(std, single.std(0), rtol=0.3, atol=1e-5)


def test_decoder_broadcasts_over_sample_dimensions(scvi):
    z = torch.randn(4, 6, N_LATENT)
    batch_index = torch.tensor([0, 1, 0, 1, 1, 0])
    with torch.no_grad():
        rho = scvi.module.decoder(z, batch_index)[0]
        one_by_one = torch.stack([scvi.module.decoder(z_s, batch_index)[0] for z_s in z])
    assert rho.shape == (4, 6, N_GENES)
    torch.testing.assert_close(rho, one_by_one)


def test_errors(scvi):
    with pytest.raises(ValueError, match="Unknown sites \\['w'\\].*'z'"):
        scvi.sample_posterior(num_samples=2, return_sites=["z", "w"])
    with pytest.raises(ValueError, match="observed sites"):
        scvi.sample_posterior(num_samples=2, return_sites=["x"])
    for stat in ("median", "q150", "qq5"):
        with pytest.raises(ValueError, match="Unknown summary statistic.*'qNN'"):
            scvi.sample_posterior(num_samples=2, summary=["mean", stat])
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        scvi.sample_posterior(num_samples=0)


# --------------------------------------------------------------------------------------------------
# a model with a global latent site


class _GlobalScaleModule(BaseModuleClass):
    """``sigma ~ LogNormal(0, 1)`` shared by all cells, ``z_n ~ N(0, sigma)``, ``x_n ~ N(z_n w, 1)``.

    The guide's ``z_n`` is ``sigma * mean(x_n)`` up to tiny noise: a local draw that reveals which
    global draw it was made with.
    """

    local_latent_sites = ("z",)

    def __init__(self, n_genes: int):
        super().__init__()
        self.sigma_loc = nn.Parameter(torch.tensor(0.5))
        self.weight = nn.Parameter(torch.linspace(-1.0, 1.0, n_genes))

    def model(self, x, indices=None, n_obs=None, kl_weight=1.0):
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        pyro.deterministic("log_sigma", sigma.log(), event_dim=0)
        with pyro.plate(CELL_PLATE, n_obs or x.shape[0], subsample=indices, dim=-1):
            z = pyro.sample("z", dist.Normal(0.0, sigma))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1) * self.weight, 1.0).to_event(1), obs=x)

    def guide(self, x, indices=None, n_obs=None, kl_weight=1.0):
        sigma = pyro.sample("sigma", dist.LogNormal(self.sigma_loc, 0.5))
        with pyro.plate(CELL_PLATE, n_obs or x.shape[0], subsample=indices, dim=-1):
            pyro.sample("z", dist.Normal(sigma * x.mean(-1), 1e-3))

    @staticmethod
    def _get_fn_args_from_batch(batch):
        return (batch[REGISTRY_KEYS.X_KEY],), {"indices": batch[REGISTRY_KEYS.INDICES_KEY]}


class _GlobalScale(BaseModelClass):
    def __init__(self, adata):
        super().__init__(adata)
        self.module = _GlobalScaleModule(self.summary_stats["n_vars"])

    @classmethod
    def setup_anndata(cls, adata):
        cls._register(adata, {})

    @classmethod
    def _anndata_fields(cls):
        return [LayerField(REGISTRY_KEYS.X_KEY, None, is_count_data=True)]


@pytest.fixture(scope="module")
def global_scale():
    adata = pyrovi.datasets.synthetic_iid(n_cells=N_CELLS, n_genes=N_GENES, seed=0)
    _GlobalScale.setup_anndata(adata)
    return _GlobalScale(adata)


def test_global_site_is_drawn_once_and_shared_by_minibatches(global_scale):
    pyro.set_rng_seed(0)
    # four minibatches (40, 40, 40, 30 cells) and four chunks of draws (64, 64, 64, 8)
    draws = global_scale.sample_posterior(num_samples=200, batch_size=40, sample_chunk_size=64, return_samples=True)
    assert set(draws) == {"sigma", "log_sigma", "z"}
    sigma = draws["sigma"]
    assert sigma.shape == draws["log_sigma"].shape == (200,)
    assert draws["z"].shape == (N_CELLS, 200)
    np.testing.assert_allclose(draws["log_sigma"], np.log(sigma), rtol=1e-5)
    assert np.log(sigma).std() > 0.3 and abs(np.log(sigma).mean() - 0.5) < 0.15  # q(sigma) = LogNormal(0.5, 0.5)
    # every cell, in every minibatch, was drawn with the same global draw s
    x_mean = np.asarray(global_scale.adata.X.mean(1)).reshape(-1)
    np.testing.assert_allclose(draws["z"], x_mean[:, None] * sigma[None, :], atol=1e-2)

    post = global_scale.sample_posterior(num_samples=200, batch_size=40, sample_chunk_size=64)
    assert post["sigma"]["mean"].shape == () and post["z"]["q50"].shape == (N_CELLS,)
    assert post["sigma"]["q05"] < post["sigma"]["q50"] < post["sigma"]["q95"]
