"""Expectation-maximisation as a training objective, for models with one enumerated discrete site."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable

import lightning.pytorch as pl
import pyro
import torch
from pyro import poutine

from .._constants import REGISTRY_KEYS
from .._pyro_lock import pyro_lock
from ..dataloaders import AnnDataLoader
from ..module.base import cell_plate_dim

#: history key of the log marginal likelihood measured by each E-step
E_STEP_METRIC = "log_likelihood_e_step"


class ExpectationMaximization:
    """EM for a model whose per-cell discrete latent is enumerated in the model (e.g. CellAssign's type).

    The E-step computes the responsibilities ``gamma_nc = p(c_n = c | x_n)`` of every training cell
    under the current parameters and stores them, one row per cell (indexed by the minibatch's
    ``indices``). The M-step then holds them fixed over many optimiser steps while it maximises the
    expected complete-data log joint ``Q = sum_n sum_c gamma_nc log p(x_n, c_n = c) + log p(globals)``,
    estimated from minibatches (the cell plate scales each minibatch to the whole training set). This is
    the original CellAssign's EM, with its full-batch Adam M-step replaced by minibatch steps: an M-step
    lasts whole epochs, at least ``steps_per_m_step`` optimiser steps, so that every training cell is
    visited equally often in it. The E-steps are run by the :class:`ExpectationStep` callback at the
    start of an epoch; add it to the Trainer (``CellAssign.train`` does).

    Compare :class:`pyro.infer.TraceEnum_ELBO`, whose gradient is that of the exact marginal likelihood.
    Right after an E-step the two gradients agree (Fisher's identity); as the parameters move during the
    M-step the responsibilities go stale and EM's steps differ, so the two objectives follow different
    paths to the same fixed points. Were the responsibilities recomputed before every step, EM would
    be plain gradient ascent on the marginal likelihood.

    The value returned is the negative of ``Q + H(gamma)``, with ``H`` the entropy of the stored
    responsibilities: the evidence lower bound with ``q(c_n) = gamma_n``, which equals the log marginal
    likelihood right after an E-step and has the gradient of ``Q`` (``H`` does not depend on the
    parameters). So ``elbo_train`` reads as for ``TraceEnum_ELBO``. Cells without stored
    responsibilities (validation cells; every cell before the first E-step) use their exact posterior
    under the current parameters, for which the value is exactly the negative log marginal likelihood:
    ``elbo_validation`` is the same held-out quantity as under ``TraceEnum_ELBO``.

    The guide must hold only global sites (e.g. an ``AutoDelta`` for MAP); the model must enumerate one
    discrete site inside the ``"cells"`` plate (``dim=-1``), so that enumeration uses dim ``-2``.
    Like a Pyro ELBO, ``ExpectationMaximization()(model, guide)`` is a torch module returning the loss.

    Parameters
    ----------
    steps_per_m_step
        Least number of optimiser steps between two E-steps; the M-step runs on to the end of the epoch
        in which they are reached. With minibatches of the whole training set it is the number of epochs
        per M-step.

    Examples
    --------
    >>> from pyrovi.dataloaders import DataSplitter
    >>> from pyrovi.train import Trainer, TrainingPlan
    >>> module = cellassign.module.train()  # a loaded module is in eval mode
    >>> plan = TrainingPlan(module, loss=ExpectationMaximization(steps_per_m_step=2))
    >>> splitter = DataSplitter(cellassign.adata_manager, batch_size=1024)
    >>> trainer = Trainer(max_epochs=3, callbacks=[ExpectationStep()], enable_progress_bar=False)
    >>> trainer.fit(plan, datamodule=splitter)
    >>> trainer.history_logger.history()["elbo_train"].shape
    (3, 1)
    """

    def __init__(self, steps_per_m_step: int = 10):
        if int(steps_per_m_step) < 1:
            raise ValueError(f"steps_per_m_step must be a positive integer, got {steps_per_m_step!r}.")
        self.steps_per_m_step = int(steps_per_m_step)

    def __call__(self, model: Callable, guide: Callable) -> _EMLoss:
        return _EMLoss(model, guide, self)


def _enumerated_terms(
    model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    """Trace the guide and the enumerated model once.

    Returns
    -------
    ``(local, global_log_prob, scale, guide_log_prob)``: ``local`` is ``log p(x_n, c_n = c)`` with shape
    ``(n_types, n_cells)`` (unscaled), ``scale`` the cell plate's subsampling factor.
    """
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    enumerated = poutine.enum(poutine.replay(model, trace=guide_trace), first_available_dim=-2)
    model_trace = poutine.trace(enumerated).get_trace(*args, **kwargs)
    local, global_ = 0.0, 0.0
    scale = 1.0
    for site in model_trace.nodes.values():
        if site["type"] != "sample":
            continue
        log_prob = site["fn"].log_prob(site["value"])
        if cell_plate_dim(site) is None:
            global_ = global_ + log_prob.sum()
        else:
            local = local + log_prob  # (n_types, n_cells) once broadcast
            scale = site["scale"]  # n_obs / minibatch size, from the subsampled plate
    guide_log_prob = sum(
        site["fn"].log_prob(site["value"]).sum() for site in guide_trace.nodes.values() if site["type"] == "sample"
    )
    return local, global_, scale, guide_log_prob


class _EMLoss(torch.nn.Module):
    """The EM loss of one training run, holding the responsibilities of the last E-step."""

    def __init__(self, model: Callable, guide: Callable, objective: ExpectationMaximization):
        super().__init__()
        self.model, self.guide, self.objective = model, guide, objective
        # (n_rows, n_types), NaN for cells the E-step has not seen; not persistent: it belongs to one
        # run of training, not to the fitted model
        self.register_buffer("responsibilities", None, persistent=False)
        self.last_e_step: int | None = None  # optimiser step of the last E-step

    @torch.no_grad()
    def expectation_step(self, batches: Iterable[tuple[tuple, dict]]) -> float:
        """Store the posterior of every cell in ``batches`` under the current parameters.

        Parameters
        ----------
        batches
            ``(args, kwargs)`` of the model for minibatches covering the training cells; ``kwargs``
            holds ``indices`` (the cells' rows) and ``n_obs``.

        Returns
        -------
        The log joint of data and globals, ``sum_n log p(x_n) + log p(globals)``, per cell: the quantity
        each EM cycle increases (EM's monotonicity), on the same scale as ``-elbo_train``.
        """
        rows, posteriors = [], []
        log_likelihood, global_, n_cells = 0.0, 0.0, 0
        for args, kwargs in batches:
            local, global_, _, _ = _enumerated_terms(self.model, self.guide, args, kwargs)
            log_marginal = torch.logsumexp(local, dim=-2)
            rows.append(kwargs[REGISTRY_KEYS.INDICES_KEY].reshape(-1).long())
            posteriors.append(torch.exp(local - log_marginal).T)
            log_likelihood = log_likelihood + log_marginal.sum()
            n_cells += log_marginal.numel()
        rows_, posteriors_ = torch.cat(rows), torch.cat(posteriors)
        table = posteriors_.new_full((int(rows_.max()) + 1, posteriors_.shape[-1]), float("nan"))
        table[rows_] = posteriors_
        self.responsibilities = table
        # the globals' prior counts once for the whole training set, as in the training loss
        return float((log_likelihood + global_) / n_cells)

    def _held_responsibilities(self, local: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
        """Stored responsibilities of the minibatch's cells, the current posterior where none are stored."""
        fresh = torch.softmax(local.detach(), dim=-2)
        table = self.responsibilities
        if table is None or indices is None:
            return fresh
        rows = indices.reshape(-1).long()
        inside = rows < table.shape[0]
        stored = table[rows.clamp_max(table.shape[0] - 1)].T  # (n_types, n_cells)
        known = inside & ~torch.isnan(stored[0])
        return torch.where(known, stored, fresh)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        local, global_, scale, guide_log_prob = _enumerated_terms(self.model, self.guide, args, kwargs)
        gamma = self._held_responsibilities(local, kwargs.get(REGISTRY_KEYS.INDICES_KEY))
        # Q(theta | gamma) + H(gamma): gradient of Q, value a lower bound on the log marginal likelihood
        # (equal to it right after the E-step)
        bound = (gamma * local - torch.xlogy(gamma, gamma)).sum() * scale + global_
        return -(bound - guide_log_prob)


class ExpectationStep(pl.Callback):
    """Run EM's E-step for a :class:`~pyrovi.train.TrainingPlan` whose loss is :class:`ExpectationMaximization`.

    At the start of the first epoch, and of every epoch once ``steps_per_m_step`` optimiser steps have
    passed since the last E-step, it computes the responsibilities of all training cells under the
    current parameters. The cells come from the datamodule's ``train_idx`` in full, not from this
    process's shard: under a distributed strategy every process holds every training cell's
    responsibilities, so they stay valid when the shards are redealt each epoch. Logs
    ``log_likelihood_e_step``: the log marginal likelihood of the training cells plus the log prior of
    the globals, per cell (higher is better), which EM does not decrease from one E-step to the next
    (up to the noise of minibatch M-steps).

    Examples
    --------
    >>> from pyrovi.train import Trainer
    >>> trainer = Trainer(max_epochs=200, callbacks=[ExpectationStep()])
    >>> sum(isinstance(callback, ExpectationStep) for callback in trainer.callbacks)
    1
    """

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        losses = [m for m in pl_module.modules() if isinstance(m, _EMLoss)]
        if not losses:
            return
        loss = losses[0]
        if trainer.current_epoch == 0 or loss.last_e_step is None:
            due = True  # every fit starts with an E-step: responsibilities of an earlier fit are stale
        else:
            due = trainer.global_step - loss.last_e_step >= loss.objective.steps_per_m_step
        if not due:
            return
        module = pl_module.module
        n_obs = getattr(pl_module, "n_obs_training", None)
        device = module.device
        validate = getattr(pl_module, "validate_distributions", False)

        def batches() -> Iterable[tuple[tuple, dict]]:
            for batch in self._training_cells(trainer):
                batch = {key: value.to(device) for key, value in batch.items()}
                args, kwargs = module._get_fn_args_from_batch(batch)
                kwargs[REGISTRY_KEYS.INDICES_KEY] = batch[REGISTRY_KEYS.INDICES_KEY]
                yield args, {**kwargs, "n_obs": n_obs or args[0].shape[0]}

        with pyro_lock(), pyro.validation_enabled(validate):  # Pyro runs: one thread at a time (pyrovi._pyro_lock)
            log_likelihood = loss.expectation_step(batches())
        loss.last_e_step = trainer.global_step
        # every process computes the same value (each holds all training cells): averaging them changes
        # nothing, and sync_dist keeps Lightning from warning about unsynchronised epoch metrics under DDP
        pl_module.log(E_STEP_METRIC, log_likelihood, on_step=False, on_epoch=True, sync_dist=True)

    @staticmethod
    def _training_cells(trainer: pl.Trainer) -> Iterable[dict[str, torch.Tensor]]:
        """Minibatches of all training cells, in order (the whole set even under data parallelism)."""
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "train_idx") and hasattr(datamodule, "adata_manager"):
            options = {k: v for k, v in getattr(datamodule, "loader_kwargs", {}).items() if k != "drop_last"}
            return AnnDataLoader(
                datamodule.adata_manager,
                indices=datamodule.train_idx,
                batch_size=datamodule.batch_size,
                shuffle=False,
                **options,
            )
        return trainer.train_dataloader  # a single process's own loader: all of its cells
