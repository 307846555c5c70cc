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
import math
import os
import random
import re
import struct
import uuid
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors import safe_open

from .._errors import ModelFileError
from .._files import MAX_JSON_DEPTH, check_regular_file, file_kind, loads_json, sniff_pickle, write_safetensors

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


_SCALARS = (str, int, float, bool, type(None))


def _is_key(value: Any) -> bool:
    """A dict key a checkpoint may hold: a plain scalar, or a tuple of them (hashable, comparable)."""
    return isinstance(value, _SCALARS) or (isinstance(value, tuple) and all(isinstance(v, _SCALARS) for v in value))


def _decode(value: Any, tensors: Any, path: Path, depth: int = 0) -> Any:
    """The checkpoint dict from its JSON structure; any entry that is not one :func:`_encode` writes is refused."""
    if depth > MAX_JSON_DEPTH:
        raise _corrupt(path, f"its header nests deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, list):
        return [_decode(v, tensors, path, depth + 1) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise _corrupt(path, f"its header holds an unknown entry {sorted(map(str, value))[:5]}")
    (tag, content), = value.items()
    if tag == "__tensor__":
        if not isinstance(content, str) or content not in tensors.names:
            raise _corrupt(path, f"its header refers to a tensor {content!r:.80} that the file does not hold")
        return tensors.get_tensor(content)
    if tag == "__tuple__" and isinstance(content, list):
        return tuple(_decode(v, tensors, path, depth + 1) for v in content)
    if tag == "__dict__" and isinstance(content, list):
        out = {}
        for entry in content:
            if not (isinstance(entry, list) and len(entry) == 2):
                raise _corrupt(path, f"its header holds a dict entry {entry!r:.80} that is not a [key, value] pair")
            key = _decode(entry[0], tensors, path, depth + 1)
            if not _is_key(key):
                raise _corrupt(path, f"its header holds a dict key of type {type(key).__name__}")
            out[key] = _decode(entry[1], tensors, path, depth + 1)
        return out
    raise _corrupt(path, f"its header holds an unknown entry {sorted(map(str, value))[:5]}")


class _Tensors:
    """The tensors of an open safetensors file, with their names as a set (looked up once per reference)."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.names = frozenset(handle.keys())

    def get_tensor(self, name: str) -> torch.Tensor:
        return self.handle.get_tensor(name)


def _corrupt(path: Path, problem: str) -> ModelFileError:
    return ModelFileError(
        f"{path}: is not a valid pyrovi checkpoint: {problem}. The file is corrupt or forged; resume only from "
        "checkpoints written by model.train(checkpoint_dir=...)."
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: What Lightning reads from every checkpoint it resumes from, with the type each must have.
_REQUIRED = {
    "epoch": (int, "an integer"),
    "global_step": (int, "an integer"),
    "pytorch-lightning_version": (str, "a version string"),
    "state_dict": (dict, "a dict of tensors"),
    "loops": (dict, "a dict of loop states"),
    "optimizer_states": (list, "a list of optimizer states"),
    "lr_schedulers": (list, "a list of scheduler states"),
    "callbacks": (dict, "a dict of callback states"),
}


def _check_structure(checkpoint: Any, path: Path) -> None:
    """The decoded checkpoint has every entry Lightning and pyrovi read, each of the right type and range."""
    if not isinstance(checkpoint, dict):
        raise _corrupt(path, f"it holds a {type(checkpoint).__name__}, not a dict of training state")
    missing = [key for key in _REQUIRED if key not in checkpoint]
    if missing:
        raise _corrupt(path, f"it lacks {missing}, which a resumed run needs")
    for key, (kind, what) in _REQUIRED.items():
        value = checkpoint[key]
        if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0)):
            raise _corrupt(path, f"its {key!r} is {value!r:.80}, not {what}")
    version = checkpoint["pytorch-lightning_version"]
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)\S*", version)
    if match is None or int(match.group(1)) < 2:
        raise _corrupt(path, f"its pytorch-lightning_version {version!r:.40} is not a Lightning 2 version")
    state = checkpoint["state_dict"]
    bad = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise _corrupt(path, f"its state_dict maps {bad[0]!r:.80} to something other than a tensor")
    for i, opt in enumerate(checkpoint["optimizer_states"]):
        ok = (
            isinstance(opt, dict)
            and isinstance(opt.get("state"), dict)
            and isinstance(opt.get("param_groups"), list)
            and all(
                _is_int(k) and isinstance(v, dict)
                and all(isinstance(n, str) and isinstance(x, (torch.Tensor, int, float)) for n, x in v.items())
                for k, v in opt["state"].items()
            )
            and all(
                isinstance(g, dict) and isinstance(g.get("params"), list) and all(_is_int(p) for p in g["params"])
                for g in opt["param_groups"]
            )
        )
        if not ok:
            raise _corrupt(path, f"its optimizer state {i} is not torch's layout (state and param_groups)")
    if not all(isinstance(s, dict) for s in checkpoint["lr_schedulers"]):
        raise _corrupt(path, "its lr_schedulers are not dicts of scheduler state")
    if not all(isinstance(k, str) and isinstance(v, dict) for k, v in checkpoint["callbacks"].items()):
        raise _corrupt(path, "its callbacks are not named dicts of callback state")
    _check_loops(checkpoint["loops"], path)
    history = checkpoint.get("pyrovi_history", {})
    ok = isinstance(history, dict) and all(
        isinstance(k, str)
        and isinstance(rows, list)
        and all(
            isinstance(r, (list, tuple)) and len(r) == 2 and _is_int(r[0]) and isinstance(r[1], (int, float))
            and not isinstance(r[1], bool)
            for r in rows
        )
        for k, rows in history.items()
    )
    step_keys = checkpoint.get("pyrovi_history_step_keys", [])
    if not ok or not (isinstance(step_keys, list) and all(isinstance(k, str) for k in step_keys)):
        raise _corrupt(path, "its pyrovi_history is not lists of (epoch, value) pairs per metric")
    for where, tensor in _trained_tensors(checkpoint):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelFileError(
                f"{path}: holds NaN or infinite values in {where}; training cannot continue from it (pyrovi's "
                "training stops before a step makes a weight non-finite, so the file was altered). Resume from an "
                "earlier checkpoint, or train afresh."
            )


#: ``content`` of a checkpoint that holds a bare state dict (no loops, optimisers...), not a resumable run
_WEIGHTS_ONLY = "weights"


def _is_weights_only(checkpoint: Any) -> bool:
    return (
        isinstance(checkpoint, dict)
        and "state_dict" not in checkpoint
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint.items())
    )


def _check_weights_only(checkpoint: Any, path: Path, plan: Any, resume_from: Path | None) -> None:
    """A bare state dict: names and tensors, finite, and (with a plan) this plan's names and shapes.

    Lightning's DDP-spawn launcher hands a worker's weights back to the main process in such a file; it is
    never a run to resume.
    """
    if resume_from is not None and Path(path) == resume_from:
        raise ModelFileError(
            f"{path}: holds only weights, not a resumable training run (no epoch, optimiser or loop state). Resume "
            "from the last.ckpt that train(checkpoint_dir=...) writes."
        )
    if not _is_weights_only(checkpoint):
        raise _corrupt(path, "its header says it holds weights only, but it holds other entries")
    for key, tensor in checkpoint.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelFileError(f"{path}: holds NaN or infinite values in {key!r}; the file was altered.")
    if plan is not None:
        expected = plan.state_dict()
        wrong = [k for k in checkpoint if k not in expected or tuple(expected[k].shape) != tuple(checkpoint[k].shape)]
        if wrong or len(checkpoint) != len(expected):
            raise ModelFileError(
                f"{path}: holds weights of another architecture than this model's (e.g. {(wrong or ['a missing one'])[0]!r})."
            )


def _trained_tensors(checkpoint: dict[str, Any]):
    """``(where, tensor)`` for the module's weights and the optimisers' state (Adam's moments...)."""
    for key, tensor in checkpoint["state_dict"].items():
        yield f"state_dict[{key!r}]", tensor
    for i, opt in enumerate(checkpoint["optimizer_states"]):
        for index, entries in opt["state"].items():
            for name, value in entries.items():
                if isinstance(value, torch.Tensor):
                    yield f"optimizer_states[{i}] parameter {index} {name!r}", value


_REFERENCE_LOOPS: dict[str, Any] | None = None


def _reference_loops() -> dict[str, Any]:
    """The loop states of a fresh Lightning Trainer: the layout a checkpoint's ``loops`` must have."""
    global _REFERENCE_LOOPS
    if _REFERENCE_LOOPS is None:
        import logging

        level = logging.getLogger("lightning.pytorch").level
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        try:
            trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False)
        finally:
            logging.getLogger("lightning.pytorch").setLevel(level)
        _REFERENCE_LOOPS = {
            "fit_loop": trainer.fit_loop.state_dict(),
            "validate_loop": trainer.validate_loop.state_dict(),
            "test_loop": trainer.test_loop.state_dict(),
            "predict_loop": trainer.predict_loop.state_dict(),
        }
    return _REFERENCE_LOOPS


def _same_layout(value: Any, reference: Any, where: str) -> str | None:
    """Where ``value`` departs from the layout of ``reference`` (a loop state), or None.

    Counters must be non-negative integers where the reference has integers; a dict of counters (a progress
    record, which Lightning loads by updating the object's attributes) must have exactly the reference's keys.
    """
    if isinstance(reference, dict):
        if not isinstance(value, dict):
            return f"{where} is {type(value).__name__}, not a dict"
        if not all(isinstance(k, str) for k in value):
            return f"{where} has a key that is not a name"
        leaf = reference and not any(isinstance(v, dict) for v in reference.values())
        if leaf and set(value) != set(reference):
            return f"{where} has the keys {sorted(value)}, not {sorted(reference)}"
        for key, ref in reference.items():
            if key in value:
                problem = _same_layout(value[key], ref, f"{where}[{key!r}]")
                if problem:
                    return problem
        return None
    if isinstance(reference, bool):
        return None if isinstance(value, bool) else f"{where} is {value!r:.40}, not true or false"
    if _is_int(reference):
        return None if _is_int(value) and value >= 0 else f"{where} is {value!r:.40}, not a non-negative integer"
    return None


def _check_loops(loops: dict[str, Any], path: Path) -> None:
    if "fit_loop" not in loops:
        raise _corrupt(path, "its loops lack 'fit_loop', the training loop's state")
    for name, reference in _reference_loops().items():
        if name in loops:
            problem = _same_layout(loops[name], reference, f"loops[{name!r}]")
            if problem:
                raise _corrupt(path, problem)


def _check_against_model(
    checkpoint: dict[str, Any], metadata: dict[str, str], path: Path, model_name: str | None, plan: Any
) -> None:
    """The checkpoint is one of this model: its class (when recorded) and its parameters' names and shapes."""
    saved_model = metadata.get("pyrovi_model")
    saved_module = metadata.get("pyrovi_module")
    whose = f"a {saved_model} model ({saved_module})" if saved_model else "another model"
    if saved_model and model_name and saved_model != model_name:
        raise ModelFileError(
            f"{path}: is a checkpoint of {whose}, not of this {model_name}; resume_from continues the run of the "
            f"same model. Resume it with a {saved_model}, or pass a checkpoint this {model_name} wrote."
        )
    expected = plan.state_dict()
    saved = checkpoint["state_dict"]
    problems = [f"missing {k}" for k in expected if k not in saved]
    problems += [f"unexpected {k}" for k in saved if k not in expected]
    problems += [
        f"{k} has shape {tuple(saved[k].shape)}, this model's is {tuple(v.shape)}"
        for k, v in expected.items()
        if k in saved and tuple(saved[k].shape) != tuple(v.shape)
    ]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        this = model_name or type(getattr(plan, "module", plan)).__name__
        raise ModelFileError(
            f"{path}: is a checkpoint of {whose} with another architecture than this {this} ({shown}). Resume "
            "with the model (class, data setup and init parameters) that wrote it, or train afresh."
        )
    _check_optimizer_states(checkpoint, path, plan)
    _check_optimizer_settings(checkpoint, path, plan)


def _reference_optimization(plan: Any) -> tuple[list[dict], list[dict]] | None:
    """The state dicts of the optimisers and schedulers ``plan`` configures (fresh), or None if it cannot say."""
    from lightning.pytorch.core.optimizer import _configure_optimizers

    try:
        optimizers, schedulers, _ = _configure_optimizers(plan.configure_optimizers())
        return [o.state_dict() for o in optimizers], [
            (s["scheduler"] if isinstance(s, dict) else s).state_dict() for s in schedulers
        ]
    except Exception:  # noqa: BLE001 - a custom plan whose optimisers cannot be made here is not checked here
        return None


#: Optimiser settings that must be non-negative finite numbers, and those in [0, 1).
_NON_NEGATIVE = frozenset({"lr", "initial_lr", "eps", "weight_decay", "momentum", "dampening", "alpha"})


def _like(value: Any, reference: Any, where: str) -> str | None:
    """Where ``value`` has another type than ``reference`` (an optimiser's or scheduler's fresh state), or None."""
    if isinstance(reference, torch.Tensor):
        return None if isinstance(value, torch.Tensor) else f"{where} is {value!r:.40}, not a tensor"
    if isinstance(reference, bool):
        return None if isinstance(value, bool) else f"{where} is {value!r:.40}, not true or false"
    if _is_int(reference):
        return None if _is_int(value) else f"{where} is {value!r:.40}, not an integer"
    if isinstance(reference, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and (math.isfinite(value) or not math.isfinite(reference) or where.endswith("['best']"))
        return None if ok else f"{where} is {value!r:.40}, not a finite number"
    if isinstance(reference, str):
        return None if value == reference else f"{where} is {value!r:.40}, not {reference!r}"
    if isinstance(reference, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) != len(reference):
            return f"{where} is {value!r:.60}, not a sequence of {len(reference)}"
        for i, (v, r) in enumerate(zip(value, reference)):
            problem = _like(v, r, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(reference, dict):
        if not isinstance(value, dict):
            return f"{where} is {value!r:.40}, not a dict"
        for key, ref in reference.items():
            if key in value:
                problem = _like(value[key], ref, f"{where}[{key!r}]")
                if problem:
                    return problem
        return None
    if reference is None:
        return None if _is_scalar_value(value) else f"{where} is {value!r:.40}, not a plain value"
    return None


def _is_scalar_value(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _check_optimizer_settings(checkpoint: dict[str, Any], path: Path, plan: Any) -> None:
    """Optimiser hyperparameters and scheduler states have the types and ranges of the ones this plan makes."""
    reference = _reference_optimization(plan)
    if reference is None:
        return
    optimizers, schedulers = reference
    saved_opts, saved_scheds = checkpoint["optimizer_states"], checkpoint["lr_schedulers"]
    if len(saved_opts) != len(optimizers) or len(saved_scheds) != len(schedulers):
        raise ModelFileError(
            f"{path}: holds {len(saved_opts)} optimiser and {len(saved_scheds)} scheduler state(s), this training "
            f"plan makes {len(optimizers)} and {len(schedulers)}; resume with the plan_kwargs of the run that "
            "wrote it (e.g. reduce_lr_on_plateau)."
        )
    for i, (saved, ref) in enumerate(zip(saved_opts, optimizers)):
        if len(saved["param_groups"]) != len(ref["param_groups"]):
            raise _corrupt(path, f"its optimizer state {i} has {len(saved['param_groups'])} parameter groups, not {len(ref['param_groups'])}")
        for j, (group, ref_group) in enumerate(zip(saved["param_groups"], ref["param_groups"])):
            problem = _like({k: v for k, v in group.items() if k != "params"},
                            {k: v for k, v in ref_group.items() if k != "params"}, f"optimizer {i} group {j}")
            if problem is None:
                bad = [k for k in _NON_NEGATIVE if k in group and not (_is_number(group[k]) and 0 <= group[k] < math.inf)]
                betas = group.get("betas", (0.0,))
                if bad:
                    problem = f"optimizer {i} group {j} has {bad[0]}={group[bad[0]]!r}, not a non-negative number"
                elif not all(_is_number(b) and 0 <= b < 1 for b in betas):
                    problem = f"optimizer {i} group {j} has betas={betas!r}, not numbers in [0, 1)"
            if problem:
                raise _corrupt(path, problem)
    for i, (saved, ref) in enumerate(zip(saved_scheds, schedulers)):
        problem = _like(saved, ref, f"lr_schedulers[{i}]")
        if problem:
            raise _corrupt(path, problem)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_optimizer_states(checkpoint: dict[str, Any], path: Path, plan: Any) -> None:
    """Adam's moments (any per-parameter state with a shape) match the parameters the plan trains."""
    module = getattr(plan, "module", None)
    if module is None or len(checkpoint["optimizer_states"]) != 1:
        return
    decoder = getattr(plan, "_decoder_params", None) if getattr(plan, "update_only_decoder", False) else None
    params = list(decoder) if decoder is not None else [p for p in module.parameters() if p.requires_grad]
    opt = checkpoint["optimizer_states"][0]
    indices = [i for group in opt["param_groups"] for i in group["params"]]
    if sorted(indices) != list(range(len(params))):
        raise ModelFileError(
            f"{path}: its optimizer state is for {len(indices)} parameters, this model trains {len(params)}; it is "
            "a checkpoint of another model or architecture. Resume with the model that wrote it, or train afresh."
        )
    for index, entries in opt["state"].items():
        if not 0 <= index < len(params):
            raise _corrupt(path, f"its optimizer state names parameter {index}, of {len(params)}")
        for name, value in entries.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                raise _corrupt(
                    path,
                    f"its optimizer state {name!r} of parameter {index} has shape {tuple(value.shape)}, the "
                    f"parameter's is {tuple(params[index].shape)}",
                )


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


def _expect_checkpoint_of(
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
        io._model_name = model_name
        io._plan = plan
        io._resume_from = None if resume_from is None else Path(resume_from)


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

    _model_name: str | None = None
    _plan: Any = None
    _resume_from: Path | None = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("pyrovi's SafeCheckpointIO takes no storage_options.")
        tensors: dict[str, torch.Tensor] = {}
        structure = _encode(checkpoint, tensors, "checkpoint")
        metadata = {"format": _FORMAT, "format_version": str(_FORMAT_VERSION), "state": json.dumps(structure)}
        if _is_weights_only(checkpoint):  # e.g. the weights a DDP-spawn worker hands back to the main process
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
                    raise _corrupt(path, "its header has no 'state' entry")
                structure = loads_json(metadata["state"], f"{path} (checkpoint header)")
                checkpoint = _decode(structure, _Tensors(tensors), path)
        except ModelFileError:
            raise
        except Exception as err:  # noqa: BLE001 - SafetensorError, and whatever else a forged file provokes
            raise ModelFileError(f"{path} is not a readable pyrovi checkpoint (truncated or corrupt: {err}).") from err
        if metadata.get("content") == _WEIGHTS_ONLY:
            _check_weights_only(checkpoint, path, self._plan, self._resume_from)
            return checkpoint
        _check_structure(checkpoint, path)
        if self._plan is not None:
            _check_against_model(checkpoint, metadata, path, self._model_name, self._plan)
        return checkpoint

    def remove_checkpoint(self, path: Any) -> None:
        if os.path.exists(path):
            os.remove(path)


#: file name of the checkpoint written after every epoch into ``checkpoint_dir``
LAST_CHECKPOINT = "last.ckpt"


#: the most header bytes read to recognise a pyrovi checkpoint before replacing it (pyrovi's headers stay far below)
_MAX_CHECKPOINT_HEADER = 256 * 2**20


def _is_pyrovi_checkpoint(path: Path) -> bool:
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


def _check_replaceable_checkpoint(dirpath: str | os.PathLike) -> None:
    """Refuse a ``checkpoint_dir`` whose ``last.ckpt`` pyrovi did not write: the first epoch would replace it.

    A pyrovi checkpoint there (an earlier run's, the one being resumed) is replaced, as checkpoint_dir promises.
    """
    path = Path(dirpath) / LAST_CHECKPOINT
    if not os.path.lexists(path):
        return
    kind = file_kind(os.lstat(path).st_mode)
    if kind is not None:
        raise FileExistsError(
            f"{path} exists and is {kind}, not a pyrovi checkpoint; training with checkpoint_dir={str(dirpath)!r} "
            f"would replace it with its checkpoint after the first epoch. Move it away or choose another checkpoint_dir."
        )
    if not _is_pyrovi_checkpoint(path):
        raise FileExistsError(
            f"{path} exists and is not a pyrovi checkpoint (a file of your own?); training with "
            f"checkpoint_dir={str(dirpath)!r} would replace it with its checkpoint after the first epoch, and pyrovi "
            "never replaces files it did not write. Move it away or choose another checkpoint_dir."
        )


def _last_checkpoint(dirpath: str | os.PathLike) -> ModelCheckpoint:
    """Lightning's ModelCheckpoint writing ``dirpath/last.ckpt`` at the end of every training epoch.

    ``monitor=None`` with one kept file: the latest epoch, overwritten (atomically, by SafeCheckpointIO)
    every epoch. It saves in the epoch's end hooks after the training plan's own (Lightning runs
    checkpointing callbacks after the module's hook), so the file holds the epoch's metrics, its learning
    rate scheduler step (which the plan takes there, see ``TrainingPlan.lr_scheduler_step``) and the random
    state with which the next epoch starts.
    """
    _check_replaceable_checkpoint(dirpath)
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
        # a forged state fails here with a clear error, before any generator is changed
        try:
            torch_state = state_dict["torch"]
            version, internal, gauss = state_dict["random"]
            npy = state_dict["numpy"]
            numpy_state = (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                           npy["cached_gaussian"])
            if not (isinstance(torch_state, torch.Tensor) and torch_state.dtype == torch.uint8):
                raise TypeError("the torch generator state is not a uint8 tensor")
            # apply to throw-away generators first: a malformed state must not leave the real ones half set
            torch.Generator().set_state(torch_state)
            random.Random().setstate((version, tuple(internal), gauss))
            np.random.RandomState().set_state(numpy_state)
        except Exception as err:  # noqa: BLE001 - whatever a forged state provokes
            raise ModelFileError(
                f"The checkpoint's random generator state is malformed ({type(err).__name__}: {err}); the file is "
                "corrupt or forged. Resume from another checkpoint, or train afresh."
            ) from err
        torch.set_rng_state(torch_state)
        random.setstate((version, tuple(internal), gauss))
        np.random.set_state(numpy_state)
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
