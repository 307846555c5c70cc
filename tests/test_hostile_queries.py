"""Hostile arguments to queries, criticism, CellAssign, priors, constructors and settings (issue 17, item 4).

Each case passes what a careless user might: a flag as a string (``"no"`` is a true string), a number out
of range that would "work" (``m_permutation=0`` calls every gene DE), a wrong object deep inside
(``dataloader=[1, 2, 3]``), a string where a list of keys is expected. Each asserts the error type and a key
phrase of its message (the argument's name), or the correct result. The flag cases are generated from the
signatures of every public query, so a new bool argument without a check fails here.
"""

from __future__ import annotations

import inspect
import logging
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

import pyrovi
import pyrovi.criticism as criticism
from pyrovi import priors
from pyrovi.data import synthetic_iid
from pyrovi.model import SCVI, TOTALVI, CellAssign

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAN = float("nan")
QUIET = {"max_epochs": 1, "enable_progress_bar": False, "accelerator": "cpu"}


# --------------------------------------------------------------------------------------------------
# tiny models (one epoch each: the checks run before any work, the correct results need a fitted model)


def _scvi_data(seed: int = 0):
    data = synthetic_iid(batch_size=20, n_genes=12, n_batches=2, n_labels=2, seed=seed)
    SCVI.setup_anndata(data, batch_key="batch", labels_key="labels")
    return data


@pytest.fixture(scope="module")
def scvi():
    pyrovi.settings.seed = 0
    model = SCVI(_scvi_data(), n_hidden=8, n_latent=2)
    model.train(batch_size=40, **QUIET)
    return model


@pytest.fixture(scope="module")
def totalvi():
    data = synthetic_iid(batch_size=20, n_genes=12, n_proteins=4, n_batches=2, seed=1)
    TOTALVI.setup_anndata(data, protein_expression_obsm_key="protein_expression", batch_key="batch")
    model = TOTALVI(data, n_hidden=8, n_latent=2)
    model.train(batch_size=40, early_stopping=False, **QUIET)
    return model


def _markers() -> pd.DataFrame:
    markers = pd.DataFrame(0, index=[f"gene_{i}" for i in range(12)], columns=["A", "B"])
    markers.iloc[:6, 0] = 1
    markers.iloc[6:, 1] = 1
    return markers


def _cellassign_data():
    data = synthetic_iid(batch_size=20, n_genes=12, n_batches=2, seed=2)
    totals = np.asarray(data.X.sum(1)).reshape(-1)
    data.obs["sf"] = (totals / totals.mean()).astype("float32")
    CellAssign.setup_anndata(data, size_factor_key="sf", batch_key="batch")
    return data


@pytest.fixture(scope="module")
def cellassign():
    model = CellAssign(_cellassign_data(), _markers())
    model.train(batch_size=40, early_stopping=False, **QUIET)
    return model


@pytest.fixture(scope="module")
def models(scvi, totalvi, cellassign):
    return {SCVI: scvi, TOTALVI: totalvi, CellAssign: cellassign}


# --------------------------------------------------------------------------------------------------
# every bool argument of every public query, given as a string


#: methods of other areas (training, saving, loading, setup): their flags are tested with them
_NOT_QUERIES = {"train", "save", "load", "to_device", "convert_legacy_save", "setup_anndata", "setup_mudata"}


def _bool_arguments() -> list[tuple[type, str, str]]:
    cases = []
    for cls in (SCVI, TOTALVI, CellAssign):
        for name, method in inspect.getmembers(cls, callable):
            if name.startswith("_") or name in _NOT_QUERIES:
                continue
            for parameter in inspect.signature(method).parameters.values():
                if re.fullmatch(r"bool( \| None)?|None \| bool", str(parameter.annotation)):
                    cases.append((cls, name, parameter.name))
    return cases


BOOL_ARGUMENTS = _bool_arguments()


def test_the_flag_cases_cover_the_queries():
    found = {(cls.__name__, method, flag) for cls, method, flag in BOOL_ARGUMENTS}
    for case in [
        ("SCVI", "get_latent_representation", "give_mean"),
        ("SCVI", "get_normalized_expression", "return_numpy"),
        ("SCVI", "differential_expression", "use_permutation"),
        ("SCVI", "differential_expression", "filter_outlier_cells"),
        ("TOTALVI", "differential_expression", "include_protein_background"),
        ("TOTALVI", "get_protein_foreground_probability", "given_counts"),
        ("CellAssign", "predict", "soft"),
        ("CellAssign", "sample_posterior", "return_samples"),
    ]:
        assert case in found
    assert len(found) >= 40


@pytest.mark.parametrize("value", ["no", "False", 1, None])
@pytest.mark.parametrize(
    ("cls", "method", "flag"), BOOL_ARGUMENTS, ids=[f"{c.__name__}.{m}.{f}" for c, m, f in BOOL_ARGUMENTS]
)
def test_every_query_flag_must_be_a_bool(models, cls, method, flag, value):
    annotation = str(inspect.signature(getattr(cls, method)).parameters[flag].annotation)
    if value is None and "None" in annotation:
        pytest.skip("None is this flag's documented default")
    model = models[cls]
    required = {"adata": model.adata} if method == "get_anndata_manager" else {}
    if method in ("prepare_query_anndata", "load_query_data"):  # flags are checked before the data is touched
        required = {"adata": model.adata.copy(), "reference_model": model}
    if method == "prepare_query_mudata":
        required = {"mdata": model.adata.copy(), "reference_model": model}
    with pytest.raises(TypeError, match=f"{flag} must be True or False"):
        getattr(model, method)(**required, **{flag: value})


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("get_latent_representation", {"shuffle": "yes"}),
        ("get_normalized_expression", {"n_samples_overall": 3, "weights": "importance", "truncation": "no"}),
        ("differential_expression", {"use_permutation": "no"}),
        ("differential_expression", {"filter_outlier_cells": "x"}),
    ],
)
def test_flags_given_through_kwargs(scvi, totalvi, method, kwargs):
    name = next(k for k, v in kwargs.items() if isinstance(v, str) and k != "weights")
    for model in (scvi, totalvi) if method == "differential_expression" else (scvi,):
        with pytest.raises(TypeError, match=f"{name} must be True or False"):
            getattr(model, method)(**kwargs)


def test_numpy_bools_are_flags(scvi):
    z = scvi.get_latent_representation(give_mean=np.bool_(True))
    assert z.shape == (40, 2)


# --------------------------------------------------------------------------------------------------
# numbers out of range that would "work"


def _de(**kwargs):
    return {"groupby": "labels", "n_samples_overall": 20, "silent": True, **kwargs}


@pytest.mark.parametrize(
    ("method", "kwargs", "error", "phrase"),
    [
        ("differential_expression", _de(use_permutation=True, m_permutation=0), ValueError, "m_permutation"),
        ("differential_expression", _de(use_permutation=True, m_permutation=-3), ValueError, "m_permutation"),
        ("differential_expression", _de(use_permutation=True, m_permutation=2.5), ValueError, "m_permutation"),
        ("differential_expression", _de(mode="change", threshold_counts=-1), ValueError, "threshold_counts"),
        ("differential_expression", _de(mode="change", pseudocounts="1"), ValueError, "pseudocounts"),
        ("differential_expression", _de(mode="change", pseudocounts=-0.1), ValueError, "pseudocounts"),
        ("differential_expression", _de(batch_size=0), ValueError, "batch_size"),
        ("differential_expression", _de(test_mode="four"), ValueError, "test_mode"),
        ("differential_expression", _de(cred_interval_lvls=0.5), TypeError, "cred_interval_lvls"),
        ("differential_expression", _de(cred_interval_lvls=[1.5]), ValueError, "cred_interval_lvls"),
        ("differential_expression", _de(m1_domain_fn="up"), TypeError, "m1_domain_fn"),
        ("differential_expression", _de(change_fn=3), ValueError, "change_fn"),
        ("differential_expression", _de(weights="importance", importance_weighting_kwargs={"max_cells": 0}), ValueError, "max_cells"),
        ("differential_expression", _de(weights="importance", importance_weighting_kwargs=[1]), TypeError, "importance_weighting_kwargs"),
        ("get_feature_correlation_matrix", {"n_samples": 2, "rna_size_factor": -1}, ValueError, "rna_size_factor must be a positive"),
        ("get_feature_correlation_matrix", {"n_samples": 2, "rna_size_factor": 0}, ValueError, "rna_size_factor"),
        ("get_feature_correlation_matrix", {"n_samples": 2, "rna_size_factor": "latent"}, ValueError, "rna_size_factor"),
        ("get_feature_correlation_matrix", {"n_samples": 2, "correlation_type": "kendall"}, ValueError, "correlation_type"),
        ("get_normalized_expression", {"n_samples_overall": 3, "weights": "importance", "max_cells": 0}, ValueError, "max_cells"),
        ("get_normalized_expression", {"n_samples_overall": 3, "weights": "importance", "n_mc_samples_per_pass": -1}, ValueError, "n_mc_samples_per_pass"),
        ("get_normalized_expression", {"n_samples": True}, ValueError, "n_samples"),
        ("get_normalized_expression", {"library_size": NAN}, ValueError, "library_size"),
        ("sample_posterior", {"num_samples": True}, ValueError, "num_samples"),
        ("sample_posterior", {"num_samples": 2, "summary": 5}, TypeError, "summary"),
        ("sample_posterior", {"num_samples": 2, "summary": ["q150"]}, ValueError, "q150"),
        ("get_batch_representation", {"batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_scvi_numbers_and_options(scvi, method, kwargs, error, phrase):
    with pytest.raises(error, match=phrase):
        getattr(scvi, method)(**kwargs)


@pytest.mark.parametrize(
    ("method", "kwargs", "error", "phrase"),
    [
        ("differential_expression", {"groupby": "batch", "protein_prior_count": -1}, ValueError, "protein_prior_count"),
        ("differential_expression", {"groupby": "batch", "protein_prior_count": NAN}, ValueError, "protein_prior_count"),
        ("differential_expression", {"groupby": "batch", "protein_prior_count": "0.1"}, ValueError, "protein_prior_count"),
        ("differential_expression", {"groupby": "batch", "use_field": "rna"}, TypeError, "use_field must be a list"),
        ("differential_expression", {"groupby": "batch", "m_permutation": 0}, ValueError, "m_permutation"),
        ("get_normalized_expression", {"n_samples_overall": 0}, ValueError, "n_samples_overall"),
        ("get_normalized_expression", {"n_samples_overall": -2}, ValueError, "n_samples_overall"),
        ("get_normalized_expression", {"n_samples": 0}, ValueError, "n_samples"),
        ("get_normalized_expression", {"library_size": -1}, ValueError, "library_size must be a positive"),
        ("get_protein_background_mean", {"n_samples": 0}, ValueError, "n_samples"),
        ("get_protein_foreground_probability", {"n_samples": -1}, ValueError, "n_samples"),
        ("get_feature_correlation_matrix", {"n_samples": 2, "rna_size_factor": -1}, ValueError, "rna_size_factor"),
    ],
)
def test_totalvi_numbers_and_options(totalvi, method, kwargs, error, phrase):
    with pytest.raises(error, match=phrase):
        getattr(totalvi, method)(**kwargs)


@pytest.mark.parametrize("library_size", [0, -1, -1e4, NAN, float("inf"), "latent", "1", True])
def test_cellassign_library_size_is_checked_as_scvi_does(cellassign, scvi, library_size):
    with pytest.raises(ValueError, match="library_size must be a positive number") as caught:
        cellassign.get_normalized_expression(library_size=library_size)
    if library_size != "latent":  # the same check and words as SCVI's
        with pytest.raises(ValueError) as scvi_caught:
            scvi.get_normalized_expression(library_size=library_size)
        assert str(scvi_caught.value).split(",")[0] == str(caught.value).split(",")[0]


@pytest.mark.parametrize(
    ("method", "kwargs", "error", "phrase"),
    [
        ("sample_posterior", {"num_samples": 0}, ValueError, "num_samples"),
        ("sample_posterior", {"num_samples": 2, "summary": ["q200"]}, ValueError, "q200"),
        ("sample_posterior", {"num_samples": 2, "summary": "median"}, ValueError, "median"),
        ("get_normalized_expression", {"gene_list": "gene_0"}, TypeError, "gene_list must be a list"),
        ("predict", {"batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_cellassign_queries(cellassign, method, kwargs, error, phrase):
    with pytest.raises(error, match=phrase):
        getattr(cellassign, method)(**kwargs)


def test_cellassign_sample_posterior_takes_one_site_name(cellassign):
    draws = cellassign.sample_posterior(num_samples=3, return_sites="type_proportions", return_samples=True)
    assert list(draws) == ["type_proportions"] and draws["type_proportions"].shape == (3, 2)
    summary = cellassign.sample_posterior(num_samples=3, summary=["mean", "q50"])
    np.testing.assert_allclose(summary["type_proportions"]["mean"], summary["type_proportions"]["q50"], rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "phrase"),
    [
        ({"min_delta": -1.0}, ValueError, "min_delta"),
        ({"min_delta": NAN}, ValueError, "min_delta"),
        ({"min_delta": "2"}, ValueError, "min_delta"),
        ({"dirichlet_concentration": 0.0}, ValueError, "dirichlet_concentration"),
        ({"dirichlet_concentration": -1.0}, ValueError, "dirichlet_concentration"),
        ({"dirichlet_concentration": "1"}, ValueError, "dirichlet_concentration"),
        ({"dirichlet_concentration": float("inf")}, ValueError, "dirichlet_concentration"),
        ({"objective": "map"}, ValueError, "objective"),
        ({"objective": None}, ValueError, "objective"),
    ],
)
def test_cellassign_constructor(kwargs, error, phrase):
    with pytest.raises(error, match=phrase):
        CellAssign(_cellassign_data(), _markers(), **kwargs)


def test_cellassign_min_delta_zero_is_allowed():
    model = CellAssign(_cellassign_data(), _markers(), min_delta=0.0)
    assert model.module.min_delta == 0.0


@pytest.mark.parametrize(
    ("kwargs", "error", "phrase"),
    [
        ({"steps_per_m_step": 0}, ValueError, "steps_per_m_step"),
        ({"steps_per_m_step": 2.5}, ValueError, "steps_per_m_step"),
        ({"steps_per_m_step": "10"}, ValueError, "steps_per_m_step"),
        ({"plan_kwargs": ["lr", 1e-3]}, TypeError, "plan_kwargs must be a dict"),
        ({"callbacks": "early"}, TypeError, "callbacks must be a list"),
    ],
)
def test_cellassign_train_checks_unused_arguments_up_front(kwargs, error, phrase):
    model = CellAssign(_cellassign_data(), _markers())  # objective "marginal": steps_per_m_step is unused
    with pytest.raises(error, match=phrase):
        model.train(**QUIET, **kwargs)
    assert not model.is_trained and not model.history


# --------------------------------------------------------------------------------------------------
# wrong objects deep inside


@pytest.mark.parametrize(
    ("dataloader", "phrase"),
    [
        ([1, 2, 3], "minibatch 0 is int"),
        ("abc", "dataloader must be an iterable of minibatches"),
        (5, "dataloader must be an iterable of minibatches"),
        ({"X": torch.ones(2, 12)}, "dataloader must be an iterable of minibatches"),
        ([{"X": np.ones((2, 12))}], "minibatch 0 is dict"),
        ([{"batch": torch.zeros(2, 1)}], "no 'X'"),
    ],
)
@pytest.mark.parametrize("method", ["get_latent_representation", "get_elbo", "get_latent_library_size"])
def test_dataloader_garbage_is_a_type_error(scvi, method, dataloader, phrase):
    with pytest.raises(TypeError, match=phrase):
        getattr(scvi, method)(dataloader=dataloader)


def test_a_real_dataloader_still_works(scvi):
    loader = scvi._make_data_loader(indices=np.arange(5))
    np.testing.assert_allclose(
        scvi.get_latent_representation(dataloader=loader), scvi.get_latent_representation()[:5], rtol=1e-5
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "phrase"),
    [
        ({"prior": "normal"}, TypeError, "prior must be a pyrovi.priors.LatentPrior .*MixtureOfGaussians"),
        ({"prior": priors.MixtureOfGaussians}, TypeError, "LatentPrior"),
        ({"prior": torch.distributions.Normal(0.0, 1.0)}, TypeError, "LatentPrior"),
        ({"dispersion_prior": 5}, TypeError, "dispersion_prior must be a Pyro distribution"),
        ({"dispersion_prior": "lognormal"}, TypeError, "dispersion_prior must be a Pyro distribution"),
        ({"global_guide": "bogus"}, ValueError, "global_guide='bogus'"),
        ({"global_guide": 3}, ValueError, "global_guide"),
        ({"global_guide": None}, ValueError, "global_guide"),
    ],
)
def test_scvi_constructor_objects(kwargs, error, phrase):
    with pytest.raises(error, match=phrase):
        SCVI(_scvi_data(), n_hidden=8, n_latent=2, **kwargs)


@pytest.mark.parametrize("adata", [None, np.ones((5, 5)), "adata.h5ad", pd.DataFrame(np.ones((3, 3)))])
@pytest.mark.parametrize("cls", [SCVI, TOTALVI])
def test_model_of_something_that_is_not_anndata(cls, adata):
    with pytest.raises(TypeError, match="adata must be an AnnData \\(or MuData\\)"):
        cls(adata)


def test_cellassign_of_something_that_is_not_anndata():
    with pytest.raises(TypeError, match="adata must be an AnnData"):
        CellAssign(np.ones((5, 5)), _markers())


@pytest.mark.parametrize("argument", ["categorical_covariate_keys", "continuous_covariate_keys"])
@pytest.mark.parametrize("model", ["SCVI", "TOTALVI", "CellAssign"])
def test_one_key_string_for_a_list_of_keys(model, argument):
    data = synthetic_iid(batch_size=20, n_genes=12, n_proteins=4, seed=3)
    data.obs["b"] = 1.0  # a one-letter column: the string "batch" split into letters would find it
    setup = {
        "SCVI": lambda **kw: SCVI.setup_anndata(data, **kw),
        "TOTALVI": lambda **kw: TOTALVI.setup_anndata(data, protein_expression_obsm_key="protein_expression", **kw),
        "CellAssign": lambda **kw: CellAssign.setup_anndata(data, size_factor_key="b", **kw),
    }[model]
    with pytest.raises(TypeError, match=rf"{argument} must be a list of column names.*\['batch'\]"):
        setup(**{argument: "batch"})
    assert "_pyrovi_registry" not in data.uns


@pytest.mark.parametrize("argument", ["batch_key", "labels_key", "layer", "size_factor_key"])
def test_a_list_for_one_key(argument):
    data = synthetic_iid(batch_size=20, n_genes=12, seed=3)
    with pytest.raises(TypeError, match=f"{argument} must be a"):
        SCVI.setup_anndata(data, **{argument: ["batch"]})


# --------------------------------------------------------------------------------------------------
# priors


@pytest.mark.parametrize(
    ("make", "error", "phrase"),
    [
        (lambda: priors.MixtureOfGaussians(learnable="no"), TypeError, "learnable must be True or False"),
        (lambda: priors.MixtureOfGaussians(learnable=0), TypeError, "learnable"),
        (lambda: priors.MixtureOfGaussians(n_components=0), ValueError, "n_components"),
        (lambda: priors.MixtureOfGaussians(init_scale=-1.0), ValueError, "init_scale"),
        (lambda: priors.VampPrior(n_pseudo_inputs=True), TypeError, "n_pseudo_inputs"),
        (lambda: priors.HierarchicalNormal(hyperprior="cauchy"), ValueError, "hyperprior"),
        (lambda: priors.StudentT(df="3"), TypeError, "df"),
    ],
)
def test_prior_arguments(make, error, phrase):
    with pytest.raises(error, match=phrase):
        make()


def test_fixed_mixture_prior_has_buffers_not_parameters():
    model = SCVI(_scvi_data(), n_hidden=8, n_latent=2, prior=priors.MixtureOfGaussians(3, learnable=False))
    assert not list(model.module.prior.parameters())


# --------------------------------------------------------------------------------------------------
# criticism


@pytest.fixture(scope="module")
def ppc(scvi):
    return criticism.PosteriorPredictiveCheck(scvi.adata, {"m": scvi}, n_samples=3)


@pytest.mark.parametrize(
    ("kwargs", "error", "phrase"),
    [
        ({"held_out": "no"}, TypeError, "held_out must be True or False"),
        ({"held_out": 0}, TypeError, "held_out"),
        ({"n_samples": True}, ValueError, "n_samples"),
        ({"n_samples": 0}, ValueError, "n_samples"),
        ({"n_samples": 2.5}, ValueError, "n_samples"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"layer": 3}, TypeError, "layer"),
    ],
)
def test_ppc_arguments(scvi, kwargs, error, phrase):
    with pytest.raises(error, match=phrase):
        criticism.PosteriorPredictiveCheck(scvi.adata, {"m": scvi}, **{"n_samples": 2, **kwargs})


@pytest.mark.parametrize(
    ("call", "error", "phrase"),
    [
        (lambda p: p.ppp_value(statistic=lambda x: "a"), TypeError, "must return numbers"),
        (lambda p: p.ppp_value(statistic=lambda x: {"a": 1}), TypeError, "must return numbers"),
        (lambda p: p.ppp_value(statistic=lambda x: None), TypeError, "must return numbers"),
        (lambda p: p.ppp_value(statistic=lambda x: x.mean(), mid_p="no"), TypeError, "mid_p"),
        (lambda p: p.ppp_value(statistic=lambda x: x.mean(), name=3), TypeError, "name"),
        (lambda p: p.calibration(levels=["a"]), ValueError, "levels must be numbers in \\(0, 1\\)"),
        (lambda p: p.calibration(levels=[0.5, 1.0]), ValueError, "levels"),
        (lambda p: p.calibration(levels="0.5"), TypeError, "levels"),
        (lambda p: p.log_predictive_density(n_samples=2.5), ValueError, "n_samples"),
        (lambda p: p.log_predictive_density(n_samples="3"), ValueError, "n_samples"),
        (lambda p: p.coefficient_of_variation(dim="x"), ValueError, "dim"),
    ],
)
def test_ppc_methods(ppc, call, error, phrase):
    with pytest.raises(error, match=phrase):
        call(ppc)


def test_ppp_value_with_an_undefined_statistic_is_nan(ppc):
    # the coefficient of variation of a gene without counts is undefined: no p-value, not 0
    table = ppc.ppp_value(lambda x: np.where(np.arange(x.shape[1]) == 0, np.nan, x.mean(0)), name="m")
    assert table.groupby("gene", observed=True)["ppp_value"].apply(lambda v: v.isna().all()).sum() == 1


@pytest.mark.parametrize(
    ("call", "error", "phrase"),
    [
        (lambda: criticism.posterior_predictive_pvalue(1.0, np.array([])), ValueError, "at least one replicate"),
        (lambda: criticism.posterior_predictive_pvalue(np.ones(3), np.ones((3, 0))), ValueError, "at least one"),
        (lambda: criticism.posterior_predictive_pvalue("a", np.ones(3)), TypeError, "observed_stat must be an array of numbers"),
        (lambda: criticism.posterior_predictive_pvalue(1.0, ["a", "b"]), TypeError, "replicated_stats"),
        (lambda: criticism.posterior_predictive_pvalue(1.0, np.ones(3), mid_p="yes"), TypeError, "mid_p"),
        (lambda: criticism.randomized_pit(np.ones(3), np.ones((3, 4)), rng="x"), TypeError, "rng must be"),
        (lambda: criticism.randomized_pit(np.ones(3), np.ones((3, 4)), rng=-1), TypeError, "rng"),
        (lambda: criticism.randomized_pit(np.ones(3), np.ones((3, 4)), rng=1.5), TypeError, "rng"),
        (lambda: criticism.randomized_pit(np.ones(3), np.ones((3, 0))), ValueError, "at least one draw"),
        (lambda: criticism.pit_interval(np.array([NAN]), np.ones((1, 3))), ValueError, "observed holds NaN"),
        (lambda: criticism.pit_interval(np.ones(2), np.ones((3, 4))), ValueError, "replicates must have the observed shape"),
        (lambda: criticism.pit_coverage(np.zeros(3), np.ones(3), level="0.5"), ValueError, "level must be"),
        (lambda: criticism.pit_coverage(np.zeros(3), np.ones(3), level=1.0), ValueError, "level"),
        (lambda: criticism.pit_coverage(np.zeros(3), np.zeros(3), level=0.5), ValueError, "lower < upper"),
        (lambda: criticism.pit_coverage(np.zeros(0), np.zeros(0), level=0.5), ValueError, "non-empty"),
        (lambda: criticism.interval_coverage(np.ones(3), np.ones((3, 4)), levels=0.5), TypeError, "levels must be"),
        (lambda: criticism.interval_coverage(np.ones(3), np.ones((3, 4)), levels=[]), TypeError, "levels"),
        (lambda: criticism.coefficient_of_variation(np.ones((3, 2)), axis=5), ValueError, "axis must be an integer"),
        (lambda: criticism.coefficient_of_variation(np.ones((3, 2)), axis=0.0), ValueError, "axis"),
        (lambda: criticism.coefficient_of_variation(np.array(["a", "b"])), TypeError, "x must be an array of numbers"),
        (lambda: criticism.zero_fraction(np.ones((0, 3))), ValueError, "no entries along axis 0"),
        (lambda: criticism.zero_fraction(np.array([1.0, NAN])), ValueError, "NaN"),
    ],
)
def test_criticism_functions(call, error, phrase):
    with pytest.raises(error, match=phrase):
        call()


def test_criticism_functions_still_compute():
    assert criticism.posterior_predictive_pvalue(1.0, np.array([0.0, 1.0, 2.0, 3.0])) == 0.75
    assert math.isnan(float(criticism.posterior_predictive_pvalue(NAN, np.ones(3))))
    pit = criticism.randomized_pit(np.ones(3), np.arange(12.0).reshape(3, 4), rng=np.random.default_rng(0))
    assert ((pit >= 0) & (pit <= 1)).all()
    np.testing.assert_allclose(criticism.coefficient_of_variation(np.array([[1.0, 0.0], [3.0, 0.0]]))[0], 0.5)


def test_report_into_an_existing_file_is_refused_before_any_work(scvi, tmp_path, monkeypatch):
    target = tmp_path / "report.txt"
    target.write_text("mine")
    monkeypatch.setattr(criticism._report, "PosteriorPredictiveCheck", None)  # any work would fail differently
    with pytest.raises(NotADirectoryError, match="out_dir .* is an existing file"):
        criticism.report(scvi.adata, scvi, target, n_samples=2, plots=False)
    with pytest.raises(NotADirectoryError, match="lies under"):
        criticism.report(scvi.adata, scvi, target / "sub", n_samples=2, plots=False)
    assert target.read_text() == "mine"


@pytest.mark.parametrize(
    ("kwargs", "error", "phrase"),
    [
        ({"plots": "no"}, TypeError, "plots must be True or False"),
        ({"held_out": "no"}, TypeError, "held_out"),
        ({"n_samples": 0}, ValueError, "n_samples"),
        ({"out_dir": None}, TypeError, "out_dir must be a directory path"),
        ({"out_dir": 5}, TypeError, "out_dir"),
        ({"models": "scvi"}, TypeError, "posterior_predictive_sample"),
        ({"models": {}}, ValueError, "empty"),
    ],
)
def test_report_arguments(scvi, tmp_path, kwargs, error, phrase):
    arguments = {"models": scvi, "adata": scvi.adata, "out_dir": tmp_path / "out", "n_samples": 2,
                 "plots": False, **kwargs}  # fmt: skip
    with pytest.raises(error, match=phrase):
        criticism.report(**arguments)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# settings


@pytest.mark.parametrize(
    ("name", "value", "error", "phrase"),
    [
        ("batch_size", 0, ValueError, "batch_size must be a positive integer"),
        ("batch_size", -5, ValueError, "batch_size"),
        ("batch_size", "128", ValueError, "batch_size"),
        ("batch_size", 12.5, ValueError, "batch_size"),
        ("batch_size", True, ValueError, "batch_size"),
        ("encode_batch_size", 0, ValueError, "encode_batch_size"),
        ("progress_bar", "no", TypeError, "progress_bar must be True or False"),
        ("verbosity", None, TypeError, "verbosity"),
        ("verbosity", "chatty", ValueError, "unknown verbosity 'chatty'"),
        ("seed", True, ValueError, "seed"),
        ("seed", -1, ValueError, "seed"),
        ("batchsize", 64, AttributeError, "no setting 'batchsize'"),
    ],
)
def test_settings_are_validated(name, value, error, phrase):
    before = repr(pyrovi.settings)
    with pytest.raises(error, match=phrase):
        setattr(pyrovi.settings, name, value)
    assert repr(pyrovi.settings) == before


def test_settings_still_take_good_values():
    old = (pyrovi.settings.batch_size, pyrovi.settings.verbosity)
    try:
        pyrovi.settings.batch_size = np.int64(64)
        pyrovi.settings.verbosity = "warning"
        assert pyrovi.settings.batch_size == 64 and type(pyrovi.settings.batch_size) is int
        assert pyrovi.settings.verbosity == logging.WARNING
    finally:
        pyrovi.settings.batch_size, pyrovi.settings.verbosity = old


def test_a_misspelt_model_argument_names_the_closest():
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_hiden'. Did you mean 'n_hidden'"):
        SCVI(_scvi_data(), n_hiden=8)


@pytest.mark.parametrize("batchid", [{"batchid1": 5}, {"batchid2": ["batch_0", "zz"]}])
def test_de_batchid_names_a_batch(scvi, batchid):
    name = next(iter(batchid))
    with pytest.raises(ValueError, match=f"{name} names .*, which is not a batch"):
        scvi.differential_expression(groupby="labels", batch_correction=True, n_samples_overall=5, **batchid)
