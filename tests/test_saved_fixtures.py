"""Models saved by an earlier pyrovi keep loading: committed fixtures of each format version."""

import json
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pyrovi import ModelFileError
from pyrovi.model import SCVI
from pyrovi.model.base import _model_files

FIXTURES = Path(__file__).parent / "fixtures"


def _fixture_adata(folder: Path) -> anndata.AnnData:
    data = json.loads((folder / "data.json").read_text())
    obs = pd.DataFrame({"batch": pd.Categorical(data["batch"])}, index=data["obs_names"])
    counts = sp.csr_matrix(np.asarray(data["counts"], dtype=np.float32))
    return anndata.AnnData(counts, obs=obs, var=pd.DataFrame(index=data["var_names"]))


def _check_v1(folder: Path) -> None:
    expected = json.loads((folder / "expected_latent.json").read_text())
    assert expected["format_version"] == 1
    model = SCVI.load(folder / "model", _fixture_adata(folder), accelerator="cpu")
    assert model.is_trained and model.module.n_latent == 2
    latent = model.get_latent_representation()
    np.testing.assert_allclose(latent, np.asarray(expected["latent_mean"]), rtol=1e-5, atol=1e-6)
    # the data's own genes, in another order, give the same cells the same latents
    reordered = _fixture_adata(folder)[:, ::-1].copy()
    np.testing.assert_allclose(model.get_latent_representation(reordered), latent, rtol=1e-5, atol=1e-6)


def test_scvi_saved_in_format_1_loads_with_the_same_latents():
    folder = FIXTURES / "scvi_format_v1"
    assert json.loads((folder / "model" / "model.json").read_text())["format_version"] == 1
    _check_v1(folder)


def test_format_1_still_loads_after_a_version_bump(monkeypatch):
    """Older versions are accepted, newer ones rejected: simulated by raising the reader's version."""
    monkeypatch.setattr(_model_files, "FORMAT_VERSION", 2)
    _check_v1(FIXTURES / "scvi_format_v1")


def test_a_newer_format_is_rejected_with_upgrade_advice(monkeypatch, tmp_path):
    folder = FIXTURES / "scvi_format_v1"
    monkeypatch.setattr(_model_files, "FORMAT_VERSION", 0)  # as if this pyrovi predated format 1
    with pytest.raises(ModelFileError, match=r"saved by a newer pyrovi \(format version 1.*Upgrade pyrovi"):
        SCVI.load(folder / "model", _fixture_adata(folder), accelerator="cpu")
