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
import struct
import uuid
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from safetensors import safe_open

from .._errors import ModelFileError
from .._files import MAX_JSON_DEPTH, check_regular_file, loads_json, sniff_pickle, write_safetensors
from ._checkpoint_checks import (
    check_against_plan,
    check_checkpoint,
    check_weights_only,
    corrupt_checkpoint,
    is_weights_only,
)

#: marks a pyrovi checkpoint in the safetensors header metadata
_FORMAT = "pyrovi-checkpoint"
_FORMAT_VERSION = 1
#: ``content`` of a checkpoint that holds a bare state dict (no loops, optimisers...), not a resumable run
_WEIGHTS_ONLY = "weights"


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


_SCALARS = (str, int, float, bool, type(None))


def _is_key(value: Any) -> bool:
    """A dict key a checkpoint may hold: a plain scalar, or a tuple of them (hashable, comparable)."""
    return isinstance(value, _SCALARS) or (isinstance(value, tuple) and all(isinstance(v, _SCALARS) for v in value))


def _decode(value: Any, tensors: Any, path: Path, depth: int = 0) -> Any:
    """The checkpoint dict from its JSON structure; any entry that is not one :func:`_encode` writes is refused."""
    if depth > MAX_JSON_DEPTH:
        raise corrupt_checkpoint(path, f"its header nests deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, list):
        return [_decode(v, tensors, path, depth + 1) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise corrupt_checkpoint(path, f"its header holds an unknown entry {sorted(map(str, value))[:5]}")
    (tag, content), = value.items()
    if tag == "__tensor__":
        if not isinstance(content, str) or content not in tensors.names:
            raise corrupt_checkpoint(path, f"its header refers to a tensor {content!r:.80} that the file does not hold")
        return tensors.get_tensor(content)
    if tag == "__tuple__" and isinstance(content, list):
        return tuple(_decode(v, tensors, path, depth + 1) for v in content)
    if tag == "__dict__" and isinstance(content, list):
        out = {}
        for entry in content:
            if not (isinstance(entry, list) and len(entry) == 2):
                raise corrupt_checkpoint(path, f"its header holds a dict entry {entry!r:.80} that is not a [key, value] pair")
            key = _decode(entry[0], tensors, path, depth + 1)
            if not _is_key(key):
                raise corrupt_checkpoint(path, f"its header holds a dict key of type {type(key).__name__}")
            out[key] = _decode(entry[1], tensors, path, depth + 1)
        return out
    raise corrupt_checkpoint(path, f"its header holds an unknown entry {sorted(map(str, value))[:5]}")


class _Tensors:
    """The tensors of an open safetensors file, with their names as a set (looked up once per reference)."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.names = frozenset(handle.keys())

    def get_tensor(self, name: str) -> torch.Tensor:
        return self.handle.get_tensor(name)


def _read_checkpoint_file(path: Path) -> None:
    """The checkpoint path names a regular file (a symbolic link only to a file in the same directory)."""
    if not os.path.lexists(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    if os.path.islink(path):
        target = Path(os.path.realpath(path))
        if target.parent != Path(os.path.realpath(path.parent)):
            raise ModelFileError(
                f"{path}: is a symbolic link to {target}, outside the checkpoint's directory; pyrovi follows a "
                "checkpoint link only within its directory (as Lightning's save_last='link' makes). Pass the "
                "real file."
            )
        if not target.exists():
            raise FileNotFoundError(f"Checkpoint file not found: {path} (a link to the missing {target})")
    check_regular_file(path, follow=True)


def expect_checkpoint_of(
    trainer: pl.Trainer, model_name: str | None, plan: Any, resume_from: str | os.PathLike | None = None
) -> None:
    """Tell the trainer's :class:`SafeCheckpointIO` which model it reads and writes checkpoints for.

    Checkpoints it writes then record the model class, and one it reads must be of that class and match the
    plan's parameters (checked after Lightning's setup, when lazily created parameters exist).
    """
    io = getattr(trainer.strategy, "checkpoint_io", None)
    for _ in range(3):  # Lightning may wrap the plugin (e.g. asynchronous saving)
        if isinstance(io, SafeCheckpointIO) or io is None:
            break
        io = getattr(io, "checkpoint_io", None)
    if isinstance(io, SafeCheckpointIO):
        io.expect(model_name, plan, resume_from)


class SafeCheckpointIO(CheckpointIO):
    """Lightning checkpoints as one safetensors file (tensors) with the rest of the state as JSON. No pickle.

    pyrovi's :class:`~pyrovi.train.Trainer` uses it for every checkpoint it writes or reads, so
    ``ModelCheckpoint`` files and ``Trainer.fit(ckpt_path=...)`` never go through ``torch.save`` or
    ``torch.load``. A file that is not such a checkpoint (a ``torch.save`` or pickle file included) raises
    :class:`pyrovi.ModelFileError` without being opened by an unpickler.

    Reading treats the file as untrusted: it must be a regular file (never a FIFO or device; a symbolic link
    only to a file in the same directory), its header must decode to exactly what a Lightning checkpoint holds
    (each entry of the right type: a forged header is a :class:`pyrovi.ModelFileError`, never a raw error),
    the weights and optimiser moments must be finite, and, when training a pyrovi model, the checkpoint must be
    of that model class with the same parameter names and shapes (the class is recorded in the file).

    Examples
    --------
    >>> import lightning
    >>> trainer = lightning.pytorch.Trainer(plugins=[SafeCheckpointIO()], logger=False, enable_progress_bar=False)
    >>> isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)
    True
    """

    def __init__(self) -> None:
        super().__init__()
        # set by expect(): the model whose checkpoints these are, its plan, and the file being resumed
        self._model_name: str | None = None
        self._plan: Any = None
        self._resume_from: Path | None = None

    def expect(self, model_name: str | None, plan: Any, resume_from: str | os.PathLike | None = None) -> None:
        """Checkpoints are those of ``model_name`` trained by ``plan``: recorded on writing, checked on reading.

        ``resume_from`` is the file the fit resumes from, which must be a resumable run (not bare weights).
        """
        self._model_name = model_name
        self._plan = plan
        self._resume_from = None if resume_from is None else Path(resume_from)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("pyrovi's SafeCheckpointIO takes no storage_options.")
        tensors: dict[str, torch.Tensor] = {}
        structure = _encode(checkpoint, tensors, "checkpoint")
        metadata = {"format": _FORMAT, "format_version": str(_FORMAT_VERSION), "state": json.dumps(structure)}
        if is_weights_only(checkpoint):  # e.g. the weights a DDP-spawn worker hands back to the main process
            metadata["content"] = _WEIGHTS_ONLY
        if self._model_name is not None:  # whose checkpoint this is, for a clear error if resumed elsewhere
            metadata["pyrovi_model"] = self._model_name
        module = getattr(self._plan, "module", None)
        if module is not None:
            metadata["pyrovi_module"] = type(module).__name__
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
        _read_checkpoint_file(path)
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
                if "state" not in metadata:
                    raise corrupt_checkpoint(path, "its header has no 'state' entry")
                structure = loads_json(metadata["state"], f"{path} (checkpoint header)")
                checkpoint = _decode(structure, _Tensors(tensors), path)
        except ModelFileError:
            raise
        except Exception as err:  # noqa: BLE001 - SafetensorError, and whatever else a forged file provokes
            raise ModelFileError(f"{path} is not a readable pyrovi checkpoint (truncated or corrupt: {err}).") from err
        if metadata.get("content") == _WEIGHTS_ONLY:
            check_weights_only(checkpoint, path, self._plan, self._resume_from)
            return checkpoint
        check_checkpoint(checkpoint, path)
        if self._plan is not None:
            check_against_plan(checkpoint, metadata, path, self._model_name, self._plan)
        return checkpoint

    def remove_checkpoint(self, path: Any) -> None:
        if os.path.exists(path):
            os.remove(path)


#: the most header bytes read to recognise a pyrovi checkpoint before replacing it (pyrovi's headers stay far below)
_MAX_CHECKPOINT_HEADER = 256 * 2**20


def is_pyrovi_checkpoint(path: Path) -> bool:
    """Whether the regular file ``path`` is laid out as a pyrovi checkpoint (safetensors with its format marker).

    Reads the 8-byte header length and the header's JSON only; nothing else in the file is trusted or used.
    """
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) != 8:
                return False
            (length,) = struct.unpack("<Q", head)
            if not 2 <= length <= min(_MAX_CHECKPOINT_HEADER, os.fstat(handle.fileno()).st_size - 8):
                return False
            header = loads_json(handle.read(length), str(path))
    except (OSError, ValueError, ModelFileError):
        return False
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(metadata, dict) and metadata.get("format") == _FORMAT
