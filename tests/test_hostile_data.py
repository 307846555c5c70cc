"""Hostile and careless data (issue 17): sparse quirks, category quirks, data changed after setup, per-dimension
priors and MuData with duplicated names. Each case checks the error type and a key phrase, or the result."""

import re
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

import pyrovi
from pyrovi.data import (
    AnnDataManager,
    CategoricalObsField,
    LayerField,
    RegisteredDataChangedError,
    UnseenCategoryError,
)
from pyrovi.model import SCVI
from pyrovi.priors import HierarchicalNormal, MixtureOfGaussians, Normal, StudentT, VampPrior

TRAIN = {"max_epochs": 1, "enable_progress_bar": False, "batch_size": 32}


def _adata(n_cells=40, n_genes=10, seed=0, sparse_x=True):
    adata = pyrovi.data.synthetic_iid(batch_size=n_cells // 2, n_genes=n_genes, seed=seed)
    x = np.asarray(adata.X.toarray() if sparse.issparse(adata.X) else adata.X, dtype=np.float32)
    adata.X = sparse.csr_matrix(x) if sparse_x else x
    return adata


def _manager(adata, **setup):
    fields = [LayerField("X", setup.get("layer")), CategoricalObsField("batch", setup.get("batch_key"))]
    return AnnDataManager(fields, {"model_name": "SCVI", "setup_args": setup}).register_fields(adata)


def _split_in_halves(csr):
    """The same matrix with every entry stored twice, as two halves (duplicates, non-canonical)."""
    csr = sparse.csr_matrix(csr)
    data = np.repeat(csr.data / 2, 2)
    indices = np.repeat(csr.indices, 2)
    return sparse.csr_matrix((data, indices, csr.indptr * 2), shape=csr.shape)


# ---------------------------------------------------------------------------------------------------------------
# Sparse matrices


def test_duplicate_entries_summing_to_counts_are_counts_and_the_loader_reads_the_sums():
    adata = _adata()
    dense = adata.X.toarray()
    adata.X = _split_in_halves(adata.X)
    assert not adata.X.has_canonical_format
    before = (adata.X.data.copy(), adata.X.indices.copy())
    manager = _manager(adata)
    # the user's matrix is not rewritten (scipy's sum_duplicates works in place)
    np.testing.assert_array_equal(adata.X.data, before[0])
    np.testing.assert_array_equal(adata.X.indices, before[1])
    loader = pyrovi.dataloaders.AnnDataLoader(manager, batch_size=7)
    x = torch.cat([batch["X"] for batch in loader]).numpy()
    np.testing.assert_array_equal(x, dense)


def test_duplicate_entries_read_as_sums_by_sparse_tensor_loader():
    adata = _adata()
    dense = adata.X.toarray()
    adata.X = _split_in_halves(adata.X)
    manager = _manager(adata)
    loader = pyrovi.dataloaders.AnnDataLoader(manager, batch_size=8, sparse_keys=["X"])
    x = torch.cat([batch["X"].to_dense() for batch in loader]).numpy()
    np.testing.assert_array_equal(x, dense)


def test_duplicate_entries_that_sum_to_a_fraction_are_refused_as_non_integer():
    adata = _adata()
    x = adata.X.tocsr()
    x.data[0] = 1.0
    halves = _split_in_halves(x)
    halves.data[0] = 0.25  # 0.25 + 0.5 = 0.75
    adata.X = halves
    with pytest.raises(ValueError, match=r"non-integer value.*0\.75"):
        _manager(adata)


def test_duplicate_entries_with_a_negative_part_summing_to_a_count_are_accepted():
    adata = _adata()
    x = sparse.csr_matrix((np.array([-1.0, 3.0] + [1.0] * 39), np.array([0, 0] + [1] * 39),
                           np.r_[0, 2, np.arange(3, 42)]), shape=(40, 10))
    adata.X = x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty genes
        manager = _manager(adata)
    assert manager.get_arrays()["X"][0].toarray()[0, 0] == 2.0


def test_duplicates_in_a_csc_matrix_are_summed_too():
    adata = _adata()
    dense = adata.X.toarray()
    adata.X = _split_in_halves(sparse.csr_matrix(dense.T)).T  # CSC, every entry stored as two halves
    assert adata.X.format == "csc" and not adata.X.has_canonical_format
    with pytest.warns(UserWarning, match="CSC sparse matrix"):
        manager = _manager(adata)
    np.testing.assert_array_equal(manager.get_arrays()["X"].toarray(), dense)


def test_unsorted_indices_and_explicit_zeros_are_fine():
    adata = _adata()
    x = adata.X.tocsr()
    order = np.concatenate([np.arange(s, e)[::-1] for s, e in zip(x.indptr[:-1], x.indptr[1:])])
    unsorted = sparse.csr_matrix((x.data[order], x.indices[order], x.indptr), shape=x.shape)
    unsorted.data[0] = 0.0  # an explicit zero
    dense = unsorted.toarray()
    adata.X = unsorted
    manager = _manager(adata)
    loader = pyrovi.dataloaders.AnnDataLoader(manager, batch_size=40, sparse_keys=["X"])
    np.testing.assert_array_equal(next(iter(loader))["X"].to_dense().numpy(), dense)


def test_int64_index_arrays_train():
    adata = _adata()
    x = adata.X
    adata.X = sparse.csr_matrix((x.data, x.indices.astype(np.int64), x.indptr.astype(np.int64)), shape=x.shape)
    SCVI.setup_anndata(adata)
    model = SCVI(adata, n_hidden=8, n_latent=2)
    model.train(**TRAIN)
    assert model.is_trained


def test_sparse_array_class_is_read_like_a_matrix():
    adata = _adata()
    dense = adata.X.toarray()
    adata.X = sparse.csr_array(adata.X)
    manager = _manager(adata)
    np.testing.assert_array_equal(manager.get_arrays()["X"].toarray(), dense)


@pytest.mark.parametrize("bad, phrase", [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"),
                                         (-1.0, "negative"), (0.5, "non-integer")])
def test_bad_values_in_sparse_data_name_the_problem(bad, phrase):
    adata = _adata()
    adata.X.data[3] = bad
    with pytest.raises(ValueError, match=phrase):
        _manager(adata)


def test_float16_dense_counts_are_read_as_float32():
    adata = _adata(sparse_x=False)
    adata.X = adata.X.astype(np.float16)
    manager = _manager(adata)
    assert manager.get_arrays()["X"].dtype == np.float32


def test_all_zero_cells_and_genes_warn():
    adata = _adata(sparse_x=False)
    adata.X[0] = 0
    adata.X[:, 0] = 0
    with pytest.warns(UserWarning) as record:
        _manager(adata)
    messages = " ".join(str(w.message) for w in record)
    assert "of 40 cells have no counts" in messages and "1 of 10 genes have no counts" in messages


def test_layers_reject_coo_at_anndata_and_a_string_matrix_is_a_type_error():
    adata = _adata()
    with pytest.raises(ValueError, match="CSR and CSC"):
        adata.layers["counts"] = adata.X.tocoo()
    adata.layers["counts"] = np.full(adata.shape, "1", dtype=object)
    with pytest.raises(TypeError, match="must hold numbers"):
        _manager(adata, layer="counts")


# ---------------------------------------------------------------------------------------------------------------
# Categories


@pytest.mark.parametrize(
    "values, merged",
    [([1, "1"], "'1'"), ([True, "True"], "'True'"), ([1.5, "1.5"], "'1.5'"), ([2, "2", "x"], "'2'")],
)
def test_values_that_collide_as_strings_warn_naming_them(values, merged):
    adata = _adata()
    adata.obs["b"] = pd.Series((values * 40)[:40], index=adata.obs_names, dtype=object)
    with pytest.warns(UserWarning, match=rf"same category once written as strings.*-> {merged}"):
        manager = _manager(adata, batch_key="b")
    assert manager.summary_stats.n_batch == len(values) - 1


def test_unused_declared_categories_are_dropped_with_a_note():
    adata = _adata()
    declared = [f"c{i}" for i in range(10_000)] + ["x", "y"]
    adata.obs["b"] = pd.Categorical(["y", "x"] * 20, categories=declared)
    with pytest.warns(UserWarning, match="declares 10000 categories that no cell has"):
        manager = _manager(adata, batch_key="b")
    assert manager.summary_stats.n_batch == 2
    assert manager.get_state("batch")["categories"] == ["x", "y"]  # the declared order, kept
    np.testing.assert_array_equal(manager.get_arrays()["batch"][:2], [1, 0])


def test_unused_categories_do_not_change_a_model_of_the_used_ones():
    adata = _adata()
    adata.obs["b"] = pd.Categorical(adata.obs["batch"].astype(str), categories=["batch_0", "none", "batch_1"])
    with pytest.warns(UserWarning, match="no cell has"):
        SCVI.setup_anndata(adata, batch_key="b")
    assert SCVI(adata, n_hidden=8).summary_stats["n_batch"] == 2


@pytest.mark.parametrize(
    "registered, query",
    [(np.array([1, 2] * 20), np.array([1.0, 2.0] * 20)),
     (np.array([1.0, 2.0] * 20), np.array([1, 2] * 20)),
     (np.array([1, 2] * 20), np.array([2, 1] * 20, dtype=np.int8)),
     (np.array([0.5, 2.5] * 20), np.array([0.5, 2.5] * 20, dtype=np.float32))],
    ids=["float-query-int-setup", "int-query-float-setup", "int8-query", "float32-query"],
)
def test_numeric_categories_match_by_value_at_query_time(registered, query):
    adata = _adata()
    adata.obs["b"] = registered
    manager = _manager(adata, batch_key="b")
    target = adata.copy()
    target.obs["b"] = query
    transferred = manager.transfer_fields(target, read_only=True)
    assert transferred.get_state("batch")["categories"] == manager.get_state("batch")["categories"]
    expected = manager.get_arrays()["batch"] if query[0] == registered[0] else 1 - manager.get_arrays()["batch"]
    np.testing.assert_array_equal(transferred.get_arrays()["batch"], expected)


def test_a_query_with_float_batches_matches_a_model_set_up_with_ints():
    adata = _adata()
    adata.obs["b"] = np.array([1, 2] * 20)
    SCVI.setup_anndata(adata, batch_key="b")
    model = SCVI(adata, n_hidden=8, n_latent=2)
    query = adata.copy()
    query.obs["b"] = query.obs["b"].astype(float)
    np.testing.assert_allclose(model.get_latent_representation(query), model.get_latent_representation())


def test_strings_do_not_match_numbers_by_value_and_unseen_stays_an_error():
    adata = _adata()
    adata.obs["b"] = np.array([1, 2] * 20)
    manager = _manager(adata, batch_key="b")
    for values in (np.array(["1.0", "2.0"] * 20), np.array([1, 3] * 20)):
        target = adata.copy()
        target.obs["b"] = values
        with pytest.raises(UnseenCategoryError, match="not seen when the model was set up"):
            manager.transfer_fields(target, read_only=True)


@pytest.mark.parametrize("column", [
    pd.Categorical(["x"] * 39 + [None]), pd.Series([1.0] * 38 + [np.nan] * 2), pd.Series(["a"] * 39 + [None]),
], ids=["categorical", "float", "object"])
def test_missing_values_in_a_categorical_column_name_it_and_the_count(column):
    adata = _adata()
    adata.obs["b"] = np.asarray(column) if not isinstance(column, pd.Categorical) else column
    n_missing = int(pd.isna(np.asarray(column, dtype=object)).sum())
    with pytest.raises(ValueError, match=rf"adata.obs\['b'\] has {n_missing} missing value"):
        _manager(adata, batch_key="b")


def test_mixed_type_object_column_gets_sorted_string_categories():
    adata = _adata()
    adata.obs["b"] = pd.Series(([3, "a", 2.5, "b"] * 10), index=adata.obs_names, dtype=object)
    manager = _manager(adata, batch_key="b")
    assert manager.get_state("batch")["categories"] == ["2.5", "3", "a", "b"]


def test_unhashable_values_in_a_categorical_column_are_a_clear_type_error():
    adata = _adata()
    adata.obs["b"] = pd.Series([[1, 2]] * 40, index=adata.obs_names, dtype=object)
    with pytest.raises(TypeError, match=r"adata.obs\['b'\] holds values that cannot be categories"):
        _manager(adata, batch_key="b")


# ---------------------------------------------------------------------------------------------------------------
# Data changed after setup (fingerprint)


def _model(**setup):
    adata = _adata()
    adata.layers["counts"] = adata.X.copy()
    SCVI.setup_anndata(adata, **setup)
    return adata, SCVI(adata, n_hidden=8, n_latent=2)


def _log1p(adata):
    x = adata.X.copy().astype(np.float32)
    return x.log1p() if sparse.issparse(x) else np.log1p(x)


@pytest.mark.parametrize("change", ["replace", "in_place", "layer"])
def test_training_refuses_counts_normalised_after_setup(change):
    adata, model = _model(layer="counts" if change == "layer" else None)
    if change == "replace":
        adata.X = _log1p(adata)
    elif change == "in_place":
        np.log1p(adata.X.data, out=adata.X.data)
    else:
        adata.layers["counts"] = _log1p(adata)
    source = "adata.layers['counts']" if change == "layer" else "adata.X"
    with pytest.raises(RegisteredDataChangedError, match=rf"changed after it was set up \({re.escape(source)}\).*non-integer.*setup_anndata"):
        model.train(**TRAIN)
    assert not model.is_trained and model.history_ is None


def test_queries_on_the_models_own_data_refuse_it_changed_after_setup():
    adata, model = _model()
    adata.X = _log1p(adata)
    with pytest.raises(RegisteredDataChangedError, match="no longer passes the setup's checks"):
        model.get_latent_representation()


def test_a_benign_change_that_still_validates_trains():
    adata, model = _model()
    adata.X = adata.X.copy()  # the same counts, another object
    assert model.adata_manager.check_unchanged() is False  # noticed, validated again, accepted
    assert model.adata_manager.check_unchanged() is True
    model.train(**TRAIN)
    assert model.is_trained


def test_genes_removed_in_place_after_setup_are_refused():
    adata, model = _model()
    adata._inplace_subset_var(np.arange(adata.n_vars - 2))
    with pytest.raises(RegisteredDataChangedError, match="2 of the 10 genes.*missing"):
        model.train(**TRAIN)


def test_cells_removed_in_place_after_setup_are_refused():
    adata, model = _model()
    adata._inplace_subset_obs(np.arange(30))
    with pytest.raises(RegisteredDataChangedError, match="30 cells but 40"):
        model.train(**TRAIN)


def test_batches_rewritten_after_setup_with_a_new_batch_are_refused():
    adata, model = _model(batch_key="batch")
    adata.obs["batch"] = ["batch_0"] * 39 + ["batch_new"]
    with pytest.raises(RegisteredDataChangedError, match="batch_new"):
        model.train(**TRAIN)


def test_a_query_on_other_data_validates_it_as_before():
    adata, model = _model()
    query = adata.copy()
    query.X = _log1p(query)
    with pytest.raises(ValueError, match="non-integer"):
        model.get_latent_representation(query)


def test_the_fingerprint_is_cheap_for_many_cells():
    import time

    n = 200_000
    x = sparse.random(n, 200, density=0.05, format="csr", dtype=np.float32, random_state=0)
    x.data[:] = 1.0
    adata = anndata.AnnData(x)
    adata.obs["b"] = pd.Categorical(np.arange(n) % 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manager = _manager(adata, batch_key="b")
    start = time.perf_counter()
    for _ in range(5):
        assert manager.check_unchanged()
    assert (time.perf_counter() - start) / 5 < 0.05  # measured about 1 ms


# ---------------------------------------------------------------------------------------------------------------
# Priors with per-dimension arguments


@pytest.mark.parametrize("make_prior", [
    lambda: Normal(scale=torch.ones(3)),
    lambda: Normal(scale=[1.0, 2.0, 0.5], loc=np.array([0.0, 1.0, -1.0])),
    lambda: StudentT(df=[2.0, 3.0, 4.0], scale=torch.tensor([1.0, 1.0, 2.0])),
    lambda: HierarchicalNormal("log_normal", hyper_scale=(1.0, 2.0, 3.0)),
], ids=["normal-tensor", "normal-loc", "student-t", "hierarchical"])
def test_per_dimension_priors_train_and_round_trip(make_prior, tmp_path):
    adata = _adata()
    SCVI.setup_anndata(adata)
    model = SCVI(adata, n_hidden=8, n_latent=3, prior=make_prior())
    model.train(**TRAIN)
    model.save(tmp_path / "m")
    loaded = SCVI.load(tmp_path / "m", adata)
    assert loaded.module.prior.config() == model.module.prior.config()
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation())


def test_a_per_dimension_scale_is_the_prior_of_each_dimension():
    adata = _adata()
    SCVI.setup_anndata(adata)
    module = SCVI(adata, n_hidden=8, n_latent=3, prior=Normal(scale=[1.0, 2.0, 4.0], loc=[0.0, 1.0, 0.0])).module
    p_z = module.prior(5)
    np.testing.assert_allclose(p_z.base_dist.scale[0].numpy(), [1.0, 2.0, 4.0])
    np.testing.assert_allclose(p_z.base_dist.loc[0].numpy(), [0.0, 1.0, 0.0])


@pytest.mark.parametrize("make_prior, name", [
    (lambda: Normal(scale=torch.ones(3)), "Normal\\(scale=...\\) has 3 values"),
    (lambda: Normal(loc=[0.0, 1.0]), "Normal\\(loc=...\\) has 2 values"),
    (lambda: StudentT(df=[3.0] * 5), "StudentT\\(df=...\\) has 5 values"),
    (lambda: HierarchicalNormal(hyper_scale=[1.0]), "has 1 values"),
], ids=["normal-scale", "normal-loc", "student-df", "hierarchical"])
def test_per_dimension_length_is_checked_against_n_latent(make_prior, name):
    adata = _adata()
    SCVI.setup_anndata(adata)
    with pytest.raises(ValueError, match=rf"{name} but the model's latent prior has 4 dimensions"):
        SCVI(adata, n_hidden=8, n_latent=4, prior=make_prior())


@pytest.mark.parametrize("make, error, phrase", [
    (lambda: Normal(scale=torch.tensor([1.0, -1.0])), ValueError, "positive and finite, got -1.0"),
    (lambda: Normal(scale=0.0), ValueError, "positive and finite"),
    (lambda: Normal(scale=float("nan")), ValueError, "got nan"),
    (lambda: Normal(loc=[0.0, float("inf")]), ValueError, "finite, got inf"),
    (lambda: Normal(scale="2"), TypeError, "must be a positive number"),
    (lambda: Normal(scale=True), TypeError, "must be a positive number"),
    (lambda: Normal(scale=torch.ones(2, 2)), TypeError, "1-D list"),
    (lambda: Normal(scale=[]), ValueError, "is empty"),
    (lambda: StudentT(df=-3.0), ValueError, "StudentT\\(df=...\\) must be positive"),
    (lambda: MixtureOfGaussians(init_scale=[1.0, 2.0]), TypeError, "single number"),
    (lambda: MixtureOfGaussians(n_components=2.5), TypeError, "positive integer"),
    (lambda: VampPrior(n_pseudo_inputs=0), ValueError, "at least 1"),
    (lambda: HierarchicalNormal(hyper_scale=np.array([1.0, np.nan])), ValueError, "got nan"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_prior_arguments_are_refused_clearly(make, error, phrase):
    with pytest.raises(error, match=phrase):
        make()


def test_a_scalar_tensor_scale_is_a_number():
    assert Normal(scale=torch.tensor(2.0)).config() == {"name": "Normal", "kwargs": {"scale": 2.0}}


# ---------------------------------------------------------------------------------------------------------------
# Duplicated names


def _mudata(dup_rna=True, dup_protein=True, dup_protein_names=False):
    mudata = pytest.importorskip("mudata")
    rna = _adata()
    protein = anndata.AnnData(np.random.default_rng(0).poisson(5, (40, 4)).astype(np.float32))
    names = list(rna.obs_names)
    names[1] = names[0]
    protein.obs_names = rna.obs_names
    if dup_rna:
        rna.obs_names = names
    if dup_protein:
        protein.obs_names = names
    if dup_protein_names:
        protein.var_names = ["p0", "p0", "p1", "p2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mudata.MuData({"rna": rna, "prot": protein})


@pytest.mark.parametrize("kwargs, phrase", [
    ({}, "The MuData holds 1 cell name\\(s\\) more than once"),
    ({"dup_protein": False}, "more than once"),
    ({"dup_rna": False, "dup_protein": False, "dup_protein_names": True},
     "mdata.mod\\['prot'\\].var_names holds 1 name\\(s\\) more than once \\(\\['p0'\\]\\)"),
], ids=["both-modalities", "one-modality", "protein-names"])
def test_mudata_with_duplicated_names_is_refused_with_the_fix(kwargs, phrase):
    from pyrovi.model import TOTALVI

    mdata = _mudata(**kwargs)
    with pytest.raises(ValueError, match=phrase) as info:
        TOTALVI.setup_mudata(mdata, modalities={"rna_layer": "rna", "protein_layer": "prot"})
    assert "make_unique()" in str(info.value)


def test_anndata_duplicated_gene_names_are_an_error_and_cell_names_a_warning():
    adata = _adata()
    adata.var_names = ["g0", "g0"] + [f"g{i}" for i in range(2, 10)]
    with pytest.raises(ValueError, match="var_names are not unique.*var_names_make_unique"):
        _manager(adata)
    adata = _adata()
    adata.obs_names = ["c"] * 40
    with pytest.warns(UserWarning, match="obs_names_make_unique"):
        _manager(adata)


def test_protein_table_with_a_repeated_column_name_is_a_clear_error():
    from pyrovi.data import synthetic_iid
    from pyrovi.model import TOTALVI

    data = synthetic_iid(batch_size=30, n_genes=20, n_proteins=5, seed=1)
    data.obsm["protein_expression"] = pd.DataFrame(
        data.obsm["protein_expression"], index=data.obs_names, columns=["A", "A", "C", "D", "E"]
    )
    with pytest.raises(ValueError, match=r"column names of adata.obsm\['protein_expression'\] are not unique"):
        TOTALVI.setup_anndata(data, protein_expression_obsm_key="protein_expression")
