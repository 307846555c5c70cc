"""Bad input from users: every problem fails (or warns) early, with the exact error type and a message
naming the problem and its fix; the user's AnnData is never changed beyond the registry in ``adata.uns``."""

from __future__ import annotations

import tracemalloc
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import pyrovi
from pyrovi.data import MissingKeyError, UnseenCategoryError
from pyrovi.model import SCVI, TOTALVI, CellAssign

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
]

N_CELLS, N_GENES = 24, 6
TINY = {"n_hidden": 8, "n_latent": 2}


def _counts(n_cells: int = N_CELLS, n_genes: int = N_GENES, seed: int = 0) -> np.ndarray:
    counts = np.random.default_rng(seed).poisson(2.0, size=(n_cells, n_genes)).astype(np.float32)
    counts[:, 0] += 1  # no cell is empty unless a test makes it so
    counts[0, :] += 1  # nor any gene
    return counts


def _adata(matrix=None, **obs_columns) -> anndata.AnnData:
    matrix = _counts() if matrix is None else matrix
    n_cells, n_genes = matrix.shape
    obs = pd.DataFrame(
        {"batch": np.array(["a", "b"] * n_cells)[:n_cells], **obs_columns},
        index=[f"c{i}" for i in range(n_cells)],
    )
    return anndata.AnnData(matrix, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


def _train_one_epoch(model, **kwargs) -> float:
    model.train(max_epochs=1, batch_size=8, progress_bar=False, **kwargs)
    loss = float(model.history["elbo_train"].iloc[-1, 0])
    assert np.isfinite(loss)
    return loss


def _set(matrix: np.ndarray, value, where=(1, 2)) -> np.ndarray:
    matrix = matrix.copy()
    matrix[where] = value
    return matrix


def _unsorted_csr(matrix: np.ndarray) -> sparse.csr_matrix:
    """A CSR matrix with the same values whose column indices run backwards within each row."""
    csr = sparse.csr_matrix(matrix)
    for row in range(csr.shape[0]):
        start, stop = csr.indptr[row], csr.indptr[row + 1]
        csr.indices[start:stop] = csr.indices[start:stop][::-1].copy()
        csr.data[start:stop] = csr.data[start:stop][::-1].copy()
    csr.has_sorted_indices = False
    return csr


def _with_duplicate_entries(matrix: np.ndarray) -> sparse.csr_matrix:
    """A CSR matrix equal to ``matrix`` whose first row stores its first entry as two entries, 1 + (x - 1)."""
    csr = sparse.csr_matrix(matrix)
    data = np.concatenate([[1.0], csr.data]).astype(np.float32)
    data[1] -= 1
    indices = np.concatenate([csr.indices[:1], csr.indices])
    indptr = csr.indptr.copy()
    indptr[1:] += 1
    duplicated = sparse.csr_matrix((data, indices, indptr), shape=matrix.shape)
    assert not duplicated.has_canonical_format
    return duplicated


def _same_latent(adata_a: anndata.AnnData, adata_b: anndata.AnnData) -> None:
    """The latent means of two set-up AnnDatas under the same weights are equal."""
    model_a = SCVI(adata_a, **TINY)
    model_b = SCVI(adata_b, **TINY)
    model_b.module.load_state_dict(model_a.module.state_dict())
    np.testing.assert_allclose(model_a.get_latent_representation(), model_b.get_latent_representation(), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# counts: errors at setup_anndata

NON_FINITE = [
    pytest.param(_set(_counts(), np.nan), r"1 NaN or infinite value; the first is nan in cell 'c1', gene 'g2'",
                 id="nan"),
    pytest.param(_set(_counts(), np.inf), r"NaN or infinite value; the first is inf in cell 'c1'", id="inf"),
]

COUNT_ERRORS = [
    pytest.param(_set(_counts(), -3.0), r"1 negative value; the first is -3.0 in cell 'c1', gene 'g2'.*raw counts",
                 id="negative"),
    pytest.param(np.log1p(_counts()), r"non-integer values.*layer='counts'", id="log-normalised"),
    pytest.param(_counts() / _counts().sum(1, keepdims=True) * 1e4, r"non-integer values.*layer='counts'",
                 id="normalised"),
    pytest.param(_set(_counts(), 200).astype(np.int8), r"negative.*int8 holds counts only up to 127.*wrap around",
                 id="int8-overflow"),
]


@pytest.mark.parametrize(("matrix", "match"), NON_FINITE)
@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_non_finite_values_fail_at_setup_naming_the_first_entry(matrix, match, fmt):
    adata = _adata(matrix if fmt == "dense" else sparse.csr_matrix(matrix))
    with pytest.raises(ValueError, match=match):
        SCVI.setup_anndata(adata)
    assert "_pyrovi_registry" not in adata.uns


@pytest.mark.parametrize(("matrix", "match"), COUNT_ERRORS)
@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_bad_counts_warn_at_setup_and_fail_for_a_count_model_naming_the_first_entry(matrix, match, fmt):
    """Setup warns, as scvi-tools does (such data suit gene_likelihood="normal"); a count model refuses them."""
    adata = _adata(matrix if fmt == "dense" else sparse.csr_matrix(matrix))
    with pytest.warns(UserWarning, match=match):
        SCVI.setup_anndata(adata)
    with pytest.raises(ValueError, match=r"gene_likelihood='zinb' models raw counts.*" + match):
        SCVI(adata)


def test_bad_counts_in_a_layer_name_the_layer():
    adata = _adata()
    adata.layers["counts"] = _set(_counts(), 0.5)
    match = r"adata.layers\['counts'\] must hold raw counts.*0.5.*pass the layer"
    with pytest.warns(UserWarning, match=match):
        SCVI.setup_anndata(adata, layer="counts")
    with pytest.raises(ValueError, match=match):
        SCVI(adata)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        pytest.param((0, N_GENES), r"no cells \(shape \(0, 6\)\).*filtering", id="no-cells"),
        pytest.param((N_CELLS, 0), r"adata.X has no genes \(shape \(24, 0\)\).*filtering", id="no-genes"),
    ],
)
def test_empty_anndata_fails_at_setup(shape, match):
    with pytest.raises(ValueError, match=match):
        SCVI.setup_anndata(_adata(np.zeros(shape, dtype=np.float32)))


def test_complex_counts_are_a_type_error():
    with pytest.raises(TypeError, match="must hold numbers, got dtype complex64"):
        SCVI.setup_anndata(_adata(_counts().astype(np.complex64)))


def test_duplicate_gene_names_fail_with_the_fix():
    adata = _adata()
    adata.var_names = ["g0", "g1", "g1", "g3", "g4", "g5"]
    with pytest.raises(ValueError, match=r"adata.var_names are not unique.*'g1'.*var_names_make_unique"):
        SCVI.setup_anndata(adata)


# ------------------------------------------------------------------------------------------------
# counts: accepted, with a warning where something may be lost or slow

COUNT_WARNINGS = [
    pytest.param(_counts().astype(np.int8), r"stores counts as int8, which holds at most 127.*int32 or float32",
                 id="int8"),
    pytest.param(_counts().astype(np.uint8), r"stores counts as uint8, which holds at most 255", id="uint8"),
    pytest.param(_counts().astype(np.int16), r"stores counts as int16, which holds at most 32767", id="int16"),
    pytest.param(_set(_counts(), 5000).astype(np.float16), r"float16, which rounds integers above 2048.*5000",
                 id="float16-large"),
    pytest.param(_set(_counts(), 2.0**25), r"counts up to 3.355\d*e\+07, above 2\*\*24", id="beyond-float32"),
    pytest.param(_set(_counts(), 0, (slice(None), 3)), r"1 of 6 genes have no counts.*filter_genes", id="empty-gene"),
    pytest.param(_set(_counts(), 0, (slice(2, 5), slice(None))), r"3 of 24 cells have no counts.*filter_cells",
                 id="empty-cells"),
]


@pytest.mark.parametrize(("matrix", "match"), COUNT_WARNINGS)
def test_lossy_dtypes_and_empty_lines_warn_and_train(matrix, match):
    adata = _adata(matrix)
    with pytest.warns(UserWarning, match=match):
        SCVI.setup_anndata(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _train_one_epoch(SCVI(adata, **TINY))


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int32, np.int64, np.uint32, np.uint64, np.bool_])
def test_other_dtypes_train_without_warning(dtype):
    adata = _adata(_counts().astype(dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        SCVI.setup_anndata(adata)
        model = SCVI(adata, **TINY)
    _train_one_epoch(model)


@pytest.mark.parametrize("convert", [sparse.csc_matrix, sparse.csc_array], ids=["csc_matrix", "csc_array"])
def test_csc_counts_warn_and_give_the_csr_results(convert):
    """anndata itself only stores CSR and CSC; CSC is read row-wise through a conversion, so it warns."""
    counts = _counts()
    adata = _adata(convert(counts))
    with pytest.warns(UserWarning, match=r"adata.X is a CSC sparse matrix.*adata.X = adata.X.tocsr\(\)"):
        SCVI.setup_anndata(adata)
    reference = _adata(sparse.csr_matrix(counts))
    SCVI.setup_anndata(reference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _same_latent(reference, adata)
        _train_one_epoch(SCVI(adata, **TINY))
    assert sparse.issparse(adata.X) and adata.X.format == convert((1, 1)).format  # not converted in place


@pytest.mark.parametrize("make", [_unsorted_csr, _with_duplicate_entries], ids=["unsorted-indices", "duplicate-entries"])
def test_non_canonical_csr_gives_the_same_results_and_is_left_as_it_was(make):
    counts = _counts()
    odd = make(counts)
    indices, data = odd.indices.copy(), odd.data.copy()
    adata, reference = _adata(odd), _adata(sparse.csr_matrix(counts))
    SCVI.setup_anndata(adata)
    SCVI.setup_anndata(reference)
    _same_latent(reference, adata)
    _train_one_epoch(SCVI(adata, **TINY))
    np.testing.assert_array_equal(adata.X.indices, indices)
    np.testing.assert_array_equal(adata.X.data, data)


def test_duplicate_cell_names_warn_and_train():
    adata = _adata()
    adata.obs_names = ["c0", "c0"] + [f"c{i}" for i in range(2, N_CELLS)]  # anndata does not warn here
    with pytest.warns(UserWarning, match=r"obs_names holds 1 cell name\(s\) more than once.*'c0'.*obs_names_make_unique"):
        SCVI.setup_anndata(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _train_one_epoch(SCVI(adata, **TINY))


def test_dense_matrix_of_millions_of_entries_is_set_up_without_copies(monkeypatch):
    """Dense data is validated block by block and served as a read-only view: no copy of the matrix.

    Dense counts work; sparse (CSR) ones are smaller and faster when most counts are zero (docs/scaling.md).
    """
    monkeypatch.setattr("pyrovi.data.fields._validation._BLOCK_ELEMENTS", 1 << 16)
    counts = np.random.default_rng(1).poisson(1.0, size=(2_000, 1_000)).astype(np.float32)
    counts[:, 0] += 1
    adata = _adata(counts)
    tracemalloc.start()
    try:
        SCVI.setup_anndata(adata)
        model = SCVI(adata, **TINY)
        arrays = model.adata_manager.get_arrays()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < counts.nbytes / 4, f"setup allocated {peak / 1e6:.1f} MB for an {counts.nbytes / 1e6:.1f} MB matrix"
    assert np.shares_memory(arrays["X"], adata.X) and not arrays["X"].flags.writeable


def test_a_single_cell_cannot_be_trained_on_but_can_be_queried():
    adata = _adata()
    SCVI.setup_anndata(adata)
    model = SCVI(adata, **TINY)
    _train_one_epoch(model)
    one = _adata(_counts()[:1])
    SCVI.setup_anndata(one)
    with pytest.raises(ValueError, match=r"training set has a single cell.*query it"):
        SCVI(one, **TINY).train(max_epochs=1, progress_bar=False)
    assert np.isfinite(model.get_latent_representation(adata=one)).all()


def test_batch_size_one_fails_before_training():
    adata = _adata()
    SCVI.setup_anndata(adata)
    with pytest.raises(ValueError, match=r"batch_size=1 .*Use batch_size >= 2"):
        SCVI(adata, **TINY).train(max_epochs=1, batch_size=1, progress_bar=False)


def test_a_single_gene_trains():
    adata = _adata(_counts()[:, :1])
    SCVI.setup_anndata(adata, batch_key="batch")
    _train_one_epoch(SCVI(adata, **TINY))


# ------------------------------------------------------------------------------------------------
# covariates


@pytest.mark.parametrize(
    ("setup", "key", "match"),
    [
        pytest.param({"batch_key": "bacth"}, "batch", r"no column 'bacth'\. Did you mean 'batch'\?", id="obs"),
        pytest.param({"layer": "count"}, "counts", r"no layer 'count'\. Did you mean 'counts'\?", id="layer"),
        pytest.param({"continuous_covariate_keys": ["pct_mt"]}, "pct_mito", r"Did you mean 'pct_mito'", id="cont"),
        pytest.param({"batch_key": "zzzz"}, "batch", r"no column 'zzzz'\. Available columns", id="no-close-match"),
    ],
)
def test_missing_keys_suggest_close_matches(setup, key, match):
    adata = _adata(pct_mito=np.linspace(0, 0.1, N_CELLS))
    adata.layers["counts"] = adata.X.copy()
    with pytest.raises(MissingKeyError, match=match):
        SCVI.setup_anndata(adata, **setup)


@pytest.mark.parametrize(
    ("column", "setup", "error", "match"),
    [
        pytest.param(["a", None] * 12, {"batch_key": "x"}, ValueError, r"adata.obs\['x'\] has 12 missing values \(NaN\), the first in cell 'c1'",
                     id="nan-batch"),
        pytest.param(pd.Categorical(["a", np.nan] * 12), {"categorical_covariate_keys": ["x"]}, ValueError,
                     r"adata.obs\['x'\] has 12 missing values.*'unknown' category", id="nan-categorical"),
        pytest.param([1.0, np.nan] * 12, {"continuous_covariate_keys": ["x"]}, ValueError,
                     r"must be finite, but has 12 missing or infinite values; the first is nan in cell 'c1'",
                     id="nan-continuous"),
        pytest.param([1.0, np.inf] * 12, {"continuous_covariate_keys": ["x"]}, ValueError,
                     r"must be finite.*the first is inf in cell 'c1'", id="inf-continuous"),
        pytest.param(["1.0", "2"] * 12, {"continuous_covariate_keys": ["x"]}, TypeError, r"must be numeric",
                     id="string-continuous"),
        pytest.param([1.0, 0.0] * 12, {"size_factor_key": "x"}, ValueError, r"must be positive.*12 zero or negative",
                     id="zero-size-factor"),
    ],
)
def test_bad_covariates_fail_at_setup(column, setup, error, match):
    adata = _adata(x=column)
    with pytest.raises(error, match=match):
        SCVI.setup_anndata(adata, **setup)


def test_one_level_batch_and_covariate_are_one_batch_and_train():
    adata = _adata(site=["s"] * N_CELLS)
    adata.obs["batch"] = "only"
    SCVI.setup_anndata(adata, batch_key="batch", categorical_covariate_keys=["site"])
    model = SCVI(adata, **TINY)
    assert model.summary_stats["n_batch"] == 1
    _train_one_epoch(model)


def test_a_batch_seen_only_in_validation_has_its_embedding():
    adata = _adata()
    adata.obs["batch"] = ["a", "b"] * 10 + ["c"] * 4
    SCVI.setup_anndata(adata, batch_key="batch")
    model = SCVI(adata, **TINY)
    in_c = np.flatnonzero(adata.obs["batch"] == "c")
    _train_one_epoch(model, datasplitter_kwargs={"train_idx": np.arange(20), "val_idx": in_c})
    assert model.summary_stats["n_batch"] == 3
    assert np.isfinite(model.history["elbo_validation"].to_numpy()).all()
    assert np.isfinite(model.get_latent_representation(indices=in_c)).all()
    assert np.isfinite(model.get_normalized_expression(indices=np.arange(4), transform_batch="c").to_numpy()).all()


# ------------------------------------------------------------------------------------------------
# models: CellAssign markers, TOTALVI proteins, query data


@pytest.fixture(scope="module")
def cellassign_adata():
    adata = _adata(sf=np.ones(N_CELLS))
    CellAssign.setup_anndata(adata, size_factor_key="sf")
    return adata


def _markers(values, genes=("g0", "g1"), types=("T", "B")) -> pd.DataFrame:
    return pd.DataFrame(values, index=list(genes), columns=list(types))


@pytest.mark.parametrize(
    ("markers", "error", "match"),
    [
        pytest.param(_markers([[1, 0], [0, 1]], genes=("g0", "g11")), ValueError,
                     r"1 marker genes are not in the AnnData: \['g11'\]\. Did you mean 'g1'", id="unknown-gene"),
        pytest.param(_markers([[1, 0], [0.5, 1]]), ValueError,
                     r"only 0 and 1.*1 other value.*0\.5 for gene 'g1', type 'T'.*Binarise", id="non-binary"),
        pytest.param(_markers([[1, 0], [np.nan, 1]]), ValueError, r"nan for gene 'g1'.*fill missing", id="nan"),
        pytest.param(_markers([[1, 0], [1, 0]]), ValueError, r"Cell types without any marker: \['B'\]",
                     id="empty-type"),
        pytest.param(_markers([[1, 0], [0, 1]], genes=("g0", "g0")), ValueError, r"names some genes more than once",
                     id="duplicate-gene"),
        pytest.param(pd.DataFrame(index=["g0"]), ValueError, r"cell_type_markers is empty \(shape \(1, 0\)\)",
                     id="no-types"),
        pytest.param(np.eye(2), TypeError, r"must be a pandas DataFrame", id="not-a-dataframe"),
    ],
)
def test_bad_cellassign_markers_fail_at_construction(cellassign_adata, markers, error, match):
    with pytest.raises(error, match=match):
        CellAssign(cellassign_adata, markers)


def _protein_adata(proteins) -> anndata.AnnData:
    adata = _adata()
    adata.obsm["protein_expression"] = proteins
    return adata


def _proteins(values=None) -> pd.DataFrame:
    values = np.random.default_rng(2).poisson(5.0, size=(N_CELLS, 3)) if values is None else values
    return pd.DataFrame(values, index=[f"c{i}" for i in range(N_CELLS)], columns=["CD3", "CD4", "CD8"])


@pytest.mark.parametrize(
    ("proteins", "match"),
    [
        pytest.param(_proteins(-np.ones((N_CELLS, 3))), r"obsm\['protein_expression'\] must hold raw counts.*72 "
                     r"negative values; the first is -1.0 in cell 'c0', column 'CD3'", id="negative"),
        pytest.param(_proteins(np.full((N_CELLS, 3), 0.5)), r"non-integer.*column 'CD3'", id="non-integer"),
        pytest.param(np.zeros((N_CELLS, 0)), r"obsm\['protein_expression'\] has no columns", id="no-proteins"),
    ],
)
def test_bad_protein_counts_fail_at_setup(proteins, match):
    with pytest.raises(ValueError, match=match):
        TOTALVI.setup_anndata(_protein_adata(proteins), "protein_expression")


def test_protein_matrix_with_other_rows_than_cells_is_refused():
    adata = _adata()
    # anndata itself refuses an obsm matrix whose rows are not the cells, before pyrovi sees it
    with pytest.raises(ValueError, match="incorrect shape"):
        adata.obsm["protein_expression"] = np.ones((N_CELLS - 1, 3))
    with pytest.raises(ValueError, match="does not match parent"):
        adata.obsm["protein_expression"] = _proteins().set_axis([f"x{i}" for i in range(N_CELLS)])
    adata.obsm["protein_expression"] = _proteins().to_numpy()
    adata.uns["protein_names"] = ["CD3", "CD4"]
    with pytest.raises(ValueError, match=r"has 2 column names but adata.obsm\['protein_expression'\] has 3"):
        TOTALVI.setup_anndata(adata, "protein_expression", protein_names_uns_key="protein_names")
    with pytest.raises(MissingKeyError, match=r"no entry 'protein_expresion'.*Did you mean 'protein_expression'"):
        TOTALVI.setup_anndata(adata, "protein_expresion")


@pytest.fixture(scope="module")
def trained_scvi(tmp_path_factory):
    pyrovi.settings.seed = 0
    adata = _adata()
    SCVI.setup_anndata(adata, batch_key="batch")
    model = SCVI(adata, **TINY)
    _train_one_epoch(model)
    path = tmp_path_factory.mktemp("models") / "scvi"
    model.save(path)
    return model, path


def _query(batch=("a", "b"), genes=None) -> anndata.AnnData:
    query = _adata(_counts(seed=5))
    query.obs["batch"] = np.array(list(batch) * N_CELLS)[:N_CELLS]
    if genes is not None:
        query.var_names = genes
    return query


@pytest.mark.parametrize(
    ("query", "error", "match"),
    [
        pytest.param(_query(batch=("a", "zzz")), UnseenCategoryError,
                     r"adata.obs\['batch'\] has 1 category the SCVI model was not built with: \['zzz'\]\. It knows "
                     r"\['a', 'b'\].*load_query_data.*map those cells to a known category", id="unknown-batch"),
        pytest.param(_query(genes=[f"h{j}" for j in range(N_GENES)]), ValueError, r"g0", id="other-genes"),
        pytest.param(_query(genes=["g0", "g1", "g2", "g3", "g4", "x"]), ValueError, r"'?g5'?", id="one-gene-missing"),
    ],
)
@pytest.mark.parametrize("how", ["query", "load"])
def test_query_data_the_model_cannot_read_fails_clearly(trained_scvi, query, error, match, how):
    model, path = trained_scvi
    with pytest.raises(error, match=match):
        if how == "query":
            model.get_latent_representation(adata=query)
        else:
            SCVI.load(path, query, accelerator="cpu")


def test_query_without_the_batch_column_names_it(trained_scvi):
    model, _ = trained_scvi
    query = _query()
    del query.obs["batch"]
    with pytest.raises(MissingKeyError, match=r"no column 'batch'"):
        model.get_latent_representation(adata=query)


def test_query_with_reordered_and_extra_genes_works(trained_scvi):
    model, _ = trained_scvi
    query = _query()
    extra = anndata.AnnData(
        np.hstack([query.X[:, ::-1], np.ones((N_CELLS, 1), dtype=np.float32)]),
        obs=query.obs,
        var=pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)][::-1] + ["extra"]),
    )
    np.testing.assert_allclose(
        model.get_latent_representation(adata=extra), model.get_latent_representation(adata=query), rtol=1e-5
    )
