"""Lightning's Trainer with pyrovi's defaults."""

from __future__ import annotations

import logging
import warnings
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from .._settings import settings
from ._callbacks import EarlyStoppingWithWarmup, EpochProgressBar, HistoryLogger, _PackHistory
from ._checkpoint import SafeCheckpointIO, _last_checkpoint, _RandomState
from ._trainer_checks import check_trainer_arguments


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
        ``"min"`` (the default: the monitored loss should fall) or ``"max"``.
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
    >>> trainer = Trainer(max_epochs=20, accelerator="cpu", enable_progress_bar=False)
    >>> trainer.fit(plan, datamodule=splitter)  # doctest: +SKIP
    >>> trainer.history_logger.history()["elbo_validation"]  # doctest: +SKIP
    >>> Trainer(max_epochs=20, checkpoint_dir="ckpt/").fit(plan, datamodule=splitter)  # doctest: +SKIP
    >>> Trainer(max_epochs=40).fit(plan, datamodule=splitter, ckpt_path="ckpt/last.ckpt")  # doctest: +SKIP
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
        early_stopping_mode: Literal["min", "max"] = "min",
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
        check_trainer_arguments(
            accelerator, devices, early_stopping, early_stopping_monitor, early_stopping_min_delta,
            early_stopping_patience, early_stopping_warmup_epochs,
            {**kwargs, "enable_progress_bar": enable_progress_bar, "simple_progress_bar": simple_progress_bar,
             "progress_bar_refresh_rate": progress_bar_refresh_rate, "log_every_n_steps": log_every_n_steps,
             "learning_rate_monitor": learning_rate_monitor, "enable_checkpointing": enable_checkpointing},
        )
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ValueError(
                f"accelerator={accelerator!r} but this machine has no CUDA GPU that torch can use (a CPU-only torch "
                "build, or no driver). Use accelerator='cpu', or 'auto' to take a GPU when there is one."
            )
        if early_stopping_mode not in ("min", "max"):
            raise ValueError(f"early_stopping_mode={early_stopping_mode!r}: use 'min' or 'max'.")
        if check_val_every_n_epoch is not None and (
            isinstance(check_val_every_n_epoch, bool) or int(check_val_every_n_epoch) < 1
        ):
            raise ValueError(
                f"check_val_every_n_epoch must be a positive whole number (or None: every epoch), got "
                f"{check_val_every_n_epoch!r}."
            )
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
            callbacks.append(_last_checkpoint(checkpoint_dir))
            enable_checkpointing = True  # with this callback in place of Lightning's default one
        elif enable_checkpointing and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks.append(ModelCheckpoint(monitor=checkpointing_monitor, mode="min"))
        if learning_rate_monitor and not any(isinstance(c, LearningRateMonitor) for c in callbacks):
            callbacks.append(LearningRateMonitor())
        callbacks.append(_PackHistory(self.history_logger))
        callbacks.append(_RandomState())
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
        """Lightning's ``fit``, without two warnings that do not apply to pyrovi's loaders."""
        with warnings.catch_warnings():
            # Minibatches are indexed whole in the main process, so worker processes would not help.
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            # Raised inside Lightning for newer torch releases; nothing a user can act on.
            warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
            # The plan moves its flat minibatch dicts itself (TrainingPlan.transfer_batch_to_device).
            warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`.*")
            # Step-level logging is opt-in (plan_kwargs={"on_step": True}); short epochs are no mistake.
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            if kwargs.get("ckpt_path") is not None:
                # Resuming into the checkpoint's own directory, or without writing further checkpoints, is
                # what resume_from is for, not a mistake.
                warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
                warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint need to be.*")
            super().fit(*args, **kwargs)
        self.history_logger.unpack_from(self.callback_metrics)


def _as_list(value: Any) -> list:
    if value is None or value is False or value is True:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
