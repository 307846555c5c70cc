"""The Trainer's arguments, checked before Lightning sees them.

Lightning reads some wrong values as something else (``devices=-1`` is every device; a negative
``gradient_clip_val`` clips nothing; a negative ``early_stopping_min_delta`` counts a worse value as an
improvement) and reports others from deep inside (``accelerator="tpu"`` asks for ``torch_xla``; an unknown
early-stopping monitor fails only at the end of the first validation epoch). pyrovi refuses them up front.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from numbers import Integral
from typing import Any

import numpy as np
import torch

from .._checks import check_bool, check_choice, check_int, check_number

#: Accelerators a pyrovi model runs on ("cuda" is scvi-tools' and torch's name for "gpu").
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")

#: Epoch metrics the training plans log, which early stopping and the plateau scheduler may watch.
MONITORABLE = tuple(
    f"{term}_{split}"
    for split in ("validation", "train")
    for term in ("elbo", "reconstruction_loss", "kl_local", "kl_global")
) + ("validation_loss", "train_loss")


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
