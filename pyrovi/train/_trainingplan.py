"""One Lightning module for stochastic variational inference on any pyrovi model/guide pair."""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from .._checks import check_bool, check_choice, check_int, check_number
from .._constants import REGISTRY_KEYS
from .._pyro_lock import pyro_lock
from ..module.base import BaseModuleClass, per_cell_elbo_terms, trace_pair
from ._elbo import SplitTraceMeanField_ELBO
from ._nonfinite import SKIPPED_STEPS_METRIC, NonFiniteGuard
from ._renyi_elbo import CellRenyiELBO
from ._trainer_checks import monitor_mode

#: equal-width confidence bins of the validation calibration error (torchmetrics' and scvi-tools' number)
_CALIBRATION_BINS = 15

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


def _validate_plan_settings(**values: Any) -> None:
    """Refuse settings that would fail (or silently misbehave) inside training, naming the fix."""
    optimizer, creator = values["optimizer"], values["optimizer_creator"]
    if optimizer == "Custom":
        if not callable(creator):
            raise ValueError(
                "optimizer='Custom' needs optimizer_creator, a callable params -> torch.optim.Optimizer, e.g. "
                "plan_kwargs={'optimizer': 'Custom', 'optimizer_creator': lambda p: torch.optim.SGD(p, lr=0.01)}."
            )
    elif not callable(optimizer) and optimizer not in ("Adam", "AdamW"):
        raise ValueError(
            f"optimizer={optimizer!r}: use 'Adam', 'AdamW', 'Custom' (with optimizer_creator) or a callable "
            "params -> torch.optim.Optimizer."
        )
    elif creator is not None:
        raise ValueError(
            f"optimizer_creator is used only with optimizer='Custom', but optimizer={optimizer!r}; pass "
            "optimizer='Custom' too, or drop optimizer_creator."
        )
    check_number("lr", values["lr"], 0.0)
    if values["lr"] == 0:  # allowed (e.g. to test early stopping on a loss that cannot improve), never silently
        warnings.warn("lr=0: the optimiser will not change any parameter; training only evaluates the loss.",
                      UserWarning, stacklevel=4)
    for name in ("weight_decay", "eps", "lr_threshold", "lr_min", "min_kl_weight", "max_kl_weight"):
        check_number(name, values[name], 0.0)
    check_bool("reduce_lr_on_plateau", values["reduce_lr_on_plateau"])
    for name in ("n_steps_kl_warmup", "n_epochs_kl_warmup"):  # 0 or None: no KL warm-up
        check_int(name, values[name], minimum=0, allow_none=True)
    if values["min_kl_weight"] > values["max_kl_weight"]:
        raise ValueError(
            f"min_kl_weight={values['min_kl_weight']} is larger than max_kl_weight={values['max_kl_weight']}; the "
            "warm-up rises from min_kl_weight to max_kl_weight."
        )
    check_number("lr_factor", values["lr_factor"], 0.0, 1.0, low_open=True, high_open=True)  # multiplies the lr
    check_int("lr_patience", values["lr_patience"], minimum=0)


def _objective_loss(objective: str, num_particles: int, alpha: float | None, loss: ELBO | None) -> ELBO:
    """The Pyro ELBO class of ``objective`` with ``num_particles`` vectorised particles; ``loss`` if given."""
    check_choice("objective", objective, ("elbo", "iwelbo", "renyi"))
    check_int("num_particles", num_particles, minimum=1)
    if alpha is not None:
        check_number("alpha", alpha)
        if objective != "renyi":
            raise ValueError(f"alpha={alpha} is the order of objective='renyi', but objective={objective!r}; pass "
                             "objective='renyi' too, or drop alpha.")
    if objective == "elbo":
        if loss is not None:
            if num_particles != 1:
                raise ValueError("num_particles is a setting of the objective, but an explicit loss was given; set "
                                 "the particles on the loss itself (e.g. Trace_ELBO(num_particles=8)).")
            return loss
        if num_particles == 1:  # the default estimator, unchanged
            return SplitTraceMeanField_ELBO()
        return SplitTraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=True)
    if isinstance(loss, TraceEnum_ELBO):
        raise ValueError(
            f"objective={objective!r} cannot be used with this model: it sums out discrete latent variables "
            "(TraceEnum_ELBO, as SCANVI and CellAssign train), which Pyro's RenyiELBO does not enumerate. Use "
            "objective='elbo'."
        )
    if loss is not None:
        raise ValueError(
            f"objective={objective!r} and an explicit loss were both given; the objective chooses the loss. Pass "
            "one of them."
        )
    if objective == "iwelbo":
        return CellRenyiELBO(alpha=0.0, num_particles=num_particles)
    alpha = 0.5 if alpha is None else alpha
    if alpha == 1:
        raise ValueError("objective='renyi' with alpha=1 is the ELBO: use objective='elbo' (with num_particles).")
    return CellRenyiELBO(alpha=alpha, num_particles=num_particles)


def _check_loss_kwargs(module: BaseModuleClass, loss_kwargs: dict[str, Any]) -> None:
    """Extra plan arguments go to the model and guide: refuse those they do not take."""
    if not loss_kwargs:
        return
    accepted: set[str] | None = None  # None: both take any keyword
    for fn in (module.model, module.guide):
        parameters = inspect.signature(fn).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            continue
        accepted = set(parameters) if accepted is None else accepted & set(parameters)
    unknown = [] if accepted is None else sorted(set(loss_kwargs) - accepted)
    reserved = sorted({"n_obs", "kl_weight", "indices"} & set(loss_kwargs))
    if reserved:
        raise TypeError(f"plan_kwargs {reserved}: the training plan sets these itself at every step; remove them.")
    if unknown:
        plan_keys = sorted(k for k in inspect.signature(TrainingPlan.__init__).parameters if k not in ("self", "module", "loss_kwargs"))
        raise TypeError(
            f"Unknown plan_kwargs {unknown}: neither TrainingPlan ({', '.join(plan_keys)}) nor "
            f"{type(module).__name__}.model/guide take them."
        )


def _uncompile_networks(module: torch.nn.Module) -> None:
    """Undo :func:`_compile_networks`: queries after training run the networks eagerly."""
    for child in module.children():
        if getattr(child, "_compiled_call_impl", None) is not None:
            child._compiled_call_impl = None


def _compile_networks(module: torch.nn.Module, compile_kwargs: dict[str, Any] | None) -> bool:
    """``torch.compile`` each neural network of ``module`` in place; ``False`` (with a warning) if it cannot."""
    kwargs = {"dynamic": False, **(compile_kwargs or {})}
    compile_fn = getattr(torch, "compile", None)
    networks = [child for child in module.children() if any(True for _ in child.parameters())]
    if compile_fn is None or not networks or not hasattr(torch.nn.Module, "compile"):
        warnings.warn(
            "compile=True: this torch has no torch.compile (or the module has no networks to compile); training "
            "runs uncompiled.",
            UserWarning,
            stacklevel=3,
        )
        return False
    try:
        # Compiling the whole Pyro program would break its graph at every effect handler; the networks
        # (encoders, decoders) are plain torch code. A network that fails to compile runs eagerly.
        import torch._dynamo as dynamo

        dynamo.config.suppress_errors = True
        for child in networks:
            child.compile(**kwargs)
    except Exception as err:  # noqa: BLE001 (any failure means: train uncompiled)
        warnings.warn(f"compile=True: torch.compile failed ({err}); training runs uncompiled.", UserWarning, stacklevel=3)
        return False
    return True


def _make_adam(cls: type, params: list[torch.Tensor], **settings: float) -> torch.optim.Optimizer:
    """One Adam over all parameters, fused into a single kernel where torch supports it.

    The fused kernel runs one update for every parameter at once, in place of the per-parameter loop torch
    uses on the CPU by default (``benchmarks/README.md``); older torch versions or unusual parameter types
    fall back to the default implementation.
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
        A Pyro ELBO; default :class:`~pyro.infer.TraceMeanField_ELBO` (analytic KL where one exists). A
        ``TraceMeanField_ELBO`` also reports its reconstruction and KL parts (see History below).
    objective
        What the default loss maximises: ``"elbo"`` (default), ``"iwelbo"`` (the importance-weighted bound of
        each cell with ``num_particles`` draws, Burda et al. 2016) or ``"renyi"`` (Rényi's α bound, Li & Turner
        2016; ``alpha=0`` is ``"iwelbo"``, ``alpha -> 1`` the ELBO). The bounds weight each cell's draws and
        share one draw of the global latents between the particles (a per-cell subclass of
        :class:`pyro.infer.RenyiELBO`). They need reparameterised latents: a model that enumerates discrete
        latents (SCANVI, CellAssign) trains with ``"elbo"`` only. Not with an explicit ``loss``.
    num_particles
        Draws per cell and step, vectorised (the model and guide run once, with a particle dimension left of
        their plates). ``1`` (default) with ``"elbo"`` is the default estimator; ``K > 1`` averages ``K``
        ELBO draws, or tightens the bound of ``"iwelbo"``/``"renyi"`` (``K = 1`` gives the ELBO there).
    alpha
        The order of ``objective="renyi"`` (default 0.5); any number but 1 (the ELBO: use ``"elbo"``).
        ``alpha >= 0`` gives a lower bound on ``log p(x)``, smaller ``alpha`` a tighter one.
    optimizer
        ``"Adam"``, ``"AdamW"``, ``"Custom"`` (with ``optimizer_creator``) or a callable
        ``params -> torch.optim.Optimizer``.
    optimizer_creator
        With ``optimizer="Custom"``: a callable ``params -> torch.optim.Optimizer``.
    lr, weight_decay, eps
        Optimiser settings (scvi-tools' defaults), ignored by a custom optimiser. ``lr=0`` is allowed.
    n_epochs_kl_warmup, n_steps_kl_warmup
        Length of the linear KL warm-up (``None`` or 0: no warm-up); steps take precedence when given.
    min_kl_weight, max_kl_weight
        Range of the KL weight.
    reduce_lr_on_plateau
        Reduce the learning rate when ``lr_scheduler_metric`` stops improving.
    lr_factor, lr_patience, lr_threshold, lr_min, lr_scheduler_metric
        Settings of the plateau scheduler.
    update_only_decoder
        Optimise only the parameters the generative model uses (decoders, dispersions, learnable priors);
        the guide's networks (encoders) stay as they are.
    compile, compile_kwargs
        Compile the module's neural networks (each child network's ``forward``) with :func:`torch.compile`
        and these arguments. The Pyro model and guide themselves run eagerly: Pyro's effect handlers do
        not trace into one graph. Where compilation is unavailable, training goes on uncompiled with a
        warning.
    on_step, on_epoch
        Log metrics per step (every ``log_every_n_steps`` steps, keys ending in ``_step``, indexed by the
        global step) and per epoch (keys ending in ``_epoch`` when ``on_step`` is set too). Step-level
        logging reads values on the host, one synchronisation per logged step; the default
        (``on_step=False``) reads nothing per step.
    log_train_terms
        Also log reconstruction and KL terms on training minibatches (one extra forward pass each).
    validate_distributions
        Run Pyro/torch argument validation inside the training loop. Off by default: the data layer has
        already validated the counts, and validation checks synchronise the host with the device.
    on_nonfinite
        What to do when the loss or a gradient of a step is NaN or infinite. ``"raise"`` (default): stop
        with :class:`pyrovi.NumericalFaultError`, which names the step, the epoch, the loss or the parameter
        whose gradient is not finite, and the likely causes; the optimiser step is never taken, so the model
        keeps its last finite parameters. ``"skip"``: leave the parameters and the optimiser state unchanged
        for that step and go on; the number of skipped steps is logged per epoch
        (``history["nonfinite_steps_skipped"]``) and a warning gives the total when training ends.

    **loss_kwargs
        Further keyword arguments of the module's ``model`` and ``guide`` (given at every step). An argument
        they do not take is an error.

    Notes
    -----
    History (per cell, epoch means): ``train_loss`` (the optimised loss, with the warm-up weight),
    ``elbo_train`` (the negative ELBO without warm-up, ``reconstruction_loss_train + kl_local_train +
    kl_global_train / n_train``), ``reconstruction_loss_train``, ``kl_local_train``, ``kl_global_train``
    (the KL of global latents, not per cell), the same with ``_validation`` and ``validation_loss``, and
    ``kl_weight``. The split of the training ELBO comes from the traces of the loss itself (no extra pass);
    with another Pyro ELBO only ``elbo_train`` and ``train_loss`` are logged for training, and the
    validation terms take one extra pass. With ``objective="iwelbo"`` or ``"renyi"``, ``elbo_train``,
    ``elbo_validation``, ``train_loss`` and ``validation_loss`` hold the negative of that bound (per cell, at
    ``num_particles`` draws), the quantity optimised, and the reconstruction and KL terms are the ELBO's.

    A module that classifies cells (SCANVI's) defines ``label_log_probs(*args, **kwargs)``, which returns, for
    a minibatch's model arguments, ``log q(y | x)`` of each cell ``(n_cells, n_labels)``, the cells' integer
    label codes and a boolean mask of the labelled ones. The plan then also logs ``validation_accuracy`` (the
    share of labelled validation cells whose most probable label is theirs) and
    ``validation_classification_loss`` (their mean ``-log q(y_true | x)``), ``validation_f1_score`` (micro-averaged,
    as scvi-tools: the accuracy) and ``validation_calibration_error`` (top-label ECE, 15 confidence bins), in
    epochs whose validation set holds labelled cells; early stopping on ``validation_accuracy`` maximises it.

    One training step is the SVI step: **loss** (:meth:`training_step` returns the minibatch's per-cell
    negative ELBO), **backward** (Lightning's ``loss.backward()``), **guard** (:meth:`on_before_optimizer_step`:
    the :class:`~pyrovi.train.NonFiniteGuard` in ``nonfinite_guard`` checks the loss and the gradients), and
    **step** (Lightning's ``optimizer.step()``, skipped or refused for a non-finite step). Lightning's automatic
    optimisation calls these in that order; the plan writes only the loss and the guard.

    The guard's check is one fused norm over all gradients plus the loss, before the optimiser step. On the
    CPU the decision is made on the host (no synchronisation is involved there). On an accelerator with the
    fused Adam/AdamW pyrovi builds, it stays on the device: a faulty step is skipped inside the fused kernel
    (its ``found_inf`` input, as with mixed-precision gradient scaling), and ``"raise"`` also skips every later
    step of the epoch and raises at the end of the epoch, naming the first faulty step. With another optimiser
    on an accelerator the check costs one host synchronisation per step.

    Examples
    --------
    >>> from pyrovi.module import VAE
    >>> plan = TrainingPlan(VAE(n_input=100), lr=1e-3, on_nonfinite="skip")
    >>> plan.on_nonfinite, plan.nonfinite_guard.mode
    ('skip', 'skip')
    >>> from pyrovi.dataloaders import DataSplitter
    >>> from pyrovi.train import Trainer
    >>> plan = TrainingPlan(VAE(n_input=manager.summary_stats.n_vars), lr=1e-3)
    >>> Trainer(max_epochs=1, enable_progress_bar=False).fit(plan, datamodule=DataSplitter(manager))
    """

    def __init__(
        self,
        module: BaseModuleClass,
        *,
        loss: ELBO | None = None,
        objective: Literal["elbo", "iwelbo", "renyi"] = "elbo",
        num_particles: int = 1,
        alpha: float | None = None,
        optimizer: Literal["Adam", "AdamW", "Custom"] | Callable = "Adam",
        optimizer_creator: Callable | None = None,
        lr: float = 1e-3,
        update_only_decoder: bool = False,
        weight_decay: float = 1e-6,
        eps: float = 0.01,
        n_steps_kl_warmup: int | None = None,
        n_epochs_kl_warmup: int | None = 400,
        reduce_lr_on_plateau: bool = False,
        lr_factor: float = 0.6,
        lr_patience: int = 30,
        lr_threshold: float = 0.0,
        lr_scheduler_metric: str = "elbo_validation",
        lr_min: float = 0.0,
        max_kl_weight: float = 1.0,
        min_kl_weight: float = 0.0,
        compile: bool = False,
        compile_kwargs: dict[str, Any] | None = None,
        on_step: bool | None = False,
        on_epoch: bool | None = True,
        log_train_terms: bool = False,
        validate_distributions: bool = False,
        on_nonfinite: Literal["raise", "skip"] = "raise",
        **loss_kwargs: Any,
    ):
        super().__init__()
        #: checks every step's loss and gradients before the optimiser applies them (``on_nonfinite``)
        self.nonfinite_guard = NonFiniteGuard(on_nonfinite)
        _validate_plan_settings(
            optimizer=optimizer, optimizer_creator=optimizer_creator, lr=lr, weight_decay=weight_decay, eps=eps,
            n_steps_kl_warmup=n_steps_kl_warmup, n_epochs_kl_warmup=n_epochs_kl_warmup,
            min_kl_weight=min_kl_weight, max_kl_weight=max_kl_weight, lr_factor=lr_factor,
            lr_patience=lr_patience, lr_threshold=lr_threshold, lr_min=lr_min,
            reduce_lr_on_plateau=reduce_lr_on_plateau,
        )
        _check_loss_kwargs(module, loss_kwargs)
        self.module = module
        self.objective = objective
        loss = _objective_loss(objective, num_particles, alpha, loss)
        if type(loss) is TraceMeanField_ELBO:
            loss = SplitTraceMeanField_ELBO.from_elbo(loss)  # same estimator, and it reports its parts
        self.loss = loss
        # The ELBO module only wraps the (bound) model and guide; the parameters are the module's.
        self._elbo = self.loss(module.model, module.guide)
        # settings
        self.optimizer = optimizer
        self.optimizer_creator = optimizer_creator
        self.lr, self.weight_decay, self.eps = lr, weight_decay, eps
        self.n_epochs_kl_warmup, self.n_steps_kl_warmup = n_epochs_kl_warmup, n_steps_kl_warmup
        self.min_kl_weight, self.max_kl_weight = min_kl_weight, max_kl_weight
        self.reduce_lr_on_plateau = reduce_lr_on_plateau
        self.lr_factor, self.lr_patience = lr_factor, lr_patience
        self.lr_threshold, self.lr_min = lr_threshold, lr_min
        self.lr_scheduler_metric = lr_scheduler_metric
        self.update_only_decoder = bool(update_only_decoder)
        self.on_step, self.on_epoch = bool(on_step), on_epoch is None or bool(on_epoch)
        self.loss_kwargs = dict(loss_kwargs)
        self.log_train_terms = log_train_terms
        self.validate_distributions = validate_distributions
        self.compiled = _compile_networks(module, compile_kwargs) if compile else False
        # learnt in setup() from the data module, and made in configure_optimizers()
        self.n_obs_training: int | None = None
        self.n_obs_validation: int | None = None
        self._decoder_params: list[torch.nn.Parameter] | None = None
        self._plateau_scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        # the training epoch's sums, on the device (see on_train_epoch_start)
        self._epoch_loss_sum: torch.Tensor | None = None
        self._epoch_loss_cells: int | torch.Tensor = 0  # cells of the steps taken (a device count on accelerators)
        self._epoch_kl_sum, self._epoch_cells = 0.0, 0
        self._pending: tuple[torch.Tensor, int] | None = None  # the last minibatch's, until the guard passes it
        # the validation epoch's sums, and the count of validation steps logged with on_step
        self._val_sum: torch.Tensor | None = None
        self._val_cells = 0
        self._val_step = 0
        # [labelled cells, correctly classified, summed -log q(y | x)] of the validation epoch (label_log_probs)
        self._val_labels_sum: torch.Tensor | None = None

    @property
    def on_nonfinite(self) -> Literal["raise", "skip"]:
        """What a NaN or infinite step does: ``"raise"`` or ``"skip"`` (the guard's mode)."""
        return self.nonfinite_guard.mode

    @property
    def n_skipped_steps(self) -> int:
        """Optimiser steps skipped in the current (or last) fit for a NaN or infinite loss or gradient."""
        return self.nonfinite_guard.n_skipped

    @property
    def splits_terms(self) -> bool:
        """Whether the loss reports its reconstruction and KL parts (:class:`SplitTraceMeanField_ELBO`)."""
        return isinstance(self.loss, SplitTraceMeanField_ELBO)

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

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimiser updates: every trainable one, or the decoder side (``update_only_decoder``).

        Examples
        --------
        >>> from pyrovi.module import VAE
        >>> plan = TrainingPlan(VAE(n_input=20, n_hidden=8, n_latent=2))
        >>> len(plan.trained_parameters()) == len([p for p in plan.module.parameters() if p.requires_grad])
        True
        """
        if self.update_only_decoder and self._decoder_params is not None:
            return list(self._decoder_params)
        return [p for p in self.module.parameters() if p.requires_grad]

    # Lightning hooks: setup and teardown of a fit ---------------------------------------------------

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
                if self.update_only_decoder:
                    self._decoder_params = self._generative_parameters(batch)

    def teardown(self, stage: str) -> None:
        """Queries after training run the networks eagerly again (``compile=True`` compiled them for training)."""
        if self.compiled:
            _uncompile_networks(self.module)

    def transfer_batch_to_device(
        self, batch: dict[str, torch.Tensor], device: torch.device, dataloader_idx: int
    ) -> dict[str, torch.Tensor]:
        # A minibatch is a flat dict of tensors: move it directly rather than through Lightning's
        # generic collection walk, whose per-step cost shows next to a small model's step.
        return {key: value.to(device, non_blocking=True) for key, value in batch.items()}

    # Lightning hooks: optimisers -----------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        params = self.trained_parameters()
        if self.optimizer == "Custom":
            optimizer = self.optimizer_creator(params)
        elif callable(self.optimizer):
            optimizer = self.optimizer(params)
        elif self.optimizer in ("Adam", "AdamW"):
            cls = torch.optim.Adam if self.optimizer == "Adam" else torch.optim.AdamW
            optimizer = _make_adam(cls, params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay)
        else:
            raise ValueError(
                f"optimizer={self.optimizer!r}: use 'Adam', 'AdamW', 'Custom' (with optimizer_creator) or a "
                "callable params -> Optimizer."
            )
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"The optimizer creator returned {type(optimizer).__name__}, not a torch.optim.Optimizer; it must "
                "build one from the parameters it is given, e.g. lambda params: torch.optim.SGD(params, lr=0.01)."
            )
        if not self.reduce_lr_on_plateau:
            return optimizer
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=monitor_mode(self.lr_scheduler_metric),
            factor=self.lr_factor,
            patience=self.lr_patience,
            threshold=self.lr_threshold,
            min_lr=self.lr_min,
            threshold_mode="abs",
        )
        self._plateau_scheduler = scheduler
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.lr_scheduler_metric},
        }

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Step a scheduler for Lightning; the plan's own plateau scheduler is stepped in ``on_train_epoch_end``.

        Lightning steps epoch schedulers after the epoch's checkpoint is written, so a run resumed from that
        checkpoint would never take that epoch's step; stepped by the plan, it is part of the checkpoint.
        Other schedulers (from a subclass's ``configure_optimizers``) are stepped by Lightning as usual.
        """
        if scheduler is self._plateau_scheduler:
            return
        super().lr_scheduler_step(scheduler, metric)

    # Lightning hooks: training, one SVI step (loss, backward, guard, step) ------------------------------

    def on_train_start(self) -> None:
        # Buffers a forward pass changes (BatchNorm's running statistics): a faulty step must not keep their
        # update either. Collected here, after Lightning moved the module to its device.
        running = [
            b for m in self.module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for b in m.buffers()
        ]
        self.nonfinite_guard.start_fit(running, self.named_parameters)

    def on_train_epoch_start(self) -> None:
        # Epoch sums of the training loss stay on the device: no per-step self.log and no per-step host
        # synchronisation.
        self._epoch_loss_sum = None
        self._epoch_loss_cells = 0
        self._pending = None
        self._epoch_kl_sum, self._epoch_cells = 0.0, 0
        self.nonfinite_guard.start_epoch(first_step=self.global_step)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The **loss** of one SVI step: the minibatch's negative ELBO per cell, with the KL warm-up weight.

        Lightning then takes the **backward** pass, calls :meth:`on_before_optimizer_step` (the **guard**)
        and takes the optimiser **step**.
        """
        kl_weight = self.kl_weight
        self._commit_pending()  # a minibatch without an optimiser step of its own (gradient accumulation)
        self.nonfinite_guard.before_forward()
        loss = self._loss(batch, self.n_obs_training, kl_weight)
        self.nonfinite_guard.watch(loss)
        self._record_training_step(batch, loss, kl_weight)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The **guard**, between Lightning's backward pass and its optimiser step: stop or skip a non-finite step.

        The minibatch's loss joins the epoch's sums only if its step is taken.
        """
        verdict = self.nonfinite_guard.check(optimizer, self.global_step, self.current_epoch)
        if verdict is not None:
            self._commit_pending(verdict)

    def on_train_epoch_end(self) -> None:
        skipped = self.nonfinite_guard.end_epoch(self.current_epoch)
        if self.on_nonfinite == "skip":
            self.log(SKIPPED_STEPS_METRIC, float(skipped), on_epoch=True, sync_dist=True)
        self._commit_pending()
        if not self._epoch_cells:
            return
        # cell-weighted epoch means, as Lightning's on_epoch logging computes them; the training loss over
        # the steps taken (a skipped step's loss is not finite)
        metrics: dict[str, Any] = {}
        if self._epoch_loss_sum is not None:
            means = self._epoch_loss_sum / self._epoch_loss_cells
            metrics = self._named_metrics("train", means, self.n_obs_training)
            self._log_epoch_metrics(metrics, prog_bar=("elbo_train",))
        self.log("kl_weight", self._epoch_kl_sum / self._epoch_cells, on_epoch=True, sync_dist=True)
        self._step_plateau_scheduler(metrics)

    def on_train_end(self) -> None:
        self.nonfinite_guard.end_fit()

    # Lightning hooks: validation -----------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._val_sum = None
        self._val_cells = 0
        self._val_labels_sum = None

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss = self._loss(batch, self.n_obs_validation, 1.0)
        n = batch[REGISTRY_KEYS.INDICES_KEY].shape[0]
        # sums stay on the device until the epoch ends (no per-batch self.log)
        vector = self._metric_vector(loss, self.n_obs_validation or n)
        if self._val_sum is None:
            self._val_sum, self._val_cells = vector * n, n
        else:
            self._val_sum, self._val_cells = self._val_sum + vector * n, self._val_cells + n
        if self.on_step:
            self._log_step_metrics("validation", vector, self.n_obs_validation or n, self._val_step)
            self._val_step += 1
        if not self.splits_terms and getattr(self.module, "per_cell_terms", True):
            self._log_terms(batch, "validation")
        if hasattr(self.module, "label_log_probs"):
            counts = self._label_counts(batch)
            self._val_labels_sum = counts if self._val_labels_sum is None else self._val_labels_sum + counts

    def on_validation_epoch_end(self) -> None:
        self._log_label_metrics()
        if self._val_sum is None or not self._val_cells:
            return
        metrics = self._named_metrics("validation", self._val_sum / self._val_cells, self.n_obs_validation)
        self._log_epoch_metrics(metrics, prog_bar=("elbo_validation",))

    def _label_counts(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[labelled cells, correctly classified (argmax), summed -log q(y_true | x)]`` of a minibatch, on the
        device, from the module's ``label_log_probs`` (see :meth:`_log_label_metrics`)."""
        args, kwargs = self.module._get_fn_args_from_batch(batch)
        with torch.no_grad(), pyro_lock():
            log_probs, labels, labelled = self.module.label_log_probs(*args, **kwargs)
        labelled = labelled.reshape(-1).bool()
        log_probs, labels = log_probs[labelled], labels.reshape(-1)[labelled].long()
        confidence, predicted = log_probs.exp().max(-1)
        hit = (predicted == labels).to(confidence.dtype)
        nll = -log_probs.gather(-1, labels[:, None]).sum()
        # per confidence bin: the summed confidence minus the summed hits, for the calibration error
        bins = (confidence * _CALIBRATION_BINS).long().clamp(max=_CALIBRATION_BINS - 1)
        gaps = torch.zeros(_CALIBRATION_BINS, dtype=confidence.dtype, device=confidence.device)
        gaps = gaps.index_add(0, bins, confidence - hit)
        return torch.cat([torch.stack([labelled.sum().to(nll.dtype), hit.sum(), nll]), gaps])

    def _log_label_metrics(self) -> None:
        """``validation_accuracy``, ``validation_classification_loss`` (per labelled cell),
        ``validation_f1_score`` and ``validation_calibration_error`` of the epoch.

        Logged only for a module with ``label_log_probs(*args, **kwargs) -> (log_probs, labels, labelled)``
        (``log q(y | x)`` of shape ``(n_cells, n_labels)``, the integer label codes and a boolean mask of the
        labelled cells, for a minibatch's model arguments), and only in an epoch whose validation cells
        include labelled ones. The counts are summed over all processes first.
        """
        sums, self._val_labels_sum = self._val_labels_sum, None
        if sums is None:
            return
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
        if not float(sums[0]) > 0:  # one host read per validation epoch
            return
        accuracy = sums[1] / sums[0]
        metrics = {
            "validation_accuracy": accuracy,
            "validation_classification_loss": sums[2] / sums[0],
            # micro-averaged over cells, as scvi-tools logs it: for one label per cell it equals the accuracy
            "validation_f1_score": accuracy,
            # top-label expected calibration error over equal-width confidence bins (pyrovi.criticism's
            # definition): sum_b |sum of confidences - sum of hits in bin b| / n
            "validation_calibration_error": sums[3:].abs().sum() / sums[0],
        }
        self._log_epoch_metrics(metrics)

    # the loss, its metrics and their logging -----------------------------------------------------------

    def _loss(self, batch: dict[str, torch.Tensor], n_obs: int | None, kl_weight: float) -> torch.Tensor:
        args, kwargs = self.module._get_fn_args_from_batch(batch)
        n_obs = n_obs or args[0].shape[0]
        if self.loss_kwargs:
            kwargs.update(self.loss_kwargs)
        # TraceEnum_ELBO refuses to run without autograd (as in validation): let it, then detach
        grad = torch.enable_grad() if isinstance(self.loss, TraceEnum_ELBO) else contextlib.nullcontext()
        # one Pyro run: Pyro's handler stack is process-wide, so runs in other threads wait (see pyrovi._pyro_lock);
        # the backward pass and the optimiser step run no handler and need not hold the lock
        with pyro_lock(), pyro.validation_enabled(self.validate_distributions), grad:
            loss = self._elbo(*args, n_obs=n_obs, kl_weight=kl_weight, **kwargs) / n_obs
        return loss if torch.is_grad_enabled() else loss.detach()

    def _record_training_step(self, batch: dict[str, torch.Tensor], loss: torch.Tensor, kl_weight: float) -> None:
        """Keep the step's metrics for the epoch's sums (on the device), and log them per step with ``on_step``."""
        n = batch[REGISTRY_KEYS.INDICES_KEY].shape[0]
        vector = self._metric_vector(loss, self.n_obs_training or n)
        self._pending = (vector * n, n)  # added to the epoch's sums once the guard has passed the step
        self._epoch_kl_sum += kl_weight * n
        self._epoch_cells += n
        if self.on_step and self.global_step % max(int(self.trainer.log_every_n_steps), 1) == 0:
            self._log_step_metrics("train", vector, self.n_obs_training or n, self.global_step)
        if self.log_train_terms and not self.splits_terms and getattr(self.module, "per_cell_terms", True):
            self._log_terms(batch, "train")

    def _commit_pending(self, taken: bool | torch.Tensor = True) -> None:
        """Add the last minibatch's loss to the epoch's, unless its step was skipped (``taken``: a device bool)."""
        pending, self._pending = self._pending, None
        if pending is None or taken is False:
            return
        weighted, n = pending
        if isinstance(taken, torch.Tensor):
            weighted = torch.where(taken, weighted, torch.zeros_like(weighted))  # a NaN times 0 stays NaN
            n = taken.to(weighted.dtype) * n
        self._epoch_loss_sum = weighted if self._epoch_loss_sum is None else self._epoch_loss_sum + weighted
        self._epoch_loss_cells = self._epoch_loss_cells + n

    def _metric_vector(self, loss: torch.Tensor, n_obs: int) -> torch.Tensor:
        """``[loss, reconstruction_loss, kl_local, kl_global]`` of the last loss call, per cell (the global KL
        whole), on the device; ``[loss]`` alone when the loss does not report its parts."""
        loss = loss.detach().reshape(())
        if not self.splits_terms or self.loss.last_terms is None:
            return loss.reshape(1)
        reconstruction, kl_local, kl_global = self.loss.last_terms
        parts = [loss]
        for value, per_cell in ((reconstruction, True), (kl_local, True), (kl_global, False)):
            if not torch.is_tensor(value):  # no such site: a constant, made without a host-to-device copy
                value = loss.new_full((), float(value))
            parts.append(value.to(loss.dtype) / n_obs if per_cell else value.to(loss.dtype))
        return torch.stack(parts)

    def _named_metrics(self, mode: str, values: Any, n_obs: int | None) -> dict[str, Any]:
        """History names of a metric vector (tensor entries or floats): scvi-tools' keys for ``mode``."""
        loss = values[0]
        metrics = {f"{mode}_loss": loss}
        if len(values) == 1:
            metrics[f"elbo_{mode}"] = loss
            return metrics
        reconstruction, kl_local, kl_global = values[1], values[2], values[3]
        # the ELBO without warm-up; validation runs at the full KL weight, where it is the loss itself
        elbo = loss if mode == "validation" else reconstruction + kl_local + kl_global / max(n_obs or 1, 1)
        metrics.update({
            f"elbo_{mode}": elbo,
            f"reconstruction_loss_{mode}": reconstruction,
            f"kl_local_{mode}": kl_local,
            f"kl_global_{mode}": kl_global,
        })
        return metrics

    def _log_epoch_metrics(self, metrics: dict[str, Any], prog_bar: tuple[str, ...] = ()) -> None:
        """Epoch means: to the history (``_epoch`` suffix with ``on_step``), and always to ``callback_metrics``
        under the plain name, which early stopping, schedulers and the progress bar read."""
        for name, value in metrics.items():
            options = {"on_epoch": True, "on_step": False, "sync_dist": True, "prog_bar": name in prog_bar}
            if self.on_step or not self.on_epoch:
                self.log(name, value, logger=False, **options)
                if self.on_epoch:
                    self.log(f"{name}_epoch", value, **{**options, "prog_bar": False})
            else:
                self.log(name, value, **options)

    def _log_step_metrics(self, mode: str, vector: torch.Tensor, n_obs: int | None, step: int) -> None:
        """Step values (``on_step=True``) straight to the loggers: one host read for the whole vector."""
        trainer = self._trainer
        if trainer is None or not trainer.is_global_zero:
            return
        metrics = self._named_metrics(mode, vector.tolist(), n_obs)
        named = {f"{name}_step": float(value) for name, value in metrics.items()}
        for logger in trainer.loggers:
            logger.log_metrics(named, step=step)

    def _log_terms(self, batch: dict[str, torch.Tensor], suffix: str) -> None:
        args, kwargs = self.module._get_fn_args_from_batch(batch)
        with torch.no_grad(), pyro_lock(), pyro.validation_enabled(self.validate_distributions):
            terms = per_cell_elbo_terms(*trace_pair(self.module.model, self.module.guide, args, kwargs))
        n = args[0].shape[0]
        options = {"on_epoch": True, "on_step": False, "batch_size": n, "sync_dist": True}
        self.log(f"reconstruction_loss_{suffix}", -terms["reconstruction"].mean(), **options)
        self.log(f"kl_local_{suffix}", terms["kl_local"].mean(), **options)

    def _step_plateau_scheduler(self, epoch_metrics: dict[str, Any]) -> None:
        scheduler = self._plateau_scheduler
        if not self.reduce_lr_on_plateau or scheduler is None:
            return
        key = self.lr_scheduler_metric
        metric = epoch_metrics[key] if key in epoch_metrics else self.trainer.callback_metrics.get(key)
        if metric is None:
            raise ValueError(
                f"reduce_lr_on_plateau monitors {key!r}, which was not logged this epoch; logged metrics are "
                f"{sorted(self.trainer.callback_metrics)}. Set lr_scheduler_metric to one of them (e.g. 'elbo_train' "
                "when there is no validation set)."
            )
        scheduler.step(metric)

    # parameters: lazy ones, and those the generative model uses ---------------------------------------

    def _materialise_lazy_parameters(self, batch: dict[str, torch.Tensor]) -> None:
        # Pyro creates some parameters (e.g. of autoguides) on first use; run the guide once so they
        # exist when configure_optimizers collects parameters.
        device = self.module.device  # a second fit may find the module already on an accelerator
        batch = {key: value.to(device) for key, value in batch.items()}
        args, kwargs = self.module._get_fn_args_from_batch(batch)
        # in eval mode: this pass must not count as a training step (BatchNorm's running statistics)
        training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad(), pyro_lock(), pyro.validation_enabled(self.validate_distributions):
                poutine.trace(self.module.guide).get_trace(*args, **kwargs)
        finally:
            self.module.train(training)

    def _generative_parameters(self, batch: dict[str, torch.Tensor]) -> list[torch.nn.Parameter]:
        """The parameters the model uses given the guide's draws: the decoder side, for ``update_only_decoder``."""
        device = self.module.device
        batch = {key: value.to(device) for key, value in batch.items()}
        args, kwargs = self.module._get_fn_args_from_batch(batch)
        params = [p for p in self.module.parameters() if p.requires_grad]
        training = self.module.training
        self.module.eval()
        try:
            with pyro_lock(), pyro.validation_enabled(self.validate_distributions):
                with torch.no_grad():  # the draws carry no gradient back to the guide's parameters
                    guide_trace = poutine.trace(self.module.guide).get_trace(*args, **kwargs)
                with torch.enable_grad():
                    replayed = poutine.replay(self.module.model, trace=guide_trace)
                    total = poutine.trace(replayed).get_trace(*args, **kwargs).log_prob_sum()
                    used = torch.autograd.grad(total, params, allow_unused=True)
        finally:
            self.module.train(training)
        decoder = [p for p, g in zip(params, used) if g is not None]
        if not decoder:
            raise ValueError("update_only_decoder=True, but the model uses no trainable parameter of its own.")
        return decoder

