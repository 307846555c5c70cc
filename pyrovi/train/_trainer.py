"""Lightning's Trainer with pyrovi's defaults."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.callbacks import EarlyStopping

from .._settings import settings
from ._callbacks import EpochProgressBar, HistoryLogger, _PackHistory
from ._checkpoint import SafeCheckpointIO, _last_checkpoint, _RandomState


class Trainer(pl.Trainer):
    """A :class:`lightning.pytorch.Trainer` configured for variational inference of pyrovi models.

    Defaults: accelerator and devices ``"auto"``; an epoch progress bar showing the ELBO (in place of
    Lightning's per-step bar); no checkpoint files unless ``checkpoint_dir`` is given (or
    ``enable_checkpointing=True``); every epoch-level metric collected by a :class:`HistoryLogger`
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
    early_stopping
        Stop when ``early_stopping_monitor`` has not improved by ``early_stopping_min_delta`` for
        ``early_stopping_patience`` epochs.
    progress_bar
        Show the epoch bar (default: ``pyrovi.settings.progress_bar``).
    checkpoint_dir
        Write a checkpoint to ``checkpoint_dir/last.ckpt`` after every epoch (replacing the previous one,
        atomically), from which ``fit(..., ckpt_path=...)`` resumes.

    Examples
    --------
    >>> trainer = Trainer(max_epochs=20, accelerator="cpu", progress_bar=False)
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
        early_stopping: bool = False,
        early_stopping_monitor: str = "elbo_validation",
        early_stopping_patience: int = 45,
        early_stopping_min_delta: float = 0.0,
        progress_bar: bool | None = None,
        enable_checkpointing: bool = False,
        checkpoint_dir: str | None = None,
        **kwargs: Any,
    ):
        # Lightning announces device choices and product tips at INFO: show them only in debug mode.
        logging.getLogger("lightning.pytorch").setLevel(
            logging.INFO if settings.verbosity <= logging.DEBUG else logging.WARNING
        )
        self.history_logger = HistoryLogger()
        callbacks = list(kwargs.pop("callbacks", []) or [])
        if early_stopping:
            callbacks.append(
                EarlyStopping(
                    monitor=early_stopping_monitor,
                    patience=early_stopping_patience,
                    min_delta=early_stopping_min_delta,
                    mode="min",
                )
            )
        if checkpoint_dir is not None:
            callbacks.append(_last_checkpoint(checkpoint_dir))
            enable_checkpointing = True  # with this callback in place of Lightning's default one
        callbacks.append(_PackHistory(self.history_logger))
        callbacks.append(_RandomState())
        if settings.progress_bar if progress_bar is None else progress_bar:
            callbacks.append(EpochProgressBar())
        loggers = [self.history_logger, *_as_list(kwargs.pop("logger", None))]
        kwargs.setdefault("num_sanity_val_steps", 0)
        kwargs.setdefault("enable_model_summary", False)
        kwargs.setdefault("log_every_n_steps", 1)
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
            enable_checkpointing=enable_checkpointing,
            enable_progress_bar=False,
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
