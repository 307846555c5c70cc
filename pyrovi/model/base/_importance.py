"""Importance weights of the guide as proposal for each cell's marginal likelihood ``p(x)``.

One draw ``z_k ~ q(z | x)`` of a cell gives the log-weight ``log p(x, z_k) - log q(z_k | x)``
(:func:`~pyrovi.module.base.per_cell_log_weights`). :meth:`VAEMixin.get_marginal_ll` reduces the draws to
``logsumexp_k - log K``; model comparison (:func:`pyrovi.criticism.compare`) also needs the draws themselves,
for Pareto-smoothed importance sampling diagnostics, so both read them here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from ..._checks import check_int
from ..._pyro_lock import pyro_global_state, pyro_lock, refuse_if_training_elsewhere, restore_pyro_global_state
from ...module.base import per_cell_log_weights, trace_pair
from ._minified_mixin import refuse_if_minified


def log_importance_weights(
    model: Any,
    adata: AnnData | None = None,
    indices: Sequence[int] | None = None,
    n_samples: int = 100,
    batch_size: int | None = None,
    dataloader: Iterable[dict[str, torch.Tensor]] | None = None,
    data_loader_kwargs: dict[str, Any] | None = None,
    n_samples_per_pass: int = 1,
) -> torch.Tensor:
    """Log importance weights ``log p(x, z_k) - log q(z_k | x)``, shape ``(n_samples, n_cells)``.

    Parameters
    ----------
    model
        A fitted model with a :class:`VAEMixin` (SCVI, TOTALVI, SCANVI, ...): its cells' observed sites all
        count, jointly (TOTALVI: RNA and protein).
    adata, indices, batch_size, dataloader, data_loader_kwargs
        Cells to evaluate, as for :meth:`VAEMixin.get_marginal_ll`.
    n_samples
        Draws ``K`` per cell.
    n_samples_per_pass
        Draws traced at once (each minibatch's cells repeated this many times).

    Examples
    --------
    >>> from pyrovi.model.base._importance import log_importance_weights
    >>> w = log_importance_weights(model, indices=[0, 1, 2], n_samples=10)
    >>> tuple(w.shape)
    (10, 3)
    """
    check_int("n_samples", n_samples)
    check_int("n_samples_per_pass", n_samples_per_pass)
    with pyro_lock(), torch.inference_mode():
        refuse_if_training_elsewhere(model)
        if dataloader is None:
            refuse_if_minified(model, adata, "get_marginal_ll")
        saved = pyro_global_state()
        try:
            return _draws(model, model._query_batches(adata, indices, batch_size, dataloader, data_loader_kwargs),
                          n_samples, min(n_samples_per_pass, n_samples))
        except BaseException:
            restore_pyro_global_state(saved)
            raise


def _draws(model: Any, batches: Iterable[dict[str, torch.Tensor]], n_samples: int, per_pass: int) -> torch.Tensor:
    model.module.eval()
    out = []
    for batch in batches:
        n_cells = next(iter(batch.values())).shape[0]
        weights, done = [], 0
        while done < n_samples:
            k = min(per_pass, n_samples - done)
            # k draws of each cell at once: the minibatch's rows repeated, one draw per row
            rows = torch.arange(n_cells).repeat_interleave(k)
            args, kwargs = model._fn_args({key: value[rows] for key, value in batch.items()} if k > 1 else batch)
            w = per_cell_log_weights(*trace_pair(model.module.model, model.module.guide, args, kwargs))
            weights.append(w.reshape(n_cells, k))
            done += k
        out.append(torch.cat(weights, 1))
    if not out:
        raise ValueError("The query selects no cells; pass at least one cell (indices) or a non-empty dataloader.")
    return torch.cat(out).T
