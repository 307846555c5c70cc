"""Built-in latent priors. Each is one argument away: ``SCVI(adata, prior=MixtureOfGaussians(10))``."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Literal

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ._base import LatentPrior


class StandardNormal(LatentPrior):
    """``z ~ N(0, I)``: scVI's prior, with an analytic KL divergence to the Normal guide.

    Examples
    --------
    >>> model = SCVI(adata, prior=StandardNormal())  # doctest: +SKIP
    """

    analytic_kl = True

    def __init__(self) -> None:
        super().__init__()
        self._register_anchor()

    def forward(self, n_cells: int, **covariates) -> dist.TorchDistribution:
        zero = self._anchor()
        return dist.Normal(zero.expand(n_cells, self.n_latent), 1.0).to_event(1)


class Normal(LatentPrior):
    """``z ~ N(0, scale^2 I)``: a wider or narrower isotropic Normal (analytic KL).

    Parameters
    ----------
    scale
        Standard deviation of every latent dimension.

    Examples
    --------
    >>> model = SCVI(adata, prior=Normal(scale=2.0))  # doctest: +SKIP
    """

    analytic_kl = True

    def __init__(self, scale: float = 1.0) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}.")
        super().__init__(scale=float(scale))
        self.scale = float(scale)
        self._register_anchor()

    def forward(self, n_cells: int, **covariates) -> dist.TorchDistribution:
        zero = self._anchor()
        return dist.Normal(zero.expand(n_cells, self.n_latent), self.scale).to_event(1)


class StudentT(LatentPrior):
    """Heavy-tailed ``z_d ~ StudentT(df, 0, scale)``, independent over dimensions (Monte Carlo KL).

    Parameters
    ----------
    df
        Degrees of freedom (small: heavy tails; large: close to a Normal).
    scale
        Scale of every dimension.

    Examples
    --------
    >>> model = SCVI(adata, prior=StudentT(df=3.0))  # doctest: +SKIP
    """

    def __init__(self, df: float = 3.0, scale: float = 1.0) -> None:
        if not (df > 0 and scale > 0):
            raise ValueError(f"df and scale must be positive, got df={df}, scale={scale}.")
        super().__init__(df=float(df), scale=float(scale))
        self.df, self.scale = float(df), float(scale)
        self._register_anchor()

    def forward(self, n_cells: int, **covariates) -> dist.TorchDistribution:
        zero = self._anchor()
        return dist.StudentT(self.df, zero.expand(n_cells, self.n_latent), self.scale).to_event(1)


class MixtureOfGaussians(LatentPrior):
    """``z ~ sum_k w_k N(mu_k, diag(sigma_k^2))``: a clustered latent space (Monte Carlo KL).

    With ``learnable=True`` the weights, means and scales are parameters fitted with the rest of the
    model (an empirical-Bayes prior, as in GMVAE-style models); otherwise the means are fixed random
    draws. Each cell's posterior responsibility of the components gives a soft clustering:
    :meth:`responsibilities`.

    Parameters
    ----------
    n_components
        Number of mixture components.
    learnable
        Fit weights, means and scales by maximising the ELBO.
    init_scale
        Spread of the initial component means.

    Examples
    --------
    >>> model = SCVI(adata, prior=MixtureOfGaussians(10))  # doctest: +SKIP
    >>> model.train()  # doctest: +SKIP
    """

    def __init__(self, n_components: int = 10, learnable: bool = True, init_scale: float = 1.0) -> None:
        if int(n_components) < 1:
            raise ValueError(f"n_components must be at least 1, got {n_components}.")
        super().__init__(n_components=int(n_components), learnable=bool(learnable), init_scale=float(init_scale))
        self.n_components, self.learnable, self.init_scale = int(n_components), bool(learnable), float(init_scale)

    def setup(self, n_latent: int, module: torch.nn.Module) -> None:
        super().setup(n_latent, module)
        k = self.n_components
        # a fixed generator: the initial means do not consume the user's random stream
        gen = torch.Generator().manual_seed(k * 1000 + n_latent)
        locs = torch.randn(k, n_latent, generator=gen) * self.init_scale
        tensors = {"logits": torch.zeros(k), "locs": locs, "log_scales": torch.zeros(k, n_latent)}
        for name, value in tensors.items():
            if self.learnable:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    def _components(self) -> dist.TorchDistribution:
        return dist.Normal(self.locs, self.log_scales.exp()).to_event(1)

    def forward(self, n_cells: int, **covariates) -> dist.TorchDistribution:
        mixture = dist.MixtureSameFamily(dist.Categorical(logits=self.logits), self._components())
        return mixture.expand([n_cells])

    def responsibilities(self, z: torch.Tensor) -> torch.Tensor:
        """Posterior probability of each component given latent points ``z`` (``(..., n_components)``)."""
        log_joint = self._components().log_prob(z.unsqueeze(-2)) + torch.log_softmax(self.logits, -1)
        return torch.softmax(log_joint, -1)


class VampPrior(LatentPrior):
    """The VampPrior (Tomczak & Welling 2018): a mixture of the guide's own posteriors at learned pseudo-inputs.

    ``p(z) = 1/K sum_k q(z | u_k)``, where ``u_k`` are ``n_pseudo_inputs`` learned pseudo-cells (in
    count space, kept non-negative) pushed through the module's encoder. The prior adapts to the
    aggregate posterior, which tightens the ELBO (Monte Carlo KL).

    Parameters
    ----------
    n_pseudo_inputs
        Number of pseudo-inputs (mixture components).

    Examples
    --------
    >>> model = SCVI(adata, prior=VampPrior(n_pseudo_inputs=50))  # doctest: +SKIP
    """

    def __init__(self, n_pseudo_inputs: int = 50) -> None:
        if int(n_pseudo_inputs) < 1:
            raise ValueError(f"n_pseudo_inputs must be at least 1, got {n_pseudo_inputs}.")
        super().__init__(n_pseudo_inputs=int(n_pseudo_inputs))
        self.n_pseudo_inputs = int(n_pseudo_inputs)

    def setup(self, n_latent: int, module: torch.nn.Module) -> None:
        super().setup(n_latent, module)
        if not hasattr(module, "z_encoder"):
            raise TypeError("VampPrior needs a module with a `z_encoder` (e.g. pyrovi's VAE).")
        # a tuple hides the module from nn.Module registration: the encoder belongs to the VAE
        self._module = (module,)
        gen = torch.Generator().manual_seed(self.n_pseudo_inputs)
        # pseudo-inputs live in log1p count space and are mapped back with expm1 of a softplus
        self.pseudo_inputs = nn.Parameter(torch.rand(self.n_pseudo_inputs, module.n_input, generator=gen))

    def forward(self, n_cells: int, **covariates) -> dist.TorchDistribution:
        module = self._module[0]
        counts = torch.expm1(nn.functional.softplus(self.pseudo_inputs))
        # the encoder's covariates (if it uses any) are set to the first category for pseudo-inputs
        n_cats = [n for n in module.z_encoder.encoder.n_cat_list]
        codes = [torch.zeros(self.n_pseudo_inputs, dtype=torch.long, device=counts.device) for _ in n_cats]
        n_cont = module.z_encoder.encoder.n_cont
        cont = counts.new_zeros(self.n_pseudo_inputs, n_cont) if n_cont else None
        with _frozen_running_stats(module.z_encoder):
            loc, scale = module.z_encoder(counts, *codes, cont=cont)
        components = dist.Normal(loc, scale).to_event(1)
        weights = dist.Categorical(logits=counts.new_zeros(self.n_pseudo_inputs))
        return dist.MixtureSameFamily(weights, components).expand([n_cells])


@contextmanager
def _frozen_running_stats(network: nn.Module):
    """Let batch normalisation see pseudo-inputs without updating its running statistics of real cells."""
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch statistics
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


class HierarchicalNormal(LatentPrior):
    """``z_nd ~ N(0, s_d^2)`` with inferred per-dimension scales ``s_d`` (automatic relevance determination).

    The scales are global latent variables with a half-Cauchy or log-normal hyperprior; the module gives
    them a guide automatically (an AutoNormal by default). Dimensions the data do not need shrink
    towards zero scale. KL to the Normal guide is analytic given the scales.

    Parameters
    ----------
    hyperprior
        ``"half_cauchy"`` (scale ``hyper_scale``) or ``"log_normal"`` (``LogNormal(0, hyper_scale)``).
    hyper_scale
        Scale of the hyperprior.

    Examples
    --------
    >>> model = SCVI(adata, prior=HierarchicalNormal("half_cauchy"))  # doctest: +SKIP
    >>> model.train()  # doctest: +SKIP
    >>> model.sample_posterior(return_sites=["prior_scale"])  # doctest: +SKIP
    """

    analytic_kl = True

    def __init__(
        self, hyperprior: Literal["half_cauchy", "log_normal"] = "half_cauchy", hyper_scale: float = 1.0
    ) -> None:
        if hyperprior not in ("half_cauchy", "log_normal"):
            raise ValueError(f"hyperprior={hyperprior!r}: use 'half_cauchy' or 'log_normal'.")
        super().__init__(hyperprior=hyperprior, hyper_scale=float(hyper_scale))
        self.hyperprior, self.hyper_scale = hyperprior, float(hyper_scale)
        self._register_anchor()

    def forward(self, n_cells: int, **covariates) -> dist.TorchDistribution:
        zero = self._anchor().expand(self.n_latent)
        if self.hyperprior == "half_cauchy":
            hyper = dist.HalfCauchy(zero + self.hyper_scale)
        else:
            hyper = dist.LogNormal(zero, self.hyper_scale)
        scale = pyro.sample("prior_scale", hyper.to_event(1))
        return dist.Normal(zero.expand(n_cells, self.n_latent), scale).to_event(1)


BUILTIN_PRIORS: dict[str, type[LatentPrior]] = {
    cls.__name__: cls
    for cls in (StandardNormal, Normal, StudentT, MixtureOfGaussians, VampPrior, HierarchicalNormal)
}
