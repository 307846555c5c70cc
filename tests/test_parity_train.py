"""Training with scvi-tools' calls: train() arguments, TrainingPlan keys, history keys and accumulation."""

import inspect
import logging
import warnings

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

import pyrovi
from pyrovi.dataloaders import DataSplitter
from pyrovi.model import SCVI, TOTALVI, CellAssign
from pyrovi.module import VAE
from pyrovi.module.base import per_cell_elbo_terms, trace_pair
from pyrovi.train import SplitTraceMeanField_ELBO

TINY = {"n_latent": 3, "n_hidden": 16}


@pytest.fixture(autouse=True)
def _quiet():
    progress, pyrovi.settings.progress_bar = pyrovi.settings.progress_bar, False
    pyrovi.settings.seed = 0
    yield
    pyrovi.settings.progress_bar = progress


def _scvi(n_per_batch: int = 60, **kwargs) -> SCVI:
    adata = pyrovi.data.synthetic_iid(batch_size=n_per_batch, n_genes=40, seed=0)
    SCVI.setup_anndata(adata, batch_key="batch")
    return SCVI(adata, **{**TINY, **kwargs})


def _column(model, key):
    return model.history[key][key]


# --------------------------------------------------------------------------------------------------
# the loss and its parts


def test_split_elbo_is_the_mean_field_elbo_and_its_parts_are_unannealed():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    batch = {"X": torch.poisson(torch.rand(32, 40, generator=gen) * 10), "batch": torch.randint(0, 2, (32,), generator=gen),
             "indices": torch.arange(32)}
    vae = VAE(n_input=40, n_batch=2, use_observed_lib_size=False, library_log_means=[5.0, 5.0],
              library_log_vars=[0.5, 0.5]).eval()
    args, kwargs = VAE._get_fn_args_from_batch(batch)
    params = [p for p in vae.parameters() if p.requires_grad]
    for weight in (1.0, 0.25):
        pyro.set_rng_seed(3)
        reference = TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, *args, n_obs=320, kl_weight=weight, **kwargs)
        reference_grads = torch.autograd.grad(reference, params)
        split = SplitTraceMeanField_ELBO()
        pyro.set_rng_seed(3)
        loss = split.differentiable_loss(vae.model, vae.guide, *args, n_obs=320, kl_weight=weight, **kwargs)
        grads = torch.autograd.grad(loss, params)
        assert loss.item() == reference.item()  # the same estimate, bitwise
        assert all(torch.equal(a, b) for a, b in zip(grads, reference_grads))
        reconstruction, kl_local, kl_global = split.last_terms
        assert not reconstruction.requires_grad and kl_global == 0.0
        # the parts are those of the model as written (no warm-up weight), scaled to the 320 cells
        pyro.set_rng_seed(3)
        terms = per_cell_elbo_terms(*trace_pair(vae.model, vae.guide, args, kwargs))
        assert reconstruction.item() == pytest.approx(-10 * terms["reconstruction"].sum().item(), rel=1e-5)
        assert kl_local.item() == pytest.approx(10 * terms["kl_local"].sum().item(), rel=1e-5)
        assert loss.item() == pytest.approx(reconstruction.item() + weight * kl_local.item(), rel=1e-5)


# --------------------------------------------------------------------------------------------------
# train() arguments


def test_train_takes_scvi_tools_arguments():
    model = _scvi()
    model.train(
        max_epochs=3, accelerator="cpu", devices=1, train_size=0.8, validation_size=0.1, shuffle_set_split=False,
        load_sparse_tensor=False, batch_size=32, early_stopping=True, datasplitter_kwargs={}, check_val_every_n_epoch=1,
        enable_progress_bar=False, early_stopping_monitor="elbo_validation", early_stopping_patience=45,
        early_stopping_min_delta=0.0, early_stopping_warmup_epochs=1, early_stopping_mode="min", log_every_n_steps=1,
        simple_progress_bar=True, plan_kwargs={"lr": 1e-3, "n_epochs_kl_warmup": 20},
    )
    assert model.is_trained and len(_column(model, "elbo_train")) == 3
    assert (np.diff(model.train_indices) == 1).all() and len(model.train_indices) == 96  # in order: unshuffled
    assert (len(model.validation_indices), len(model.test_indices)) == (12, 12)
    assert model.trainer is not None and model.trainer.early_stopping_callback.warmup_epochs == 1
    # a mapping config, overridden by explicit arguments
    model.train(max_epochs=1, plan_config={"lr": 5e-3, "eps": 0.1}, plan_kwargs={"lr": 2e-3},
                trainer_config={"check_val_every_n_epoch": 1})
    plan = model.trainer.lightning_module
    assert (plan.lr, plan.eps) == (2e-3, 0.1)


def test_enable_progress_bar_is_a_plain_trainer_argument(capsys):
    model = _scvi()
    model.train(max_epochs=1, enable_progress_bar=False)  # raised "got multiple values" before
    assert "Training" not in capsys.readouterr().err
    model.train(max_epochs=1, enable_progress_bar=True, simple_progress_bar=True)
    assert "Training" in capsys.readouterr().err  # pyrovi's epoch bar


def test_default_train_size_is_0_9_and_max_epochs_heuristic():
    model = _scvi(n_per_batch=50)
    assert inspect.signature(model.train).parameters["train_size"].default is None
    model.train(max_epochs=1)
    assert (len(model.train_indices), len(model.validation_indices)) == (90, 10)


def test_early_stopping_without_validation_set_fails_up_front():
    model = _scvi()
    with pytest.raises(ValueError, match="no validation set"):
        model.train(max_epochs=1, train_size=1.0, early_stopping=True)
    with pytest.raises(ValueError, match="no validation set"):
        model.train(max_epochs=1, train_size=1.0, plan_kwargs={"reduce_lr_on_plateau": True})
    assert not model.is_trained and model.history == {}
    # a training metric may be watched without one
    model.train(max_epochs=2, train_size=1.0, early_stopping=True, early_stopping_monitor="elbo_train")
    assert len(_column(model, "elbo_train")) == 2 and "elbo_validation" not in model.history


def test_early_stopping_waits_for_its_warmup():
    # min_delta so large that no epoch after the first check counts as an improvement: with patience 1,
    # training stops one check after the first
    stopping = {"early_stopping": True, "early_stopping_patience": 1, "early_stopping_min_delta": 1e9}
    model = _scvi()
    model.train(max_epochs=20, **stopping)
    assert len(_column(model, "elbo_train")) == 2
    model = _scvi()
    model.train(max_epochs=20, early_stopping_warmup_epochs=4, **stopping)
    assert len(_column(model, "elbo_train")) == 6


def test_early_stopping_mode_max_and_bad_values():
    model = _scvi()
    with pytest.raises(ValueError, match="early_stopping_mode"):
        model.train(max_epochs=1, early_stopping=True, early_stopping_mode="lowest")
    with pytest.raises(ValueError, match="warmup"):
        model.train(max_epochs=1, early_stopping=True, early_stopping_warmup_epochs=-1)
    with pytest.raises(ValueError, match="check_val_every_n_epoch"):
        model.train(max_epochs=1, check_val_every_n_epoch=0)


def test_check_val_every_n_epoch():
    model = _scvi()
    model.train(max_epochs=4, check_val_every_n_epoch=2)
    assert _column(model, "elbo_validation").index.tolist() == [1, 3]
    assert len(_column(model, "elbo_train")) == 4


def test_datamodule_replaces_the_split():
    model = _scvi()
    splitter = DataSplitter(model.adata_manager, train_idx=np.arange(0, 80), val_idx=np.arange(80, 120), batch_size=20)
    model.train(max_epochs=1, datamodule=splitter)
    np.testing.assert_array_equal(model.train_indices, np.arange(80))
    assert model.trainer.lightning_module.n_obs_training == 80


# --------------------------------------------------------------------------------------------------
# history


def test_history_has_scvi_tools_keys_and_the_parts_add_up():
    model = _scvi()
    model.train(max_epochs=4, train_size=0.75, plan_kwargs={"n_epochs_kl_warmup": 4})
    history = model.history
    expected = {
        "train_loss", "elbo_train", "reconstruction_loss_train", "kl_local_train", "kl_global_train",
        "validation_loss", "elbo_validation", "reconstruction_loss_validation", "kl_local_validation",
        "kl_global_validation", "kl_weight",
    }
    assert expected <= set(history)
    assert all(history[key].index.name == "epoch" for key in expected)
    rec, kl = _column(model, "reconstruction_loss_train"), _column(model, "kl_local_train")
    weight = _column(model, "kl_weight")
    # elbo_train is the ELBO without warm-up; train_loss is what was optimised, with it
    np.testing.assert_allclose(_column(model, "elbo_train"), rec + kl, rtol=1e-5)
    np.testing.assert_allclose(_column(model, "train_loss"), rec + weight * kl, rtol=1e-5)
    assert (_column(model, "train_loss") < _column(model, "elbo_train")).all()
    np.testing.assert_allclose(
        _column(model, "elbo_validation"),
        _column(model, "reconstruction_loss_validation") + _column(model, "kl_local_validation"),
        rtol=1e-5,
    )
    np.testing.assert_allclose(_column(model, "validation_loss"), _column(model, "elbo_validation"))
    assert (_column(model, "kl_global_train") == 0).all()  # SCVI has no global latent


def test_history_is_appended_across_train_calls():
    model = _scvi()
    model.train(max_epochs=2)
    first = _column(model, "elbo_train").copy()
    model.train(max_epochs=3)
    elbo = _column(model, "elbo_train")
    assert elbo.index.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(elbo.iloc[:2], first)
    assert _column(model, "elbo_validation").index.tolist() == [0, 1, 2, 3, 4]
    assert model.history_ is model.history


def test_step_level_history():
    model = _scvi()
    model.train(max_epochs=3, batch_size=32, train_size=0.5, check_val_every_n_epoch=1, log_every_n_steps=1,
                plan_kwargs={"on_step": True, "on_epoch": True})
    history = model.history
    assert len(_column(model, "elbo_train_epoch")) == 3 and "elbo_train" not in history
    for key in ("train_loss_step", "validation_loss_step", "train_loss_epoch", "validation_loss_epoch"):
        assert key in history
    steps = history["train_loss_step"]
    assert steps.index.name == "step" and steps.index.tolist() == list(range(6))  # 60 cells, 2 steps an epoch
    assert np.isfinite(steps.to_numpy()).all()
    # every other step with log_every_n_steps=2; a further run continues the step index
    model.train(max_epochs=1, batch_size=32, train_size=0.5, log_every_n_steps=2, plan_kwargs={"on_step": True})
    assert model.history["train_loss_step"].index.tolist() == [0, 1, 2, 3, 4, 5, 6]


def test_reduce_lr_on_plateau_records_the_learning_rate():
    model = _scvi()
    plan = {"reduce_lr_on_plateau": True, "lr_patience": 0, "lr_factor": 0.5, "lr_threshold": 1e9,
            "lr_scheduler_metric": "elbo_train"}
    model.train(max_epochs=4, plan_kwargs=plan)
    lr = model.history["lr-Adam"]["lr-Adam"].to_numpy()
    assert model.history["lr-Adam"].index.name == "step"
    # read as each epoch starts; the first epoch sets the best value, every later one misses it
    np.testing.assert_allclose(lr, [1e-3, 1e-3, 5e-4, 2.5e-4])


def test_callbacks_and_logger_are_added():
    from lightning.pytorch.callbacks import Callback

    class Count(Callback):
        epochs = 0

        def on_train_epoch_end(self, trainer, module):
            Count.epochs += 1

    model = _scvi()
    model.train(max_epochs=2, callbacks=[Count()])
    assert Count.epochs == 2


# --------------------------------------------------------------------------------------------------
# plan_kwargs


@pytest.mark.parametrize(
    "plan, error, match",
    [
        ({"n_epochs_kl_warmup": -1}, ValueError, "n_epochs_kl_warmup"),
        ({"n_steps_kl_warmup": 2.5}, ValueError, "n_steps_kl_warmup"),
        ({"min_kl_weight": 0.8, "max_kl_weight": 0.5}, ValueError, "min_kl_weight"),
        ({"lr": -1e-3}, ValueError, "lr"),
        ({"lr_factor": 1.5}, ValueError, "lr_factor"),
        ({"optimizer": "Custom"}, ValueError, "optimizer_creator"),
        ({"optimizer": "SGD"}, ValueError, "Custom"),
        ({"learning_rate": 1e-3}, TypeError, "Unknown plan_kwargs"),
        ({"kl_weight": 0.5}, TypeError, "sets these itself"),
    ],
)
def test_bad_plan_kwargs_fail_before_training(plan, error, match):
    model = _scvi()
    with pytest.raises(error, match=match):
        model.train(max_epochs=1, plan_kwargs=plan)
    assert not model.is_trained


def test_custom_optimizer():
    model = _scvi()
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    model.train(max_epochs=2, plan_kwargs={"optimizer": "Custom", "optimizer_creator": lambda p: torch.optim.SGD(p, lr=0.0)})
    assert isinstance(model.trainer.optimizers[0], torch.optim.SGD)
    after = model.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k)
    model.train(max_epochs=1, plan_kwargs={"optimizer": "AdamW", "weight_decay": 0.01})
    assert isinstance(model.trainer.optimizers[0], torch.optim.AdamW)


def test_update_only_decoder_keeps_the_encoders():
    model = _scvi()
    before = {k: v.clone() for k, v in model.module.named_parameters()}
    model.train(max_epochs=2, plan_kwargs={"update_only_decoder": True})
    after = dict(model.module.named_parameters())
    encoders = [k for k in before if "encoder" in k]
    decoders = [k for k in before if "decoder" in k]
    assert encoders and decoders
    assert all(torch.equal(before[k], after[k]) for k in encoders)
    assert any(not torch.equal(before[k], after[k]) for k in decoders)


def test_kl_warmup_by_steps_and_weights():
    model = _scvi()
    model.train(max_epochs=3, batch_size=54, plan_kwargs={"n_epochs_kl_warmup": None, "n_steps_kl_warmup": 4,
                                                          "min_kl_weight": 0.2, "max_kl_weight": 0.6})
    # 108 training cells, two steps an epoch: weights 0.2, 0.3 | 0.4, 0.5 | 0.6, 0.6 averaged per epoch
    np.testing.assert_allclose(_column(model, "kl_weight"), [0.25, 0.45, 0.6], rtol=1e-6)


def test_compile_trains_and_leaves_queries_eager():
    model = _scvi()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=1, plan_kwargs={"compile": True, "compile_kwargs": {"backend": "eager"}})
    assert np.isfinite(_column(model, "elbo_train")).all()
    assert all(getattr(child, "_compiled_call_impl", None) is None for child in model.module.children())
    assert model.get_latent_representation().shape == (120, 3)


# --------------------------------------------------------------------------------------------------
# TOTALVI and CellAssign


def test_totalvi_train_defaults_and_adversarial_classifier():
    defaults = {k: p.default for k, p in inspect.signature(TOTALVI.train).parameters.items()}
    assert (defaults["lr"], defaults["batch_size"], defaults["early_stopping"], defaults["reduce_lr_on_plateau"]) == (
        4e-3, 256, True, True
    )
    adata = pyrovi.data.synthetic_iid(batch_size=50, n_genes=30, n_proteins=8, seed=0)
    TOTALVI.setup_anndata(adata, batch_key="batch", protein_expression_obsm_key="protein_expression")
    model = TOTALVI(adata, **TINY)
    with pytest.warns(UserWarning, match="no adversarial batch classifier"):
        model.train(max_epochs=1, train_size=0.5, adversarial_classifier=True)
    plan = model.trainer.lightning_module
    assert (plan.lr, plan.n_steps_kl_warmup, plan.reduce_lr_on_plateau) == (4e-3, 75, True)
    assert model.trainer.early_stopping_callback is not None
    assert "lr-Adam" in model.history
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning without the classifier asked for
        model.train(max_epochs=1, lr=1e-3, n_epochs_kl_warmup=5, adversarial_classifier=False,
                    external_indexing=[np.arange(60), np.arange(60, 80), np.arange(80, 100)])
    plan = model.trainer.lightning_module
    assert (plan.lr, plan.n_epochs_kl_warmup, plan.n_steps_kl_warmup) == (1e-3, 5, None)
    assert (len(model.train_indices), len(model.validation_indices), len(model.test_indices)) == (60, 20, 20)
    assert len(_column(model, "elbo_train")) == 2


def test_cellassign_takes_scvi_tools_arguments():
    adata = pyrovi.data.synthetic_iid(batch_size=50, n_genes=20, seed=0)
    markers = np.zeros((20, 2), dtype=int)
    markers[:5, 0] = markers[5:10, 1] = 1
    import pandas as pd

    table = pd.DataFrame(markers, index=adata.var_names, columns=["a", "b"])
    adata.obs["size_factor"] = adata.X.sum(1) / np.mean(adata.X.sum(1))
    CellAssign.setup_anndata(adata, size_factor_key="size_factor")
    model = CellAssign(adata, table)
    model.train(max_epochs=3, train_size=0.8, early_stopping=True, early_stopping_patience=15,
                early_stopping_warmup_epochs=1, early_stopping_min_delta=0.0, enable_progress_bar=False)
    assert model.trainer.lightning_module.weight_decay == 1e-10
    assert len(_column(model, "elbo_train")) == 3 and "elbo_validation" in model.history
