"""Tests of AnnDataManager: the registry, its storage in adata.uns, transfer and the loader's arrays."""

from __future__ import annotations

import json

import anndata
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from pyrovi._constants import REGISTRY_KEYS, UNS_REGISTRY_KEY
from pyrovi.data import (
    AnnDataManager,
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
    NumericalObsField,
    ObsmField,
    read_registry,
)

N_CELLS, N_GENES = 10, 5


def _make_adata(seed: int = 0, sparse_counts: bool = True) -> anndata.AnnData:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(1.5, size=(N_CELLS, N_GENES)).astype(np.float32)
    counts[:, 0] += 1
    obs = pd.DataFrame(
        {
            "batch": ["a", "b"] * (N_CELLS // 2),
            "cell_type": pd.Categorical(["T", "B", "NK", "T", "B"] * 2),
            "donor": ["d1"] * 5 + ["d2"] * 5,
            "sf": np.linspace(1.0, 2.0, N_CELLS),
            "age": np.arange(N_CELLS, dtype=float),
        },
        index=[f"cell_{i}" for i in range(N_CELLS)],
    )
    adata = anndata.AnnData(
        np.log1p(counts), obs=obs, var=pd.DataFrame(index=[f"gene_{j}" for j in range(N_GENES)])
    )
    adata.layers["counts"] = sparse.csr_matrix(counts) if sparse_counts else counts
    return adata


def _setup_args(**overrides) -> dict:
    args = {
        "layer": "counts",
        "batch_key": "batch",
        "labels_key": "cell_type",
        "size_factor_key": "sf",
        "categorical_covariate_keys": ["donor"],
        "continuous_covariate_keys": ["age"],
    }
    args.update(overrides)
    return args


def _fields(args: dict) -> list:
    return [
        LayerField(REGISTRY_KEYS.X_KEY, args["layer"], is_count_data=True),
        CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, args["batch_key"], "n_batch"),
        CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, args["labels_key"], "n_labels"),
        NumericalObsField(REGISTRY_KEYS.SIZE_FACTOR_KEY, args["size_factor_key"], positive=True),
        CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, args["categorical_covariate_keys"]),
        NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, args["continuous_covariate_keys"]),
    ]


def _register(adata: anndata.AnnData, **overrides) -> AnnDataManager:
    args = _setup_args(**overrides)
    return AnnDataManager(_fields(args), args, "SCVI").register_fields(adata)


def test_registry_contents_and_summary_stats():
    adata = _make_adata()
    manager = _register(adata)
    registry = manager.registry
    assert set(registry) == {"model_name", "pyrovi_version", "setup_args", "field_states", "summary_stats"}
    assert registry["model_name"] == "SCVI" and isinstance(registry["pyrovi_version"], str)
    assert registry["setup_args"] == _setup_args()
    assert registry["summary_stats"] == {
        "n_cells": N_CELLS,
        "n_vars": N_GENES,
        "n_batch": 2,
        "n_labels": 3,
        "n_extra_categorical_covs": 1,
        "n_extra_continuous_covs": 1,
    }
    assert manager.summary_stats == registry["summary_stats"]
    assert manager.get_state("labels") == {"obs_key": "cell_type", "categories": ["B", "NK", "T"]}
    assert manager.get_state(REGISTRY_KEYS.CAT_COVS_KEY)["n_cats_per_key"] == [2]
    assert manager.adata is adata
    assert [f.registry_key for f in manager.fields] == list(registry["field_states"])
    with pytest.raises(KeyError, match="'proteins'"):
        manager.get_state("proteins")


def test_get_arrays_dtypes_shapes_and_codes():
    adata = _make_adata()
    arrays = _register(adata).get_arrays()
    assert set(arrays) == {"X", "batch", "labels", "size_factor", "extra_categorical_covs", "extra_continuous_covs"}
    assert isinstance(arrays["X"], sparse.csr_matrix) and arrays["X"].dtype == np.float32
    np.testing.assert_array_equal(arrays["X"].toarray(), adata.layers["counts"].toarray())
    np.testing.assert_array_equal(arrays["batch"], [0, 1] * 5)
    np.testing.assert_array_equal(arrays["labels"], [2, 0, 1, 2, 0] * 2)
    assert arrays["size_factor"].dtype == np.float32 and arrays["size_factor"].shape == (N_CELLS,)
    assert arrays["extra_categorical_covs"].dtype == np.int64
    assert arrays["extra_categorical_covs"].shape == (N_CELLS, 1)
    assert arrays["extra_continuous_covs"].dtype == np.float32
    assert arrays["extra_continuous_covs"].shape == (N_CELLS, 1)
    for key in ("batch", "labels"):
        assert arrays[key].dtype == np.int64 and arrays[key].shape == (N_CELLS,)


def test_get_array_reads_one_field():
    adata = _make_adata()
    manager = _register(adata)
    arrays = manager.get_arrays()
    for key in ("batch", "extra_continuous_covs"):
        np.testing.assert_array_equal(manager.get_array(key), arrays[key])
    np.testing.assert_array_equal(manager.get_array("X").toarray(), arrays["X"].toarray())
    minimal = _register(_make_adata(), size_factor_key=None)
    assert minimal.get_array("size_factor") is None  # an empty field
    with pytest.raises(KeyError, match="'proteins'"):
        manager.get_array("proteins")


def test_minimal_setup_has_zero_defaults_and_no_arrays_for_empty_fields():
    adata = _make_adata(sparse_counts=False)
    manager = _register(
        adata, layer="counts", batch_key=None, labels_key=None, size_factor_key=None,
        categorical_covariate_keys=None, continuous_covariate_keys=None,
    )
    stats = manager.summary_stats
    assert stats["n_batch"] == 1 and stats["n_labels"] == 1
    assert stats["n_extra_categorical_covs"] == 0 and stats["n_extra_continuous_covs"] == 0
    assert manager.get_state("size_factor") == {}
    arrays = manager.get_arrays()
    assert set(arrays) == {"X", "batch", "labels"}
    assert isinstance(arrays["X"], np.ndarray) and arrays["X"].dtype == np.float32
    np.testing.assert_array_equal(arrays["batch"], np.zeros(N_CELLS))
    # A manager with only an X field still reports every standard statistic.
    only_x = AnnDataManager([LayerField("X", "counts")], {}, "Minimal").register_fields(adata)
    assert only_x.summary_stats == {
        "n_cells": N_CELLS, "n_vars": N_GENES, "n_batch": 0, "n_labels": 0,
        "n_extra_categorical_covs": 0, "n_extra_continuous_covs": 0,
    }


def test_obsm_field_contributes_its_summary_statistic():
    adata = _make_adata()
    adata.obsm["protein_counts"] = pd.DataFrame(
        np.ones((N_CELLS, 4), dtype=int), columns=list("abcd"), index=adata.obs_names
    )
    fields = [LayerField("X", "counts"), ObsmField(REGISTRY_KEYS.PROTEIN_EXP_KEY, "protein_counts", is_count_data=True)]
    manager = AnnDataManager(fields, {}, "TOTALVI").register_fields(adata)
    assert manager.summary_stats["n_proteins"] == 4
    assert manager.get_arrays()["proteins"].shape == (N_CELLS, 4)


def test_registry_is_json_and_stored_in_uns():
    adata = _make_adata()
    manager = _register(adata)
    registry = manager.registry
    assert json.loads(json.dumps(registry)) == registry
    assert isinstance(adata.uns[UNS_REGISTRY_KEY], str)
    assert read_registry(adata) == registry
    assert AnnDataManager.read_registry(adata) == registry
    # The returned registry is a copy: editing it leaves the manager alone.
    registry["summary_stats"]["n_batch"] = 99
    assert manager.summary_stats["n_batch"] == 2


def test_registry_survives_copy_and_h5ad_round_trip(tmp_path):
    adata = _make_adata()
    registry = _register(adata).registry
    assert read_registry(adata.copy()) == registry
    path = tmp_path / "adata.h5ad"
    adata.write_h5ad(path)
    loaded = anndata.read_h5ad(path)
    assert read_registry(loaded) == registry
    # The reloaded registry sets the reloaded data up again, with identical arrays.
    args = read_registry(loaded)["setup_args"]
    reloaded = AnnDataManager(_fields(args), args, "SCVI").register_fields(loaded, source_registry=registry)
    assert reloaded.registry["field_states"] == registry["field_states"]
    original, restored = _register(adata).get_arrays(), reloaded.get_arrays()
    for key, value in original.items():
        a, b = (v.toarray() if sparse.issparse(v) else v for v in (value, restored[key]))
        np.testing.assert_array_equal(a, b)


def test_read_registry_absent_and_corrupt():
    adata = _make_adata()
    assert read_registry(adata) is None
    adata.uns[UNS_REGISTRY_KEY] = "{not json"
    with pytest.raises(ValueError, match="not valid JSON"):
        read_registry(adata)


def test_user_data_is_unchanged_except_the_registry_string():
    adata = _make_adata()
    before = adata.copy()
    _register(adata).get_arrays()
    assert set(adata.uns) == {UNS_REGISTRY_KEY}
    pd.testing.assert_frame_equal(adata.obs, before.obs)
    pd.testing.assert_frame_equal(adata.var, before.var)
    np.testing.assert_array_equal(adata.X, before.X)
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), before.layers["counts"].toarray())
    assert list(adata.obsm) == list(before.obsm) and list(adata.layers) == ["counts"]


def test_view_is_rejected_with_copy_hint():
    adata = _make_adata()
    with pytest.raises(ValueError, match=r"view.*\.copy\(\)"):
        _register(adata[:6])
    manager = _register(adata[:6].copy())
    assert manager.summary_stats["n_cells"] == 6


def test_failed_registration_leaves_uns_untouched():
    adata = _make_adata()
    adata.obs.loc["cell_2", "sf"] = 0.0
    with pytest.raises(ValueError, match="must be positive"):
        _register(adata)
    assert UNS_REGISTRY_KEY not in adata.uns


def test_unregistered_manager_and_invalid_construction():
    args = _setup_args()
    manager = AnnDataManager(_fields(args), args, "SCVI")
    assert "not registered" in repr(manager)
    with pytest.raises(RuntimeError, match="register_fields"):
        manager.get_arrays()
    with pytest.raises(ValueError, match="'batch'"):
        AnnDataManager([CategoricalObsField("batch", "a", "n_a"), CategoricalObsField("batch", "b", "n_b")], {}, "M")
    with pytest.raises(TypeError, match="'layer'"):
        AnnDataManager([LayerField("X", None)], {"layer": object()}, "M")


def test_transfer_fields_with_reordered_and_extra_genes():
    reference = _make_adata()
    manager = _register(reference)
    order = [4, 2, 0, 3, 1]
    dense = reference.layers["counts"].toarray()
    query = anndata.AnnData(
        np.zeros((N_CELLS, N_GENES + 1), dtype=np.float32),
        obs=reference.obs.copy(),
        var=pd.DataFrame(index=["gene_extra"] + [f"gene_{j}" for j in order]),
    )
    query.layers["counts"] = sparse.csc_matrix(np.hstack([np.ones((N_CELLS, 1)), dense[:, order]]))
    query_manager = manager.transfer_fields(query)
    assert query_manager is not manager and query_manager.adata is query
    assert query_manager.summary_stats["n_vars"] == N_GENES
    assert read_registry(query)["field_states"] == manager.registry["field_states"]
    arrays = query_manager.get_arrays()
    assert isinstance(arrays["X"], sparse.csr_matrix)
    np.testing.assert_array_equal(arrays["X"].toarray(), dense)
    np.testing.assert_array_equal(arrays["batch"], manager.get_arrays()["batch"])


def test_transfer_fields_missing_genes_names_them():
    manager = _register(_make_adata())
    query = _make_adata()[:, ["gene_0", "gene_2", "gene_4"]].copy()
    with pytest.raises(ValueError, match=r"2 of the 5 genes.*'gene_1'.*'gene_3'"):
        manager.transfer_fields(query)


def test_transfer_fields_unseen_batch_and_extension():
    manager = _register(_make_adata())
    query = _make_adata(seed=1)
    query.obs["batch"] = ["a", "c"] * (N_CELLS // 2)
    with pytest.raises(ValueError, match=r"'c'.*extend_categories=True"):
        manager.transfer_fields(query)
    assert UNS_REGISTRY_KEY not in query.uns
    extended = manager.transfer_fields(query, extend_categories=True)
    assert extended.get_state("batch")["categories"] == ["a", "b", "c"]
    assert extended.summary_stats["n_batch"] == 3
    np.testing.assert_array_equal(extended.get_arrays()["batch"], [0, 2] * (N_CELLS // 2))
    assert manager.summary_stats["n_batch"] == 2  # the reference manager is unchanged


def test_source_registry_must_cover_every_field():
    adata = _make_adata()
    registry = AnnDataManager([LayerField("X", "counts")], {"layer": "counts"}, "Minimal").register_fields(
        adata
    ).registry
    args = _setup_args()
    with pytest.raises(ValueError, match="no state for the field"):
        AnnDataManager(_fields(args), args, "SCVI").register_fields(adata, source_registry=registry)


def test_view_registry_and_repr(capsys):
    adata = _make_adata()
    manager = _register(adata)
    manager.view_registry()
    text = capsys.readouterr().out
    for expected in ("SCVI", "Setup arguments", "batch_key", "n_batch", "adata.layers['counts']",
                     "adata.obs['cell_type']", "NK", "donor: 1", "gene_0"):
        assert expected in text
    assert repr(manager) == (
        "AnnDataManager(model_name='SCVI', fields=['X', 'batch', 'labels', 'size_factor', "
        "'extra_categorical_covs', 'extra_continuous_covs'], registered on 10 cells x 5 genes)"
    )


def test_get_arrays_detects_in_place_subsetting():
    adata = _make_adata()
    manager = _register(adata)
    adata._inplace_subset_obs(np.arange(5))
    with pytest.raises(ValueError, match="modified in place"):
        manager.get_arrays()


def test_a_view_is_transferred_only_read_only():
    adata = _make_adata()
    manager = _register(adata)
    view = adata[:6]
    with pytest.raises(ValueError, match=r"view.*\.copy\(\)"):
        manager.transfer_fields(view)  # as scvi-tools: a transfer would write to the view
    query = manager.transfer_fields(view, read_only=True)
    assert view.is_view and UNS_REGISTRY_KEY not in view.uns.keys() - adata.uns.keys()
    assert query.summary_stats["n_cells"] == 6
    with pytest.raises(ValueError, match="source_registry"):
        AnnDataManager(manager.fields, manager.setup_args, manager.model_name).register_fields(adata, read_only=True)
