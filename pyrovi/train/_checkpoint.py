"""Resumable training checkpoints without pickle: Lightning's checkpoint dict as safetensors + JSON.

Lightning collects everything a resumed run needs (module and optimiser state, loop counters, scheduler and
callback states) into one dict and hands it to the strategy's :class:`CheckpointIO`. Its default writes it
with ``torch.save`` and reads it with ``torch.load``, which unpickles: opening a checkpoint from elsewhere
could run code (``weights_only=True`` narrows that, but its safety depends on the torch version, and
pyrovi supports torch releases where it is neither the default nor sound). :class:`SafeCheckpointIO` keeps
Lightning's machinery (``ModelCheckpoint``, ``Trainer.fit(ckpt_path=...)``) and changes only the file
format: one safetensors file whose tensors are the dict's tensors and whose header metadata holds the rest
of the dict as JSON. Reading it parses a JSON header and copies raw tensor bytes; nothing in the file can
name code to run.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors import SafetensorError, safe_open

from .._errors import ModelFileError
from .._files import sniff_pickle, write_safetensors

#: marks a pyrovi checkpoint in the safetensors header metadata
_FORMAT = "pyrovi-checkpoint"
_FORMAT_VERSION = 1


def _encode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    """A JSON value for ``value``; tensors go to ``tensors`` and are referenced by name.

    Every JSON object in the result is a tag (``__tensor__``, ``__dict__``, ``__tuple__``), so that dict
    keys keep their types (optimiser states are keyed by int) and tuples stay tuples.
    """
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        # a private contiguous copy: safetensors refuses tensors that share memory
        tensors[name] = value.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": name}
    if isinstance(value, np.ndarray):
        return _encode(torch.from_numpy(np.ascontiguousarray(value)), tensors, where)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k, tensors, where), _encode(v, tensors, f"{where}/{k}")] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}/{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{where}/{i}") for i, v in enumerate(value)]
    raise TypeError(
        f"The training checkpoint holds a {type(value).__name__} at {where!r}, which pyrovi's pickle-free "
        "checkpoint cannot store (only tensors, numbers, strings, lists, tuples and dicts)."
    )


def _decode(value: Any, tensors: Any, path: Path) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors, path) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"__tensor__"}:
        return tensors.get_tensor(value["__tensor__"])
    if set(value) == {"__tuple__"}:
        return tuple(_decode(v, tensors, path) for v in value["__tuple__"])
    if set(value) == {"__dict__"}:
        return {_decode(k, tensors, path): _decode(v, tensors, path) for k, v in value["__dict__"]}
    raise ModelFileError(f"{path}: the checkpoint's header holds an unknown entry {sorted(value)}; the file is corrupt.")


class SafeCheckpointIO(CheckpointIO):
    """Lightning checkpoints as one safetensors file (tensors) with the rest of the state as JSON. No pickle.

    pyrovi's :class:`~pyrovi.train.Trainer` uses it for every checkpoint it writes or reads, so
    ``ModelCheckpoint`` files and ``Trainer.fit(ckpt_path=...)`` never go through ``torch.save`` or
    ``torch.load``. A file that is not such a checkpoint (a ``torch.save`` or pickle file included) raises
    :class:`pyrovi.ModelFileError` without being opened by an unpickler.

    Examples
    --------
    >>> trainer = lightning.pytorch.Trainer(plugins=[SafeCheckpointIO()])  # doctest: +SKIP
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("pyrovi's SafeCheckpointIO takes no storage_options.")
        tensors: dict[str, torch.Tensor] = {}
        structure = _encode(checkpoint, tensors, "checkpoint")
        metadata = {"format": _FORMAT, "format_version": str(_FORMAT_VERSION), "state": json.dumps(structure)}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # written next to the target and renamed into place: an interrupted save leaves the previous file
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            write_safetensors(tensors, tmp, metadata=metadata)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        kind = sniff_pickle(path)
        if kind is not None:
            raise ModelFileError(
                f"{path} is {kind}, not a pyrovi checkpoint; pyrovi never unpickles (it would run code from the "
                "file). Resume only from checkpoints written by model.train(checkpoint_dir=...)."
            )
        try:
            with safe_open(str(path), framework="pt") as tensors:
                metadata = tensors.metadata() or {}
                if metadata.get("format") != _FORMAT:
                    raise ModelFileError(
                        f"{path} is a safetensors file but not a pyrovi training checkpoint (it lacks the "
                        f"'{_FORMAT}' header); a saved model directory is loaded with Model.load instead."
                    )
                version = metadata.get("format_version", "")
                if not version.isdigit() or int(version) > _FORMAT_VERSION:
                    raise ModelFileError(
                        f"{path} has checkpoint format version {version!r}; this pyrovi reads up to "
                        f"{_FORMAT_VERSION}. Upgrade pyrovi to resume from it."
                    )
                return _decode(json.loads(metadata["state"]), tensors, path)
        except (SafetensorError, OSError, ValueError, KeyError, RecursionError) as err:
            if isinstance(err, ModelFileError):
                raise
            raise ModelFileError(f"{path} is not a readable pyrovi checkpoint (truncated or corrupt: {err}).") from err

    def remove_checkpoint(self, path: Any) -> None:
        if os.path.exists(path):
            os.remove(path)


#: file name of the checkpoint written after every epoch into ``checkpoint_dir``
LAST_CHECKPOINT = "last.ckpt"


def _last_checkpoint(dirpath: str | os.PathLike) -> ModelCheckpoint:
    """Lightning's ModelCheckpoint writing ``dirpath/last.ckpt`` at the end of every training epoch.

    ``monitor=None`` with one kept file: the latest epoch, overwritten (atomically, by SafeCheckpointIO)
    every epoch. It saves in the epoch's end hooks after the training plan's own (Lightning runs
    checkpointing callbacks after the module's hook), so the file holds the epoch's metrics, its learning
    rate scheduler step (which the plan takes there, see ``TrainingPlan.lr_scheduler_step``) and the random
    state with which the next epoch starts.
    """
    return ModelCheckpoint(
        dirpath=dirpath,
        filename=LAST_CHECKPOINT[: -len(".ckpt")],
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )


class _RandomState(pl.Callback):
    """Keep the random generators' states in checkpoints, so that a resumed run draws what the first would.

    The guide's samples, dropout masks and Pyro's draws come from torch's generators; numpy's and Python's
    are kept too for user code. Restored after Lightning's ``setup`` (which draws once to create lazy
    parameters), right before training continues.
    """

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state(), "random": random.getstate()}
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        version, internal, gauss = state_dict["random"]
        random.setstate((version, tuple(internal), gauss))
        npy = state_dict["numpy"]
        np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                             npy["cached_gaussian"]))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
