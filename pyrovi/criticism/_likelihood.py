"""Posterior draws of the observed site's likelihood: pointwise log-likelihoods and replicated counts.

The models have no query for ``log p(x_ng | z_s)`` per draw, so it is read here from the Pyro traces,
through the public ``trace_pair`` and the models' data loading: trace the guide on a minibatch (a draw
``z_s ~ q(z | x)``), replay the model on it, and evaluate the observed site's distribution. The site is
``Independent(likelihood, 1)`` over genes, so its ``base_dist`` gives one value per cell and gene.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from anndata import AnnData
from torch.distributions import Distribution, Independent

from .._pyro_lock import refuse_if_training_elsewhere, pyro_lock
from ..module.base import trace_pair


@dataclass
class _Draws:
    """One minibatch: observed counts ``(B, G)``, log-likelihoods ``(S, B, G)`` or ``(S, B)``, replicates."""

    observed: torch.Tensor
    log_likelihood: torch.Tensor
    replicates: torch.Tensor | None


def _pointwise(fn: Distribution) -> Distribution:
    """The per-gene distribution of an observed site (unwrap the ``to_event(1)`` over genes)."""
    if isinstance(fn, Independent) and fn.reinterpreted_batch_ndims == 1:
        return fn.base_dist
    if fn.event_shape == ():
        return fn
    raise TypeError(
        f"The observed site's distribution {type(fn).__name__} (event shape {tuple(fn.event_shape)}) is not "
        "a product over genes; pointwise log-likelihoods need Independent(likelihood, 1)."
    )


@torch.inference_mode()
def iter_draws(
    model: Any,
    adata: AnnData | None,
    indices: np.ndarray,
    n_samples: int,
    batch_size: int | None,
    *,
    pointwise: bool,
    replicate: bool,
    site: str | None = None,
) -> Iterator[_Draws]:
    """For each minibatch of ``indices``: ``n_samples`` posterior draws of an observed site.

    The site is ``site``, by default the model's first observed site (its RNA counts). The replicates
    (when asked) come from the same draws of ``z`` as the log-likelihoods.
    """
    site = site or getattr(model, "_observed_sites", ("x",))[0]
    module = model.module
    with pyro_lock():
        refuse_if_training_elsewhere(model)
        module.eval()
    for batch in model._make_data_loader(adata, indices, batch_size):
        args, kwargs = model._fn_args(batch)
        log_liks, replicates, observed = [], [], None
        with pyro_lock():  # Pyro runs, one thread at a time (never held across the yield below)
            refuse_if_training_elsewhere(model)
            for _ in range(n_samples):
                model_trace, _ = trace_pair(module.model, module.guide, args, kwargs)
                node = model_trace.nodes[site]
                fn, observed = _pointwise(node["fn"]), node["value"]
                log_lik = fn.log_prob(observed)
                log_liks.append(log_lik if pointwise else log_lik.sum(-1))
                if replicate:
                    replicates.append(fn.sample())
        yield _Draws(observed, torch.stack(log_liks), torch.stack(replicates) if replicate else None)


def per_cell_log_predictive_density(
    model: Any,
    adata: AnnData | None,
    indices: np.ndarray,
    n_samples: int,
    batch_size: int | None,
    site: str | None = None,
) -> np.ndarray:
    """Per cell ``log (1/S) sum_s p(x_n | z_s)`` with ``z_s ~ q(z | x_n)``: shape ``(n_cells,)``.

    ``x`` is the observed ``site`` (default: the model's first). A masked site (proteins missing from a
    cell's batch) contributes its unmasked entries only.
    """
    draws_of = iter_draws(model, adata, indices, n_samples, batch_size, pointwise=False, replicate=False, site=site)
    per_cell = [torch.logsumexp(draws.log_likelihood.double(), 0) - math.log(n_samples) for draws in draws_of]
    return torch.cat(per_cell).cpu().numpy()
