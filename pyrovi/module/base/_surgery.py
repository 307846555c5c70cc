"""Architecture surgery for query mapping: a module built for more categories takes a reference's weights.

A query model (scArches, Lotfollahi et al. 2022) is the reference model built for the query's categories:
the reference's batches (and categories of other covariates) first, in their order, then the query's new
ones. Every tensor that has an axis over categories is longer along it, and nothing else changes. Grafting
copies each reference tensor into the leading part of the query's tensor and reports, per parameter, which
entries are new: those, and only those, are trained by default (:func:`freeze_for_query`).

Where a category axis sits:

* an :class:`~pyrovi.module.nn.FCLayers` block reads ``[h | one-hot(c_1) | ... | one-hot(c_k) | cont]``,
  so a category's column lies inside the weight matrix; new categories' columns are inserted after the old
  ones of the same covariate. A covariate with one category has no columns at all (a constant carries no
  information), so a reference with one batch gains columns for its batch too: they are set to zero, which
  is exactly what the reference computed, and stay frozen;
* every other tensor (embedding rows, per-batch dispersions, library priors, protein backgrounds, ...)
  keeps the reference's categories as its leading entries along each longer axis.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn import FCLayers


def graft_reference(reference: nn.Module, query: nn.Module) -> dict[str, torch.Tensor]:
    """Copy ``reference``'s weights into ``query``, built alike for as many or more categories.

    Parameters
    ----------
    reference
        The trained module (unchanged: its tensors are copied, never shared).
    query
        A module of the same class and hyperparameters, built for the query's categories (a superset of the
        reference's, new ones last). Its fresh initial values are kept for the new categories' entries.

    Returns
    -------
    For each parameter name of ``query``, a boolean tensor of its shape: True where the entry belongs to a
    category the reference did not have.

    Examples
    --------
    >>> from pyrovi.module import VAE
    >>> reference, query = VAE(n_input=20, n_batch=2), VAE(n_input=20, n_batch=3)
    >>> new = graft_reference(reference, query)
    >>> torch.equal(query.decoder.px_decoder.layers[0][0].weight[:, :12],
    ...             reference.decoder.px_decoder.layers[0][0].weight)
    True
    >>> new["decoder.px_decoder.layers.0.0.weight"][0].nonzero().flatten().tolist()  # the third batch's column
    [12]
    """
    ref_state, query_state = reference.state_dict(), query.state_dict()
    if set(ref_state) != set(query_state):
        only_ref = sorted(set(ref_state) - set(query_state))[:5]
        only_query = sorted(set(query_state) - set(ref_state))[:5]
        raise ValueError(
            "The query module's architecture differs from the reference's (tensors only in the reference: "
            f"{only_ref}; only in the query: {only_query}): it must be built with the reference's hyperparameters."
        )
    columns = _fc_column_maps(reference, query)
    grafted: dict[str, torch.Tensor] = {}
    new: dict[str, torch.Tensor] = {}
    for key, fresh in query_state.items():
        old = ref_state[key].to(fresh.device)
        if key in columns:
            grafted[key], new[key] = _graft_columns(old, fresh, *columns[key])
        else:
            grafted[key], new[key] = _graft_leading(key, old, fresh)
    query.load_state_dict(grafted, strict=True)
    return {name: new[name] for name, _ in query.named_parameters()}


def _graft_leading(key: str, old: torch.Tensor, fresh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``old`` in the leading entries of a copy of ``fresh``, and the mask of the entries it did not fill."""
    if old.dim() != fresh.dim() or any(o > f for o, f in zip(old.shape, fresh.shape)):
        raise ValueError(
            f"The reference's {key} has shape {tuple(old.shape)}, which does not fit in the query's "
            f"{tuple(fresh.shape)}: the query module must be built for the reference's categories and more."
        )
    lead = tuple(slice(0, n) for n in old.shape)
    out = fresh.detach().clone()
    out[lead] = old
    is_new = torch.ones(fresh.shape, dtype=torch.bool, device=fresh.device)
    is_new[lead] = False
    return out, is_new


def _fc_column_maps(reference: nn.Module, query: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For the weight of each covariate-reading linear map: (new column of each old column, mask of old-category
    columns the reference had no column for)."""
    maps = {}
    for name, block in query.named_modules():
        if not isinstance(block, FCLayers):
            continue
        old_block = reference.get_submodule(name)
        for i, layer in enumerate(block.layers):
            if not (i == 0 or block.inject_covariates):
                continue
            n_h = layer[0].in_features - _n_covariate_columns(block)
            prefix = f"{name}." if name else ""
            maps[f"{prefix}layers.{i}.0.weight"] = _column_map(n_h, old_block.n_cat_list, block.n_cat_list,
                                                               block.n_cont)  # fmt: skip
    return maps


def _n_covariate_columns(block: FCLayers) -> int:
    return sum(n for n in block.n_cat_list if n > 1) + block.n_cont


def _column_map(n_h: int, old_cats: list[int], new_cats: list[int], n_cont: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each column of the reference's ``[h | one-hots | cont]`` goes in the query's, and which of the
    query's columns stand for old categories without a reference column (a covariate that had one category)."""
    if len(old_cats) != len(new_cats) or any(o > n for o, n in zip(old_cats, new_cats)):
        raise ValueError(f"The query's categories per covariate {new_cats} do not extend the reference's {old_cats}.")
    targets = list(range(n_h))
    uncovered = []
    offset = n_h
    for n_old, n_new in zip(old_cats, new_cats):
        width = n_new if n_new > 1 else 0
        if n_old > 1:
            targets.extend(range(offset, offset + n_old))
        elif width:
            uncovered.extend(range(offset, offset + n_old))
        offset += width
    targets.extend(range(offset, offset + n_cont))
    zeroed = torch.zeros(offset + n_cont, dtype=torch.bool)
    zeroed[uncovered] = True
    return torch.tensor(targets), zeroed


def _graft_columns(
    old: torch.Tensor, fresh: torch.Tensor, targets: torch.Tensor, zeroed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's columns moved to their places among the query's; columns of old categories the reference
    had none for are zero (its output did not depend on them); the remaining columns are new."""
    if old.shape[1] != len(targets) or fresh.shape[1] != len(zeroed):
        raise ValueError(
            f"A covariate-reading layer has {old.shape[1]} input columns in the reference and {fresh.shape[1]} in "
            f"the query, which its covariates do not explain ({len(targets)} and {len(zeroed)} expected)."
        )
    targets, zeroed = targets.to(fresh.device), zeroed.to(fresh.device)
    out = fresh.detach().clone()
    out[:, targets] = old
    out[:, zeroed] = 0.0
    is_new = torch.ones(fresh.shape, dtype=torch.bool, device=fresh.device)
    is_new[:, targets] = False
    is_new[:, zeroed] = False
    return out, is_new
