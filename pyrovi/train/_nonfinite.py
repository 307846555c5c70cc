"""The non-finite guard: a NaN or infinite loss or gradient never reaches the parameters."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Literal

import torch

from .._errors import NumericalFaultError

#: history key of the number of optimiser steps skipped in an epoch (``on_nonfinite="skip"``)
SKIPPED_STEPS_METRIC = "nonfinite_steps_skipped"
#: what a guard may do with a faulty step
NONFINITE_MODES = ("raise", "skip")

#: the verdict on a step: taken (``True``), skipped (``False``), a device bool (taken where true), or
#: ``None`` when no loss was watched since the last check (nothing to decide)
Verdict = bool | torch.Tensor | None


def _copy_all(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """``targets[i].copy_(sources[i])`` for all ``i``, in one fused call where torch has one (torch >= 2.2)."""
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(targets, sources)
    else:
        for target, source in zip(targets, sources):
            target.copy_(source)


class NonFiniteGuard:
    """Check every optimiser step's loss and gradients, and stop or skip a step where one is NaN or infinite.

    The check is one fused norm over all gradients (a single kernel for all of them) stacked with the loss
    and tested at once: the step is finite exactly when every entry is. Where the decision is made:

    - on the host (the CPU, or an optimiser without a ``found_inf`` input): the flag is read, which on the
      CPU costs no synchronisation. A faulty step raises :class:`pyrovi.NumericalFaultError` (``"raise"``)
      or has its gradients set to ``None``, which optimisers skip, and is counted (``"skip"``).
    - on the device (an accelerator with a fused Adam/AdamW): the flag stays there and becomes the
      optimiser's ``found_inf``, so the fused kernel skips the update and the step count without a host
      read. In ``"raise"`` mode the flag is sticky (every later step of the epoch is skipped as well), and
      :meth:`end_epoch`, where the epoch's metrics synchronise anyway, raises naming the first faulty step.

    Either way the running statistics of BatchNorm layers, which the faulty forward pass has already
    updated, are put back from a copy taken by :meth:`before_forward`: a skipped or refused step leaves no
    trace in the model.

    The guard's life follows a fit: :meth:`start_fit` once, :meth:`start_epoch` every epoch, per step
    :meth:`before_forward`, :meth:`watch` (the loss) and, after the backward pass, :meth:`check` (the
    verdict); :meth:`end_epoch` and :meth:`end_fit` report.

    Parameters
    ----------
    mode
        ``"raise"`` (stop at the first faulty step) or ``"skip"`` (leave it out and go on).
    on_device
        Decide on the device (``True``), on the host (``False``), or by the loss's device and the
        optimiser (``None``, the default); tests force ``True`` to run the device path on the CPU.

    Attributes
    ----------
    n_skipped
        Steps skipped during the current (or last) fit.

    Examples
    --------
    >>> import torch
    >>> weight = torch.nn.Parameter(torch.ones(2))
    >>> optimizer = torch.optim.SGD([weight], lr=0.1)
    >>> guard = NonFiniteGuard("skip")
    >>> guard.start_fit(running_buffers=[], named_parameters=lambda: [("weight", weight)])
    >>> guard.start_epoch(first_step=0)
    >>> loss = (weight * torch.tensor([1.0, float("inf")])).sum()
    >>> loss.backward()
    >>> guard.watch(loss)
    >>> guard.check(optimizer, step=0, epoch=0)  # skipped: the optimiser leaves the weight alone
    False
    >>> weight.grad is None
    True
    >>> guard.end_epoch(epoch=0)
    1
    """

    def __init__(self, mode: Literal["raise", "skip"] = "raise", on_device: bool | None = None):
        if mode not in NONFINITE_MODES:
            raise ValueError(f"on_nonfinite={mode!r}: use 'raise' (stop with an error) or 'skip'.")
        self.mode = mode
        self.on_device = on_device
        self.n_skipped = 0
        # the fit: BatchNorm's running statistics, their copy from before the current step, parameter names
        self._running: list[torch.Tensor] = []
        self._running_saved: list[torch.Tensor] | None = None
        self._named_parameters: Callable[[], Iterable[tuple[str, torch.Tensor]]] | None = None
        # the current step: its detached loss until it is checked
        self._loss: torch.Tensor | None = None
        # the current epoch, counted on the host
        self._epoch_first_step = 0
        self._epoch_skipped = 0
        # the current epoch, counted on the device (see _flag_on_device): no host read before the epoch ends
        self._skipped_on_device: torch.Tensor | None = None
        self._halted: torch.Tensor | None = None
        self._n_steps_before_halt: torch.Tensor | None = None
        self._fault_mask: torch.Tensor | None = None
        self._fault_params: list[torch.Tensor] = []

    # the fit's and epoch's life

    def start_fit(
        self, running_buffers: list[torch.Tensor], named_parameters: Callable[[], Iterable[tuple[str, torch.Tensor]]]
    ) -> None:
        """Start a fit: the buffers a forward pass changes (on their final device) and where parameter names are."""
        self.n_skipped = 0
        self._loss = None
        self._running = list(running_buffers)
        self._running_saved = None
        self._named_parameters = named_parameters

    def start_epoch(self, first_step: int) -> None:
        """Start an epoch whose first optimiser step is ``first_step``."""
        self._epoch_first_step = first_step
        self._epoch_skipped = 0
        self._skipped_on_device = None
        self._halted = None
        self._n_steps_before_halt = None
        self._fault_mask = None
        self._fault_params = []

    def end_epoch(self, epoch: int) -> int:
        """The number of steps skipped in the epoch; raises for a fault flagged on the device (``"raise"``)."""
        if self._skipped_on_device is not None:
            self._epoch_skipped += int(self._skipped_on_device)
            self._skipped_on_device = None
        if self._halted is not None and bool(self._halted):
            # the flags restart every epoch, so the first faulty step lies in this one
            step = self._epoch_first_step + int(self._n_steps_before_halt)
            raise self._fault_error(step, epoch, self._fault_params, ~self._fault_mask.cpu())
        self.n_skipped += self._epoch_skipped
        return self._epoch_skipped

    def end_fit(self) -> None:
        """Warn with the number of steps skipped in the fit, if any."""
        if self.n_skipped:
            warnings.warn(
                f"{self.n_skipped} optimiser steps had a NaN or infinite loss or gradient and were skipped "
                f"(on_nonfinite='skip'; per epoch in history['{SKIPPED_STEPS_METRIC}']). Many skipped steps "
                "suggest data that are not raw counts or a learning rate that is too high.",
                UserWarning,
                stacklevel=3,
            )

    # a step

    def before_forward(self) -> None:
        """Copy the running statistics before the forward pass changes them, so that a faulty step can undo it."""
        if not self._running:
            return
        if self._running_saved is None:
            self._running_saved = [b.clone() for b in self._running]
        else:
            _copy_all(self._running_saved, self._running)

    def watch(self, loss: torch.Tensor) -> None:
        """The loss of the step that :meth:`check` will judge."""
        self._loss = loss.detach()

    def check(self, optimizer: torch.optim.Optimizer, step: int, epoch: int) -> Verdict:
        """Judge the watched step from its loss and the gradients ``optimizer`` is about to apply.

        Returns whether the optimiser step is taken: ``True``, ``False`` (skipped: its gradients are
        ``None``), or a device bool when the decision stays on the device; ``None`` when no loss was watched.
        Raises :class:`pyrovi.NumericalFaultError` for a faulty step seen on the host in ``"raise"`` mode.
        """
        loss, self._loss = self._loss, None
        if loss is None:
            return None
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return True
        norms = torch._foreach_norm([p.grad for p in params])
        finite = torch.isfinite(torch.stack([*norms, loss.reshape(()).to(norms[0].dtype)]))
        if self._decides_on_device(optimizer, loss):
            return self._flag_on_device(optimizer, params, finite)
        if bool(finite.all()):  # on the CPU this reads memory the host already holds: no synchronisation
            return True
        return self._on_host_fault(params, finite, step, epoch)

    def _decides_on_device(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> bool:
        if self.on_device is not None:
            return self.on_device
        # The fused Adam kernels take a found_inf flag and skip the update on the device when it is set.
        return loss.device.type != "cpu" and bool(optimizer.defaults.get("fused"))

    def _on_host_fault(self, params: list[torch.Tensor], finite: torch.Tensor, step: int, epoch: int) -> bool:
        """A faulty step seen on the host: raise before the optimiser step, or skip it."""
        self._restore_running_buffers()
        if self.mode == "raise":
            raise self._fault_error(step, epoch, params, finite)
        # Optimisers leave parameters without gradient untouched (no update, no moment or step count change).
        for p in params:
            p.grad = None
        self._epoch_skipped += 1
        return False

    def _flag_on_device(
        self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], finite: torch.Tensor
    ) -> torch.Tensor:
        """A fault flag kept on the device and handed to the fused optimiser: no host synchronisation."""
        bad = ~finite.all()
        if self.mode == "skip":
            self._skipped_on_device = bad.long() if self._skipped_on_device is None else self._skipped_on_device + bad
            optimizer.found_inf = bad.float()
            self._restore_running_buffers(bad)
            return ~bad
        # "raise": from the first faulty step on, every step of the epoch is skipped, so the parameters stay
        # at the last finite state until end_epoch raises; the first fault's mask names the culprit.
        self._fault_params = params  # the order of the entries of the fault mask
        before = self._halted if self._halted is not None else torch.zeros_like(bad)
        halted = before | bad
        newly = halted & ~before
        mask = self._fault_mask
        if mask is None or mask.shape != finite.shape:  # a step whose set of gradients differs
            mask = torch.zeros_like(finite)
        self._fault_mask = torch.where(newly, ~finite, mask)
        steps = (~halted).long()
        self._n_steps_before_halt = steps if self._n_steps_before_halt is None else self._n_steps_before_halt + steps
        self._halted = halted
        optimizer.found_inf = halted.float()
        self._restore_running_buffers(halted)
        return ~halted

    def _restore_running_buffers(self, flag: torch.Tensor | None = None) -> None:
        """Put back the running statistics of before this step (where ``flag``, a device bool, is set)."""
        if not self._running or self._running_saved is None:
            return
        if flag is None:
            _copy_all(self._running, self._running_saved)
            return
        for buffer, before in zip(self._running, self._running_saved):
            buffer.copy_(torch.where(flag, before, buffer))

    def _fault_error(
        self, step: int, epoch: int, params: list[torch.Tensor], finite: torch.Tensor
    ) -> NumericalFaultError:
        finite = finite.cpu()
        if not bool(finite[-1]):
            culprit, what = "loss", "the loss"
        else:
            named = self._named_parameters() if self._named_parameters is not None else ()
            names = {id(p): name for name, p in named}
            first = int((~finite[:-1]).nonzero()[0])
            culprit = names.get(id(params[first]), f"parameter {first}")
            n_bad = int((~finite[:-1]).sum())
            others = f" (and {n_bad - 1} other parameters)" if n_bad > 1 else ""
            what = f"the gradient of {culprit}{others}"
        message = (
            f"Training stopped at optimiser step {step} (epoch {epoch}): {what} is NaN or infinite. The step was "
            "not applied: the model keeps its parameters from before it (the last finite state). Likely causes: "
            "data that are not raw counts (normalised or log-transformed values; pass the counts with "
            "setup_anndata(adata, layer='counts')), or a learning rate that is too high (lower it, e.g. "
            "plan_kwargs={'lr': 1e-4}). To skip such steps and go on training, use "
            "plan_kwargs={'on_nonfinite': 'skip'}."
        )
        return NumericalFaultError(message, step=step, epoch=epoch, culprit=culprit)
