"""NaN or inf in a training step: a clear error at the faulty step with the model left finite, or skipped steps."""

import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

import pyrovi
from pyrovi.model import SCVI

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = {"batch_size": 16, "accelerator": "cpu", "progress_bar": False}
# 60 cells: 54 train in minibatches of 16, 16, 16, 6, so 4 optimiser steps an epoch


def _model(n_cells=60, n_genes=20, **kwargs):
    pyrovi.settings.seed = 0
    adata = pyrovi.datasets.synthetic_iid(n_cells=n_cells, n_genes=n_genes, seed=0)
    SCVI.setup_anndata(adata, batch_key="batch")
    return SCVI(adata, n_hidden=8, n_latent=2, **kwargs)


def _state(model):
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


class _PoisonSteps(pl.Callback):
    """Put a NaN into the counts of the minibatches of the given optimiser steps; record the state around them.

    ``before[step]`` is the module's state when that step starts, ``after[step]`` when the next one starts.
    """

    def __init__(self, steps, on_device=None):
        self.steps, self.on_device = set(steps), on_device
        self.before, self.after = {}, {}

    def on_train_start(self, trainer, pl_module):
        pl_module.nonfinite_guard.on_device = self.on_device

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        state = {k: v.detach().clone() for k, v in pl_module.module.state_dict().items()}
        if step - 1 in self.steps:
            self.after[step - 1] = state
        if step in self.steps:
            self.before[step] = state
            batch["X"][0, 0] = float("nan")


# on_device=True forces the accelerator path (the fault flag stays on the device and the fused optimiser
# skips the step) on the CPU, so that both paths are tested without a GPU
@pytest.mark.parametrize("on_device", [None, True])
def test_a_nan_loss_stops_training_at_the_faulty_step_and_keeps_the_last_finite_state(on_device):
    model = _model()
    poison = _PoisonSteps([5], on_device=on_device)  # second minibatch of epoch 1
    with pytest.raises(pyrovi.NumericalFaultError) as info:
        model.train(max_epochs=4, callbacks=[poison], **TRAIN)
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert (err.step, err.epoch, err.culprit) == (5, 1, "loss")
    message = str(err)
    for words in ("step 5", "epoch 1", "the loss", "raw counts", "layer='counts'", "learning rate",
                  "on_nonfinite", "skip"):
        assert words in message
    after = _state(model)
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    before = poison.before[5]
    assert after.keys() == before.keys()
    assert [k for k in after if not torch.equal(after[k], before[k])] == []  # BatchNorm statistics included
    assert not model.is_trained


def test_a_nan_gradient_names_the_parameter():
    model = _model()

    class _NanGradient(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if trainer.global_step == 2:
                pl_module.module.decoder.rho_logits.weight.grad[0, 0] = float("inf")

    with pytest.raises(pyrovi.NumericalFaultError) as info:
        model.train(max_epochs=2, callbacks=[_NanGradient()], **TRAIN)
    assert info.value.step == 2 and info.value.epoch == 0
    assert info.value.culprit == "module.decoder.rho_logits.weight"
    assert "gradient of" in str(info.value) and "step 2" in str(info.value)


def test_an_absurd_learning_rate_is_a_numerical_fault():
    model = _model()
    with pytest.raises(pyrovi.NumericalFaultError, match="learning rate"):
        model.train(max_epochs=50, plan_kwargs={"lr": 1e12, "n_epochs_kl_warmup": None}, **TRAIN)
    assert all(torch.isfinite(v).all() for v in model.module.state_dict().values() if v.is_floating_point())


@pytest.mark.parametrize("on_device", [None, True])
def test_skip_leaves_the_faulty_steps_out_counts_them_and_trains_on(on_device):
    model = _model()
    poison = _PoisonSteps([3, 6], on_device=on_device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(max_epochs=3, callbacks=[poison], plan_kwargs={"on_nonfinite": "skip"}, **TRAIN)
    assert any("2 optimiser steps" in str(w.message) for w in caught)
    skipped = model.history["nonfinite_steps_skipped"]["nonfinite_steps_skipped"]
    assert skipped.tolist() == [1.0, 1.0, 0.0]
    for step in (3, 6):  # a skipped step changes nothing: parameters, Adam's moments, BatchNorm statistics
        before, after = poison.before[step], poison.after[step]
        assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert model.is_trained
    assert np.isfinite(model.history["elbo_train"].to_numpy()).all()
    assert np.isfinite(model.get_latent_representation()).all()
    # and the other steps do train: the state moved between the two skipped steps
    assert any(not torch.equal(poison.after[3][k], poison.before[6][k]) for k in poison.before[6])


def test_on_nonfinite_is_checked():
    model = _model()
    with pytest.raises(ValueError, match="on_nonfinite"):
        model.train(max_epochs=1, plan_kwargs={"on_nonfinite": "ignore"}, **TRAIN)


def _extreme_adata(n_cells=60, n_genes=20):
    adata = pyrovi.datasets.synthetic_iid(n_cells=n_cells, n_genes=n_genes, seed=0)
    x = np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X, dtype=np.float32)
    x[:5] *= 1e6 / np.maximum(x[:5].sum(1, keepdims=True), 1)  # cells with a million counts
    x[:5] = np.round(x[:5])
    x[:, :3] = 0
    x[7, :3] = [1e5, 5e3, 1]  # genes whose counts are all in one cell
    adata.X = x
    return adata


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_extreme_but_valid_counts_train_without_nan(likelihood):
    pyrovi.settings.seed = 0
    adata = _extreme_adata()
    SCVI.setup_anndata(adata, batch_key="batch")
    model = SCVI(adata, n_hidden=8, n_latent=2, gene_likelihood=likelihood)
    model.train(max_epochs=5, **TRAIN)  # on_nonfinite="raise": any NaN step would fail here
    for key in ("elbo_train", "elbo_validation"):
        assert np.isfinite(model.history[key].to_numpy()).all()
    assert np.isfinite(model.get_latent_representation()).all()
    assert np.isfinite(model.get_elbo())
