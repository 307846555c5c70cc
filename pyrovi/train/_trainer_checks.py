"""The Trainer's arguments, checked before Lightning sees them.

Lightning reads some wrong values as something else (``devices=-1`` is every device; a negative
``gradient_clip_val`` clips nothing; a negative ``early_stopping_min_delta`` counts a worse value as an
improvement) and reports others from deep inside (``accelerator="tpu"`` asks for ``torch_xla``; an unknown
early-stopping monitor fails only at the end of the first validation epoch). pyrovi refuses them up front.
"""

from __future__ import annotations

import datetime
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from numbers import Integral
from typing import Any

import numpy as np
import torch

from .._checks import check_bool, check_choice, check_int, check_number, check_path

#: Accelerators a pyrovi model runs on ("cuda" is scvi-tools' and torch's name for "gpu").
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")

#: Epoch metrics the training plans log, which early stopping and the plateau scheduler may watch (the
#: classification ones only for modules that classify cells, see ``label_log_probs`` in TrainingPlan).
MONITORABLE = tuple(
    f"{term}_{split}"
    for split in ("validation", "train")
    for term in ("elbo", "reconstruction_loss", "kl_local", "kl_global")
) + ("validation_loss", "train_loss", "validation_accuracy", "validation_classification_loss",
   "validation_f1_score", "validation_calibration_error")

#: Monitored metrics that improve upwards; every other one is a loss.
MAXIMISED = ("validation_accuracy", "validation_f1_score")


def monitor_mode(monitor: str) -> str:
    """``"max"`` for a metric that improves upwards (``validation_accuracy``), ``"min"`` for the losses.

    Examples
    --------
    >>> monitor_mode("validation_accuracy"), monitor_mode("elbo_validation")
    ('max', 'min')
    """
    return "max" if monitor in MAXIMISED else "min"


def _check_devices(devices: Any) -> None:
    if devices == "auto" or devices == -1:  # -1: every device of the accelerator, as in Lightning
        return
    if isinstance(devices, str):
        parts = [p for p in devices.split(",") if p.strip()]
        if parts and all(p.strip().isdigit() for p in parts):
            return
    elif isinstance(devices, Sequence):
        if len(devices) > 0 and all(isinstance(d, Integral) and not isinstance(d, bool) and d >= 0 for d in devices):
            return
    elif isinstance(devices, Integral) and not isinstance(devices, bool) and devices >= 1:
        return
    raise ValueError(
        f"devices={devices!r:.80}: use 'auto', a number of devices >= 1, -1 (all), or a list of device indices "
        "such as [0, 1]."
    )


def check_trainer_arguments(
    accelerator: Any,
    devices: Any,
    early_stopping: Any,
    early_stopping_monitor: Any,
    early_stopping_min_delta: Any,
    early_stopping_patience: Any,
    early_stopping_warmup_epochs: Any,
    extra: dict[str, Any],
) -> None:
    """Refuse a wrong type or range of a :class:`~pyrovi.train.Trainer` argument, naming the fix.

    ``extra`` holds the arguments passed on to Lightning; those pyrovi knows the meaning of are checked.

    Examples
    --------
    >>> check_trainer_arguments("tpu", "auto", False, "elbo_validation", 0.0, 45, 0, {})
    Traceback (most recent call last):
    ...
    ValueError: accelerator must be one of ['auto', 'cpu', 'gpu', 'cuda', 'mps'], got 'tpu'.
    """
    if not (isinstance(accelerator, str) and accelerator in ACCELERATORS):
        check_choice("accelerator", accelerator, ACCELERATORS)
    _check_devices(devices)
    check_bool("early_stopping", early_stopping)
    check_choice("early_stopping_monitor", early_stopping_monitor, MONITORABLE)
    check_number("early_stopping_min_delta", early_stopping_min_delta, 0.0)
    check_int("early_stopping_patience", early_stopping_patience, minimum=0)
    check_int("early_stopping_warmup_epochs", early_stopping_warmup_epochs, minimum=0)
    if extra.get("gradient_clip_val") is not None:
        check_number("gradient_clip_val", extra["gradient_clip_val"], 0.0, low_open=True)
    for name in ("enable_progress_bar", "enable_checkpointing", "learning_rate_monitor", "simple_progress_bar"):
        if extra.get(name) is not None:
            check_bool(name, extra[name])
    for name in ("log_every_n_steps", "progress_bar_refresh_rate", "accumulate_grad_batches"):
        if name in extra:
            check_int(name, extra[name], minimum=1)


def no_cuda_error(what: str) -> ValueError:
    """The error for a CUDA request on a machine where torch sees no CUDA GPU (``what``: the request, as given).

    Examples
    --------
    >>> str(no_cuda_error("accelerator='gpu'"))[:40]
    "accelerator='gpu' but this machine has n"
    """
    return ValueError(
        f"{what} but this machine has no CUDA GPU that torch can use (a CPU-only torch build, or no driver). "
        "Use accelerator='cpu', or 'auto' to take a GPU when there is one."
    )


_DEVICE_NAME = re.compile(r"^(cpu|cuda|mps)(:\d+)?$")


def check_device(name: str, device: Any, allow_auto: bool = True) -> torch.device | int | str:
    """``device`` names one device: ``"auto"``, an index (of a CUDA GPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``,
    ``"mps"`` or a :class:`torch.device`; a CUDA device must exist. Returns it (an index as ``int``).

    Examples
    --------
    >>> check_device("device", "banana")
    Traceback (most recent call last):
    ...
    ValueError: device='banana' is not a device: use 'auto', 'cpu', 'cuda', 'cuda:N', a GPU index such as 0, or a torch.device.
    """
    if isinstance(device, np.integer):
        device = int(device)
    if isinstance(device, str) and device == "auto" and allow_auto:
        return device
    if isinstance(device, int) and not isinstance(device, bool):
        if device < 0:
            raise ValueError(f"{name}={device} is not a device index: use 0, 1, ... (a GPU's index).")
        return device
    if isinstance(device, str) and _DEVICE_NAME.match(device.strip()):
        device = torch.device(device.strip())
    if not isinstance(device, torch.device):
        auto = "'auto', " if allow_auto else ""
        raise ValueError(
            f"{name}={device!r:.80} is not a device: use {auto}'cpu', 'cuda', 'cuda:N', a GPU index such as 0, or a "
            "torch.device."
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise no_cuda_error(f"{name}={str(device)!r}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"{name}={str(device)!r} but this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                f"(indices 0 to {torch.cuda.device_count() - 1})."
            )
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{name}={str(device)!r} but torch has no MPS device here. Use 'cpu'.")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{name}={str(device)!r}: pyrovi models run on 'cpu', 'cuda' or 'mps' devices.")
    return device


#: Lightning's integer arguments and the least value each may take (``max_steps`` also takes -1: no limit)
_INT_ARGUMENTS = {
    "max_epochs": 1, "min_epochs": 0, "max_steps": 1, "min_steps": 0, "num_nodes": 1, "check_val_every_n_epoch": 1,
    "num_sanity_val_steps": -1, "log_every_n_steps": 1, "accumulate_grad_batches": 1,
    "reload_dataloaders_every_n_epochs": 0, "progress_bar_refresh_rate": 1, "early_stopping_patience": 0,
    "early_stopping_warmup_epochs": 0,
}
#: Lightning's and pyrovi's switches: True or False (None: the default)
_BOOL_ARGUMENTS = (
    "enable_checkpointing", "enable_progress_bar", "enable_model_summary", "inference_mode", "use_distributed_sampler",
    "detect_anomaly", "barebones", "sync_batchnorm", "benchmark", "enable_autolog_hparams", "learning_rate_monitor",
    "simple_progress_bar", "progress_bar", "early_stopping",
)
_PRECISIONS = (64, 32, 16, "64", "32", "16", "bf16", "16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true",
               "64-true", "transformer-engine", "transformer-engine-float16")  # fmt: skip
_TIMEDELTA_KEYS = ("weeks", "days", "hours", "minutes", "seconds", "milliseconds", "microseconds")


def _as_int(name: str, value: Any, minimum: int) -> Any:
    """A numpy integer as ``int`` (Lightning asserts ``isinstance(value, int)``); refuse what is not a whole number."""
    if value is None:
        return None
    if isinstance(value, np.integer):
        value = int(value)
    if name == "max_steps" and value == -1 and not isinstance(value, bool):
        return value
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        what = f"an integer >= {minimum}" + (" (or -1: no limit)" if name == "max_steps" else "")
        got = f"{value!r:.80}" + ("" if isinstance(value, (int, float, str)) else f" ({type(value).__name__})")
        why = " (it would train nothing)" if name in ("max_epochs", "max_steps") and value == 0 else ""
        raise ValueError(f"{name} must be {what}, got {got}{why}.")
    return int(value)


def _check_limit(name: str, value: Any) -> Any:
    """``limit_*_batches``, ``val_check_interval``: a number of batches (>= 1) or a share of them in (0, 1]."""
    if value is None:
        return None
    if isinstance(value, np.integer):
        value = int(value)
    elif isinstance(value, np.floating):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of batches (an integer >= 1) or a share of them in (0, 1], got "
                        f"{value!r:.80} ({type(value).__name__}).")  # fmt: skip
    if isinstance(value, int) and value >= 1:
        return value
    if isinstance(value, float) and math.isfinite(value) and 0.0 < value <= 1.0:
        return value
    raise ValueError(
        f"{name} must be a number of batches (an integer >= 1) or a share of them in (0, 1], got {value!r}"
        + (" (it would run no batch: nothing would be trained or validated)" if value == 0 else "")
        + "."
    )


def _check_max_time(value: Any) -> Any:
    """``max_time``: a positive ``timedelta``, a dict of its keyword arguments, or ``"DD:HH:MM:SS"``."""
    if value is None:
        return None
    total: float | None = None
    if isinstance(value, datetime.timedelta):
        total = value.total_seconds()
    elif isinstance(value, Mapping):
        if not all(k in _TIMEDELTA_KEYS for k in value) or not all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
            and v >= 0 for v in value.values()
        ):
            raise ValueError(
                f"max_time={value!r:.120} must be a dict of non-negative numbers with keys among {list(_TIMEDELTA_KEYS)}, "
                "e.g. {'hours': 2}."
            )
        value = {k: (int(v) if isinstance(v, np.integer) else float(v) if isinstance(v, np.floating) else v)
                 for k, v in value.items()}  # fmt: skip
        total = datetime.timedelta(**value).total_seconds()
    elif isinstance(value, str):
        parts = value.split(":")
        if len(parts) == 4 and all(p.strip().isdigit() for p in parts):
            days, hours, minutes, seconds = (int(p) for p in parts)
            total = datetime.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()
        else:
            raise ValueError(f"max_time={value!r:.80} must have the form 'DD:HH:MM:SS', e.g. '00:02:00:00'.")
    else:
        raise TypeError(
            f"max_time must be a datetime.timedelta, a dict such as {{'hours': 2}} or 'DD:HH:MM:SS', got "
            f"{value!r:.80} ({type(value).__name__})."
        )
    if not total > 0:
        raise ValueError(f"max_time must be a positive duration, got {value!r:.80} (it would train nothing).")
    return value


def check_callbacks(callbacks: Any) -> list:
    """``callbacks``: a Lightning ``Callback`` or a list of them; returns the list.

    Examples
    --------
    >>> check_callbacks("bogus")
    Traceback (most recent call last):
    ...
    TypeError: callbacks must be a list of Lightning Callbacks (lightning.pytorch.callbacks.Callback), got 'bogus' (str).
    """
    from lightning.pytorch.callbacks import Callback

    if callbacks is None:
        return []
    if isinstance(callbacks, Callback):
        return [callbacks]
    if isinstance(callbacks, (list, tuple)):
        bad = [(i, c) for i, c in enumerate(callbacks) if not isinstance(c, Callback)]
        if not bad:
            return list(callbacks)
        i, c = bad[0]
        raise TypeError(
            f"callbacks must be a list of Lightning Callbacks (lightning.pytorch.callbacks.Callback); item {i} is "
            f"{c!r:.80} ({type(c).__name__})."
        )
    raise TypeError(
        "callbacks must be a list of Lightning Callbacks (lightning.pytorch.callbacks.Callback), got "
        f"{callbacks!r:.80} ({type(callbacks).__name__})."
    )


def normalise_trainer_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Check every Trainer argument whose meaning pyrovi knows and return them with numpy numbers made plain.

    Values that Lightning would accept but that train nothing (``max_steps=0``, ``limit_train_batches=0``,
    ``max_time={"seconds": 0}``), read as something else (``check_val_every_n_epoch=1.5``, a string for a switch),
    or fail on deep inside (``max_epochs=np.int64(2)``, ``callbacks="x"``) are refused or converted here.

    Examples
    --------
    >>> normalise_trainer_kwargs({"max_steps": 0})
    Traceback (most recent call last):
    ...
    ValueError: max_steps must be an integer >= 1 (or -1: no limit), got 0 (it would train nothing).
    """
    out = dict(kwargs)
    for name, minimum in _INT_ARGUMENTS.items():
        if name in out:
            out[name] = _as_int(name, out[name], minimum)
    for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches"):
        if name in out:
            out[name] = _check_limit(name, out[name])
    if "val_check_interval" in out and not isinstance(out["val_check_interval"], (str, Mapping, datetime.timedelta)):
        out["val_check_interval"] = _check_limit("val_check_interval", out["val_check_interval"])
    if "overfit_batches" in out:
        value = out["overfit_batches"]
        if not (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
                and math.isfinite(value) and value >= 0 and (value <= 1 or float(value).is_integer())):  # fmt: skip
            raise ValueError(f"overfit_batches must be a number of batches (>= 0) or a share in [0, 1], got {value!r:.80}.")
        out["overfit_batches"] = int(value) if isinstance(value, np.integer) else float(value) if isinstance(value, np.floating) else value
    if "max_time" in out:
        out["max_time"] = _check_max_time(out["max_time"])
    for name in _BOOL_ARGUMENTS:
        if out.get(name) is not None:
            check_bool(name, out[name])
            out[name] = bool(out[name])
    if out.get("deterministic") is not None and out["deterministic"] != "warn":
        check_bool("deterministic", out["deterministic"])
    if "fast_dev_run" in out:
        value = out["fast_dev_run"]
        if isinstance(value, np.integer):
            value = out["fast_dev_run"] = int(value)
        if not isinstance(value, (bool, np.bool_)) and (not isinstance(value, int) or value < 0):
            raise ValueError(f"fast_dev_run must be True, False or a number of batches >= 0, got {value!r:.80}.")
    if out.get("precision") is not None:
        check_choice("precision", out["precision"], _PRECISIONS)
    if out.get("gradient_clip_algorithm") is not None:
        check_choice("gradient_clip_algorithm", out["gradient_clip_algorithm"], ("norm", "value"))
    if out.get("default_root_dir") is not None:
        check_path("default_root_dir", out["default_root_dir"])
    if "callbacks" in out:
        out["callbacks"] = check_callbacks(out["callbacks"])
    return out


def check_checkpoint_dir(checkpoint_dir: Any) -> str | None:
    """``checkpoint_dir`` is a path to a directory (or to nothing yet); a file there is refused up front.

    Examples
    --------
    >>> check_checkpoint_dir(7)
    Traceback (most recent call last):
    ...
    TypeError: checkpoint_dir must be a path (str or os.PathLike), got 7 (int).
    """
    if checkpoint_dir is None:
        return None
    text = check_path("checkpoint_dir", checkpoint_dir)
    if os.path.lexists(text) and not os.path.isdir(text):
        raise FileExistsError(
            f"checkpoint_dir={text!r} is a file, not a directory; pyrovi writes last.ckpt into that directory. "
            "Choose a directory (it is created if needed)."
        )
    for ancestor in Path(os.path.abspath(text)).parents:
        if os.path.lexists(ancestor):
            if not os.path.isdir(ancestor):
                raise FileExistsError(
                    f"checkpoint_dir={text!r} lies below {ancestor}, which is a file, not a directory. Choose another "
                    "directory."
                )
            break
    return text
