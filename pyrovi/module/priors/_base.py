"""The contract of a latent prior: a PyroModule that returns the distribution of a cell's latent state."""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch.distributions import constraints

from ..._pyro_lock import pyro_lock


class LatentPrior(PyroModule):
    """Base class of priors over the per-cell latent site ``z`` (event shape ``(n_latent,)``).

    A prior is called **in the model, outside the cell plate**, once per minibatch::

        p_z = self.prior(n_cells, batch_index=..., labels=..., cat_covs=..., cont_covs=...)
        with pyro.plate("cells", ...):
            z = pyro.sample("z", p_z)

    It returns a distribution with batch shape ``(n_cells,)`` and event shape ``(n_latent,)``. Its own
    learnable parameters are module attributes (they train with the rest and are saved in the
    ``state_dict``). Any ``pyro.sample`` statement inside :meth:`forward` declares a *global* latent
    variable (a hyperprior); the owning module gives those sites a guide automatically.

    Subclasses implement :meth:`forward` and, if they need the latent dimension or the module's networks
    to build parameters, :meth:`setup`. Keyword arguments of ``__init__`` must be JSON values so that the
    prior saves by name (see :meth:`config`).

    Examples
    --------
    A prior whose mean depends on the batch:

    >>> class BatchShiftedNormal(LatentPrior):
    ...     def setup(self, n_latent, module):
    ...         super().setup(n_latent, module)
    ...         self.shift = torch.nn.Parameter(torch.zeros(module.n_batch, n_latent))
    ...
    ...     def forward(self, n_cells, batch_index=None, **covariates):
    ...         loc = self.shift[batch_index.reshape(-1)]
    ...         return dist.Normal(loc, 1.0).to_event(1)
    >>> model = SCVI(adata, n_latent=4, prior=BatchShiftedNormal())
    >>> model.module.prior.shift.shape
    torch.Size([2, 4])
    """

    #: whether the KL divergence to a Normal guide has a closed form (informational; Pyro decides)
    analytic_kl: bool = False

    def __init__(self, **kwargs: Any):
        super().__init__()
        self._config_kwargs = dict(kwargs)
        self.n_latent: int | None = None

    def setup(self, n_latent: int, module: torch.nn.Module) -> None:
        """Called once by the owning module: create parameters that depend on ``n_latent`` here."""
        self.n_latent = n_latent

    def forward(
        self,
        n_cells: int,
        batch_index: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cat_covs: tuple[torch.Tensor, ...] = (),
        cont_covs: torch.Tensor | None = None,
    ) -> dist.TorchDistribution:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Name and arguments: enough to rebuild a built-in prior (its weights come from the state_dict)."""
        return {"name": type(self).__name__, "kwargs": dict(self._config_kwargs)}

    def _anchor(self) -> torch.Tensor:
        """A tensor on the prior's device and dtype (for priors without parameters: a registered buffer)."""
        return self._device_anchor

    def _register_anchor(self) -> None:
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)


def _is_real_vector(support: constraints.Constraint) -> bool:
    while hasattr(support, "base_constraint"):
        support = support.base_constraint
    return support is constraints.real or type(support) is type(constraints.real)


def check_latent_prior(prior: LatentPrior, n_latent: int, example_kwargs: dict[str, Any]) -> list[str]:
    """Run ``prior`` once on two cells and check it fits the guide's ``z``; return its global sites.

    The guide of ``z`` is a diagonal Normal: real-valued with event shape ``(n_latent,)``. A prior with
    another support or shape would make the ELBO meaningless, so it is rejected here, at construction.

    Examples
    --------
    >>> from pyrovi.module.priors import HierarchicalNormal, StandardNormal
    >>> vae = pyrovi.module.VAE(n_input=10, n_latent=3)
    >>> prior = StandardNormal()
    >>> prior.setup(3, vae)  # the owning module calls setup first
    >>> check_latent_prior(prior, 3, {})
    []
    >>> prior = HierarchicalNormal("half_cauchy")
    >>> prior.setup(3, vae)
    >>> check_latent_prior(prior, 3, {})
    ['prior_scale']
    """
    with torch.no_grad(), pyro_lock():  # a Pyro run: one at a time (pyrovi._pyro_lock)
        trace = poutine.trace(prior).get_trace(2, **example_kwargs)
    p_z = trace.nodes["_RETURN"]["value"]
    name = type(prior).__name__
    if not isinstance(p_z, torch.distributions.Distribution):
        raise TypeError(f"{name}.forward must return a distribution over z, got {type(p_z).__name__}.")
    if tuple(p_z.event_shape) != (n_latent,):
        raise ValueError(
            f"{name} returns a distribution with event shape {tuple(p_z.event_shape)}, but z has event shape "
            f"({n_latent},): use `.to_event(1)` on a distribution of shape (n_cells, n_latent)."
        )
    if tuple(p_z.batch_shape) not in ((2,), ()):
        raise ValueError(
            f"{name} returns batch shape {tuple(p_z.batch_shape)} for 2 cells; expected (2,) (one per cell)."
        )
    if not _is_real_vector(p_z.support):
        raise ValueError(
            f"{name} has support {p_z.support}, but the guide of z is a Normal on the real line: "
            "use a prior over real vectors (or transform the latent in the decoder instead)."
        )
    return [n for n, site in trace.nodes.items() if site["type"] == "sample" and not site["is_observed"]]
