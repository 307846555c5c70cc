"""Latent priors, priors on global parameters and custom likelihoods: one argument, a consistent model."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam

import pyrovi
from pyrovi.model import SCVI
from pyrovi.module.base import make_global_guide, per_cell_elbo_terms, per_cell_log_weights, trace_pair
from pyrovi.priors import (
    HierarchicalNormal,
    LatentPrior,
    MixtureOfGaussians,
    Normal,
    StandardNormal,
    StudentT,
    VampPrior,
)


@pytest.fixture(scope="module")
def adata():
    data = pyrovi.datasets.synthetic_iid(n_cells=200, n_genes=40, seed=3)
    SCVI.setup_anndata(data, batch_key="batch")
    return data


PRIORS = {
    "standard_normal": lambda: StandardNormal(),
    "normal": lambda: Normal(scale=2.0),
    "student_t": lambda: StudentT(df=4.0),
    "mixture_of_gaussians": lambda: MixtureOfGaussians(3),
    "vamp": lambda: VampPrior(n_pseudo_inputs=8),
    "hierarchical_half_cauchy": lambda: HierarchicalNormal("half_cauchy"),
    "hierarchical_log_normal": lambda: HierarchicalNormal("log_normal"),
}


@pytest.mark.parametrize("make_prior", list(PRIORS.values()), ids=list(PRIORS))
def test_each_builtin_prior_trains_and_round_trips(adata, make_prior, tmp_path):
    pyrovi.settings.seed = 0
    model = SCVI(adata, n_latent=3, gene_likelihood="nb", prior=make_prior())
    model.train(max_epochs=15, progress_bar=False, plan_kwargs={"n_epochs_kl_warmup": 3, "lr": 5e-3})
    val = model.history["elbo_validation"]["elbo_validation"]
    assert val.iloc[-1] < val.iloc[0] - 5, val.to_numpy()
    model.save(tmp_path / "m")
    loaded = SCVI.load(tmp_path / "m", adata)
    assert type(loaded.module.prior) is type(model.module.prior)
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    for key, value in model.module.state_dict().items():
        assert torch.equal(value, loaded.module.state_dict()[key]), key


def test_monte_carlo_and_analytic_elbo_agree_for_a_normal_prior(adata):
    """Analytic KL(q || p) (TraceMeanField) and its Monte Carlo estimate log q(z) - log p(z) (Trace_ELBO)
    have the same expectation: on the same draws, only the KL estimator differs."""
    pyrovi.settings.seed = 0
    model = SCVI(adata, n_latent=3, prior=Normal(scale=1.5))
    module = model.module.eval()
    args, kwargs = model._fn_args(next(iter(model._make_data_loader(batch_size=64))))
    with torch.no_grad():
        draws = [trace_pair(module.model, module.guide, args, kwargs) for _ in range(300)]
        analytic = torch.stack([per_cell_elbo_terms(*d)["elbo"] for d in draws]).mean(0)
        mc = torch.stack([per_cell_log_weights(*d) for d in draws]).mean(0)
        # and Pyro's two estimators of the whole minibatch ELBO agree too
        pyro_analytic = np.mean([TraceMeanField_ELBO().loss(module.model, module.guide, *args, **kwargs) for _ in range(50)])
        pyro_mc = np.mean([Trace_ELBO().loss(module.model, module.guide, *args, **kwargs) for _ in range(50)])
    assert mc.mean().item() == pytest.approx(analytic.mean().item(), rel=2e-3)
    assert pyro_mc == pytest.approx(pyro_analytic, rel=5e-3)


def test_mean_field_elbo_falls_back_to_monte_carlo_without_analytic_kl(adata):
    module = SCVI(adata, n_latent=3, prior=StudentT(df=3.0)).module.eval()
    args, kwargs = module._get_fn_args_from_batch(next(iter(SCVI(adata)._make_data_loader(batch_size=32))))
    with torch.no_grad():
        loss = TraceMeanField_ELBO().loss(module.model, module.guide, *args, **kwargs)
        terms = per_cell_elbo_terms(*trace_pair(module.model, module.guide, args, kwargs))
    assert np.isfinite(loss)
    assert torch.isfinite(terms["kl_local"]).all()


def test_hierarchical_normal_recovers_per_dimension_scales():
    """With z observed (simulated N(0, diag(s^2)) data), the inferred scales match s within 10%."""
    pyro.set_rng_seed(0)
    true_scales = torch.tensor([0.3, 1.0, 2.0, 4.0])
    z = dist.Normal(0.0, true_scales).sample((3000,))
    prior = HierarchicalNormal("log_normal", hyper_scale=2.0)
    prior.setup(4, module=None)

    def model(z_obs):
        p_z = prior(len(z_obs))
        with pyro.plate("cells", len(z_obs)):
            pyro.sample("z", p_z, obs=z_obs)

    guide = make_global_guide(lambda *_: prior(2), ["prior_scale"], "normal")
    svi = SVI(model, guide, Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(1500):
        svi.step(z)
    with torch.no_grad():
        estimate = torch.stack([guide()["prior_scale"] for _ in range(200)]).mean(0)
    np.testing.assert_allclose(estimate.numpy(), true_scales.numpy(), rtol=0.1)


def test_global_sites_get_a_guide_and_are_returned_by_sample_posterior(adata):
    pyrovi.settings.seed = 0
    model = SCVI(adata, n_latent=3, prior=HierarchicalNormal(), dispersion_prior=dist.LogNormal(2.0, 1.0),
                 gene_likelihood="nb")
    assert model.module.global_sites == ("prior_scale", "dispersion")
    model.train(max_epochs=5, progress_bar=False)
    draws = model.sample_posterior(num_samples=30, return_sites=["prior_scale", "dispersion"], return_samples=True)
    assert draws["prior_scale"].shape == (30, 3)
    assert draws["dispersion"].shape == (30, 40)
    assert (draws["dispersion"] > 0).all()
    assert np.std(draws["dispersion"], axis=0).mean() > 0  # a posterior, not a point estimate


def test_map_and_custom_global_guides(adata):
    delta = SCVI(adata, n_latent=2, prior=HierarchicalNormal(), global_guide="delta")
    assert type(delta.module.global_guide).__name__ == "AutoDelta"
    lowrank = SCVI(adata, n_latent=2, prior=HierarchicalNormal(),
                   global_guide=lambda m: pyro.infer.autoguide.AutoLowRankMultivariateNormal(m, rank=1))
    lowrank.train(max_epochs=2, progress_bar=False)
    assert np.isfinite(lowrank.history["elbo_train"].to_numpy()).all()


def test_gene_batch_dispersion_prior_has_batch_rows(adata):
    model = SCVI(adata, n_latent=2, dispersion="gene-batch", dispersion_prior=dist.Gamma(2.0, 0.5))
    model.train(max_epochs=2, progress_bar=False)
    draws = model.sample_posterior(num_samples=5, return_sites=["dispersion"], return_samples=True)
    assert draws["dispersion"].shape == (5, 2, 40)
    with pytest.raises(ValueError, match="positive"):
        SCVI(adata, dispersion_prior=dist.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="gene-cell"):
        SCVI(adata, dispersion="gene-cell", dispersion_prior=dist.LogNormal(0.0, 1.0))


def test_callable_likelihood_trains_and_drives_the_posterior_predictive(adata, tmp_path):
    calls = []

    def gamma_poisson(mu, theta, zi_logits):
        calls.append(mu.shape)
        return dist.GammaPoisson(theta, theta / mu)

    model = SCVI(adata, n_latent=2, gene_likelihood=gamma_poisson)
    model.train(max_epochs=3, progress_bar=False)
    assert np.isfinite(model.history["elbo_validation"].to_numpy()).all()
    n_calls = len(calls)
    x_rep = model.posterior_predictive_sample(indices=np.arange(10), n_samples=2)
    assert len(calls) > n_calls and x_rep.shape == (10, 40, 2)
    assert np.allclose(x_rep, np.round(x_rep)) and (x_rep >= 0).all()
    model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="gene_likelihood=..."):
        SCVI.load(tmp_path / "m", adata)
    loaded = SCVI.load(tmp_path / "m", adata, gene_likelihood=gamma_poisson)
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    with pytest.raises(ValueError, match="batch shape"):
        SCVI(adata, gene_likelihood=lambda mu, theta, zi: dist.Poisson(mu).to_event(1))


class _ShiftedNormal(LatentPrior):
    """A user-defined prior with a learnable per-batch shift."""

    def setup(self, n_latent, module):
        super().setup(n_latent, module)
        self.shift = torch.nn.Parameter(torch.zeros(module.n_batch, n_latent))

    def forward(self, n_cells, batch_index=None, **covariates):
        return dist.Normal(self.shift[batch_index], 1.0).to_event(1)


def test_user_defined_prior_saves_weights_and_load_asks_for_it(adata, tmp_path):
    model = SCVI(adata, n_latent=2, prior=_ShiftedNormal())
    model.train(max_epochs=3, progress_bar=False)
    assert model.module.prior.shift.abs().sum() > 0  # learned with the rest
    model.save(tmp_path / "m")
    with pytest.raises(ValueError, match=r"prior=MyPrior"):
        SCVI.load(tmp_path / "m", adata)
    loaded = SCVI.load(tmp_path / "m", adata, prior=_ShiftedNormal())
    assert torch.equal(loaded.module.prior.shift, model.module.prior.shift)


def test_mismatched_priors_are_rejected_at_construction(adata):
    class NoEvent(LatentPrior):
        def forward(self, n_cells, **covariates):
            return dist.Normal(torch.zeros(n_cells, self.n_latent), 1.0)

    class Positive(LatentPrior):
        def forward(self, n_cells, **covariates):
            return dist.LogNormal(torch.zeros(n_cells, self.n_latent), 1.0).to_event(1)

    class WrongSize(LatentPrior):
        def forward(self, n_cells, **covariates):
            return dist.Normal(torch.zeros(n_cells, self.n_latent + 1), 1.0).to_event(1)

    with pytest.raises(ValueError, match="event shape"):
        SCVI(adata, n_latent=3, prior=NoEvent())
    with pytest.raises(ValueError, match="support"):
        SCVI(adata, n_latent=3, prior=Positive())
    with pytest.raises(ValueError, match=r"\(3,\)"):
        SCVI(adata, n_latent=3, prior=WrongSize())


def _adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.special import comb

    a = np.unique(a, return_inverse=True)[1]
    b = np.unique(b, return_inverse=True)[1]
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    pairs = comb(table, 2).sum()
    rows, cols, total = comb(table.sum(1), 2).sum(), comb(table.sum(0), 2).sum(), comb(len(a), 2)
    expected = rows * cols / total
    return float((pairs - expected) / ((rows + cols) / 2 - expected))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixture_prior_finds_the_clusters_and_fits_as_well_as_standard_normal(seed):
    """Six well-separated clusters, a 2-D latent space, 400 held-out cells, same seed and epochs.

    What holds on every seed: the mixture's components recover the clusters (ARI of the component
    assignment > 0.45; chance is 0) and its held-out ELBO is within 0.6 nat/cell of the standard normal
    prior's. What does not: that the mixture's held-out ELBO is higher. Measured on seeds 0-5 (2026-12-03):
    margins -0.24, -0.29, +0.41, -0.16, +0.84, +0.24 nats/cell (mean +0.13), ARI 0.63, 0.69, 0.54, 0.69,
    0.71, 0.56. Earlier code paths gave +0.60, +1.09, +0.76, +0.32 and +0.51, -0.48, +0.44, +0.83: the
    sign of the margin follows the training path, so an earlier single-seed "beats" assertion was fragile
    and is not made. A broken mixture density or responsibilities would fail both checks.
    """
    data = pyrovi.datasets.synthetic_iid(n_cells=800, n_genes=100, n_batches=1, n_labels=6, seed=seed)
    SCVI.setup_anndata(data)
    elbo = {}
    for name, prior in (("standard", None), ("mixture", MixtureOfGaussians(6))):
        pyrovi.settings.seed = seed
        model = SCVI(data, n_latent=2, gene_likelihood="nb", prior=prior)
        model.train(max_epochs=150, train_size=0.5, progress_bar=False,
                    plan_kwargs={"n_epochs_kl_warmup": 10, "lr": 3e-3})
        elbo[name] = np.mean([model.get_elbo(indices=model.validation_indices) for _ in range(5)])
    assert elbo["mixture"] - elbo["standard"] > -0.6, elbo
    z = torch.as_tensor(model.get_latent_representation())
    assignment = model.module.prior.responsibilities(z).argmax(-1).numpy()
    assert _adjusted_rand_index(assignment, data.obs["labels"].to_numpy()) > 0.45


def test_dispersion_prior_model_saves_and_loads_exactly(adata, tmp_path):
    model = SCVI(adata, n_latent=2, gene_likelihood="nb", dispersion_prior=dist.LogNormal(2.0, 1.0))
    model.train(max_epochs=2, progress_bar=False)
    model.save(tmp_path / "m")
    loaded = SCVI.load(tmp_path / "m", adata)
    assert loaded.module.global_sites == ("dispersion",)
    for key, value in model.module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[key], value), key
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())


def test_totalvi_takes_the_same_prior_argument(tmp_path):
    from pyrovi.model import TOTALVI

    citeseq = pyrovi.datasets.synthetic_citeseq(n_cells=120, n_genes=30, n_proteins=6, seed=0)
    TOTALVI.setup_anndata(citeseq, "protein_expression", batch_key="batch")
    model = TOTALVI(citeseq, n_latent=3, n_hidden=16, prior=MixtureOfGaussians(3))
    model.train(max_epochs=3, progress_bar=False)
    assert isinstance(model.module.prior, MixtureOfGaussians)
    assert np.isfinite(model.history["elbo_validation"].to_numpy()).all()
    model.save(tmp_path / "tv")
    loaded = TOTALVI.load(tmp_path / "tv", citeseq)
    assert isinstance(loaded.module.prior, MixtureOfGaussians)
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
