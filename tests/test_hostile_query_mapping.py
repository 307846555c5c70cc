"""Hostile and careless use of query mapping (issue 20): what a red-team probe broke, kept fixed.

Each case checks the error type and a key phrase, or the result."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import pyrovi
from pyrovi import ModelFileError
from pyrovi.model import SCVI, CellAssign

N_GENES = 20
TRAIN = {"enable_progress_bar": False, "batch_size": 64}


def _data(n_cells: int, seed: int, batches: tuple[str, ...]):
    adata = pyrovi.datasets.synthetic_iid(n_cells=n_cells, n_genes=N_GENES, n_batches=1, seed=seed)
    adata.obs["batch"] = pd.Categorical(np.resize(list(batches), n_cells))
    return adata


@pytest.fixture(scope="module")
def reference() -> SCVI:
    adata = _data(120, 0, ("A", "B"))
    adata.var_names = [str(i) for i in range(N_GENES)]  # genes named by numbers, as some pipelines write them
    SCVI.setup_anndata(adata, batch_key="batch")
    model = SCVI(adata, n_latent=3, n_hidden=16)
    model.train(max_epochs=1, **TRAIN)
    return model


def test_query_genes_named_by_integers_are_matched_as_strings(reference):
    query = _data(40, 1, ("C",))
    query.var_names = pd.Index(np.arange(N_GENES)[::-1])  # integers, in reverse order
    original = query.X.toarray()
    SCVI.prepare_query_anndata(query, reference)
    assert list(query.var_names) == list(reference.adata.var_names)
    np.testing.assert_array_equal(query.X.toarray(), original[:, ::-1])
    model = SCVI.load_query_data(query, reference)
    assert model.get_latent_representation().shape == (40, 3)


def test_query_genes_named_by_integers_padded(reference):
    query = _data(40, 1, ("C",))[:, 2:].copy()
    query.var_names = pd.Index(np.arange(2, N_GENES))
    with pytest.warns(UserWarning, match="lacks 2 of"):
        out = SCVI.prepare_query_anndata(query, reference, inplace=False)
    assert list(out.var_names) == list(reference.adata.var_names)
    assert out[:, :2].X.sum() == 0


def test_cellassign_refuses_query_mapping():
    """CellAssign has no encoder, and the surgery would misplace its design rows: it refuses, saying what to do."""
    adata = _data(60, 0, ("A", "B"))
    adata.obs["size_factor"] = np.asarray(adata.X.sum(1)).ravel() / 1000
    markers = pd.DataFrame(np.eye(N_GENES, 2), index=adata.var_names, columns=["t1", "t2"])
    CellAssign.setup_anndata(adata, size_factor_key="size_factor", batch_key="batch")
    model = CellAssign(adata, markers)
    query = _data(30, 1, ("C",))
    query.obs["size_factor"] = 1.0
    with pytest.raises(NotImplementedError, match="does not support query mapping.*Fit CellAssign on the query"):
        CellAssign.load_query_data(query, model)
    with pytest.raises(NotImplementedError, match="does not support query mapping"):
        CellAssign.prepare_query_anndata(query, model)


def _query_model(reference):
    query = _data(60, 2, ("C",))
    query.var_names = reference.adata.var_names
    model = SCVI.load_query_data(query, reference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few cells: Lightning's notes on data loaders
        model.train(max_epochs=1, **TRAIN)
    return model, query


def test_a_loaded_query_model_keeps_its_freezing(reference, tmp_path):
    """Saved and loaded, a query model still trains only its new categories' entries (reference's stay bitwise)."""
    model, query = _query_model(reference)
    model.save(tmp_path / "query", save_anndata=True)
    loaded = SCVI.load(tmp_path / "query")
    before = {k: v.detach().clone() for k, v in loaded.module.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded.train(max_epochs=2, **TRAIN)
    after = loaded.module.state_dict()
    assert torch.equal(after["z_encoder.loc.weight"], before["z_encoder.loc.weight"])
    first = "decoder.px_decoder.layers.0.0.weight"
    n_h = after[first].shape[1] - 3
    assert torch.equal(after[first][:, : n_h + 2], before[first][:, : n_h + 2])  # latent and batches A, B
    assert not torch.equal(after[first][:, n_h + 2], before[first][:, n_h + 2])  # batch C trains
    # and a query model of the loaded query answers as the saved one did
    np.testing.assert_allclose(
        SCVI.load(tmp_path / "query").get_latent_representation(), model.get_latent_representation(), atol=1e-6
    )


def test_a_reference_saved_and_loaded_is_not_frozen(reference, tmp_path):
    reference.save(tmp_path / "ref")
    loaded = SCVI.load(tmp_path / "ref", adata=reference.adata)
    assert all(p.requires_grad for p in loaded.module.parameters())


def test_tampered_query_freezing_is_a_model_file_error(reference, tmp_path):
    model, query = _query_model(reference)
    model.save(tmp_path / "query")
    meta_path = tmp_path / "query" / "model.json"
    meta = json.loads(meta_path.read_text())
    name = next(iter(meta["query_mapping"]["new_entries"]))
    meta["query_mapping"]["new_entries"][name]["shape"] = [1, 2, 3]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="'query_mapping'.*malformed"):
        SCVI.load(tmp_path / "query", adata=query)


def test_transfer_labels_on_huge_latents_equals_the_scaled_down_result():
    """Squared distances of latents near 1e300 overflow; the vote is scale-free, so it must not change."""
    from pyrovi.model import transfer_labels

    rng = np.random.default_rng(0)
    reference, query = rng.normal(size=(30, 3)), rng.normal(size=(10, 3))
    labels = np.resize(["a", "b", "c"], 30)
    small = transfer_labels(reference, labels, query, n_neighbors=5, return_probabilities=True)
    huge = transfer_labels(reference * 1e300, labels, query * 1e300, n_neighbors=5, return_probabilities=True)
    assert huge["predicted_label"].tolist() == small["predicted_label"].tolist()
    np.testing.assert_allclose(huge[["a", "b", "c"]].to_numpy(), small[["a", "b", "c"]].to_numpy(), rtol=1e-9)


def test_transfer_labels_without_reference_cells_says_so():
    from pyrovi.model import transfer_labels

    with pytest.raises(ValueError, match="reference_latent has no cells"):
        transfer_labels(np.zeros((0, 3)), [], np.zeros((4, 3)))
