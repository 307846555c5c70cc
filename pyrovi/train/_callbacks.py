"""Lightning callbacks and logger: an epoch progress bar and the history kept on the model."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from tqdm.auto import tqdm


_PACKED_PREFIX = "_pyrovi_history/"
_PACKED_STEP_PREFIX = "_pyrovi_history_step/"  # metrics indexed by step
_logger = logging.getLogger("pyrovi")


class HistoryLogger(Logger):
    """Collect every metric into ``{metric: {epoch or step: value}}``.

    :meth:`history` turns it into scvi-tools' layout: one DataFrame per metric, indexed by epoch (index
    name ``"epoch"``), or by global step (index name ``"step"``) for metrics logged without an epoch: the
    training plan's step-level metrics (``train_loss_step``...) and e.g.
    :class:`~lightning.pytorch.callbacks.LearningRateMonitor`'s ``lr-Adam``.

    Examples
    --------
    >>> logger = HistoryLogger()
    >>> logger.log_metrics({"elbo_train": 3.0, "epoch": 0})
    >>> logger.history()["elbo_train"]
           elbo_train
    epoch
    0             3.0
    """

    def __init__(self) -> None:
        super().__init__()
        self._metrics: dict[str, dict[int, float]] = defaultdict(dict)
        self._step_keys: set[str] = set()

    @property
    def name(self) -> str:
        return "pyrovi"

    @property
    def version(self) -> int:
        return 0

    @property
    @rank_zero_experiment
    def experiment(self) -> None:
        return None

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        epoch = metrics.get("epoch")
        for key, value in metrics.items():
            if key == "epoch":
                continue
            if epoch is None:
                index = int(step or 0)
                self._step_keys.add(key)
            else:
                index = int(epoch)
            self._metrics[key][index] = float(value.item() if torch.is_tensor(value) else value)

    # A spawned data-parallel run (strategy="ddp_spawn") logs in worker processes and sends back only
    # the weights and ``trainer.callback_metrics`` (as tensors, loaded with weights_only=True). The
    # history rides along there: packed by rank 0 when training ends, unpacked by the main process.

    def pack_into(self, metrics: dict[str, Any]) -> None:
        """Store the history in ``metrics`` as one ``(n_epochs, 2)`` tensor of (epoch, value) per metric."""
        for key, values in self._metrics.items():
            rows = sorted(values.items())
            prefix = _PACKED_STEP_PREFIX if key in self._step_keys else _PACKED_PREFIX
            metrics[prefix + key] = torch.tensor(rows, dtype=torch.float64).reshape(-1, 2)

    def unpack_from(self, metrics: dict[str, Any]) -> None:
        """Take a packed history out of ``metrics``; adopt it when this logger saw no epoch itself."""
        prefixes = (_PACKED_PREFIX, _PACKED_STEP_PREFIX)
        packed = {key: metrics.pop(key) for key in [k for k in metrics if k.startswith(prefixes)]}
        if self._metrics:
            return
        for key, rows in packed.items():
            by_step = key.startswith(_PACKED_STEP_PREFIX)
            name = key[len(_PACKED_STEP_PREFIX if by_step else _PACKED_PREFIX):]
            self._metrics[name] = {int(e): float(v) for e, v in rows.tolist()}
            if by_step:
                self._step_keys.add(name)

    def _lengths(self) -> dict[str, int]:
        """How many values each metric holds now (for :meth:`_truncate`)."""
        return {key: len(values) for key, values in self._metrics.items()}

    def _truncate(self, lengths: dict[str, int]) -> None:
        """Forget the values logged since ``lengths`` was taken (metrics keep their insertion order)."""
        for key in list(self._metrics):
            keep = lengths.get(key, 0)
            values = self._metrics[key]
            if len(values) > keep:
                self._metrics[key] = dict(list(values.items())[:keep])
            if not self._metrics[key]:
                del self._metrics[key]
                self._step_keys.discard(key)

    def history(self) -> dict[str, pd.DataFrame]:
        """One DataFrame per metric, indexed by epoch (or by step for step-level metrics)."""
        out = {}
        for key, values in self._metrics.items():
            frame = pd.DataFrame({key: pd.Series(values, dtype=float)})
            frame.index.name = "step" if key in self._step_keys else "epoch"
            out[key] = frame.sort_index()
        return out


class EpochProgressBar(pl.Callback):
    """A tqdm bar over epochs whose postfix shows the latest training and validation ELBO.

    Examples
    --------
    >>> from pyrovi.train import Trainer
    >>> trainer = Trainer(max_epochs=1, callbacks=[EpochProgressBar()])
    >>> any(isinstance(callback, EpochProgressBar) for callback in trainer.callbacks)
    True
    """

    def __init__(self) -> None:
        self._bar: tqdm | None = None
        self._shown = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._shown = trainer.current_epoch
        if trainer.is_global_zero:
            self._bar = tqdm(total=trainer.max_epochs, desc="Training", unit="epoch", dynamic_ncols=True)

    # The training ELBO of an epoch is logged by the plan's own on_train_epoch_end, which Lightning
    # calls after the callbacks' hook of that name: the bar therefore advances when the next epoch
    # starts, and once more when training ends.
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch > self._shown:
            self._advance(trainer)

    def _advance(self, trainer: pl.Trainer) -> None:
        if self._bar is None:
            return
        self._shown += 1
        shown = {}
        for key in ("elbo_train", "elbo_validation"):
            value = trainer.callback_metrics.get(key)
            if value is not None:
                shown[key] = f"{float(value):.4g}"
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is not None:
            if self._shown < trainer.current_epoch:  # the last epoch, not yet shown
                self._advance(trainer)
            self._bar.close()
            self._bar = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # training stopped by an error or an interrupt: close the bar rather than leave it open in the notebook
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class LastEpochState(pl.Callback):
    """A copy of the module's parameters and buffers when each epoch starts, put back if training stops inside one.

    The weights do not change between the last optimiser step of an epoch and the first of the next, and by the
    time the next epoch starts Lightning has handed the finished epoch's metrics to the loggers: the copy taken
    there is the state of the last finished epoch, and :meth:`restore` makes the module and the history agree
    with it again after a Ctrl-C, a SIGTERM or an error in the middle of an epoch. A first copy is taken in
    ``setup``, before anything (a checkpoint given to ``ckpt_path`` included) changes the weights.

    The copy lives on the module's device and is refreshed in place (one copy of the parameters per epoch, with
    no host synchronisation on an accelerator).
    """

    def __init__(self, history_logger: HistoryLogger):
        self.history_logger = history_logger
        self._saved: dict[str, torch.Tensor] = {}
        self._module: pl.LightningModule | None = None
        self._history_lengths: dict[str, int] = {}
        #: epochs finished and optimiser steps taken (Lightning's counters) when the copy was taken
        self.epoch: int | None = None
        self.global_step = 0

    @staticmethod
    def _state(module: torch.nn.Module) -> Any:
        yield from module.named_parameters()
        yield from module.named_buffers()

    def _take(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._module = pl_module
        with torch.no_grad():
            for name, tensor in self._state(pl_module):
                saved = self._saved.get(name)
                if saved is None or saved.shape != tensor.shape or saved.dtype != tensor.dtype or saved.device != tensor.device:
                    self._saved[name] = tensor.detach().clone()
                else:
                    saved.copy_(tensor)
        self.epoch, self.global_step = trainer.current_epoch, trainer.global_step
        self._history_lengths = self.history_logger._lengths()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._take(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # every epoch has finished: an interrupt in a later hook keeps them all
        self._take(trainer, pl_module)

    def restore(self) -> bool:
        """Put the module's weights and the history back to the copy; ``False`` when there is none."""
        if self._module is None:
            return False
        with torch.no_grad():
            for name, tensor in self._state(self._module):
                saved = self._saved.get(name)
                if saved is not None and saved.shape == tensor.shape:
                    tensor.copy_(saved)
        self.history_logger._truncate(self._history_lengths)
        return True


class PackHistory(pl.Callback):
    """On rank 0, put the history into ``callback_metrics`` so that a spawned run can return it.

    Also carries the history in checkpoints, so that a resumed run's history starts with the epochs before
    the checkpoint.
    """

    def __init__(self, history_logger: HistoryLogger):
        self.history_logger = history_logger

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # A checkpoint is written in an epoch's end hooks, after the epoch's metrics are computed
        # (callback_metrics) but before Lightning hands them to the loggers: add them here.
        metrics = {key: dict(values) for key, values in self.history_logger._metrics.items()}
        epoch = trainer.current_epoch
        step_keys = self.history_logger._step_keys
        for key, value in trainer.callback_metrics.items():
            if key.startswith((_PACKED_PREFIX, _PACKED_STEP_PREFIX)) or key in step_keys:
                continue
            if f"{key}_epoch" in trainer.callback_metrics:  # with on_step, the history has it as key_epoch
                continue
            if epoch not in metrics.get(key, {}):
                metrics.setdefault(key, {})[epoch] = float(value)
        checkpoint["pyrovi_history"] = {key: sorted(values.items()) for key, values in metrics.items()}
        checkpoint["pyrovi_history_step_keys"] = sorted(step_keys)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        for key, rows in checkpoint.get("pyrovi_history", {}).items():
            self.history_logger._metrics[key].update({int(e): float(v) for e, v in rows})
        self.history_logger._step_keys.update(checkpoint.get("pyrovi_history_step_keys", []))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.history_logger.pack_into(trainer.callback_metrics)


class EarlyStoppingWithWarmup(EarlyStopping):
    """Lightning's :class:`~lightning.pytorch.callbacks.EarlyStopping` that starts watching after a warm-up.

    The first ``warmup_epochs`` epochs are not checked (a KL warm-up makes early ELBOs incomparable), and
    when it stops training it says so, with the best value and its epoch, through the ``pyrovi`` logger.

    Parameters
    ----------
    warmup_epochs
        Epochs to let pass before the first check.
    **kwargs
        :class:`~lightning.pytorch.callbacks.EarlyStopping`'s arguments (``monitor``, ``patience``,
        ``min_delta``, ``mode``...).

    Examples
    --------
    >>> stopper = EarlyStoppingWithWarmup(monitor="elbo_validation", patience=45, warmup_epochs=20)
    >>> stopper.monitor, stopper.patience
    ('elbo_validation', 45)
    """

    def __init__(self, warmup_epochs: int = 0, **kwargs: Any):
        if isinstance(warmup_epochs, bool) or int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise ValueError(f"early_stopping_warmup_epochs must be a non-negative whole number, got {warmup_epochs!r}.")
        super().__init__(**kwargs)
        self.warmup_epochs = int(warmup_epochs)

    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        if trainer.current_epoch < self.warmup_epochs:
            return
        was_stopping = trainer.should_stop
        super()._run_early_stopping_check(trainer)
        if trainer.should_stop and not was_stopping and trainer.is_global_zero:
            _logger.info(
                "Early stopping at epoch %d: %s did not improve by more than %s for %d checks; best %.6g.",
                trainer.current_epoch, self.monitor, abs(self.min_delta), self.patience, float(self.best_score),
            )
