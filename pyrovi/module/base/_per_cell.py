"""Per-cell quantities read off Pyro traces: reconstruction, KL and importance weights.

Pyro's ELBOs return one number for a minibatch. Diagnostics and queries need it per cell, split into
terms: the expected log-likelihood of the observed sites, the KL divergence of each local latent site
(analytic where torch knows it, otherwise a single-sample Monte Carlo estimate), and for importance
sampling ``log p(x, z) - log q(z | x)``. Each function traces the guide, replays the model on the
guide's draws, and reduces every site inside the ``"cells"`` plate to one value per cell. Sites
outside the cell plate (global latents) are not per-cell quantities and are left out.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Callable

import torch
from pyro import poutine
from torch.distributions import kl_divergence

from ..._pyro_lock import pyro_lock

CELL_PLATE = "cells"


def cell_plate_dim(site: dict) -> int | None:
    """The batch dimension of the ``"cells"`` plate at a trace site, ``None`` for a global site."""
    for frame in site["cond_indep_stack"]:
        if frame.name == CELL_PLATE:
            return frame.dim
    return None


def _per_cell(value: torch.Tensor, site: dict, cell_dim: int) -> torch.Tensor:
    """Sum a batch-shaped tensor over every batch dimension except the cell plate's."""
    value = value.expand(site["fn"].batch_shape) if value.dim() < -cell_dim else value
    value = value.movedim(cell_dim, -1)
    return value.reshape(-1, value.shape[-1]).sum(0)


def trace_pair(
    model: Callable, guide: Callable, args: tuple, kwargs: dict[str, Any]
) -> tuple[poutine.Trace, poutine.Trace]:
    """Trace ``guide``, then ``model`` replayed on the guide's draws; returns ``(model_trace, guide_trace)``.

    Examples
    --------
    >>> vae = pyrovi.module.VAE(n_input=20)
    >>> x, idx = torch.poisson(torch.full((8, 20), 2.0)), torch.arange(8)
    >>> model_trace, guide_trace = trace_pair(vae.model, vae.guide, (x,), {"indices": idx})
    >>> model_trace.nodes["z"]["value"] is guide_trace.nodes["z"]["value"]
    True
    """
    with pyro_lock():  # one Pyro run at a time in the process (pyrovi._pyro_lock)
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def per_cell_elbo_terms(
    model_trace: poutine.Trace, guide_trace: poutine.Trace
) -> dict[str, torch.Tensor]:
    """Per-cell ELBO split into reconstruction and KL terms, unscaled by plates or warm-up.

    Returns
    -------
    dict with ``"reconstruction"`` (sum over observed sites of ``log p(x | z)``), ``"kl_local"`` (sum
    over latent sites of ``KL(q || p)``, analytic where available) and ``"elbo"`` (their difference),
    each of shape ``(n_cells,)``.

    Examples
    --------
    >>> vae = pyrovi.module.VAE(n_input=20)
    >>> x, idx = torch.poisson(torch.full((8, 20), 2.0)), torch.arange(8)
    >>> model_trace, guide_trace = trace_pair(vae.model, vae.guide, (x,), {"indices": idx})
    >>> per_cell_elbo_terms(model_trace, guide_trace)["elbo"].shape
    torch.Size([8])
    """
    reconstruction, kl = 0.0, 0.0
    guide_order = _latent_order(guide_trace)
    model_parents: list[str] = []  # latent sites the model drew before this one: what its prior may read
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        dim = cell_plate_dim(site)
        if site["is_observed"]:
            if dim is not None:
                reconstruction = reconstruction + _per_cell(site["fn"].log_prob(site["value"]), site, dim)
            continue
        # KL(q(z) || p(z | parents)) is E_q[log q - log p] only if the guide drew every parent before z; a
        # parent drawn from z in the guide (SCANVI's u and y, drawn from q(. | z)) is not independent of z
        analytic = all(guide_order.get(parent, -1) < guide_order.get(name, -1) for parent in model_parents)
        model_parents.append(name)
        if dim is not None:
            kl = kl + _per_cell(_kl_site(site, guide_trace.nodes[name]["fn"], analytic), site, dim)
    reconstruction = torch.as_tensor(reconstruction)
    kl = torch.as_tensor(kl, device=reconstruction.device)
    return {"reconstruction": reconstruction, "kl_local": kl, "elbo": reconstruction - kl}


def _latent_order(trace: poutine.Trace) -> dict[str, int]:
    """Position of each latent sample site in the order ``trace`` drew them."""
    latent = (name for name, site in trace.nodes.items() if site["type"] == "sample" and not site["is_observed"])
    return {name: position for position, name in enumerate(latent)}


def _kl_site(site: dict[str, Any], guide_fn: Any, analytic: bool) -> torch.Tensor:
    """``KL(q || p)`` of one latent site: closed form where allowed and known, else ``log q - log p`` at the draw."""
    if analytic:
        try:
            return kl_divergence(guide_fn, site["fn"])
        except NotImplementedError:
            pass
    return guide_fn.log_prob(site["value"]) - site["fn"].log_prob(site["value"])


def per_cell_log_likelihood(model_trace: poutine.Trace, name: str) -> torch.Tensor:
    """``log p(x | z)`` per cell of one observed site ``name`` of a replayed model trace, unscaled.

    Masked entries (e.g. proteins missing from a batch's panel) contribute nothing, as in the ELBO.

    Examples
    --------
    >>> vae = pyrovi.module.VAE(n_input=20)
    >>> x, idx = torch.poisson(torch.full((8, 20), 2.0)), torch.arange(8)
    >>> model_trace, _ = trace_pair(vae.model, vae.guide, (x,), {"indices": idx})
    >>> per_cell_log_likelihood(model_trace, "x").shape
    torch.Size([8])
    """
    site = model_trace.nodes.get(name)
    if site is None or site["type"] != "sample" or not site["is_observed"] or cell_plate_dim(site) is None:
        raise ValueError(f"{name!r} is not an observed site inside the {CELL_PLATE!r} plate of this model trace.")
    return _per_cell(site["fn"].log_prob(site["value"]), site, cell_plate_dim(site))


def per_cell_log_weights(
    model_trace: poutine.Trace, guide_trace: poutine.Trace, observed: Collection[str] | None = None
) -> torch.Tensor:
    """``log p(x, z) - log q(z | x)`` per cell for one draw ``z ~ q``: the importance weight of the draw.

    Averaging ``exp`` of these over draws estimates the marginal likelihood ``p(x)`` of each cell.
    ``observed`` names the observed sites ``x`` that count (default: all of them); every latent site's
    ``log p - log q`` counts whatever it is. Leaving an observed site out marginalises it when it is a leaf of
    the model (the weights then estimate the marginal likelihood of the others, with the same proposal).

    Examples
    --------
    >>> vae = pyrovi.module.VAE(n_input=20)
    >>> x, idx = torch.poisson(torch.full((8, 20), 2.0)), torch.arange(8)
    >>> w = torch.stack([per_cell_log_weights(*trace_pair(vae.model, vae.guide, (x,), {"indices": idx}))
    ...                  for _ in range(100)])
    >>> import math
    >>> log_px = torch.logsumexp(w, 0) - math.log(100)  # the importance-sampled log p(x) of each cell
    >>> log_px.shape
    torch.Size([8])
    >>> traces = trace_pair(vae.model, vae.guide, (x,), {"indices": idx})
    >>> latent_only = per_cell_log_weights(*traces, observed=())  # log p(z) - log q(z | x)
    >>> bool(torch.allclose(per_cell_log_weights(*traces) - latent_only, per_cell_log_likelihood(traces[0], "x")))
    True
    """
    if observed is not None:
        observed = {observed} if isinstance(observed, str) else set(observed)
        for name in observed:
            site = model_trace.nodes.get(name)
            if site is None or site["type"] != "sample" or not site["is_observed"] or cell_plate_dim(site) is None:
                raise ValueError(
                    f"{name!r} is not an observed site inside the {CELL_PLATE!r} plate of this model trace; pass "
                    "the names of its observed per-cell sites (or None for all of them)."
                )
    total = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or (dim := cell_plate_dim(site)) is None:
                continue
            if observed is not None and site["is_observed"] and name not in observed:
                continue
            total = total + sign * _per_cell(site["fn"].log_prob(site["value"]), site, dim)
    return total


__all__ = ["cell_plate_dim", "trace_pair", "per_cell_elbo_terms", "per_cell_log_weights", "CELL_PLATE"]
