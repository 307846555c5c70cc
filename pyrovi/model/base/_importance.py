"""Importance weights of the guide as proposal for each cell's marginal likelihood ``p(x)``.

One draw ``z_k ~ q(z | x)`` of a cell gives the log-weight ``log p(x, z_k) - log q(z_k | x)``
(:func:`~pyrovi.module.base.per_cell_log_weights`). :meth:`VAEMixin.get_marginal_ll` reduces the draws to
``logsumexp_k - log K``; model comparison (:func:`pyrovi.criticism.compare`) also needs the draws themselves,
for Pareto-smoothed importance sampling diagnostics, so both read them here.

A ``modality`` restricts the evidence to some observed sites (TOTALVI's RNA or proteins): the weights keep
every latent site's ``log p - log q`` and only that modality's ``log p(x_m | z)``, with the same guide as
proposal, and so estimate the marginal likelihood ``p(x_m)`` of that modality alone. ``"joint"`` (the
default, and what ``get_marginal_ll`` estimates) counts every observed site.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from ..._checks import check_choice, check_int
from ..._pyro_lock import pyro_global_state, pyro_lock, refuse_if_training_elsewhere, restore_pyro_global_state
from ...module.base import per_cell_log_weights, refine_proposal, refined_guide, trace_pair
from ._minified_mixin import refuse_if_minified


#: the modality of every observed site together, which every model has
JOINT = "joint"
#: the importance-sampling proposals: the amortized guide, or the guide refined cell by cell
PROPOSALS = ("guide", "refined")


def model_modalities(model: Any) -> list[str]:
    """The modalities whose marginal likelihood ``model`` can estimate: ``"joint"``, then its module's own.

    Examples
    --------
    >>> from pyrovi.model.base._importance import model_modalities
    >>> model_modalities(model)  # an SCVI
    ['joint', 'rna']
    """
    return [JOINT, *getattr(model.module, "modality_sites", {})]


def modality_observed_sites(model: Any, modality: str) -> tuple[str, ...] | None:
    """The observed sites the weights of ``modality`` score (``None``: all, for ``"joint"``); clear errors.

    Examples
    --------
    >>> from pyrovi.model.base._importance import modality_observed_sites
    >>> modality_observed_sites(model, "rna"), modality_observed_sites(model, "joint")
    (('x',), None)
    """
    modalities = model_modalities(model)
    if not isinstance(modality, str):
        raise TypeError(f"modality must be a string, one of {modalities}, got {type(modality).__name__} {modality!r}.")
    if modality not in modalities:
        raise ValueError(
            f"{type(model).__name__} has no modality {modality!r}; its modalities are {modalities} ('joint': all "
            "observed data together). Pass one of them, e.g. modality='joint'."
        )
    return None if modality == JOINT else tuple(model.module.modality_sites[modality])


def log_importance_weights(
    model: Any,
    adata: AnnData | None = None,
    indices: Sequence[int] | None = None,
    n_samples: int = 100,
    batch_size: int | None = None,
    dataloader: Iterable[dict[str, torch.Tensor]] | None = None,
    data_loader_kwargs: dict[str, Any] | None = None,
    n_samples_per_pass: int = 1,
    modality: str = JOINT,
    proposal: str = "guide",
) -> torch.Tensor:
    """Log importance weights ``log p(x, z_k) - log q(z_k | x)``, shape ``(n_samples, n_cells)``.

    Parameters
    ----------
    model
        A fitted model with a :class:`VAEMixin` (SCVI, TOTALVI, SCANVI, ...).
    adata, indices, batch_size, dataloader, data_loader_kwargs
        Cells to evaluate, as for :meth:`VAEMixin.get_marginal_ll`.
    n_samples
        Draws ``K`` per cell.
    n_samples_per_pass
        Draws traced at once (each minibatch's cells repeated this many times).
    modality
        The observed data that count as evidence ``x``: ``"joint"`` (all of them: TOTALVI's RNA and proteins,
        SCANVI's counts and the labels of labelled cells), or one of the module's ``modality_sites``:
        ``"rna"`` (every model), ``"protein"`` (TOTALVI), ``"labels"`` (SCANVI). The other observed data are
        marginalised: a leaf's term is left out, SCANVI's labels are hidden (every cell read as unlabelled).
    proposal
        ``"guide"``: the amortized guide ``q(z | x)`` (what ``get_marginal_ll`` uses); ``"refined"``: for each
        cell, the guide's Gaussian sites optimised for that cell and widened
        (:func:`~pyrovi.module.base.refine_proposal`), a better proposal for cells the encoder fits poorly.

    Examples
    --------
    >>> from pyrovi.model.base._importance import log_importance_weights
    >>> w = log_importance_weights(model, indices=[0, 1, 2], n_samples=10)
    >>> tuple(w.shape)
    (10, 3)
    """
    check_int("n_samples", n_samples)
    check_int("n_samples_per_pass", n_samples_per_pass)
    observed = modality_observed_sites(model, modality)
    check_choice("proposal", proposal, PROPOSALS)
    sites = tuple(getattr(model.module, "proposal_sites", ()))
    if proposal == "refined" and not sites:
        raise ValueError(
            f"proposal='refined' needs the module's proposal_sites (the per-cell latents whose guide reads the data "
            f"only), and {type(model.module).__name__} declares none; set proposal_sites on the module class, or "
            "use proposal='guide'."
        )
    refine = sites if proposal == "refined" else ()
    # refining needs gradients, which inference mode forbids even for the minibatches it creates
    with pyro_lock(), torch.inference_mode(not refine), torch.no_grad():
        refuse_if_training_elsewhere(model)
        if dataloader is None:
            refuse_if_minified(model, adata, "get_marginal_ll")
        saved = pyro_global_state()
        try:
            batches = model._query_batches(adata, indices, batch_size, dataloader, data_loader_kwargs)
            return _draws(model, batches, n_samples, min(n_samples_per_pass, n_samples), modality, observed, refine)
        except BaseException:
            restore_pyro_global_state(saved)
            raise


def _draws(
    model: Any,
    batches: Iterable[dict[str, torch.Tensor]],
    n_samples: int,
    per_pass: int,
    modality: str,
    observed: tuple[str, ...] | None,
    refine: tuple[str, ...] = (),
) -> torch.Tensor:
    module = model.module
    module.eval()
    out = []
    for batch in batches:
        n_cells = next(iter(batch.values())).shape[0]
        guide, refined = module.guide, None
        if refine:
            args, kwargs = module.marginal_args(modality, *model._fn_args(batch))
            refined = refine_proposal(module.model, module.guide, args, kwargs, refine)
        weights, done = [], 0
        while done < n_samples:
            k = min(per_pass, n_samples - done)
            # k draws of each cell at once: the minibatch's rows repeated, one draw per row
            rows = torch.arange(n_cells).repeat_interleave(k)
            args, kwargs = model._fn_args({key: value[rows] for key, value in batch.items()} if k > 1 else batch)
            args, kwargs = module.marginal_args(modality, args, kwargs)
            if refined is not None:
                guide = refined_guide(module.guide, refined, rows if k > 1 else None)
            w = per_cell_log_weights(*trace_pair(module.model, guide, args, kwargs), observed)
            weights.append(w.reshape(n_cells, k))
            done += k
        out.append(torch.cat(weights, 1))
    if not out:
        raise ValueError("The query selects no cells; pass at least one cell (indices) or a non-empty dataloader.")
    return torch.cat(out).T
