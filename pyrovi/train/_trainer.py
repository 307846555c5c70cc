"""Lightning's Trainer with pyrovi's defaults."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .._settings import settings
from .._errors import NumericalFaultError
from .._pyro_lock import pyro_global_state, restore_pyro_global_state
from ._callbacks import EarlyStoppingWithWarmup, EpochProgressBar, HistoryLogger, LastEpochState, PackHistory
from ._checkpoint import SafeCheckpointIO
from ._checkpoint_callbacks import RandomGeneratorStates, last_checkpoint_callback
from ._trainer_checks import (
    check_checkpoint_dir, check_trainer_arguments, monitor_mode, no_cuda_error, normalise_trainer_kwargs,
)
from ._warning_filters import lightning_warnings_ignored


class Trainer(pl.Trainer):
    """A :class:`lightning.pytorch.Trainer` configured for variational inference of pyrovi models.

    It takes scvi-tools' ``Trainer`` arguments with their meaning. Defaults: accelerator and devices
    ``"auto"``; validation every epoch (``check_val_every_n_epoch=1``); an epoch progress bar showing the
    ELBO (in place of Lightning's per-step bar); no checkpoint files unless ``checkpoint_dir`` is given (or
    ``enable_checkpointing=True``); every metric collected by a :class:`HistoryLogger`
    (``trainer.history_logger``); optional early stopping on ``elbo_validation``. Any other keyword goes
    to Lightning.

    Checkpoints are written and read by :class:`~pyrovi.train.SafeCheckpointIO` (safetensors + JSON, never
    pickle), and hold the random generators' states and the history as well as Lightning's own state
    (module, optimiser, loop counters, scheduler and callback states): ``fit(..., ckpt_path=path)``
    continues a run as if it had not stopped.

    Parameters
    ----------
    max_epochs
        Number of passes over the training cells.
    accelerator, devices
        Where to train (``"cpu"``, ``"gpu"``, ``"auto"``...).
    check_val_every_n_epoch
        Validate every this many epochs; ``None``: every epoch.
    early_stopping
        Stop when ``early_stopping_monitor`` has not improved by more than ``early_stopping_min_delta`` for
        ``early_stopping_patience`` checks, not counting the first ``early_stopping_warmup_epochs`` epochs.
    early_stopping_monitor, early_stopping_min_delta, early_stopping_patience
        What early stopping watches, the least change that counts as an improvement, and its patience.
    early_stopping_warmup_epochs
        Epochs before early stopping starts watching.
    early_stopping_mode
        ``"min"`` (the monitored loss should fall) or ``"max"``; ``None`` (default): ``"max"`` for
        ``validation_accuracy``, ``"min"`` for every loss.
    enable_progress_bar
        Show a progress bar (default: ``pyrovi.settings.progress_bar``); ``progress_bar`` is the same switch.
    simple_progress_bar
        An epoch bar with the ELBO (default); ``False``: Lightning's per-step bar.
    progress_bar_refresh_rate
        Refresh rate (in steps) of Lightning's per-step bar.
    logger
        Further Lightning loggers (one or a list; ``True``: a CSV logger in ``default_root_dir``). The
        history is always collected.
    log_every_n_steps
        Step-level logging interval (``plan_kwargs={"on_step": True}``); epoch metrics are logged every epoch.
    learning_rate_monitor
        Add Lightning's ``LearningRateMonitor`` (history key ``lr-Adam``).
    enable_checkpointing, checkpointing_monitor
        Keep Lightning's checkpoint of the best ``checkpointing_monitor`` value in ``default_root_dir``.
    checkpoint_dir
        Write a checkpoint to ``checkpoint_dir/last.ckpt`` after every epoch (replacing the previous one,
        atomically), from which ``fit(..., ckpt_path=...)`` resumes.

    Examples
    --------
    >>> from pyrovi.dataloaders import DataSplitter
    >>> from pyrovi.train import TrainingPlan
    >>> plan = TrainingPlan(model.module.train())  # a loaded module is in eval mode
    >>> splitter = DataSplitter(model.adata_manager, train_size=0.8, validation_size=0.2)
    >>> trainer = Trainer(max_epochs=2, accelerator="cpu", enable_progress_bar=False)
    >>> trainer.fit(plan, datamodule=splitter)
    >>> trainer.history_logger.history()["elbo_validation"].index.tolist()
    [0, 1]
    >>> Trainer(max_epochs=2, checkpoint_dir="ckpt/", enable_progress_bar=False).fit(plan, datamodule=splitter)
    >>> Trainer(max_epochs=3, enable_progress_bar=False).fit(plan, datamodule=splitter, ckpt_path="ckpt/last.ckpt")
    """

    def __init__(
        self,
        max_epochs: int = 400,
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        check_val_every_n_epoch: int | None = None,
        early_stopping: bool = False,
        early_stopping_monitor: str = "elbo_validation",
        early_stopping_min_delta: float = 0.0,
        early_stopping_patience: int = 45,
        early_stopping_warmup_epochs: int = 0,
        early_stopping_mode: Literal["min", "max"] | None = None,
        enable_progress_bar: bool | None = None,
        simple_progress_bar: bool = True,
        progress_bar_refresh_rate: int = 1,
        progress_bar: bool | None = None,
        logger: Any = None,
        log_every_n_steps: int = 10,
        learning_rate_monitor: bool = False,
        enable_checkpointing: bool = False,
        checkpointing_monitor: str = "validation_loss",
        checkpoint_dir: str | None = None,
        **kwargs: Any,
    ):
        # Lightning announces device choices and product tips at INFO: show them only in debug mode.
        logging.getLogger("lightning.pytorch").setLevel(
            logging.INFO if settings.verbosity <= logging.DEBUG else logging.WARNING
        )
        kwargs = normalise_trainer_kwargs(kwargs)
        named = normalise_trainer_kwargs({
            "max_epochs": max_epochs, "check_val_every_n_epoch": check_val_every_n_epoch,
            "early_stopping_patience": early_stopping_patience,
            "early_stopping_warmup_epochs": early_stopping_warmup_epochs,
            "progress_bar_refresh_rate": progress_bar_refresh_rate, "log_every_n_steps": log_every_n_steps,
            "progress_bar": progress_bar,
        })  # fmt: skip
        max_epochs, check_val_every_n_epoch = named["max_epochs"], named["check_val_every_n_epoch"]
        early_stopping_patience = named["early_stopping_patience"]
        early_stopping_warmup_epochs = named["early_stopping_warmup_epochs"]
        progress_bar_refresh_rate, log_every_n_steps = named["progress_bar_refresh_rate"], named["log_every_n_steps"]
        if isinstance(early_stopping_min_delta, np.floating):
            early_stopping_min_delta = float(early_stopping_min_delta)
        checkpoint_dir = check_checkpoint_dir(checkpoint_dir)
        check_trainer_arguments(
            accelerator, devices, early_stopping, early_stopping_monitor, early_stopping_min_delta,
            early_stopping_patience, early_stopping_warmup_epochs,
            {**kwargs, "enable_progress_bar": enable_progress_bar, "simple_progress_bar": simple_progress_bar,
             "progress_bar_refresh_rate": progress_bar_refresh_rate, "log_every_n_steps": log_every_n_steps,
             "learning_rate_monitor": learning_rate_monitor, "enable_checkpointing": enable_checkpointing},
        )
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise no_cuda_error(f"accelerator={accelerator!r}")
        if early_stopping_mode is None:
            early_stopping_mode = monitor_mode(early_stopping_monitor)
        if early_stopping_mode not in ("min", "max"):
            raise ValueError(f"early_stopping_mode={early_stopping_mode!r}: use 'min' or 'max' (or None: chosen by the monitor).")
        self.history_logger = HistoryLogger()
        callbacks = list(kwargs.pop("callbacks", []) or [])
        if early_stopping:
            callbacks.append(
                EarlyStoppingWithWarmup(
                    monitor=early_stopping_monitor,
                    patience=early_stopping_patience,
                    min_delta=early_stopping_min_delta,
                    mode=early_stopping_mode,
                    warmup_epochs=early_stopping_warmup_epochs,
                )
            )
        if checkpoint_dir is not None:
            callbacks.append(last_checkpoint_callback(checkpoint_dir))
            enable_checkpointing = True  # with this callback in place of Lightning's default one
        elif enable_checkpointing and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks.append(ModelCheckpoint(monitor=checkpointing_monitor, mode=monitor_mode(checkpointing_monitor)))
        if learning_rate_monitor and not any(isinstance(c, LearningRateMonitor) for c in callbacks):
            callbacks.append(LearningRateMonitor())
        callbacks.append(PackHistory(self.history_logger))
        callbacks.append(RandomGeneratorStates())
        # first, so that its copy at an epoch's start comes before any callback's work there (CellAssign's E-step)
        self._last_epoch = LastEpochState(self.history_logger)
        callbacks.insert(0, self._last_epoch)
        #: the exception or interrupt that stopped the last ``fit`` (``None`` when it ran to its end)
        self.stopped_by: BaseException | None = None
        show = progress_bar if progress_bar is not None else enable_progress_bar
        show = settings.progress_bar if show is None else bool(show)
        lightning_bar = False
        if show and simple_progress_bar:
            callbacks.append(EpochProgressBar())
        elif show:
            callbacks.append(TQDMProgressBar(refresh_rate=progress_bar_refresh_rate))
            lightning_bar = True
        if logger is True:
            logger = CSVLogger(kwargs.get("default_root_dir") or ".")
        loggers = [self.history_logger, *_as_list(logger)]
        kwargs.setdefault("num_sanity_val_steps", 0)
        kwargs.setdefault("enable_model_summary", False)
        # pyrovi's loaders shard cells over processes themselves (DataSplitter); Lightning's sampler
        # replacement would rebuild them without their whole-minibatch sampler
        kwargs.setdefault("use_distributed_sampler", False)
        # Every checkpoint is written and read without pickle, unless the caller brings its own format.
        plugins = _as_list(kwargs.pop("plugins", None))
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins.append(SafeCheckpointIO())
        kwargs["plugins"] = plugins
        super().__init__(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            callbacks=callbacks,
            logger=loggers,
            log_every_n_steps=log_every_n_steps,
            check_val_every_n_epoch=1 if check_val_every_n_epoch is None else int(check_val_every_n_epoch),
            enable_checkpointing=enable_checkpointing,
            enable_progress_bar=lightning_bar,
            **kwargs,
        )

    def fit(self, *args: Any, **kwargs: Any) -> None:
        """Lightning's ``fit``, without warnings that do not apply to pyrovi's loaders, and stopped cleanly.

        When training stops inside an epoch (Ctrl-C, SIGTERM, an error), the module's parameters and buffers and
        the history are put back to the end of the last finished epoch (a :class:`pyrovi.NumericalFaultError`
        keeps the last finite state instead, see ``TrainingPlan``), and the exception is ``stopped_by``:

        - Ctrl-C raises ``KeyboardInterrupt`` (Lightning itself would exit with ``SystemExit(1)`` and leave
          SIGINT ignored); the SIGINT handler is the one in place before ``fit``.
        - SIGTERM (a scheduler ending the job) raises Lightning's ``SIGTERMException`` with exit status 143
          (128 + SIGTERM), so that the process ends with a failure status; with ``checkpoint_dir`` the last
          checkpoint, written at the end of the last finished epoch, is where to resume.
        """
        main = threading.current_thread() is threading.main_thread()
        sigint = signal.getsignal(signal.SIGINT) if main else None
        pyro_state = pyro_global_state()
        self.stopped_by = None
        try:
            with lightning_warnings_ignored(resuming=kwargs.get("ckpt_path") is not None):
                super().fit(*args, **kwargs)
        except _Interrupted as err:
            interrupt = err.interrupt
            self._stopped(interrupt, pyro_state)
            raise interrupt from None
        except SIGTERMException as err:
            self._stopped(err, pyro_state)
            _logger.warning(self._sigterm_message())
            raise SIGTERMException(_SIGTERM_EXIT_STATUS) from None
        except SystemExit as err:
            # Lightning's own answer to a KeyboardInterrupt outside the fit proper (sys.exit(1), SIGINT ignored)
            interrupt = err.__context__
            self._stopped(interrupt if isinstance(interrupt, KeyboardInterrupt) else err, pyro_state)
            if isinstance(interrupt, KeyboardInterrupt):
                raise interrupt from None
            raise
        except BaseException as err:
            self._stopped(err, pyro_state)
            raise
        finally:
            if sigint is not None and signal.getsignal(signal.SIGINT) is not sigint:
                signal.signal(signal.SIGINT, sigint)
        self.history_logger.unpack_from(self.callback_metrics)

    def _fit_impl(self, *args: Any, **kwargs: Any) -> Any:
        # Lightning answers a KeyboardInterrupt by ignoring SIGINT from then on and calling sys.exit(1) (from a
        # thread other than the main one it fails with a ValueError instead): carry it past that handler, which
        # treats any other exception by tearing the run down and re-raising it.
        try:
            return super()._fit_impl(*args, **kwargs)
        except KeyboardInterrupt as err:
            raise _Interrupted(err) from err

    def _stopped(self, err: BaseException, pyro_state: tuple[int, list]) -> None:
        """Make the model consistent after a fit that did not run to its end."""
        self.stopped_by = err
        restore_pyro_global_state(pyro_state)
        module = self._last_epoch._module
        if getattr(module, "compiled", False):  # Lightning skips the teardown hooks of a failed run
            with contextlib.suppress(Exception):
                module.teardown("fit")
        if not isinstance(err, NumericalFaultError):  # that one keeps the last finite state, for diagnosis
            self._last_epoch.restore()

    @property
    def finished_epochs(self) -> int:
        """Epochs finished by the last ``fit`` (counted from the start of a resumed run)."""
        if self.stopped_by is None or isinstance(self.stopped_by, NumericalFaultError):
            return int(self.current_epoch)
        return int(self._last_epoch.epoch or 0)

    @property
    def finished_steps(self) -> int:
        """Optimiser steps of the epochs that :attr:`finished_epochs` counts (all steps taken after a numerical fault)."""
        if self.stopped_by is None or isinstance(self.stopped_by, NumericalFaultError):
            return int(self.global_step)
        return int(self._last_epoch.global_step)

    def _sigterm_message(self) -> str:
        checkpoint = ""
        for callback in self.checkpoint_callbacks:
            path = getattr(callback, "best_model_path", "") or getattr(callback, "last_model_path", "")
            if path:
                checkpoint = (
                    f" The last checkpoint, {path}, holds that epoch: continue with "
                    f"model.train(resume_from={str(path)!r}, max_epochs=...)."
                )
                break
        return (
            f"Training stopped by SIGTERM (e.g. a scheduler ending the job) during epoch {self.current_epoch}; "
            f"the model holds the weights and history of the last finished epoch ({self.finished_epochs} "
            f"finished).{checkpoint} Exiting with status {_SIGTERM_EXIT_STATUS}."
        )


_logger = logging.getLogger("pyrovi")
#: exit status of a run stopped by SIGTERM: 128 + the signal's number, as a shell reports a process it ended
_SIGTERM_EXIT_STATUS = 128 + int(signal.SIGTERM)


class _Interrupted(Exception):
    """A ``KeyboardInterrupt`` on its way through Lightning's error handling (see ``Trainer._fit_impl``)."""

    def __init__(self, interrupt: KeyboardInterrupt):
        super().__init__("training interrupted (KeyboardInterrupt)")
        self.interrupt = interrupt


def _as_list(value: Any) -> list:
    if value is None or value is False or value is True:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
