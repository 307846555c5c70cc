"""Richer amortized guides of a latent ``u``: a low-rank Gaussian and a conditional normalising flow.

Both read the hidden layer ``h`` of an :class:`~pyrovi.module.nn.Encoder` and reuse its location and
variance heads, so at initialisation (zero-initialised extra heads) each equals the mean-field Normal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from ._encoder import Encoder

#: the guide families of the VAE models' latent ``u``
GuideFamily = Literal["normal", "lowrank", "flow"]
GUIDE_FAMILIES = ("normal", "lowrank", "flow")
_GUIDE_KWARGS = {"normal": (), "lowrank": ("rank",), "flow": ("n_flows", "hidden_dims", "n_moment_samples")}


class LowRankPosterior(dist.LowRankMultivariateNormal):
    """A low-rank plus diagonal Gaussian whose ``scale`` is the marginal standard deviation.

    ``scale`` (the square root of the covariance's diagonal) lets queries that read a Gaussian's
    ``loc`` and ``scale`` (``get_latent_representation(return_dist=True)``, minification) report the
    marginal moments.

    Examples
    --------
    >>> q = LowRankPosterior(torch.zeros(2, 3), torch.ones(2, 3, 1), torch.ones(2, 3))
    >>> q.scale.square()[0].tolist()
    [2.0, 2.0, 2.0]
    """

    @property
    def scale(self) -> torch.Tensor:
        """Marginal standard deviation of each coordinate."""
        return self.variance.sqrt()


class FlowPosterior(dist.TorchDistribution):
    """A base Gaussian pushed through conditioned flow transforms, with Monte Carlo moments.

    Samples (reparameterised) and log-densities are exact. The flow has no closed-form mean: ``mean``,
    ``loc``, ``variance`` and ``scale`` are the moments of ``n_moment_samples`` draws, computed once per
    distribution object (so the posterior mean of a query is a Monte Carlo estimate).

    Parameters
    ----------
    base
        The base distribution, e.g. ``Normal(loc, scale).to_event(1)``.
    transforms
        Transforms (already conditioned on the cell) applied in order.
    n_moment_samples
        Draws used for the moments.

    Examples
    --------
    >>> q = FlowPosterior(dist.Normal(torch.zeros(2, 3), 1.0).to_event(1), [])
    >>> tuple(q.rsample().shape), tuple(q.log_prob(torch.zeros(2, 3)).shape)
    ((2, 3), (2,))
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 1)
    has_rsample = True

    def __init__(self, base: dist.Distribution, transforms: Sequence[Any], n_moment_samples: int = 1000):
        self._base, self._transforms, self.n_moment_samples = base, list(transforms), n_moment_samples
        self._flow = dist.TransformedDistribution(base, self._transforms)
        self._moments: tuple[torch.Tensor, torch.Tensor] | None = None
        super().__init__(self._flow.batch_shape, self._flow.event_shape, validate_args=False)

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> FlowPosterior:
        return FlowPosterior(self._base.expand(batch_shape), self._transforms, self.n_moment_samples)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self._flow.rsample(sample_shape)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self._flow.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self._flow.log_prob(value)

    def _sample_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._moments is None:
            draws = self.sample((self.n_moment_samples,))
            self._moments = (draws.mean(0), draws.var(0))
        return self._moments

    @property
    def mean(self) -> torch.Tensor:
        return self._sample_moments()[0]

    @property
    def variance(self) -> torch.Tensor:
        return self._sample_moments()[1]

    @property
    def loc(self) -> torch.Tensor:
        """Monte Carlo mean (see the class docstring)."""
        return self.mean

    @property
    def scale(self) -> torch.Tensor:
        """Monte Carlo marginal standard deviation."""
        return self.variance.sqrt()


def check_guide_kwargs(guide: str, guide_kwargs: Mapping[str, Any] | None, n_latent: int) -> dict[str, Any]:
    """``guide_kwargs`` checked against ``guide`` (a family name), with defaults filled in.

    Examples
    --------
    >>> check_guide_kwargs("lowrank", None, 10)
    {'rank': 2}
    """
    if guide not in GUIDE_FAMILIES:
        raise ValueError(f"guide={guide!r} is not one of {list(GUIDE_FAMILIES)}; pass guide='normal' (mean field), "
                         "'lowrank' or 'flow'.")
    if guide_kwargs is not None and not isinstance(guide_kwargs, Mapping):
        raise TypeError(f"guide_kwargs must be a dict or None, got {type(guide_kwargs).__name__}.")
    kwargs = dict(guide_kwargs or {})
    unknown = sorted(set(kwargs) - set(_GUIDE_KWARGS[guide]))
    if unknown:
        raise ValueError(f"guide_kwargs {unknown} are not options of guide={guide!r}, which takes "
                         f"{list(_GUIDE_KWARGS[guide]) or 'none'}.")
    if guide == "lowrank":
        rank = kwargs.setdefault("rank", min(2, n_latent))
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= n_latent:
            raise ValueError(f"guide_kwargs['rank'] must be an integer from 1 to the latent dimension {n_latent}, "
                             f"got {rank!r}.")
    if guide == "flow":
        if n_latent < 2:
            raise ValueError("guide='flow' needs a latent of at least 2 dimensions (an autoregressive flow over one "
                             "coordinate is an affine map of the Normal); use guide='normal' or raise n_latent.")
        n_flows = kwargs.setdefault("n_flows", 2)
        if isinstance(n_flows, bool) or not isinstance(n_flows, int) or n_flows < 1:
            raise ValueError(f"guide_kwargs['n_flows'] must be a positive integer, got {n_flows!r}.")
        hidden = kwargs.setdefault("hidden_dims", [10 * n_latent])
        if isinstance(hidden, int) or not isinstance(hidden, Sequence) or not hidden or any(
            isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden
        ):
            raise ValueError(f"guide_kwargs['hidden_dims'] must be a non-empty list of positive integers, got {hidden!r}.")
        kwargs["hidden_dims"] = list(hidden)
        moments = kwargs.setdefault("n_moment_samples", 1000)
        if isinstance(moments, bool) or not isinstance(moments, int) or moments < 2:
            raise ValueError(f"guide_kwargs['n_moment_samples'] must be an integer >= 2, got {moments!r}.")
    return kwargs


class LowRankHead(nn.Module):
    """The covariance factor of a low-rank Gaussian guide, ``W(h)`` of shape ``(n_latent, rank)``.

    The guide is ``N(loc(h), W(h) W(h)^T + diag(var(h)))`` with ``loc`` and ``var`` the encoder's heads.
    The head starts at zero, i.e. at the mean-field guide.

    Examples
    --------
    >>> head = LowRankHead(n_hidden=16, n_latent=4, rank=2)
    >>> tuple(head(torch.randn(3, 16)).shape)
    (3, 4, 2)
    """

    def __init__(self, n_hidden: int, n_latent: int, rank: int = 2):
        super().__init__()
        self.n_latent, self.rank = n_latent, rank
        self.factor = nn.Linear(n_hidden, n_latent * rank)
        nn.init.zeros_(self.factor.weight)
        nn.init.zeros_(self.factor.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.factor(h).reshape(*h.shape[:-1], self.n_latent, self.rank)

    def distribution(self, h: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> LowRankPosterior:
        """``q(u | x)`` from the hidden layer and the encoder's mean-field location and scale."""
        return LowRankPosterior(loc, self(h), scale.square())


class FlowHead(nn.Module):
    """Conditional affine autoregressive transforms of a guide's base Gaussian, conditioned on ``h``.

    Each of the ``n_flows`` transforms is ``u -> mu(u_<i, h) + exp(s(u_<i, h)) * u`` (Pyro's
    :class:`~pyro.distributions.transforms.ConditionalAffineAutoregressive`), alternating the
    coordinate order; the output layers start at zero, so the flow starts as the identity.

    Examples
    --------
    >>> head = FlowHead(n_hidden=16, n_latent=3, n_flows=2, hidden_dims=[8])
    >>> q = head.distribution(torch.randn(5, 16), torch.zeros(5, 3), torch.ones(5, 3))
    >>> tuple(q.rsample().shape)
    (5, 3)
    """

    def __init__(self, n_hidden: int, n_latent: int, n_flows: int = 2, hidden_dims: Sequence[int] = (),
                 n_moment_samples: int = 1000):
        super().__init__()
        self.n_moment_samples = n_moment_samples
        flows = []
        for k in range(n_flows):
            order = torch.arange(n_latent) if k % 2 == 0 else torch.arange(n_latent - 1, -1, -1)
            arn = ConditionalAutoRegressiveNN(n_latent, n_hidden, list(hidden_dims) or [10 * n_latent],
                                              permutation=order)
            last = arn.layers[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            flows.append(ConditionalAffineAutoregressive(arn))
        self.flows = nn.ModuleList(flows)

    def distribution(self, h: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> FlowPosterior:
        """``q(u | x)``: ``N(loc, scale)`` pushed through the flows conditioned on ``h``."""
        base = dist.Normal(loc, scale).to_event(1)
        return FlowPosterior(base, [flow.condition(h) for flow in self.flows], self.n_moment_samples)


def make_guide_head(guide: str, n_hidden: int, n_latent: int, guide_kwargs: Mapping[str, Any]) -> nn.Module | None:
    """The extra head of a guide family (``None`` for the mean-field ``"normal"``).

    Examples
    --------
    >>> make_guide_head("normal", 16, 4, {}) is None
    True
    >>> type(make_guide_head("lowrank", 16, 4, {"rank": 1})).__name__
    'LowRankHead'
    """
    if guide == "lowrank":
        return LowRankHead(n_hidden, n_latent, **guide_kwargs)
    if guide == "flow":
        return FlowHead(n_hidden, n_latent, **guide_kwargs)
    return None


def encoder_posterior(
    encoder: Encoder, head: nn.Module | None, x: torch.Tensor, *cat_codes: torch.Tensor, cont: torch.Tensor | None = None
) -> dist.Distribution:
    """``q(u | x)`` of a guide family: the encoder's hidden layer read by its Normal heads and the family's head.

    Shared by the VAE models: ``head`` is what :func:`make_guide_head` built (``None``: the mean-field
    ``Normal(loc, scale).to_event(1)``); ``x``, ``cat_codes`` and ``cont`` are the encoder's inputs.

    Examples
    --------
    >>> enc = Encoder(n_input=20, n_output=3, n_hidden=16)
    >>> q = encoder_posterior(enc, make_guide_head("lowrank", 16, 3, {"rank": 1}), torch.ones(4, 20))
    >>> type(q).__name__, tuple(q.batch_shape), tuple(q.event_shape)
    ('LowRankPosterior', (4,), (3,))
    """
    h = encoder.hidden(x, *cat_codes, cont=cont)
    loc, scale = encoder.params(h)
    if head is None:
        return dist.Normal(loc, scale).to_event(1)
    return head.distribution(h, loc, scale)
