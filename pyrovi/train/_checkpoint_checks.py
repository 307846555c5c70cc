"""Validation of a decoded training checkpoint: every entry Lightning and pyrovi read, and its fit to this model.

A checkpoint given to ``resume_from`` comes from outside and is treated as untrusted. :mod:`._checkpoint`
decodes it (JSON and tensors only); the functions here then refuse, with a :class:`pyrovi.ModelFileError`
naming the entry, anything Lightning or pyrovi would otherwise trip over later with a raw error: missing or
mistyped entries, loop counters of another layout, non-finite weights or optimiser moments, and (against the
plan being trained) another model class, architecture or optimiser configuration.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from .._errors import ModelFileError


def corrupt_checkpoint(path: Path, problem: str) -> ModelFileError:
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


def check_checkpoint(checkpoint: Any, path: Path) -> None:
    """The decoded checkpoint has every entry Lightning and pyrovi read, each of the right type and range."""
    if not isinstance(checkpoint, dict):
        raise corrupt_checkpoint(path, f"it holds a {type(checkpoint).__name__}, not a dict of training state")
    missing = [key for key in _REQUIRED if key not in checkpoint]
    if missing:
        raise corrupt_checkpoint(path, f"it lacks {missing}, which a resumed run needs")
    for key, (kind, what) in _REQUIRED.items():
        value = checkpoint[key]
        if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0)):
            raise corrupt_checkpoint(path, f"its {key!r} is {value!r:.80}, not {what}")
    version = checkpoint["pytorch-lightning_version"]
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)\S*", version)
    if match is None or int(match.group(1)) < 2:
        raise corrupt_checkpoint(path, f"its pytorch-lightning_version {version!r:.40} is not a Lightning 2 version")
    state = checkpoint["state_dict"]
    bad = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise corrupt_checkpoint(path, f"its state_dict maps {bad[0]!r:.80} to something other than a tensor")
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
            raise corrupt_checkpoint(path, f"its optimizer state {i} is not torch's layout (state and param_groups)")
    if not all(isinstance(s, dict) for s in checkpoint["lr_schedulers"]):
        raise corrupt_checkpoint(path, "its lr_schedulers are not dicts of scheduler state")
    if not all(isinstance(k, str) and isinstance(v, dict) for k, v in checkpoint["callbacks"].items()):
        raise corrupt_checkpoint(path, "its callbacks are not named dicts of callback state")
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
        raise corrupt_checkpoint(path, "its pyrovi_history is not lists of (epoch, value) pairs per metric")
    for where, tensor in _trained_tensors(checkpoint):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelFileError(
                f"{path}: holds NaN or infinite values in {where}; training cannot continue from it (pyrovi's "
                "training stops before a step makes a weight non-finite, so the file was altered). Resume from an "
                "earlier checkpoint, or train afresh."
            )


def is_weights_only(checkpoint: Any) -> bool:
    return (
        isinstance(checkpoint, dict)
        and "state_dict" not in checkpoint
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint.items())
    )


def check_weights_only(checkpoint: Any, path: Path, plan: Any, resume_from: Path | None) -> None:
    """A bare state dict: names and tensors, finite, and (with a plan) this plan's names and shapes.

    Lightning's DDP-spawn launcher hands a worker's weights back to the main process in such a file; it is
    never a run to resume.
    """
    if resume_from is not None and Path(path) == resume_from:
        raise ModelFileError(
            f"{path}: holds only weights, not a resumable training run (no epoch, optimiser or loop state). Resume "
            "from the last.ckpt that train(checkpoint_dir=...) writes."
        )
    if not is_weights_only(checkpoint):
        raise corrupt_checkpoint(path, "its header says it holds weights only, but it holds other entries")
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


def _trained_tensors(checkpoint: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(where, tensor)`` for the module's weights and the optimisers' state (Adam's moments...)."""
    for key, tensor in checkpoint["state_dict"].items():
        yield f"state_dict[{key!r}]", tensor
    for i, opt in enumerate(checkpoint["optimizer_states"]):
        for index, entries in opt["state"].items():
            for name, value in entries.items():
                if isinstance(value, torch.Tensor):
                    yield f"optimizer_states[{i}] parameter {index} {name!r}", value


@functools.cache
def _reference_loops() -> dict[str, Any]:
    """The loop states of a fresh Lightning Trainer: the layout a checkpoint's ``loops`` must have.

    A constant of the installed Lightning, made once (building a Trainer changes the Lightning logger's level
    for a moment, to keep its device announcements quiet).
    """
    lightning_logger = logging.getLogger("lightning.pytorch")
    level = lightning_logger.level
    lightning_logger.setLevel(logging.ERROR)
    try:
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
    finally:
        lightning_logger.setLevel(level)
    return {
        "fit_loop": trainer.fit_loop.state_dict(),
        "validate_loop": trainer.validate_loop.state_dict(),
        "test_loop": trainer.test_loop.state_dict(),
        "predict_loop": trainer.predict_loop.state_dict(),
    }


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
        raise corrupt_checkpoint(path, "its loops lack 'fit_loop', the training loop's state")
    for name, reference in _reference_loops().items():
        if name in loops:
            problem = _same_layout(loops[name], reference, f"loops[{name!r}]")
            if problem:
                raise corrupt_checkpoint(path, problem)


def check_against_plan(
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
    try:
        # Lightning's own reading of configure_optimizers' many return forms (a private helper: if a Lightning
        # release moves it, the check is skipped rather than failing)
        from lightning.pytorch.core.optimizer import _configure_optimizers

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
            raise corrupt_checkpoint(path, f"its optimizer state {i} has {len(saved['param_groups'])} parameter groups, not {len(ref['param_groups'])}")
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
                raise corrupt_checkpoint(path, problem)
    for i, (saved, ref) in enumerate(zip(saved_scheds, schedulers)):
        problem = _like(saved, ref, f"lr_schedulers[{i}]")
        if problem:
            raise corrupt_checkpoint(path, problem)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_optimizer_states(checkpoint: dict[str, Any], path: Path, plan: Any) -> None:
    """Adam's moments (any per-parameter state with a shape) match the parameters the plan trains."""
    trained_parameters = getattr(plan, "trained_parameters", None)  # a TrainingPlan's; another plan is not checked
    if trained_parameters is None or len(checkpoint["optimizer_states"]) != 1:
        return
    params = trained_parameters()
    opt = checkpoint["optimizer_states"][0]
    indices = [i for group in opt["param_groups"] for i in group["params"]]
    if sorted(indices) != list(range(len(params))):
        raise ModelFileError(
            f"{path}: its optimizer state is for {len(indices)} parameters, this model trains {len(params)}; it is "
            "a checkpoint of another model or architecture. Resume with the model that wrote it, or train afresh."
        )
    for index, entries in opt["state"].items():
        if not 0 <= index < len(params):
            raise corrupt_checkpoint(path, f"its optimizer state names parameter {index}, of {len(params)}")
        for name, value in entries.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                raise corrupt_checkpoint(
                    path,
                    f"its optimizer state {name!r} of parameter {index} has shape {tuple(value.shape)}, the "
                    f"parameter's is {tuple(params[index].shape)}",
                )
