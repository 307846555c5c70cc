"""A query model's freezing, written beside its weights so that a loaded query model trains as the mapped one did.

``load_query_data`` freezes the reference's weights per entry (:func:`~pyrovi.module.base.freeze_for_query`);
that is a property of the model object, not of its weights, so ``save`` records it (the freezing options and,
per parameter, which entries belong to new categories) and ``load`` applies it again. Without this, training
a loaded query model further would move every weight of the reference.
"""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..._errors import ModelFileError
from ...module.base import QueryFreezing, freeze_for_query


def query_mapping_state(model: Any) -> dict[str, Any] | None:
    """The JSON-able record of ``model``'s query freezing (None: not a query model)."""
    freezing = getattr(model, "_query_freezing", None)
    new_entries = getattr(model, "_query_new_entries", None)
    if freezing is None or new_entries is None:
        return None
    masks = {}
    for name, mask in new_entries.items():
        if bool(mask.any()):
            bits = np.packbits(mask.detach().cpu().numpy().reshape(-1))
            masks[name] = {"shape": list(mask.shape), "bits": base64.b64encode(bits.tobytes()).decode("ascii")}
    return {"freezing": dataclasses.asdict(freezing), "new_entries": masks}


def restore_query_mapping(model: Any, state: Any, meta_path: Path) -> None:
    """Freeze a loaded model as the saved query model was (``state`` from :func:`query_mapping_state`)."""
    if state is None:
        return
    try:
        freezing = QueryFreezing(**state["freezing"])
        params = dict(model.module.named_parameters())
        masks = {name: torch.zeros(p.shape, dtype=torch.bool, device=p.device) for name, p in params.items()}
        for name, entry in state["new_entries"].items():
            shape = tuple(entry["shape"])
            if name not in params or shape != tuple(params[name].shape):
                raise ValueError(f"names a parameter {name!r} of shape {shape} that the model does not have")
            bits = np.frombuffer(base64.b64decode(entry["bits"], validate=True), dtype=np.uint8)
            flat = np.unpackbits(bits)[: int(np.prod(shape))]
            if flat.size != int(np.prod(shape)):
                raise ValueError(f"holds too few entries for {name!r}")
            masks[name] = torch.as_tensor(flat.astype(bool).reshape(shape), device=params[name].device)
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise ModelFileError(
            f"{meta_path}: its field 'query_mapping' (the query model's freezing) is malformed ({err}). Save the "
            "model again."
        ) from err
    freeze_for_query(model.module, masks, freezing)
    model._query_freezing = freezing
    model._query_new_entries = masks
