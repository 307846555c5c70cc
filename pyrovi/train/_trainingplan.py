"""One Lightning module for stochastic variational inference on any pyrovi model/guide pair."""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import lightning.pytorch as pl
import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from .._constants import REGISTRY_KEYS
from ..module.base import BaseModuleClass, per_cell_elbo_terms, trace_pair

# Pyro rejects non-positive scales; the first warm-up epoch therefore uses this tiny weight, which
# for the optimiser is indistinguishable from scVI's zero.
_MIN_POSITIVE_KL_WEIGHT = 1e-8


def _kl_weight(
    epoch: int,
    step: int,
    n_epochs_kl_warmup: int | None,
    n_steps_kl_warmup: int | None,
    min_kl_weight: float,
    max_kl_weight: float,
) -> float:
    """Linear KL warm-up from ``min_kl_weight`` to ``max_kl_weight`` over epochs or steps."""
    if n_steps_kl_warmup:
        progress = min(step / n_steps_kl_warmup, 1.0)
    elif n_epochs_kl_warmup:
        progress = min(epoch / n_epochs_kl_warmup, 1.0)
    else:
        progress = 1.0
    return max(min_kl_weight + (max_kl_weight - min_kl_weight) * progress, _MIN_POSITIVE_KL_WEIGHT)


def _make_adam(cls: type, params: list[torch.Tensor], **settings: float) -> torch.optim.Optimizer:
    """One Adam over all parameters, fused into a single kernel where torch supports it.

    The fused kernel runs one update for every parameter at once (on the CPU about six times faster
    than the per-parameter loop torch uses there by default); older torch versions or unusual
    parameter types fall back to the default implementation.
    """
    try:
        return cls(params, fused=True, **settings)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, **settings)


class TrainingPlan(pl.LightningModule):
    """Stochastic variational inference as a LightningModule: the loss is a Pyro ELBO.

    ``loss(module.model, module.guide)`` is a torch module returning the differentiable negative
    ELBO of a minibatch, scaled by the cell plate to the whole training set. The plan divides it by
    the number of training cells, so the optimiser sees the per-cell loss (the same gradient scale as
    scvi-tools, which matters for Adam's ``eps``), and Lightning's automatic optimisation does the rest.

    Logged per epoch and per cell: ``elbo_train`` and ``elbo_validation`` (negative ELBO, lower is
    better, as scvi-tools), plus ``reconstruction_loss_validation`` and ``kl_local_validation`` (and
    their ``_train`` versions when ``log_train_terms=True``, at the cost of a second pass). Validation
    always uses the full KL (weight 1): ``elbo_validation`` is the true held-out ELBO, whatever the
    warm-up.

    Parameters
    ----------
    module
        The model/guide pair.
    loss
        A Pyro ELBO; default :class:`~pyro.infer.TraceMeanField_ELBO` (analytic KL where one exists).
    optimizer
        ``"Adam"``, ``"AdamW"`` or a callable ``params -> torch.optim.Optimizer``.
    lr, weight_decay, eps
        Optimiser settings (scvi-tools' defaults).
    n_epochs_kl_warmup, n_steps_kl_warmup
        Length of the linear KL warm-up; steps take precedence when given.
    min_kl_weight, max_kl_weight
        Range of the KL weight.
    reduce_lr_on_plateau
        Reduce the learning rate when ``lr_scheduler_metric`` stops improving.
    lr_factor, lr_patience, lr_threshold, lr_min, lr_scheduler_metric
        Settings of the plateau scheduler.
    log_train_terms
        Also log reconstruction and KL terms on training minibatches (one extra forward pass each).
    validate_distributions
        Run Pyro/torch argument validation inside the training loop. Off by default: the data layer has
        already validated the counts, and validation checks synchronise the host with the device.

    Examples
    --------
    >>> plan = TrainingPlan(VAE(n_input=100), lr=1e-3)  # doctest: +SKIP
    >>> Trainer(max_epochs=10).fit(plan, datamodule=DataSplitter(manager))  # doctest: +SKIP
    """

    def __init__(
        self,
        module: BaseModuleClass,
        *,
        loss: ELBO | None = None,
        optimizer: Literal["Adam", "AdamW"] | Any = "Adam",
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        eps: float = 0.01,
        n_epochs_kl_warmup: int | None = 400,
        n_steps_kl_warmup: int | None = None,
        min_kl_weight: float = 0.0,
        max_kl_weight: float = 1.0,
        reduce_lr_on_plateau: bool = False,
        lr_factor: float = 0.6,
        lr_patience: int = 30,
        lr_threshold: float = 0.0,
        lr_min: float = 0.0,
        lr_scheduler_metric: str = "elbo_validation",
        log_train_terms: bool = False,
        validate_distributions: bool = False,
    ):
        super().__init__()
        self.module = module
        self.loss = loss if loss is not None else TraceMeanField_ELBO()
        # The ELBO module only wraps the (bound) model and guide; the parameters are the module's.
        self._elbo = self.loss(module.model, module.guide)
        self.optimizer = optimizer
        self.lr, self.weight_decay, self.eps = lr, weight_decay, eps
        self.n_epochs_kl_warmup, self.n_steps_kl_warmup = n_epochs_kl_warmup, n_steps_kl_warmup
        self.min_kl_weight, self.max_kl_weight = min_kl_weight, max_kl_weight
        self.reduce_lr_on_plateau = reduce_lr_on_plateau
        self.lr_factor, self.lr_patience = lr_factor, lr_patience
        self.lr_threshold, self.lr_min = lr_threshold, lr_min
        self.lr_scheduler_metric = lr_scheduler_metric
        self.log_train_terms = log_train_terms
        self.validate_distributions = validate_distributions
        self.n_obs_training: int | None = None
        self.n_obs_validation: int | None = None

    # ----------------------------------------------------------------------------------------------

    @property
    def kl_weight(self) -> float:
        """The current KL warm-up weight."""
        return _kl_weight(
            self.current_epoch,
            self.global_step,
            self.n_epochs_kl_warmup,
            self.n_steps_kl_warmup,
            self.min_kl_weight,
            self.max_kl_weight,
        )

    def setup(self, stage: str | None = None) -> None:
        """Learn the set sizes and create Pyro's lazy parameters before optimiser and DDP wrapping."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:
            self.n_obs_training = getattr(datamodule, "n_train", None)
            self.n_obs_validation = getattr(datamodule, "n_val", None)
            loader = datamodule.train_dataloader()
            batch = next(iter(loader), None) if loader else None
            if batch is not None:
                self._materialise_lazy_parameters(batch)

    def _materialise_lazy_parameters(self, batch: dict[str, torch.Tensor]) -> None:
        # Pyro creates some parameters (e.g. of autoguides) on first use; run the guide once so they
        # exist when configure_optimizers collects parameters.
        device = self.module.device  # a second fit may find the module already on an accelerator
        batch = {key: value.to(device) for key, value in batch.items()}
        args, kwargs = self.module._get_fn_args_from_batch(batch)
        with torch.no_grad(), pyro.validation_enabled(self.validate_distributions):
            poutine.trace(self.module.guide).get_trace(*args, **kwargs)

    def _loss(self, batch: dict[str, torch.Tensor], n_obs: int | None, kl_weight: float) -> torch.Tensor:
        args, kwargs = self.module._get_fn_args_from_batch(batch)
        n_obs = n_obs or args[0].shape[0]
        # TraceEnum_ELBO refuses to run without autograd (as in validation): let it, then detach
        grad = torch.enable_grad() if isinstance(self.loss, TraceEnum_ELBO) else contextlib.nullcontext()
        with pyro.validation_enabled(self.validate_distributions), grad:
            loss = self._elbo(*args, n_obs=n_obs, kl_weight=kl_weight, **kwargs) / n_obs
        return loss if torch.is_grad_enabled() else loss.detach()

    def _log_terms(self, batch: dict[str, torch.Tensor], suffix: str) -> None:
        args, kwargs = self.module._get_fn_args_from_batch(batch)
        with torch.no_grad(), pyro.validation_enabled(self.validate_distributions):
            terms = per_cell_elbo_terms(*trace_pair(self.module.model, self.module.guide, args, kwargs))
        n = args[0].shape[0]
        options = {"on_epoch": True, "on_step": False, "batch_size": n, "sync_dist": True}
        self.log(f"reconstruction_loss_{suffix}", -terms["reconstruction"].mean(), **options)
        self.log(f"kl_local_{suffix}", terms["kl_local"].mean(), **options)

    def transfer_batch_to_device(
        self, batch: dict[str, torch.Tensor], device: torch.device, dataloader_idx: int
    ) -> dict[str, torch.Tensor]:
        # A minibatch is a flat dict of tensors: move it directly rather than through Lightning's
        # generic collection walk, which costs milliseconds a step.
        return {key: value.to(device, non_blocking=True) for key, value in batch.items()}

    def on_train_epoch_start(self) -> None:
        # Epoch sums of the training loss stay on the device: no per-step self.log (which costs a few
        # milliseconds a call on the CPU) and no per-step host synchronisation.
        self._epoch_loss_sum: torch.Tensor | None = None
        self._epoch_kl_sum, self._epoch_cells = 0.0, 0

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        kl_weight = self.kl_weight
        loss = self._loss(batch, self.n_obs_training, kl_weight)
        n = batch[REGISTRY_KEYS.INDICES_KEY].shape[0]
        weighted = loss.detach() * n
        self._epoch_loss_sum = weighted if self._epoch_loss_sum is None else self._epoch_loss_sum + weighted
        self._epoch_kl_sum += kl_weight * n
        self._epoch_cells += n
        if self.log_train_terms and getattr(self.module, "per_cell_terms", True):
            self._log_terms(batch, "train")
        return loss

    def on_train_epoch_end(self) -> None:
        if not self._epoch_cells:
            return
        # cell-weighted epoch means, as Lightning's on_epoch logging computes them
        mean_loss = self._epoch_loss_sum / self._epoch_cells
        self.log("elbo_train", mean_loss, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("kl_weight", self._epoch_kl_sum / self._epoch_cells, on_epoch=True, sync_dist=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss = self._loss(batch, self.n_obs_validation, 1.0)
        n = batch[REGISTRY_KEYS.INDICES_KEY].shape[0]
        self.log("elbo_validation", loss, on_epoch=True, on_step=False, batch_size=n, prog_bar=True,
                 sync_dist=True)
        if getattr(self.module, "per_cell_terms", True):
            self._log_terms(batch, "validation")

    def configure_optimizers(self) -> Any:
        params = [p for p in self.module.parameters() if p.requires_grad]
        if callable(self.optimizer):
            optimizer = self.optimizer(params)
        elif self.optimizer in ("Adam", "AdamW"):
            cls = torch.optim.Adam if self.optimizer == "Adam" else torch.optim.AdamW
            optimizer = _make_adam(cls, params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay)
        else:
            raise ValueError(
                f"optimizer={self.optimizer!r}: use 'Adam', 'AdamW' or a callable params -> Optimizer."
            )
        if not self.reduce_lr_on_plateau:
            return optimizer
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=self.lr_factor,
            patience=self.lr_patience,
            threshold=self.lr_threshold,
            min_lr=self.lr_min,
            threshold_mode="abs",
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.lr_scheduler_metric},
        }
