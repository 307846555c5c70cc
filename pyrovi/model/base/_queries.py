"""Pieces shared by the models' expression queries: cell selections, likelihood means, latent libraries and
the importance weights of posterior draws (``weights="importance"``)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from pyro import poutine

from ..._checks import check_bool, check_int

from ...module.base import per_cell_log_likelihood

#: Settings of the importance weights and their defaults (scvi-tools' names and values).
IMPORTANCE_DEFAULTS = {"max_cells": 1024, "truncation": False, "n_mc_samples": 500, "n_mc_samples_per_pass": 250}
#: Values evaluated at once when each anchor cell's likelihood is computed under every draw (cells x genes).
_ELEMENT_BUDGET = 2**24


def check_weights(weights: Any, importance_weighting_kwargs: dict[str, Any]) -> None:
    """Raise a clear error for an unknown ``weights`` or importance-weighting setting.

    Examples
    --------
    >>> check_weights("importance", {"max_cells": 200})
    """
    if weights not in (None, "uniform", "importance"):
        raise ValueError(f"weights must be None, 'uniform' or 'importance', got {weights!r}.")
    unknown = sorted(set(importance_weighting_kwargs) - set(IMPORTANCE_DEFAULTS))
    if unknown:
        raise TypeError(
            f"unknown importance weighting settings {unknown}; the settings are {sorted(IMPORTANCE_DEFAULTS)}."
        )
    for name, value in importance_weighting_kwargs.items():
        if name == "truncation":
            check_bool(name, value)
        else:
            check_int(name, value)


def selected_cells(n_obs: int, indices: Sequence[int] | None) -> np.ndarray:
    """Row positions of the selected cells (all when ``indices`` is None)."""
    cells = np.arange(n_obs) if indices is None else np.asarray(indices)
    if cells.dtype == np.bool_:
        cells = np.flatnonzero(cells)
    if cells.size == 0:
        raise ValueError("indices selects no cells; pass at least one cell.")
    return cells.astype(np.int64)


def cell_names(adata: AnnData, indices: Sequence[int] | np.ndarray | None) -> pd.Index:
    """The obs names of the cells a query answered for (all cells when ``indices`` is None): a result's row index.

    Examples
    --------
    >>> list(cell_names(adata, [2, 0]))
    ['cell_2', 'cell_0']
    """
    return adata.obs_names if indices is None else adata.obs_names[np.asarray(indices)]


def likelihood_mean(fn: Any) -> torch.Tensor:
    """Mean of the innermost count distribution of an observed site, ``library * rho`` for scVI.

    Wrappers are stripped (``.to_event``, ``.mask``, zero inflation), so the zero-inflation gate is left
    out, as in scvi-tools' ``library_size="latent"``.
    """
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn.mean


def latent_draw(model_trace: poutine.Trace, site: str = "z") -> tuple[torch.Tensor, torch.Tensor]:
    """A draw of the latent ``site`` and its log-density under the prior, per cell."""
    node = model_trace.nodes[site]
    value = node["value"]
    return value, node["fn"].log_prob(value)


@torch.inference_mode()
def latent_library_size(
    model: Any,
    adata: AnnData | None,
    indices: Sequence[int] | None,
    give_mean: bool,
    batch_size: int | None,
    dataloader: Iterable[dict[str, torch.Tensor]] | None,
    data_loader_kwargs: dict[str, Any] | None,
) -> np.ndarray:
    """``(n_cells, 1)`` library sizes: observed (total counts or size factor) or the latent posterior's."""
    check_bool("give_mean", give_mean)
    module = model.module
    module.eval()
    out = []
    for batch in model._query_batches(adata, indices, batch_size, dataloader, data_loader_kwargs):
        args, kwargs = model._fn_args(batch)
        if module.use_observed_lib_size:
            size_factor = kwargs.get("size_factor")
            out.append((args[0].sum(-1) if size_factor is None else size_factor).reshape(-1, 1))
            continue
        fn = poutine.trace(module.guide).get_trace(*args, **kwargs).nodes["log_library"]["fn"]
        normal = fn
        while hasattr(normal, "base_dist"):
            normal = normal.base_dist
        out.append((normal.loc + normal.scale**2 / 2).exp() if give_mean else fn.sample().exp())
    return torch.cat(out).reshape(-1, 1).cpu().numpy()


@torch.inference_mode()
def importance_probabilities(
    model: Any,
    adata: AnnData | None,
    cells: np.ndarray,
    z: torch.Tensor | np.ndarray,
    log_pz: torch.Tensor | np.ndarray,
    batch_size: int | None = None,
    max_cells: int = 1024,
    truncation: bool = False,
    n_mc_samples: int = 500,
    n_mc_samples_per_pass: int = 250,
) -> np.ndarray:
    """Self-normalised importance weights of ``K`` posterior draws ``z`` of a group of cells.

    The draws come from the mixture of the approximate posteriors ``(1/A) sum_a q(z | x_a)``; the target is
    the mixture of the exact ones, ``(1/A) sum_a p(z) p(x_a | z) / p(x_a)``, over ``A`` anchor cells (up to
    ``max_cells`` of ``cells``, picked at random). Each draw's weight is the ratio of the two densities;
    ``log p(x_a)`` is the importance-sampled marginal likelihood with ``n_mc_samples`` draws. Each anchor's
    likelihood under draw ``k`` is the model at the anchor's own data and covariates with ``z`` set to
    ``z_k`` (other latents, such as a latent library, drawn from the anchor's guide). With ``truncation``,
    weights are capped at ``sqrt(K)`` times their mean (truncated importance sampling, Ionides 2008).

    Returns
    -------
    Probabilities ``(K,)`` summing to 1.
    """
    z = torch.as_tensor(z)
    log_pz = torch.as_tensor(log_pz, dtype=torch.float64)
    anchors = np.unique(cells)
    if anchors.size > max_cells:
        anchors = np.sort(anchors[torch.randperm(anchors.size)[:max_cells].numpy()])
    log_px = torch.as_tensor(
        model.get_marginal_ll(adata, indices=anchors, n_mc_samples=n_mc_samples, return_mean=False,
                              batch_size=batch_size, n_mc_samples_per_pass=min(n_mc_samples_per_pass, n_mc_samples)),
        dtype=torch.float64,
    )  # fmt: skip
    module, site = model.module, model._latent_site
    n_draws = z.shape[0]
    n_features = sum(model.summary_stats.get(k, 0) for k in ("n_vars", "n_protein_expression")) or 1
    per_pass = max(1, _ELEMENT_BUDGET // (n_draws * n_features))
    log_q, log_lik = [], []
    for batch in model._make_data_loader(adata, anchors, per_pass):
        args, kwargs = model._fn_args(batch)
        z_device = z.to(args[0].device)
        guide_trace = poutine.trace(module.guide).get_trace(*args, **kwargs)
        q = guide_trace.nodes[site]["fn"]  # batch shape (A,)
        log_q.append(q.log_prob(z_device.unsqueeze(1)).double().cpu())  # (K, A)
        n_anchor = args[0].shape[0]
        # every anchor under every draw: rows (a, k) in anchor-major order
        rows = torch.arange(n_anchor, device=args[0].device).repeat_interleave(n_draws)
        rep_batch = {key: value[rows] for key, value in batch.items()}
        rep_args, rep_kwargs = model._fn_args(rep_batch)
        rep_guide = poutine.trace(module.guide).get_trace(*rep_args, **rep_kwargs)
        conditioned = poutine.condition(module.model, data={site: z_device.repeat(n_anchor, 1)})
        model_trace = poutine.trace(poutine.replay(conditioned, trace=rep_guide)).get_trace(*rep_args, **rep_kwargs)
        lik = sum(per_cell_log_likelihood(model_trace, name) for name in model._observed_sites)
        log_lik.append(lik.reshape(n_anchor, n_draws).T.double().cpu())  # (K, A)
    log_q_all = torch.cat(log_q, dim=1)
    log_lik_all = torch.cat(log_lik, dim=1)
    log_w = log_pz + torch.logsumexp(log_lik_all - log_px, dim=1) - torch.logsumexp(log_q_all, dim=1)
    if truncation:
        cap = torch.logsumexp(log_w, 0) - math.log(n_draws) + 0.5 * math.log(n_draws)
        log_w = torch.minimum(log_w, cap)
    return torch.softmax(log_w, 0).numpy()


def check_library_size(library_size: Any, name: str = "library_size", allow_latent: bool = True) -> None:
    """``library_size`` is ``"latent"`` or a finite positive number (expression is ``library_size * rho``).

    ``name`` is the argument's name in the message (e.g. ``rna_size_factor``); ``allow_latent=False`` for
    queries that take a number only.

    Examples
    --------
    >>> check_library_size(-1, "rna_size_factor", allow_latent=False)
    Traceback (most recent call last):
    ...
    ValueError: rna_size_factor must be a positive number (e.g. 1e4 for counts per 10,000), got -1.
    """
    if allow_latent and isinstance(library_size, str) and library_size == "latent":
        return
    if isinstance(library_size, bool) or not isinstance(library_size, numbers.Real) or not (
        np.isfinite(library_size) and library_size > 0
    ):
        latent = " or 'latent'" if allow_latent else ""
        raise ValueError(
            f"{name} must be a positive number (e.g. 1e4 for counts per 10,000){latent}, got {library_size!r}."
        )
