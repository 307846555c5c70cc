"""Built-in latent priors. Each is one argument away: ``SCVI(adata, prior=MixtureOfGaussians(10))``."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Literal, Union

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..._checks import check_bool
from ._base import LatentPrior

#: A number, or one number per latent dimension (a list, tuple, numpy array or 1-D tensor).
PerDimension = Union[float, Sequence[float], np.ndarray, torch.Tensor]


def _param(prior: str, name: str, value: object, positive: bool, per_dimension: bool = True) -> float | list[float]:
    """A prior's argument as a float or (``per_dimension``) a list of floats, checked: real, finite, positive.

    Lists are what the prior's JSON configuration stores, so a model using the prior saves and loads. The
    length of a list is checked against the latent dimension when the model builds the prior
    (:meth:`LatentPrior.setup`).
    """
    what = "a positive number" if positive else "a number"
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes)):
        raise TypeError(f"{prior}({name}=...) must be {what}, got {value!r}.")
    if isinstance(value, numbers.Real):
        values, scalar = [float(value)], True
    else:
        try:
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        except Exception:  # noqa: BLE001 - anything that is not an array of numbers is refused below
            array = np.asarray([object()])
        if array.dtype.kind not in "iuf" or array.ndim > 1:
            raise TypeError(
                f"{prior}({name}=...) must be {what}"
                + (" or one number per latent dimension (a 1-D list, array or tensor)" if per_dimension else "")
                + f", got {type(value).__name__}"
                + (f" of shape {array.shape} and dtype {array.dtype}." if array.dtype.kind != "O" else ".")
            )
        if array.ndim == 1 and not per_dimension:
            raise TypeError(f"{prior}({name}=...) must be a single number, got {array.size} values.")
        if array.ndim == 1 and array.size == 0:
            raise ValueError(f"{prior}({name}=...) is empty; give a number or one number per latent dimension.")
        values, scalar = [float(v) for v in array.reshape(-1)], array.ndim == 0
    bad = [v for v in values if not math.isfinite(v) or (positive and v <= 0)]
    if bad:
        raise ValueError(
            f"{prior}({name}=...) must be {'positive and ' if positive else ''}finite, got {bad[0]!r}"
            + (f" among its {len(values)} values." if len(values) > 1 else ".")
        )
    return values[0] if scalar else values


def _check_length(prior: str, arguments: dict[str, float | list[float]], n_latent: int) -> None:
    """Per-dimension arguments must have one value per latent dimension."""
    for name, value in arguments.items():
        if isinstance(value, list) and len(value) != n_latent:
            raise ValueError(
                f"{prior}({name}=...) has {len(value)} values but the model's latent prior has {n_latent} "
                f"dimensions (n_latent; n_latent - 1 with latent_distribution='ln'): give {n_latent} values, one "
                "per dimension, or a single number for all."
            )


def _count(prior: str, name: str, value: object) -> int:
    """A positive whole number (an int, or a float or array scalar that is whole)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not float(value).is_integer():
        raise TypeError(f"{prior}({name}=...) must be a positive integer, got {value!r}.")
    if int(value) < 1:
        raise ValueError(f"{prior}({name}=...) must be at least 1, got {value!r}.")
    return int(value)


def _as_tensor(value: float | list[float]) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


class StandardNormal(LatentPrior):
    """``z ~ N(0, I)``: scVI's prior, with an analytic KL divergence to the Normal guide.

    Examples
    --------
    >>> model = SCVI(adata, prior=StandardNormal())
    """

    analytic_kl = True

    def __init__(self) -> None:
        super().__init__()
        self._register_anchor()

    def forward(self, n_cells: int, **covariates) -> dist.TorchDistribution:
        zero = self._anchor()
        return dist.Normal(zero.expand(n_cells, self.n_latent), 1.0).to_event(1)


class Normal(LatentPrior):
    """``z_d ~ N(loc_d, scale_d^2)``, independent over dimensions: a shifted, wider or narrower Normal (analytic KL).

    Parameters
    ----------
    scale
        Standard deviation: one positive number for every latent dimension, or one per dimension (a list,
        numpy array or 1-D tensor of length ``n_latent``, checked when the model is built).
    loc
        Mean, likewise a number or one per dimension (default 0).

    Examples
    --------
    >>> model = SCVI(adata, prior=Normal(scale=2.0))
    >>> model = SCVI(adata, n_latent=3, prior=Normal(scale=[1.0, 1.0, 3.0]))
    """

    analytic_kl = True

    def __init__(self, scale: PerDimension = 1.0, loc: PerDimension = 0.0) -> None:
        scale = _param("Normal", "scale", scale, positive=True)
        loc = _param("Normal", "loc", loc, positive=False)
        kwargs = {"scale": scale} if loc == 0.0 else {"scale": scale, "loc": loc}
        super().__init__(**kwargs)
        self._arguments = {"scale": scale, "loc": loc}
        self._register_anchor()

    def setup(self, n_latent: int, module: torch.nn.Module) -> None:
        super().setup(n_latent, module)
        _check_length("Normal", self._arguments, n_latent)
        # buffers follow the module to its device; they are rebuilt from the configuration, never saved
        self.register_buffer("scale", _as_tensor(self._arguments["scale"]), persistent=False)
        self.register_buffer("loc", _as_tensor(self._arguments["loc"]), persistent=False)

    def forward(self, n_cells: int, **covariates) -> dist.TorchDistribution:
        zero = self._anchor()
        return dist.Normal(zero.expand(n_cells, self.n_latent) + self.loc, self.scale).to_event(1)


class StudentT(LatentPrior):
    """Heavy-tailed ``z_d ~ StudentT(df, 0, scale)``, independent over dimensions (Monte Carlo KL).

    Parameters
    ----------
    df
        Degrees of freedom (small: heavy tails; large: close to a Normal): a positive number, or one per
        latent dimension.
    scale
        Scale: a positive number for every dimension, or one per dimension (length ``n_latent``).

    Examples
    --------
    >>> model = SCVI(adata, prior=StudentT(df=3.0))
    >>> model = SCVI(adata, n_latent=2, prior=StudentT(df=3.0, scale=[1.0, 2.0]))
    """

    def __init__(self, df: PerDimension = 3.0, scale: PerDimension = 1.0) -> None:
        df = _param("StudentT", "df", df, positive=True)
        scale = _param("StudentT", "scale", scale, positive=True)
        super().__init__(df=df, scale=scale)
        self._arguments = {"df": df, "scale": scale}
        self._register_anchor()

    def setup(self, n_latent: int, module: torch.nn.Module) -> None:
        super().setup(n_latent, module)
        _check_length("StudentT", self._arguments, n_latent)
        self.register_buffer("df", _as_tensor(self._arguments["df"]), persistent=False)
        self.register_buffer("scale", _as_tensor(self._arguments["scale"]), persistent=False)

    def forward(self, n_cells: int, **covariates) -> dist.TorchDistribution:
        zero = self._anchor()
        loc = zero.expand(n_cells, self.n_latent)
        return dist.StudentT(self.df.expand_as(loc), loc, self.scale).to_event(1)


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
    >>> model = SCVI(adata, prior=MixtureOfGaussians(10))
    >>> model.train(max_epochs=2, enable_progress_bar=False)
    >>> model.module.prior.config()
    {'name': 'MixtureOfGaussians', 'kwargs': {'n_components': 10, 'learnable': True, 'init_scale': 1.0}}
    """

    def __init__(self, n_components: int = 10, learnable: bool = True, init_scale: float = 1.0) -> None:
        n_components = _count("MixtureOfGaussians", "n_components", n_components)
        check_bool("learnable", learnable)
        init_scale = _param("MixtureOfGaussians", "init_scale", init_scale, positive=False, per_dimension=False)
        if init_scale < 0:
            raise ValueError(f"MixtureOfGaussians(init_scale=...) must not be negative, got {init_scale!r}.")
        super().__init__(n_components=n_components, learnable=bool(learnable), init_scale=init_scale)
        self.n_components, self.learnable, self.init_scale = n_components, bool(learnable), init_scale

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
    >>> model = SCVI(adata, prior=VampPrior(n_pseudo_inputs=50))
    """

    def __init__(self, n_pseudo_inputs: int = 50) -> None:
        n_pseudo_inputs = _count("VampPrior", "n_pseudo_inputs", n_pseudo_inputs)
        super().__init__(n_pseudo_inputs=n_pseudo_inputs)
        self.n_pseudo_inputs = n_pseudo_inputs

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
        Scale of the hyperprior: a positive number, or one per latent dimension (length ``n_latent``).

    Examples
    --------
    >>> model = SCVI(adata, prior=HierarchicalNormal("half_cauchy"))
    >>> model.train(max_epochs=2, enable_progress_bar=False)
    >>> posterior = model.sample_posterior(return_sites=["prior_scale"])
    >>> posterior["prior_scale"]["mean"].shape  # one scale per latent dimension
    (10,)
    """

    analytic_kl = True

    def __init__(
        self, hyperprior: Literal["half_cauchy", "log_normal"] = "half_cauchy", hyper_scale: PerDimension = 1.0
    ) -> None:
        if not isinstance(hyperprior, str) or hyperprior not in ("half_cauchy", "log_normal"):
            raise ValueError(f"hyperprior={hyperprior!r}: use 'half_cauchy' or 'log_normal'.")
        hyper_scale = _param("HierarchicalNormal", "hyper_scale", hyper_scale, positive=True)
        super().__init__(hyperprior=hyperprior, hyper_scale=hyper_scale)
        self.hyperprior = hyperprior
        self._arguments = {"hyper_scale": hyper_scale}
        self._register_anchor()

    def setup(self, n_latent: int, module: torch.nn.Module) -> None:
        super().setup(n_latent, module)
        _check_length("HierarchicalNormal", self._arguments, n_latent)
        self.register_buffer("hyper_scale", _as_tensor(self._arguments["hyper_scale"]), persistent=False)

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
