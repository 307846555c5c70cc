"""Saving never deletes, moves or replaces what pyrovi did not write (issue 17, item 2).

Each case builds a directory as a careless user (or a stranger) might have left it, saves into it, and checks
that the user's files are byte for byte what they were, that the model's files load, and that no staging or
backup file is left behind.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from pyrovi import ModelFileError
from pyrovi.data import synthetic_iid
from pyrovi.model import SCVI


@pytest.fixture(scope="module")
def model():
    adata = synthetic_iid(batch_size=40, n_genes=20, n_batches=2, seed=3)
    SCVI.setup_anndata(adata, batch_key="batch")
    trained = SCVI(adata, n_hidden=8, n_latent=2)
    trained.train(max_epochs=1, batch_size=40, enable_progress_bar=False)
    return trained


def _tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones too): files by content digest, links by target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            key = str(full.relative_to(root))
            if full.is_symlink():
                out[key] = "-> " + os.readlink(full)
            elif full.is_file():
                out[key] = hashlib.sha256(full.read_bytes()).hexdigest()
            else:
                out[key] = "dir"
    return out


def _hidden(root: Path) -> list[str]:
    return [key for key in _tree(root) if any(part.startswith(".") for part in Path(key).parts)]


def _latent_equal(path: Path, model: SCVI, **kwargs) -> None:
    loaded = SCVI.load(path, model.adata, accelerator="cpu", **kwargs)
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())


def test_a_users_own_data_file_survives_overwrite(model, tmp_path):
    res = tmp_path / "res"
    res.mkdir()
    (res / "adata.h5ad").write_bytes(b"the user's own data")
    model.save(res, overwrite=True)
    assert (res / "adata.h5ad").read_bytes() == b"the user's own data"
    _latent_equal(res, model)
    with pytest.raises(ModelFileError, match="without save_anndata"):
        SCVI.load(res)  # model.json says the save wrote no data: the user's file is not taken for it


def test_saving_data_over_a_users_own_data_file_is_refused(model, tmp_path):
    res = tmp_path / "res"
    res.mkdir()
    (res / "adata.h5ad").write_bytes(b"the user's own data")
    before = _tree(tmp_path)
    with pytest.raises(FileExistsError, match="not written by a pyrovi save"):
        model.save(res, overwrite=True, save_anndata=True)
    assert _tree(tmp_path) == before
    # beside a model saved without data, the user's adata.h5ad is still not pyrovi's
    model.save(res, overwrite=True)
    with pytest.raises(FileExistsError, match="adata.h5ad was not written by a pyrovi save"):
        model.save(res, overwrite=True, save_anndata=True)
    assert (res / "adata.h5ad").read_bytes() == b"the user's own data"


@pytest.mark.parametrize(
    "content",
    [b'{"learning_rate": 0.1}', b"not json at all", b"[1, 2, 3]", b'{"format_version": "1"}', b"[" * 100_000],
    ids=["other-json", "text", "json-list", "forged-version", "deep-nesting"],
)
def test_a_foreign_model_json_is_never_replaced(model, tmp_path, content):
    res = tmp_path / "res"
    res.mkdir()
    (res / "model.json").write_bytes(content)
    before = _tree(tmp_path)
    with pytest.raises(FileExistsError, match="model.json was not written by a pyrovi save"):
        model.save(res, overwrite=True)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("name", ["model.json", "model.safetensors", "adata.h5ad"])
def test_a_model_file_name_that_is_a_symlink_is_never_followed_or_replaced(model, tmp_path, name):
    res = tmp_path / "res"
    model.save(res, save_anndata=True)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep")
    (res / name).unlink()
    (res / name).symlink_to(precious)
    before = _tree(tmp_path)
    with pytest.raises(FileExistsError, match=f"{name} was not written by a pyrovi save"):
        model.save(res, overwrite=True, save_anndata=True)
    assert _tree(tmp_path) == before and precious.read_text() == "keep"


def test_a_directory_under_a_model_file_name_is_refused(model, tmp_path):
    res = tmp_path / "res"
    (res / "model.safetensors").mkdir(parents=True)
    (res / "model.safetensors" / "inside.txt").write_text("mine")
    before = _tree(tmp_path)
    with pytest.raises(FileExistsError, match="not written by a pyrovi save"):
        model.save(res, overwrite=True)
    assert _tree(tmp_path) == before


def test_saving_through_a_symlinked_directory_writes_into_its_target(model, tmp_path):
    real = tmp_path / "real"
    model.save(real)
    (real / "notes.txt").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    inode = real.stat().st_ino
    other = SCVI(model.adata, n_hidden=8, n_latent=2)
    other.save(link, overwrite=True)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.stat().st_ino == inode  # the directory itself was not replaced
    assert sorted(os.listdir(real)) == ["model.json", "model.safetensors", "notes.txt"]
    assert _hidden(tmp_path) == []
    _latent_equal(link, other)


def test_saving_through_a_broken_symlink_is_refused(model, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere", target_is_directory=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.save(link)
    assert sorted(os.listdir(tmp_path)) == ["link"]


def test_saving_into_the_current_directory(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model.save(".")
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.safetensors"]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(".")
    other = SCVI(model.adata, n_hidden=8, n_latent=2)
    other.save(".", overwrite=True, save_anndata=True)
    other.save("", overwrite=True)  # the data file of the previous save goes: this save wrote none
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.safetensors"]
    _latent_equal(Path("."), other)


def test_saving_onto_a_file_is_refused(model, tmp_path):
    target = tmp_path / "results"
    target.write_text("a file")
    with pytest.raises(FileExistsError, match="not a directory"):
        model.save(target, overwrite=True)
    assert target.read_text() == "a file"


def test_a_non_empty_directory_needs_overwrite(model, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty; pass overwrite=True"):
        model.save(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


@pytest.mark.parametrize("error", [OSError("disk full (simulated)"), KeyboardInterrupt()], ids=["oserror", "ctrl-c"])
@pytest.mark.parametrize("existing", [False, True], ids=["new-dir", "over-old-model"])
def test_a_failed_save_leaves_nothing_behind(model, tmp_path, monkeypatch, error, existing):
    res = tmp_path / "res"
    if existing:
        model.save(res, save_anndata=True)
        (res / "notes.txt").write_text("mine")
    before = _tree(tmp_path)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(type(model.adata), "write_h5ad", fail)
    with pytest.raises(type(error)):
        model.save(res, overwrite=True, save_anndata=True)
    monkeypatch.undo()
    assert _tree(tmp_path) == before


def test_prefixed_saves_touch_only_their_own_files(model, tmp_path):
    model.save(tmp_path, prefix="a_", save_anndata=True)
    (tmp_path / "adata.h5ad").write_bytes(b"unprefixed user file")
    before = _tree(tmp_path)
    other = SCVI(model.adata, n_hidden=8, n_latent=2)
    other.save(tmp_path, prefix="b_", save_anndata=True)
    assert {k: v for k, v in _tree(tmp_path).items() if not k.startswith("b_")} == before
    other.save(tmp_path, prefix="a_", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == [
        "a_model.json", "a_model.safetensors", "adata.h5ad", "b_adata.h5ad", "b_model.json", "b_model.safetensors"
    ]  # fmt: skip
    assert (tmp_path / "adata.h5ad").read_bytes() == b"unprefixed user file"
    _latent_equal(tmp_path, other, prefix="a_")


def test_tampered_weights_are_detected(model, tmp_path):
    model.save(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor's bytes
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="SHA-256 differs"):
        SCVI.load(tmp_path / "m", model.adata, accelerator="cpu")


def test_a_history_with_missing_values_saves_and_loads(model, tmp_path):
    import pandas as pd

    model.history_["with_gaps"] = pd.DataFrame({"with_gaps": [1.0, np.nan, 3.0]}, index=pd.Index([0, 1, 2], name="epoch"))
    try:
        model.save(tmp_path / "m")
    finally:
        del model.history_["with_gaps"]
    loaded = SCVI.load(tmp_path / "m", model.adata, accelerator="cpu")
    np.testing.assert_array_equal(loaded.history["with_gaps"]["with_gaps"].to_numpy(), [1.0, np.nan, 3.0])
