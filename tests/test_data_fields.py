"""Tests of the data fields: registration, encoding, validation errors and transfer to new data."""

from __future__ import annotations

import json
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from pyrovi.data import (
    CONSTANT_CATEGORY,
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    MissingKeyError,
    NumericalJointObsField,
    NumericalObsField,
    ObsmField,
)

N_CELLS, N_GENES = 12, 6


def _counts(seed: int = 0, n_cells: int = N_CELLS, n_genes: int = N_GENES) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(2.0, size=(n_cells, n_genes)).astype(np.float32)
    counts[:, 0] += 1  # no cell is empty unless a test makes it so
    return counts


def _make_adata(matrix=None, seed: int = 0) -> anndata.AnnData:
    matrix = _counts(seed) if matrix is None else matrix
    n_cells, n_genes = matrix.shape
    obs = pd.DataFrame(
        {
            "batch": np.array(["b2", "b1", "b10"] * n_cells)[:n_cells],
            "cell_type": pd.Categorical((["T", "B"] * n_cells)[:n_cells], categories=["T", "NK", "B"]),
            "donor": np.arange(n_cells) % 2,
            "sf": np.linspace(0.5, 2.0, n_cells),
            "pct_mito": np.linspace(0.0, 0.1, n_cells),
            "age": np.arange(n_cells) + 20,
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene_{j}" for j in range(n_genes)])
    return anndata.AnnData(matrix, obs=obs, var=var)


def _json_roundtrip(state: dict) -> dict:
    return json.loads(json.dumps(state))


def _dense(array) -> np.ndarray:
    return array.toarray() if sparse.issparse(array) else np.asarray(array)


# LayerField: registration and encoding.


def test_layer_field_dense_x_state_summary_and_array():
    adata = _make_adata()
    field = LayerField("X", None)
    state = field.register(adata)
    assert state == {"layer": None, "var_names": [f"gene_{j}" for j in range(N_GENES)], "n_vars": N_GENES}
    assert _json_roundtrip(state) == state
    assert field.summary(state) == {"n_vars": N_GENES}
    assert not field.is_empty
    array = field.get_array(adata, state)
    assert isinstance(array, np.ndarray) and array.dtype == np.float32 and array.shape == (N_CELLS, N_GENES)
    np.testing.assert_array_equal(array, adata.X)


def test_layer_field_dense_array_is_read_only_and_user_data_stays_writable():
    adata = _make_adata()
    field = LayerField("X", None)
    array = field.get_array(adata, field.register(adata))
    assert np.shares_memory(array, adata.X)  # float32 input: no copy
    assert not array.flags.writeable
    assert adata.X.flags.writeable
    with pytest.raises(ValueError):
        array[0, 0] = 100.0


@pytest.mark.parametrize("fmt", ["csr", "csc", "csr_array"])
def test_layer_field_sparse_inputs_give_float32_csr(fmt):
    counts = _counts(1)
    counts[counts < 2] = 0  # make it genuinely sparse
    if fmt == "csr_array":
        matrix = sparse.csr_array(counts.astype(np.int64))
    else:
        matrix = getattr(sparse, f"{fmt}_matrix")(counts)
    adata = _make_adata(counts.copy())
    adata.layers["counts"] = matrix
    field = LayerField("X", "counts")
    state = field.register(adata)
    assert state["layer"] == "counts"
    array = field.get_array(adata, state)
    assert isinstance(array, sparse.csr_matrix)
    assert array.dtype == np.float32 and array.shape == (N_CELLS, N_GENES)
    np.testing.assert_array_equal(array.toarray(), counts)


def test_layer_field_integer_dense_counts_are_converted_to_float32():
    counts = _counts(2).astype(np.int32)
    adata = _make_adata(counts)
    field = LayerField("X", None)
    array = field.get_array(adata, field.register(adata))
    assert array.dtype == np.float32 and array.flags.writeable  # a fresh copy
    np.testing.assert_array_equal(array, counts.astype(np.float32))


def test_layer_field_missing_layer_lists_available_layers():
    adata = _make_adata()
    adata.layers["raw"] = adata.X.copy()
    adata.layers["spliced"] = adata.X.copy()
    with pytest.raises(MissingKeyError) as info:
        LayerField("X", "counts").register(adata)
    message = str(info.value)
    assert "'counts'" in message and "'raw'" in message and "'spliced'" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_layer_field_duplicate_var_names_rejected():
    adata = _make_adata()
    adata.var_names = ["g", "g", "h", "i", "j", "k"]
    with pytest.raises(ValueError, match="var_names_make_unique"):
        LayerField("X", None).register(adata)


# LayerField: count validation.


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_negative_count_names_cell_gene_and_value(fmt):
    counts = _counts(3)
    counts[4, 2] = -3.0
    counts[7, 1] = -1.0
    matrix = counts if fmt == "dense" else getattr(sparse, f"{fmt}_matrix")(counts)
    adata = _make_adata(matrix)
    with pytest.raises(ValueError) as info:
        LayerField("X", None).register(adata)
    message = str(info.value)
    assert "2 negative values" in message
    assert "'cell_4'" in message and "'gene_2'" in message and "-3.0" in message
    assert "layer='counts'" in message


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_non_integer_count_names_cell_and_gene(fmt):
    counts = _counts(4)
    counts[5, 3] = 1.5
    matrix = counts if fmt == "dense" else getattr(sparse, f"{fmt}_matrix")(counts)
    with pytest.raises(ValueError) as info:
        LayerField("X", None).register(_make_adata(matrix))
    message = str(info.value)
    assert "1 non-integer value" in message
    assert "'cell_5'" in message and "'gene_3'" in message and "1.5" in message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_nan_and_inf_counts_rejected(bad, fmt):
    counts = _counts(5)
    counts[2, 4] = bad
    counts[3, 0] = -1.0  # a less serious problem elsewhere: NaN/inf is reported first
    matrix = counts if fmt == "dense" else sparse.csr_matrix(counts)
    with pytest.raises(ValueError) as info:
        LayerField("X", None).register(_make_adata(matrix))
    message = str(info.value)
    assert "NaN or infinite" in message
    assert "'cell_2'" in message and "'gene_4'" in message


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_validation_in_small_blocks_counts_all_and_finds_the_first_cell(fmt, monkeypatch):
    # Large matrices are scanned in blocks; tiny blocks exercise that path on a small matrix.
    from pyrovi.data.fields import _validation

    monkeypatch.setattr(_validation, "_BLOCK_ELEMENTS", 7)
    counts = _counts(15)
    counts[10, 0] = -1.0
    counts[3, 5] = -4.0
    counts[8, 2] = -2.0
    matrix = counts if fmt == "dense" else getattr(sparse, f"{fmt}_matrix")(counts)
    with pytest.raises(ValueError) as info:
        LayerField("X", None).register(_make_adata(matrix))
    message = str(info.value)
    assert "3 negative values" in message and "'cell_3'" in message and "'gene_5'" in message


def test_coo_matrices_are_validated_without_conversion():
    # AnnData itself stores only CSR/CSC, but obsm-like inputs or callers may hand the checker COO.
    from pyrovi.data.fields._validation import validate_values

    counts = _counts(14)
    counts[6, 2] = -1.0
    names = [f"c{i}" for i in range(N_CELLS)], [f"g{j}" for j in range(N_GENES)]
    with pytest.raises(ValueError, match=r"negative.*'c6'.*'g2'"):
        validate_values(sparse.coo_matrix(counts), *names, "m", is_count_data=True, hint="")


def test_bad_counts_in_layer_give_a_layer_hint():
    adata = _make_adata()
    adata.layers["counts"] = adata.X * 0.5
    with pytest.raises(ValueError, match=r"adata\.layers\['counts'\].*layer=None"):
        LayerField("X", "counts").register(adata)


def test_first_offending_entry_of_csc_is_the_first_cell():
    counts = _counts(6)
    counts[9, 0] = -1.0  # first in column-major storage order
    counts[1, 5] = -2.0  # first cell
    with pytest.raises(ValueError) as info:
        LayerField("X", None).register(_make_adata(sparse.csc_matrix(counts)))
    assert "'cell_1'" in str(info.value) and "'gene_5'" in str(info.value)


def test_non_count_layer_accepts_fractions_but_not_nan():
    adata = _make_adata(np.log1p(_counts(7)))
    field = LayerField("X", None, is_count_data=False)
    state = field.register(adata)
    np.testing.assert_allclose(field.get_array(adata, state), adata.X)
    adata.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        field.register(adata)


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_empty_cells_warn_with_their_count(fmt):
    counts = _counts(8)
    counts[[0, 3, 5]] = 0
    matrix = counts if fmt == "dense" else sparse.csr_matrix(counts)
    with pytest.warns(UserWarning, match=r"3 of 12 cells have no counts"):
        LayerField("X", None).register(_make_adata(matrix))


def test_no_warning_without_empty_cells():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LayerField("X", None).register(_make_adata())


# LayerField: transfer.


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_transfer_reordered_genes_gives_registered_order(fmt):
    counts = _counts(9)
    reference = _make_adata(counts)
    field = LayerField("X", None)
    state = field.register(reference)
    order = [3, 0, 5, 1, 4, 2]
    query_matrix = counts[:, order] if fmt == "dense" else getattr(sparse, f"{fmt}_matrix")(counts[:, order])
    query = _make_adata(query_matrix)
    query.var_names = [f"gene_{j}" for j in order]
    new_state = field.transfer(state, query)
    assert new_state == state
    np.testing.assert_array_equal(_dense(field.get_array(query, new_state)), counts)


def test_transfer_superset_of_genes_drops_extra_genes_and_ignores_their_values():
    counts = _counts(10)
    field = LayerField("X", None)
    state = field.register(_make_adata(counts))
    extra = np.full((N_CELLS, 2), -5.0, dtype=np.float32)  # invalid, but never read
    query = _make_adata(sparse.csr_matrix(np.hstack([extra[:, :1], counts, extra[:, 1:]])))
    query.var_names = ["extra_a"] + [f"gene_{j}" for j in range(N_GENES)] + ["extra_b"]
    new_state = field.transfer(state, query)
    assert new_state["n_vars"] == N_GENES
    array = field.get_array(query, new_state)
    assert isinstance(array, sparse.csr_matrix)
    np.testing.assert_array_equal(array.toarray(), counts)


def test_transfer_validates_registered_genes_of_the_query():
    field = LayerField("X", None)
    state = field.register(_make_adata())
    query = _make_adata(_counts(11))
    query.X[2, 1] = 0.25
    with pytest.raises(ValueError, match=r"non-integer.*'cell_2'.*'gene_1'"):
        field.transfer(state, query)


def test_transfer_missing_genes_error_names_them():
    reference = _make_adata(_counts(12, n_genes=20))
    field = LayerField("X", None)
    state = field.register(reference)
    query = reference[:, 8:].copy()  # gene_0 .. gene_7 are missing
    with pytest.raises(ValueError) as info:
        field.transfer(state, query)
    message = str(info.value)
    assert "8 of the 20 genes" in message
    assert "'gene_0'" in message and "'gene_7'" in message and "'gene_8'" not in message


def test_transfer_many_missing_genes_lists_the_first_ten():
    reference = _make_adata(_counts(13, n_genes=30))
    field = LayerField("X", None)
    state = field.register(reference)
    query = reference[:, :5].copy()
    with pytest.raises(ValueError) as info:
        field.transfer(state, query)
    message = str(info.value)
    assert "25 of the 30 genes" in message and "+15 more" in message
    assert "'gene_14'" in message and "'gene_15'" not in message


def test_transfer_with_mismatched_layer_argument_fails():
    adata = _make_adata()
    adata.layers["counts"] = adata.X.copy()
    state = LayerField("X", None).register(adata)
    with pytest.raises(ValueError, match="layer='counts'.*layer=None"):
        LayerField("X", "counts").transfer(state, adata)


# CategoricalObsField.


def test_categorical_field_sorted_categories_and_codes():
    adata = _make_adata()
    field = CategoricalObsField("batch", "batch", "n_batch")
    state = field.register(adata)
    assert state == {"obs_key": "batch", "categories": ["b1", "b10", "b2"]}
    assert field.summary(state) == {"n_batch": 3}
    codes = field.get_array(adata, state)
    assert codes.dtype == np.int64 and codes.shape == (N_CELLS,)
    decoded = np.array(state["categories"])[codes]
    np.testing.assert_array_equal(decoded, adata.obs["batch"].to_numpy())


def test_categorical_field_keeps_pandas_category_order_dropping_unused():
    # issue 17: unused declared categories are dropped with a warning (n_labels counts the used ones)
    adata = _make_adata()
    field = CategoricalObsField("labels", "cell_type", "n_labels")
    with pytest.warns(UserWarning, match=r"declares 1 category that no cell has \(\['NK'\]\)"):
        state = field.register(adata)
    assert state["categories"] == ["T", "B"]
    codes = field.get_array(adata, state)
    np.testing.assert_array_equal(np.array(state["categories"])[codes], adata.obs["cell_type"].astype(str))


def test_categorical_field_integer_values_sort_numerically_as_strings():
    adata = _make_adata()
    adata.obs["plate"] = np.array([10, 2, 1] * 4)
    field = CategoricalObsField("batch", "plate", "n_batch")
    state = field.register(adata)
    assert state["categories"] == ["1", "2", "10"]
    np.testing.assert_array_equal(field.get_array(adata, state)[:3], [2, 1, 0])


def test_categorical_field_without_obs_key_is_one_constant_category():
    adata = _make_adata()
    field = CategoricalObsField("batch", None, "n_batch")
    state = field.register(adata)
    assert state == {"obs_key": None, "categories": [CONSTANT_CATEGORY]} and CONSTANT_CATEGORY == "0"
    assert not field.is_empty and field.summary(state) == {"n_batch": 1}
    codes = field.get_array(adata, state)
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(codes, np.zeros(N_CELLS))


def test_categorical_field_missing_values_name_column_and_count():
    adata = _make_adata()
    adata.obs["batch"] = adata.obs["batch"].astype(object)
    adata.obs.iloc[[1, 4], adata.obs.columns.get_loc("batch")] = np.nan
    with pytest.raises(ValueError, match=r"adata\.obs\['batch'\] has 2 missing values"):
        CategoricalObsField("batch", "batch", "n_batch").register(adata)


def test_categorical_field_missing_obs_key_lists_available_columns():
    adata = _make_adata()
    with pytest.raises(KeyError) as info:
        CategoricalObsField("batch", "sample", "n_batch").register(adata)
    message = str(info.value)
    assert "'sample'" in message and "'batch'" in message and "'cell_type'" in message


def test_categorical_transfer_uses_registered_mapping_whatever_the_query_order():
    field = CategoricalObsField("labels", "cell_type", "n_labels")
    with pytest.warns(UserWarning, match="no cell has"):
        state = field.register(_make_adata())  # ["T", "B"]: the unused "NK" is dropped
    query = _make_adata()
    query.obs["cell_type"] = pd.Categorical(["B", "T"] * 6, categories=["B", "T"])
    new_state = field.transfer(state, query)
    assert new_state == state
    np.testing.assert_array_equal(field.get_array(query, new_state), [1, 0] * 6)


def test_categorical_transfer_unseen_category_error_and_extension():
    field = CategoricalObsField("batch", "batch", "n_batch")
    state = field.register(_make_adata())
    query = _make_adata()
    query.obs["batch"] = ["b2", "new_z", "new_a"] * 4
    with pytest.raises(ValueError) as info:
        field.transfer(state, query)
    message = str(info.value)
    assert "'new_a'" in message and "'new_z'" in message and "extend_categories=True" in message
    extended = field.transfer(state, query, extend_categories=True)
    assert extended["categories"] == ["b1", "b10", "b2", "new_a", "new_z"]
    assert field.summary(extended) == {"n_batch": 5}
    np.testing.assert_array_equal(field.get_array(query, extended)[:3], [2, 4, 3])
    # The original state is unchanged, and still cannot encode the query.
    assert state["categories"] == ["b1", "b10", "b2"]
    with pytest.raises(ValueError, match="not seen"):
        field.get_array(query, state)


# NumericalObsField.


def test_numerical_field_values_and_empty_field():
    adata = _make_adata()
    field = NumericalObsField("size_factor", "sf", positive=True)
    state = field.register(adata)
    assert state == {"obs_key": "sf"} and field.summary(state) == {}
    values = field.get_array(adata, state)
    assert values.dtype == np.float32 and values.shape == (N_CELLS,)
    np.testing.assert_allclose(values, adata.obs["sf"].to_numpy(), rtol=1e-6)
    empty = NumericalObsField("size_factor", None, positive=True)
    assert empty.is_empty and empty.register(adata) == {} and empty.transfer({}, adata) == {}


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_size_factor_must_be_positive(bad):
    adata = _make_adata()
    adata.obs.loc["cell_3", "sf"] = bad
    with pytest.raises(ValueError) as info:
        NumericalObsField("size_factor", "sf", positive=True).register(adata)
    message = str(info.value)
    assert "must be positive" in message and "'cell_3'" in message
    # Without positive=True the same value is fine.
    NumericalObsField("size_factor", "sf").register(adata)


def test_numerical_field_rejects_nan_and_strings():
    adata = _make_adata()
    adata.obs.loc["cell_6", "sf"] = np.nan
    with pytest.raises(ValueError, match=r"1 missing or infinite value.*'cell_6'"):
        NumericalObsField("size_factor", "sf").register(adata)
    with pytest.raises(TypeError, match="must be numeric"):
        NumericalObsField("size_factor", "batch").register(adata)


# Joint obs fields.


def test_categorical_joint_field_state_array_and_summary():
    adata = _make_adata()
    field = CategoricalJointObsField("extra_categorical_covs", ["donor", "cell_type"])
    with pytest.warns(UserWarning, match="no cell has"):
        state = field.register(adata)  # the unused declared "NK" is dropped (issue 17)
    assert state == {
        "obs_keys": ["donor", "cell_type"],
        "categories": {"donor": ["0", "1"], "cell_type": ["T", "B"]},
        "n_cats_per_key": [2, 2],
    }
    assert _json_roundtrip(state) == state
    assert field.summary(state) == {"n_extra_categorical_covs": 2}
    codes = field.get_array(adata, state)
    assert codes.dtype == np.int64 and codes.shape == (N_CELLS, 2)
    np.testing.assert_array_equal(codes[:, 0], adata.obs["donor"].to_numpy())
    np.testing.assert_array_equal(codes[:4, 1], [0, 1, 0, 1])


def test_categorical_joint_field_transfer_unseen_and_extended():
    field = CategoricalJointObsField("extra_categorical_covs", ["donor", "cell_type"])
    state = field.register(_make_adata())
    query = _make_adata()
    query.obs["donor"] = np.arange(N_CELLS) % 3
    with pytest.raises(ValueError, match=r"adata\.obs\['donor'\].*'2'.*extend_categories=True"):
        field.transfer(state, query)
    extended = field.transfer(state, query, extend_categories=True)
    assert extended["categories"]["donor"] == ["0", "1", "2"]
    assert extended["n_cats_per_key"] == [3, 2]
    np.testing.assert_array_equal(field.get_array(query, extended)[:, 0], np.arange(N_CELLS) % 3)


def test_joint_fields_empty_when_no_keys():
    adata = _make_adata()
    for field_class in (CategoricalJointObsField, NumericalJointObsField):
        for keys in (None, []):
            field = field_class("covs", keys)
            assert field.is_empty and field.register(adata) == {}
            assert list(field.summary({}).values()) == [0]


def test_joint_fields_reject_bad_key_lists():
    with pytest.raises(ValueError, match="more than once"):
        CategoricalJointObsField("covs", ["donor", "donor"])
    with pytest.raises(TypeError, match=r"\['donor'\]"):
        NumericalJointObsField("covs", "donor")


def test_numerical_joint_field_array_and_validation():
    adata = _make_adata()
    field = NumericalJointObsField("extra_continuous_covs", ["age", "pct_mito"])
    state = field.register(adata)
    assert state == {"obs_keys": ["age", "pct_mito"]}
    assert field.summary(state) == {"n_extra_continuous_covs": 2}
    values = field.get_array(adata, state)
    assert values.dtype == np.float32 and values.shape == (N_CELLS, 2)
    np.testing.assert_allclose(values[:, 0], adata.obs["age"].to_numpy())
    adata.obs.loc["cell_0", "pct_mito"] = np.inf
    with pytest.raises(ValueError, match=r"pct_mito.*'cell_0'"):
        field.transfer(state, adata)
    with pytest.raises(KeyError, match="'nope'"):
        NumericalJointObsField("c", ["age", "nope"]).register(adata)


# ObsmField.


def _protein_frame(adata: anndata.AnnData, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    values = rng.poisson(5.0, size=(adata.n_obs, 3))
    return pd.DataFrame(values, columns=["CD3", "CD4", "CD8"], index=adata.obs_names)


def test_obsm_field_dataframe_columns_and_array():
    adata = _make_adata()
    adata.obsm["protein_counts"] = _protein_frame(adata)
    field = ObsmField("proteins", "protein_counts", is_count_data=True)
    state = field.register(adata)
    assert state == {"obsm_key": "protein_counts", "column_names": ["CD3", "CD4", "CD8"]}
    assert field.summary(state) == {"n_proteins": 3}
    array = field.get_array(adata, state)
    assert array.dtype == np.float32 and array.shape == (N_CELLS, 3)
    np.testing.assert_array_equal(array, adata.obsm["protein_counts"].to_numpy())


def test_obsm_field_names_from_uns_or_defaults_and_sparse():
    adata = _make_adata()
    values = _protein_frame(adata).to_numpy()
    adata.obsm["pro"] = sparse.csc_matrix(values)
    adata.uns["pro_names"] = ["a", "b", "c"]
    named = ObsmField("proteins", "pro", colnames_uns_key="pro_names")
    state = named.register(adata)
    assert state["column_names"] == ["a", "b", "c"]
    array = named.get_array(adata, state)
    assert isinstance(array, sparse.csr_matrix) and array.dtype == np.float32
    np.testing.assert_array_equal(array.toarray(), values)
    assert ObsmField("proteins", "pro").register(adata)["column_names"] == ["0", "1", "2"]


def test_obsm_field_count_validation_names_cell_and_column():
    adata = _make_adata()
    frame = _protein_frame(adata).astype(float)
    frame.iloc[5, 1] = -2.0
    adata.obsm["protein_counts"] = frame
    with pytest.raises(ValueError, match=r"negative.*'cell_5'.*column 'CD4'"):
        ObsmField("proteins", "protein_counts", is_count_data=True).register(adata)


def test_obsm_field_transfer_reorders_columns_and_reports_missing_ones():
    adata = _make_adata()
    adata.obsm["protein_counts"] = _protein_frame(adata)
    field = ObsmField("proteins", "protein_counts", is_count_data=True)
    state = field.register(adata)
    query = _make_adata()
    frame = _protein_frame(adata)
    query.obsm["protein_counts"] = frame[["CD8", "CD3", "CD4"]].assign(CD19=1)
    new_state = field.transfer(state, query)
    np.testing.assert_array_equal(field.get_array(query, new_state), frame.to_numpy())
    query.obsm["protein_counts"] = frame[["CD3", "CD8"]]
    with pytest.raises(ValueError, match=r"1 of the 3 columns.*'CD4'"):
        field.transfer(state, query)


def test_obsm_field_missing_key_and_empty_field():
    adata = _make_adata()
    adata.obsm["X_pca"] = np.zeros((N_CELLS, 2))
    with pytest.raises(MissingKeyError, match=r"'protein_counts'.*'X_pca'"):
        ObsmField("proteins", "protein_counts").register(adata)
    empty = ObsmField("proteins", None)
    assert empty.is_empty and empty.register(adata) == {} and empty.summary({}) == {"n_proteins": 0}
