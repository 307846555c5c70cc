"""Property-based tests of SCVI on random, often hostile, small AnnData objects.

Whatever the data, ``SCVI.setup_anndata`` + ``SCVI(adata)`` + one epoch of training either succeed with a
finite loss or raise one of pyrovi's documented input errors from pyrovi's own code (never from deep inside
torch or pyro); the user's AnnData is never changed, except for the registry and identifier written to
``adata.uns``.

Documented input errors (README, "Errors you may see"): :class:`ValueError` for bad values, shapes and names,
including its subclasses :class:`~pyrovi.data.MissingKeyError` (also a :class:`KeyError`) for absent keys and
:class:`~pyrovi.data.UnseenCategoryError` for unknown categories; :class:`TypeError` for unsupported types and
dtypes.
"""

from __future__ import annotations

import copy
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse

import pyrovi
from pyrovi._constants import UNS_REGISTRY_KEY, UNS_UUID_KEY
from pyrovi.model import SCVI

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

DOCUMENTED_ERRORS = (ValueError, TypeError)
PYROVI_DIR = Path(pyrovi.__file__).parent

DTYPES = ["float32", "float64", "float16", "int8", "uint8", "int16", "int32", "int64", "uint64", "bool"]
CORRUPTIONS = ["none", "nan", "inf", "negative", "fraction", "empty_cell", "empty_gene"]
# corruptions a dtype can hold: NaN, inf and fractions only exist in floats, negatives only in signed types
_REPRESENTABLE = {
    "nan": {"float16", "float32", "float64"},
    "inf": {"float16", "float32", "float64"},
    "fraction": {"float16", "float32", "float64"},
    "negative": {"float16", "float32", "float64", "int8", "int16", "int32", "int64"},
}


@dataclass
class Case:
    """A generated AnnData and whether it is valid input (then setup and training must succeed)."""

    adata: anndata.AnnData
    batch_key: str | None
    valid: bool


@st.composite
def cases(draw) -> Case:
    # sampled_from draws the sizes uniformly; integers() would mostly draw the smallest
    n_cells = draw(st.sampled_from([0, 1, 2, 3, 5, 8, 12, 12, 12]))
    n_genes = draw(st.sampled_from([0, 1, 2, 4, 6, 6]))
    max_count = draw(st.sampled_from([1, 5, 300, 100_000]))
    # about half the draws leave the counts valid, so that training runs often enough
    corruption = draw(st.sampled_from(["none"] * 4 + CORRUPTIONS))
    dtype = draw(st.sampled_from(sorted(_REPRESENTABLE.get(corruption, DTYPES))))
    # scipy.sparse has no float16
    fmt = draw(st.sampled_from(["dense"] if dtype == "float16" else ["dense", "csr", "csc"]))
    duplicate_genes = draw(st.sampled_from([False] * 5 + [True])) and n_genes > 1
    duplicate_cells = draw(st.sampled_from([False] * 3 + [True])) and n_cells > 1
    batch = draw(st.sampled_from(["none", "one-level", "two-level", "two-level", "with-nan", "numeric"]))
    seed = draw(st.integers(0, 2**16))

    rng = np.random.default_rng(seed)
    counts = rng.integers(0, max_count + 1, size=(n_cells, n_genes)).astype(np.float64)
    if counts.size:
        row, col = rng.integers(n_cells), rng.integers(n_genes)
        value = {"nan": np.nan, "inf": np.inf, "negative": -2.0, "fraction": 0.5}.get(corruption)
        if value is not None:
            counts[row, col] = value
        elif corruption == "empty_cell":
            counts[row] = 0
        elif corruption == "empty_gene":
            counts[:, col] = 0
    with np.errstate(invalid="ignore", over="ignore"):
        matrix = counts.astype(dtype)
    # a cast that changes a count (float16 overflow, int8 wrap-around) is what users hand over; uint8 wraps
    # silently into other valid counts, every other change leaves an invalid value
    valid_values = bool(np.isfinite(counts).all() and (counts >= 0).all() and (counts == np.floor(counts)).all())
    valid_values &= bool(np.all(np.isfinite(matrix.astype(np.float64)))) and bool(np.all(matrix.astype(np.float64) >= 0))
    if fmt != "dense":
        matrix = sparse.csr_matrix(matrix) if fmt == "csr" else sparse.csc_matrix(matrix)

    obs = pd.DataFrame(index=[f"c{i}" for i in range(n_cells)])
    if duplicate_cells:
        obs.index = ["c0"] + list(obs.index[1:-1]) + ["c0"]
    batch_key = None if batch == "none" else "batch"
    if batch == "one-level":
        obs["batch"] = "a"
    elif batch in ("two-level", "with-nan"):
        obs["batch"] = pd.Categorical(np.array(["a", "b"] * n_cells)[:n_cells])
        if batch == "with-nan" and n_cells:
            obs.iloc[0, 0] = np.nan
    elif batch == "numeric":
        obs["batch"] = np.arange(n_cells) % 3
    genes = [f"g{j}" for j in range(n_genes)]
    if duplicate_genes:
        genes[-1] = genes[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata warns about duplicate names
        adata = anndata.AnnData(matrix, obs=obs, var=pd.DataFrame(index=genes))
    adata.obsm["embedding"] = np.zeros((n_cells, 2))
    adata.uns["note"] = {"kept": 1}
    valid = valid_values and n_cells >= 2 and n_genes >= 1 and not duplicate_genes and batch != "with-nan"
    return Case(adata, batch_key, valid)


def _snapshot(adata: anndata.AnnData) -> dict:
    uns = {k: v for k, v in adata.uns.items() if k not in (UNS_REGISTRY_KEY, UNS_UUID_KEY)}
    return copy.deepcopy(
        {"X": adata.X, "obs": adata.obs, "var": adata.var, "layers": dict(adata.layers), "obsm": dict(adata.obsm),
         "uns": uns, "obs_names": list(adata.obs_names), "var_names": list(adata.var_names)}
    )


def _assert_same_matrix(before, after) -> None:
    assert type(after) is type(before) and after.dtype == before.dtype and after.shape == before.shape
    if sparse.issparse(before):
        for attribute in ("data", "indices", "indptr"):
            np.testing.assert_array_equal(getattr(after, attribute), getattr(before, attribute))
    else:
        np.testing.assert_array_equal(after, before)  # NaN equals NaN here


def _assert_unchanged(adata: anndata.AnnData, before: dict) -> None:
    now = _snapshot(adata)
    _assert_same_matrix(before["X"], now["X"])
    pd.testing.assert_frame_equal(now["obs"], before["obs"])
    pd.testing.assert_frame_equal(now["var"], before["var"])
    assert now["layers"].keys() == before["layers"].keys() and now["obsm"].keys() == before["obsm"].keys()
    for key in before["obsm"]:
        _assert_same_matrix(before["obsm"][key], now["obsm"][key])
    assert now["uns"] == before["uns"]
    assert now["obs_names"] == before["obs_names"] and now["var_names"] == before["var_names"]


def _raised_in_pyrovi(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is pyrovi's own code (not torch, pyro, numpy)."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(PYROVI_DIR.resolve())


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases())
def test_scvi_trains_or_fails_clearly_and_never_changes_the_data(case):
    adata = case.adata
    before = _snapshot(adata)
    try:
        SCVI.setup_anndata(adata, batch_key=case.batch_key)
        model = SCVI(adata, n_hidden=4, n_latent=2)
        model.train(max_epochs=1, batch_size=4, progress_bar=False)
    except DOCUMENTED_ERRORS as err:
        assert _raised_in_pyrovi(err), f"{type(err).__name__} from outside pyrovi: {err}"
        assert not case.valid, f"valid input was refused: {type(err).__name__}: {err}"
    else:
        assert case.valid, "invalid input was accepted"
        for key in ("elbo_train", "elbo_validation"):
            if key in model.history:
                assert np.isfinite(model.history[key].to_numpy()).all(), f"{key} is not finite"
    _assert_unchanged(adata, before)
