"""Expectation-maximisation as a training objective, for models with one enumerated discrete site."""

from __future__ import annotations

from typing import Any, Callable

import torch
from pyro import poutine

from ..module.base import cell_plate_dim


class ExpectationMaximization:
    """EM for a model whose per-cell discrete latent is enumerated in the model (e.g. CellAssign's type).

    Each step computes the responsibilities ``gamma_nc = p(c_n = c | x_n)`` under the current parameters
    and holds them fixed (detached) while the gradient step maximises the expected complete-data log
    joint ``sum_n sum_c gamma_nc log p(x_n, c_n = c) + log p(globals)``: the M-step of the original
    CellAssign, taken as one optimiser step per minibatch. Compare :class:`pyro.infer.TraceEnum_ELBO`,
    whose gradient is that of the exact marginal likelihood: at a fixed point the two agree (EM's
    gradient equals the marginal likelihood's gradient there), but their paths differ.

    The guide must hold only global sites (e.g. an ``AutoDelta`` for MAP); the model must enumerate one
    discrete site inside the ``"cells"`` plate (``dim=-1``), so that enumeration uses dim ``-2``.
    Like a Pyro ELBO, ``ExpectationMaximization()(model, guide)`` is a torch module returning the loss.

    Examples
    --------
    >>> plan = TrainingPlan(cellassign_module, loss=ExpectationMaximization())  # doctest: +SKIP
    """

    def __call__(self, model: Callable, guide: Callable) -> torch.nn.Module:
        return _EMLoss(model, guide, self)

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        enumerated = poutine.enum(poutine.replay(model, trace=guide_trace), first_available_dim=-2)
        model_trace = poutine.trace(enumerated).get_trace(*args, **kwargs)
        local, global_ = 0.0, 0.0
        scale = 1.0
        for site in model_trace.nodes.values():
            if site["type"] != "sample":
                continue
            log_prob = site["fn"].log_prob(site["value"])
            if cell_plate_dim(site) is None:
                global_ = global_ + log_prob.sum()
            else:
                local = local + log_prob  # (n_types, n_cells) once broadcast
                scale = site["scale"]  # n_obs / minibatch size, from the subsampled plate
        responsibilities = torch.softmax(local.detach(), dim=-2)
        expected = (responsibilities * local).sum() * scale + global_
        entropy_free_guide = sum(
            site["fn"].log_prob(site["value"]).sum()
            for site in guide_trace.nodes.values()
            if site["type"] == "sample"
        )
        return -(expected - entropy_free_guide)


class _EMLoss(torch.nn.Module):
    def __init__(self, model: Callable, guide: Callable, objective: ExpectationMaximization):
        super().__init__()
        self.model, self.guide, self.objective = model, guide, objective

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.objective.differentiable_loss(self.model, self.guide, *args, **kwargs)
