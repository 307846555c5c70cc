"""Every numeric, boolean and choice argument is checked before work starts (issue 17, item 4).

Each case passes a value a careless user might (a wrong type, a value out of range, NaN or infinity) and
asserts the error names the argument, and that nothing was trained or changed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyrovi._checks import check_bool, check_choice, check_int, check_number
from pyrovi.data import synthetic_iid
from pyrovi.model import SCVI, TOTALVI

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def adata():
    data = synthetic_iid(batch_size=40, n_genes=20, n_batches=2, seed=5)
    SCVI.setup_anndata(data, batch_key="batch", labels_key="labels")
    return data


@pytest.fixture(scope="module")
def trained(adata):
    model = SCVI(adata, n_hidden=8, n_latent=2)
    model.train(max_epochs=1, batch_size=40, enable_progress_bar=False)
    return model


@pytest.mark.parametrize(
    ("kwargs", "error", "phrase"),
    [
        ({"dropout_rate": -0.1}, ValueError, "dropout_rate must be a finite number in \\[0.0, 1.0\\)"),
        ({"dropout_rate": 1.0}, ValueError, "dropout_rate"),
        ({"dropout_rate": 1.5}, ValueError, "dropout_rate"),
        ({"dropout_rate": NAN}, ValueError, "dropout_rate"),
        ({"dropout_rate": "0.1"}, ValueError, "dropout_rate"),
        ({"n_hidden": 1.5}, ValueError, "n_hidden must be a positive integer"),
        ({"n_hidden": True}, ValueError, "n_hidden"),
        ({"n_latent": "2"}, ValueError, "n_latent"),
        ({"n_layers": np.int64(0)}, ValueError, "n_layers"),
    ],
)
def test_scvi_constructor(adata, kwargs, error, phrase):
    with pytest.raises(error, match=phrase):
        SCVI(adata, **kwargs)


@pytest.mark.parametrize("name", ["dropout_rate_encoder", "dropout_rate_decoder"])
def test_totalvi_dropout(name):
    data = synthetic_iid(batch_size=30, n_genes=20, n_proteins=5, seed=1)
    TOTALVI.setup_anndata(data, protein_expression_obsm_key="protein_expression")
    with pytest.raises(ValueError, match=name):
        TOTALVI(data, **{name: 1.0})


@pytest.mark.parametrize(
    ("key", "value", "phrase"),
    [
        ("lr", -1e-3, "lr must be a finite number in \\[0.0, ∞\\)"),
        ("lr", NAN, "lr"),
        ("lr", INF, "lr"),
        ("lr", "1e-3", "lr"),
        ("weight_decay", -1.0, "weight_decay"),
        ("weight_decay", NAN, "weight_decay"),
        ("eps", -1e-8, "eps"),
        ("max_kl_weight", -1.0, "max_kl_weight"),
        ("max_kl_weight", INF, "max_kl_weight"),
        ("min_kl_weight", 2.0, "larger than max_kl_weight"),
        ("n_epochs_kl_warmup", -5, "n_epochs_kl_warmup must be an integer >= 0"),
        ("n_epochs_kl_warmup", 1.5, "n_epochs_kl_warmup"),
        ("n_epochs_kl_warmup", NAN, "n_epochs_kl_warmup"),
        ("n_steps_kl_warmup", -3, "n_steps_kl_warmup"),
        ("lr_factor", 0.0, "lr_factor"),
        ("lr_factor", 2.0, "lr_factor"),
        ("lr_patience", -1, "lr_patience"),
        ("lr_patience", "30", "lr_patience"),
        ("reduce_lr_on_plateau", "yes", "reduce_lr_on_plateau must be True or False"),
    ],
)
def test_plan_kwargs(adata, key, value, phrase):
    model = SCVI(adata, n_hidden=8)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    with pytest.raises((ValueError, TypeError), match=phrase):
        model.train(max_epochs=1, batch_size=40, enable_progress_bar=False, plan_kwargs={key: value})
    assert not model.is_trained and model.history == {}
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())


@pytest.mark.parametrize(
    ("kwargs", "error", "phrase"),
    [
        ({"max_epochs": -1}, ValueError, "max_epochs must be a positive integer"),
        ({"max_epochs": 0}, ValueError, "max_epochs"),
        ({"max_epochs": 1.5}, ValueError, "max_epochs"),
        ({"max_epochs": True}, ValueError, "max_epochs"),
        ({"max_epochs": INF}, ValueError, "max_epochs"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": "128"}, ValueError, "batch_size must be an integer"),
        ({"batch_size": 1.5}, ValueError, "batch_size"),
        ({"train_size": 0.0}, ValueError, "train_size"),
        ({"train_size": 1.5}, ValueError, "train_size"),
        ({"train_size": NAN}, ValueError, "train_size"),
        ({"train_size": "0.9"}, TypeError, "train_size must be a number"),
        ({"train_size": 0.5, "validation_size": 0.9}, ValueError, "train_size \\+ validation_size"),
        ({"shuffle_set_split": "no"}, TypeError, "shuffle_set_split must be True or False"),
        ({"load_sparse_tensor": 1}, TypeError, "load_sparse_tensor"),
        ({"accelerator": "tpu"}, ValueError, "accelerator must be one of"),
        ({"accelerator": "gpu"}, ValueError, "no CUDA GPU"),
        ({"devices": 0}, ValueError, "devices=0"),
        ({"devices": -2}, ValueError, "devices=-2"),
        ({"devices": [0.5]}, ValueError, "devices"),
        ({"early_stopping": "yes"}, TypeError, "early_stopping must be True or False"),
        ({"early_stopping": True, "early_stopping_monitor": "bogus"}, ValueError, "early_stopping_monitor must be one of"),
        ({"early_stopping": True, "early_stopping_patience": -1}, ValueError, "early_stopping_patience"),
        ({"early_stopping": True, "early_stopping_min_delta": -1.0}, ValueError, "early_stopping_min_delta"),
        ({"early_stopping": True, "early_stopping_mode": "up"}, ValueError, "early_stopping_mode"),
        ({"early_stopping": True, "train_size": 1.0}, ValueError, "no validation set"),
        ({"check_val_every_n_epoch": 0}, ValueError, "check_val_every_n_epoch"),
        ({"gradient_clip_val": -1.0}, ValueError, "gradient_clip_val"),
        ({"gradient_clip_val": NAN}, ValueError, "gradient_clip_val"),
        ({"log_every_n_steps": 0}, ValueError, "log_every_n_steps"),
    ],
)
def test_train_arguments(adata, kwargs, error, phrase):
    model = SCVI(adata, n_hidden=8)
    options = {"max_epochs": 1, "batch_size": 40, "enable_progress_bar": False, "train_size": 0.8, **kwargs}
    with pytest.raises(error, match=phrase):
        model.train(**options)
    assert not model.is_trained and model.history == {}


@pytest.mark.parametrize(
    ("method", "kwargs", "phrase"),
    [
        ("get_latent_representation", {"batch_size": 0}, "batch_size"),
        ("get_latent_representation", {"batch_size": -1}, "batch_size"),
        ("get_latent_representation", {"indices": [10**6]}, "indices must lie in"),
        ("get_normalized_expression", {"n_samples": 0}, "n_samples"),
        ("get_normalized_expression", {"n_samples_overall": -1}, "n_samples_overall"),
        ("get_normalized_expression", {"library_size": -1}, "library_size"),
        ("get_normalized_expression", {"library_size": NAN}, "library_size"),
        ("get_normalized_expression", {"batch_size": 0}, "batch_size"),
        ("posterior_predictive_sample", {"n_samples": -2}, "n_samples"),
        ("posterior_predictive_sample", {"n_samples": 1.5}, "n_samples"),
        ("get_marginal_ll", {"n_mc_samples": 0}, "n_mc_samples"),
        ("get_feature_correlation_matrix", {"n_samples": 0}, "n_samples"),
        ("get_feature_correlation_matrix", {"correlation_type": "kendall"}, "correlation_type"),
        ("sample_posterior", {"num_samples": 0}, "num_samples"),
        ("sample_posterior", {"summary": ["q150"]}, "summary"),
        ("differential_expression", {"groupby": "labels", "delta": -0.25}, "delta must be a positive number"),
        ("differential_expression", {"groupby": "labels", "mode": "change", "delta": NAN}, "delta"),
        ("differential_expression", {"groupby": "labels", "fdr_target": 1.5}, "fdr_target"),
        ("differential_expression", {"groupby": "labels", "fdr_target": True}, "fdr_target"),
        ("differential_expression", {"groupby": "labels", "mode": "bad"}, "mode"),
        ("differential_expression", {"groupby": "labels", "batch_size": 0}, "batch_size"),
    ],
)
def test_query_arguments(trained, method, kwargs, phrase):
    before = {k: v.clone() for k, v in trained.module.state_dict().items()}
    with pytest.raises((ValueError, TypeError, IndexError), match=phrase):
        getattr(trained, method)(**kwargs)
    assert all(torch.equal(before[k], v) for k, v in trained.module.state_dict().items())


@pytest.mark.parametrize(
    ("call", "error", "phrase"),
    [
        (lambda: check_int("k", 2.0), ValueError, "k must be an integer >= 1, got 2.0"),
        (lambda: check_int("k", np.int32(-1), minimum=0), ValueError, "k must be an integer >= 0"),
        (lambda: check_number("x", math.nan), ValueError, "x must be a finite number"),
        (lambda: check_number("x", 0.0, low=0.0, low_open=True), ValueError, "\\(0.0, ∞\\)"),
        (lambda: check_bool("flag", "False"), TypeError, "flag must be True or False, got 'False'"),
        (lambda: check_choice("mode", ["a"], ["a", "b"]), ValueError, "mode must be one of"),
    ],
)
def test_checkers(call, error, phrase):
    with pytest.raises(error, match=phrase):
        call()


def test_checkers_accept_valid_values():
    check_int("k", np.int64(3))
    check_int("k", None, allow_none=True)
    check_number("x", np.float32(0.5), 0.0, 1.0)
    check_number("x", 1, 0.0, 1.0)
    check_bool("flag", np.bool_(True))
    check_choice("mode", "a", ["a", "b"])


@pytest.mark.parametrize("method", ["get_normalized_expression", "posterior_predictive_sample"])
def test_a_single_gene_name_as_gene_list_is_refused_clearly(trained, method):
    with pytest.raises(TypeError, match=r"gene_list must be a list of names, got the string 'gene_0'; pass \['gene_0'\]"):
        getattr(trained, method)(gene_list="gene_0")


@pytest.mark.parametrize("name", ["use_observed_lib_size", "log_variational", "encode_covariates", "deeply_inject_covariates"])
def test_scvi_flags_must_be_booleans(adata, name):
    with pytest.raises(TypeError, match=f"{name} must be True or False, got 'False'"):
        SCVI(adata, **{name: "False"})  # a non-empty string is true: it would silently mean the opposite


@pytest.mark.parametrize("name", ["empirical_protein_background_prior", "override_missing_proteins", "log_variational"])
def test_totalvi_flags_must_be_booleans(name):
    data = synthetic_iid(batch_size=30, n_genes=20, n_proteins=5, seed=1)
    TOTALVI.setup_anndata(data, protein_expression_obsm_key="protein_expression")
    with pytest.raises(TypeError, match=f"{name} must be True or False"):
        TOTALVI(data, **{name: "no"})


def test_a_zero_learning_rate_warns_and_changes_nothing(adata):
    """scvi-tools' own tests train with lr=0 to make early stopping fire; pyrovi allows it, never silently."""
    model = SCVI(adata, n_hidden=8)
    before = {k: v.clone() for k, v in model.module.state_dict().items() if v.is_floating_point()}
    with pytest.warns(UserWarning, match="lr=0: the optimiser will not change any parameter"):
        model.train(max_epochs=1, batch_size=40, enable_progress_bar=False, plan_kwargs={"lr": 0})
    after = model.module.state_dict()
    weights = [k for k in before if "running" not in k]  # BatchNorm statistics move without the optimiser
    assert weights and all(torch.equal(before[k], after[k]) for k in weights)
