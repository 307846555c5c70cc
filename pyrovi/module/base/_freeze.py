"""Which of a query model's weights train: the new categories' entries, and whatever the flags release.

Freezing is a property of each parameter, not a copy of the network: a parameter none of whose entries
trains gets ``requires_grad=False`` (the optimiser never sees it); a parameter that trains only in part (a
first layer's columns of new batches) keeps ``requires_grad`` and a gradient hook that zeroes the frozen
entries. With a zero gradient from the first step, Adam's moments stay zero and its update is exactly zero,
so frozen entries stay bitwise equal to the reference's (weight decay would still shrink them: query
models train with ``weight_decay=0``).

Every batch normalisation of a query module normalises by the reference's running statistics, in training as
at prediction (the ``freeze_batchnorm_*`` flags decide only whether its scale and shift train). Normalising
by the minibatch would cancel exactly what the query must learn: a query batch's one-hot column adds the
same vector to every cell of that batch, and a minibatch's mean removes it, so its gradient would be zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..._checks import check_bool
from ..nn import Encoder, FCLayers


@dataclass(frozen=True)
class QueryFreezing:
    """What a query model trains besides its new categories' entries (scArches' options, scvi-tools' names).

    Parameters
    ----------
    unfrozen
        Train everything (the other options are then ignored).
    freeze_dropout
        Switch dropout off while the query trains.
    freeze_expression
        Keep the encoders' first layer (the weights reading the genes) fixed.
    freeze_decoder_first_layer
        Keep the decoders' first layer fixed.
    freeze_batchnorm_encoder, freeze_batchnorm_decoder
        Keep the batch normalisations' scale, shift and running statistics fixed in the encoders (the guide's
        networks) or the decoders.
    freeze_classifier
        Keep a classifier (e.g. scANVI's) fixed.

    Examples
    --------
    >>> QueryFreezing(freeze_expression=False).freeze_expression
    False
    """

    unfrozen: bool = False
    freeze_dropout: bool = False
    freeze_expression: bool = True
    freeze_decoder_first_layer: bool = True
    freeze_batchnorm_encoder: bool = True
    freeze_batchnorm_decoder: bool = False
    freeze_classifier: bool = True

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            check_bool(name, value)


def freeze_for_query(module: nn.Module, new_entries: dict[str, torch.Tensor], options: QueryFreezing) -> dict[str, int]:
    """Freeze ``module``'s reference weights for query training: only ``new_entries`` and what ``options`` release train.

    Parameters
    ----------
    module
        A query module whose reference weights were grafted in (:func:`graft_reference`).
    new_entries
        Per parameter name, True where the entry belongs to a new category.
    options
        What else trains.

    Returns
    -------
    The number of trainable and of frozen parameter entries, under ``"trainable"`` and ``"frozen"``.

    Examples
    --------
    >>> from pyrovi.module import VAE
    >>> from pyrovi.module.base import graft_reference
    >>> reference, query = VAE(n_input=20, n_batch=2), VAE(n_input=20, n_batch=3)
    >>> counts = freeze_for_query(query, graft_reference(reference, query), QueryFreezing())
    >>> query.decoder.px_decoder.layers[0][0].weight.requires_grad, query.z_encoder.loc.weight.requires_grad
    (True, False)
    """
    trains = {name: mask.clone() for name, mask in new_entries.items()}
    if options.unfrozen:
        trains = {name: torch.ones_like(mask) for name, mask in trains.items()}
    for name, sub in module.named_modules():
        prefix = f"{name}." if name else ""
        side = _side(name)
        released = options.unfrozen or (
            ("classifier" in name and not options.freeze_classifier)
            or (isinstance(sub, nn.BatchNorm1d) and side == "encoder" and not options.freeze_batchnorm_encoder)
            or (isinstance(sub, nn.BatchNorm1d) and side == "decoder" and not options.freeze_batchnorm_decoder)
        )
        if released:
            for local, _ in sub.named_parameters(recurse=False):
                trains[prefix + local].fill_(True)
        first = _first_linear(sub, name, options)
        if first is not None:
            for local, _ in first.named_parameters(recurse=False):
                trains[f"{prefix}{_first_linear_path(sub)}.{local}"].fill_(True)
        if isinstance(sub, nn.Dropout) and options.freeze_dropout:
            sub.p = 0.0
    _normalise_by_running_statistics(module)
    counts = {"trainable": 0, "frozen": 0}
    owners = dict(module.named_modules())
    for name, param in module.named_parameters():
        mask = trains[name]
        counts["trainable"] += int(mask.sum())
        counts["frozen"] += mask.numel() - int(mask.sum())
        param.requires_grad_(bool(mask.any()))
        if mask.any() and not mask.all():
            owner_name, _, local = name.rpartition(".")
            _mask_gradient(owners[owner_name], local, param, ~mask)
    return counts


def _side(name: str) -> str | None:
    """``"encoder"`` or ``"decoder"`` from the module's top-level attribute (``z_encoder``, ``decoder``, ...)."""
    top = name.split(".", 1)[0]
    return "encoder" if "encoder" in top else "decoder" if "decoder" in top else None


def _first_linear(sub: nn.Module, name: str, options: QueryFreezing) -> nn.Linear | None:
    """The first layer a flag releases: an expression encoder's, or a decoder network's."""
    if isinstance(sub, Encoder) and not options.freeze_expression:
        return sub.encoder.layers[0][0]
    if isinstance(sub, FCLayers) and _side(name) == "decoder" and not options.freeze_decoder_first_layer:
        return sub.layers[0][0]
    return None


def _first_linear_path(sub: nn.Module) -> str:
    return "encoder.layers.0.0" if isinstance(sub, Encoder) else "layers.0.0"


def _mask_gradient(owner: nn.Module, local: str, param: nn.Parameter, frozen: torch.Tensor) -> None:
    """Zero the gradient of ``param``'s ``frozen`` entries; the mask is a buffer, so it follows the module's device."""
    buffer = f"_frozen_{local}"
    owner.register_buffer(buffer, frozen, persistent=False)
    param.register_hook(lambda grad: grad.masked_fill(getattr(owner, buffer), 0.0))


class _RunningStatisticsBatchNorm(nn.BatchNorm1d):
    """A batch normalisation that always uses its running statistics (and never updates them), as at prediction."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def _normalise_by_running_statistics(module: nn.Module) -> None:
    """Replace each ``BatchNorm1d`` by one fixed at its running statistics, keeping its tensors (same state keys)."""
    swaps = [(name, sub) for name, sub in module.named_modules() if type(sub) is nn.BatchNorm1d and sub.track_running_stats]
    for name, norm in swaps:
        fixed = _RunningStatisticsBatchNorm(norm.num_features, eps=norm.eps, momentum=norm.momentum, affine=norm.affine)
        fixed.to(norm.running_mean.device)
        fixed.load_state_dict(norm.state_dict())
        for local, param in norm.named_parameters(recurse=False):
            getattr(fixed, local).requires_grad_(param.requires_grad)
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, fixed)
