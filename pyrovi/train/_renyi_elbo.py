"""The importance-weighted (IWELBO) and Rényi bounds, per cell, with the particles vectorised."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from pyro.infer import RenyiELBO
from pyro.poutine.messenger import Messenger

from ..module.base import cell_plate_dim

#: the name Pyro gives the plate of vectorised particles
_PARTICLES = "num_particles_vectorized"


class _SharedGlobals(Messenger):
    """Give every particle the first particle's draw of each global latent site (outside the cell plate).

    The importance weights of a cell then share the global draw, so the per-cell bound is a bound on
    ``log p(x_n | globals)`` and the sum stays a lower bound on ``log p(x)`` (independent global draws per
    particle would not give one).
    """

    def _process_message(self, msg: dict) -> None:
        if msg["type"] != "sample" or msg["is_observed"] or msg["value"] is not None or cell_plate_dim(msg) is not None:
            return
        frame = next((f for f in msg["cond_indep_stack"] if f.name == _PARTICLES), None)
        if frame is None:
            return
        fn = msg["fn"]
        value = fn.rsample() if fn.has_rsample else fn.sample()
        dim = frame.dim - len(fn.event_shape)
        if value.dim() >= -dim and value.shape[dim] > 1:
            value = value.narrow(dim, 0, 1).expand_as(value)
        msg["value"] = value


def _cell_scale(site: dict) -> float:
    """The cell plate's subsampling factor (``n_obs / n_cells``) at a local site."""
    frame = next(f for f in site["cond_indep_stack"] if f.dim == cell_plate_dim(site))
    return frame.full_size / frame.size if frame.full_size is not None and frame.size else 1.0


def _reduce(log_prob: torch.Tensor | float, particle_dim: int | None, cells: bool) -> torch.Tensor | float:
    """A site's log-density as ``(particles, cells)`` (local site) or ``(particles,)`` (global site)."""
    if not torch.is_tensor(log_prob):
        return log_prob
    keep = [d for d in ((particle_dim,) if particle_dim is not None else ()) + ((-1,) if cells else ())]
    width = max([-d for d in keep] + [log_prob.dim()])
    log_prob = log_prob.reshape((1,) * (width - log_prob.dim()) + tuple(log_prob.shape))
    summed = [d for d in range(-width, 0) if d not in keep]
    if summed:
        log_prob = log_prob.sum(dim=summed, keepdim=True)
    log_prob = log_prob.reshape(tuple(log_prob.shape[d] for d in keep)) if keep else log_prob.reshape(())
    if particle_dim is None:
        log_prob = log_prob.unsqueeze(0)
    return log_prob


class CellRenyiELBO(RenyiELBO):
    """Rényi's α bound (α = 0: the importance-weighted bound) of each cell, summed over the cells.

    For cell :math:`n` with ``K`` draws :math:`z_{nk} \\sim q(z \\mid x_n)` and log-weights
    :math:`\\log w_{nk} = \\log p(x_n, z_{nk}) - \\log q(z_{nk} \\mid x_n)`:

    .. math::

        \\mathcal{L}_\\alpha = \\sum_n \\frac{1}{1-\\alpha}\\log \\frac{1}{K}\\sum_{k=1}^K w_{nk}^{1-\\alpha}
        + \\mathbb{E}_q\\left[\\log p(\\beta) - \\log q(\\beta)\\right]

    with :math:`\\beta` the global latent sites (outside the ``"cells"`` plate): one draw shared by the
    ``K`` particles, entering as in the ELBO. Sites inside the cell plate are weighted per cell, and the
    minibatch's sum is scaled by the plate to the whole data set, as the ELBO is. A
    ``poutine.scale`` on the latent sites (the plan's KL warm-up) tempers their part of the log-weights.

    Pyro's :class:`~pyro.infer.RenyiELBO` weights one joint draw of the whole minibatch (its weights would
    multiply across the cells, and the plate's subsampling scale would enter the exponent) and has no
    ``differentiable_loss``, which the training plan's automatic optimisation needs; this subclass keeps its
    settings (``alpha``, ``num_particles``) and adds both. The particles are always vectorised: the model and
    guide run once per step with a particle dimension left of their plates. Latent sites must be
    reparameterisable (no enumeration, no score-function gradient).

    Examples
    --------
    >>> vae = pyrovi.module.VAE(n_input=20)
    >>> x, idx = torch.poisson(torch.full((8, 20), 2.0)), torch.arange(8)
    >>> bound = CellRenyiELBO(alpha=0.0, num_particles=16)
    >>> iwelbo = -bound.differentiable_loss(vae.model, vae.guide, x, indices=idx, n_obs=8)
    >>> bool(torch.isfinite(iwelbo))
    True
    """

    def __init__(self, alpha: float = 0.0, num_particles: int = 8, max_plate_nesting: float = float("inf")):
        super().__init__(
            alpha=alpha, num_particles=num_particles, max_plate_nesting=max_plate_nesting, vectorize_particles=True
        )
        #: model/guide passes taken (one per ``differentiable_loss`` call: the particles are one pass)
        self.n_passes = 0

    def _guess_max_plate_nesting(self, model: Any, guide: Any, args: tuple, kwargs: dict) -> None:
        # Pyro logs its guess at INFO on every new estimator: once per fit, it is noise in a notebook
        logger = logging.getLogger("pyro.infer.elbo")
        level = logger.level
        logger.setLevel(logging.WARNING)
        try:
            super()._guess_max_plate_nesting(model, guide, args, kwargs)
        finally:
            logger.setLevel(level)

    def _get_vectorized_trace(self, model: Any, guide: Any, args: tuple, kwargs: dict) -> tuple:
        guide = self._vectorized_num_particles(guide)
        if self.num_particles > 1:  # outside the particle plate, so it sees each site already broadcast
            guide = _SharedGlobals()(guide)
        return self._get_trace(self._vectorized_num_particles(model), guide, args, kwargs)

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The negative bound of the minibatch (scaled to the whole data set), differentiable."""
        ((model_trace, guide_trace),) = list(self._get_traces(model, guide, args, kwargs))
        self.n_passes += 1
        particle_dim = -self.max_plate_nesting if self.num_particles > 1 else None
        local: torch.Tensor | float = 0.0
        global_term: torch.Tensor | float = 0.0
        cell_scale = 1.0
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for site in trace.nodes.values():
                if site["type"] != "sample":
                    continue
                if sign < 0 and not site["fn"].has_rsample:
                    raise NotImplementedError(
                        f"The importance-weighted and Renyi objectives need reparameterised latent sites; "
                        f"{site['name']!r} is not (a discrete or enumerated site). Use objective='elbo'."
                    )
                if cell_plate_dim(site) is None:
                    global_term = global_term + sign * _reduce(site["log_prob"], particle_dim, cells=False)
                else:
                    scale = _cell_scale(site)  # the cell plate's subsampling scale: applied after the log-mean
                    cell_scale = scale
                    local = local + sign * _reduce(site["log_prob"], particle_dim, cells=True) / scale
        one_minus_alpha = 1.0 - self.alpha
        bound = torch.as_tensor(global_term).mean()
        if torch.is_tensor(local):
            per_cell = (torch.logsumexp(one_minus_alpha * local, dim=0) - math.log(local.shape[0])) / one_minus_alpha
            bound = bound + cell_scale * per_cell.sum()
        return -bound

    @torch.no_grad()
    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        """The negative bound as a float."""
        return float(self.differentiable_loss(model, guide, *args, **kwargs))
