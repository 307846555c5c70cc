"""Red-team regressions for SCANVI (issue 21): hostile labels, predictions on foreign data, minified SCVI models."""

from __future__ import annotations

import numpy as np
import pytest

import pyrovi
from pyrovi.data import UnseenCategoryError
from pyrovi.model import SCANVI, SCVI

TRAIN = {"enable_progress_bar": False}
UNKNOWN = "Unknown"


def _data(n_cells=90, seed=0, hide=0.5):
    adata = pyrovi.datasets.synthetic_iid(n_cells=n_cells, n_genes=20, seed=seed)
    hidden = np.random.default_rng(seed).random(n_cells) < hide
    adata.obs["cell_type"] = np.where(hidden, UNKNOWN, adata.obs["labels"].astype(str))
    return adata


@pytest.fixture(scope="module")
def scanvi():
    adata = _data()
    SCANVI.setup_anndata(adata, labels_key="cell_type", unlabeled_category=UNKNOWN, batch_key="batch")
    model = SCANVI(adata, n_latent=2, n_hidden=8)
    model.train(max_epochs=1, **TRAIN)
    return model


@pytest.mark.parametrize("labels_key", ["cell_type", None])
def test_no_labelled_cell_is_a_clear_error(labels_key):
    adata = _data(hide=1.0)
    SCANVI.setup_anndata(adata, labels_key=labels_key, unlabeled_category=UNKNOWN)
    with pytest.raises(ValueError, match="No cell is labelled"):
        SCANVI(adata)


def test_predict_ignores_labels_the_model_does_not_know(scanvi):
    query = _data(seed=3)
    bare = query.copy()
    del bare.obs["cell_type"]
    query.obs["cell_type"] = "a_type_of_the_query"  # predict reads no label, so this must not block it
    view = query[5:20]
    soft = scanvi.predict(view, soft=True)
    np.testing.assert_allclose(soft.to_numpy(), scanvi.predict(bare, soft=True).to_numpy()[5:20], atol=1e-6)
    assert list(soft.index) == list(view.obs_names)
    assert (query.obs["cell_type"] == "a_type_of_the_query").all()  # the user's data as they were
    query.obs["batch"] = "a_new_batch"  # the model has no weights for it: still refused
    with pytest.raises(UnseenCategoryError, match="batch"):
        scanvi.predict(query)


def test_from_a_minified_scvi_reads_the_full_data_given():
    adata = _data()
    reference = adata.copy()
    SCVI.setup_anndata(reference, batch_key="batch")
    scvi = SCVI(reference, n_latent=2, n_hidden=8)
    scvi.train(max_epochs=1, **TRAIN)
    scvi.minify_adata()
    with pytest.raises(ValueError, match="minified"):
        SCANVI.from_scvi_model(scvi, UNKNOWN, labels_key="cell_type")
    with pytest.raises(ValueError, match="minified"):  # its own minified data, passed explicitly
        SCANVI.from_scvi_model(scvi, UNKNOWN, labels_key="cell_type", adata=scvi.adata)
    model = SCANVI.from_scvi_model(scvi, UNKNOWN, labels_key="cell_type", adata=adata)  # as the error advises
    model.train(max_epochs=1, **TRAIN)
    assert model.predict().shape == (adata.n_obs,)
