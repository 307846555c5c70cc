"""Saved models are data, never code: every broken, tampered or foreign file is a clear ModelFileError.

A pickle payload in these tests creates a marker file when unpickled; each test asserts that the marker
never appears, i.e. that loading ran nothing from the directory.
"""

import ast
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

import pyrovi
from pyrovi import ModelFileError
from pyrovi.model import SCVI, TOTALVI
from pyrovi.model.base import _save_load
from pyrovi.model.base._model_files import FORMAT_VERSION

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PACKAGE = Path(pyrovi.__file__).parent


class _Payload:
    """Unpickling this object creates ``marker``: proof that code from a file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_bytes(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker))


@pytest.fixture(scope="module")
def scvi(tmp_path_factory):
    pyrovi.settings.seed = 0
    adata = pyrovi.datasets.synthetic_iid(n_cells=60, n_genes=20, n_batches=2, seed=0)
    SCVI.setup_anndata(adata, batch_key="batch")
    model = SCVI(adata, n_hidden=8, n_latent=2)
    model.train(max_epochs=1, batch_size=32, accelerator="cpu", progress_bar=False)
    path = tmp_path_factory.mktemp("saved") / "scvi"
    model.save(path, save_anndata=True)
    return model, path


@pytest.fixture
def saved(scvi, tmp_path):
    """A fresh copy of the saved SCVI directory, to tamper with."""
    path = tmp_path / "model"
    shutil.copytree(scvi[1], path)
    return path


def _digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def _edit_meta(path: Path, edit) -> None:
    meta = json.loads((path / "model.json").read_text())
    edit(meta)
    (path / "model.json").write_text(json.dumps(meta))


# ---------------------------------------------------------------------------------------------------
# no code runs


def test_the_payload_used_below_does_run_code_when_unpickled(tmp_path):
    """Without this, a marker that never appears would prove nothing."""
    marker = tmp_path / "ran"
    pickle.loads(_pickle_bytes(marker))
    assert marker.exists()


def test_package_source_has_no_unpickling():
    """No module of pyrovi imports a pickle library, calls torch.load or numpy loads with allow_pickle."""
    banned_modules = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
    found = []
    for file in PACKAGE.rglob("*.py"):
        tree = ast.parse(file.read_text(), filename=str(file))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [f"{file}: import {a.name}" for a in node.names if a.name.split(".")[0] in banned_modules]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in banned_modules:
                found.append(f"{file}: from {node.module} import")
            elif isinstance(node, ast.Attribute) and node.attr == "load" and isinstance(node.value, ast.Name):
                if node.value.id in ("torch", "np", "numpy"):
                    found.append(f"{file}:{node.lineno}: {node.value.id}.load")
            elif isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                found.append(f"{file}:{node.value.lineno}: allow_pickle")
    assert found == []


def test_load_never_calls_an_unpickler(scvi, monkeypatch):
    """Every unpickling entry point raises while a model (with its saved AnnData) loads."""
    model, path = scvi

    def refuse(*args, **kwargs):
        raise AssertionError("an unpickler was called while loading")

    for owner, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load"), (np, "load")]:
        monkeypatch.setattr(owner, name, refuse)
    loaded = SCVI.load(path, accelerator="cpu")
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())


def test_a_directory_of_pickles_is_reported_not_opened(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "scvi_tools_model"
    path.mkdir()
    (path / "model.pt").write_bytes(_pickle_bytes(marker))
    with pytest.raises(ModelFileError, match=r"model\.pt.*never unpickles") as err:
        SCVI.load(path, accelerator="cpu")
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_a_pickle_beside_a_model_is_ignored(scvi, saved, tmp_path):
    marker = tmp_path / "ran"
    (saved / "model.pt").write_bytes(_pickle_bytes(marker))
    (saved / "model.pkl").write_bytes(_pickle_bytes(marker))
    loaded = SCVI.load(saved, accelerator="cpu")
    np.testing.assert_array_equal(loaded.get_latent_representation(), scvi[0].get_latent_representation())
    assert not marker.exists()


@pytest.mark.parametrize("as_torch_archive", [False, True], ids=["pickle", "torch.save"])
def test_weights_replaced_by_a_pickle(saved, tmp_path, as_torch_archive):
    marker = tmp_path / "ran"
    weights = saved / "model.safetensors"
    if as_torch_archive:
        torch.save(_Payload(marker), weights)  # a zip holding a pickle, as scvi-tools' model.pt
        kind = "a torch.save archive"
    else:
        weights.write_bytes(_pickle_bytes(marker))
        kind = "a pickle"
    with pytest.raises(ModelFileError, match=rf"model\.safetensors: is {kind}.*never unpickles"):
        SCVI.load(saved, accelerator="cpu")
    assert not marker.exists()


def test_json_and_anndata_replaced_by_pickles(saved, tmp_path):
    marker = tmp_path / "ran"
    (saved / "adata.h5ad").write_bytes(_pickle_bytes(marker))
    with pytest.raises(ModelFileError, match=r"adata\.h5ad: is not an HDF5"):
        SCVI.load(saved, accelerator="cpu")
    (saved / "model.json").write_bytes(_pickle_bytes(marker))
    with pytest.raises(ModelFileError, match=r"model\.json: is a pickle, not JSON"):
        SCVI.load(saved, accelerator="cpu")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------
# tampered JSON


def _set_init(key, value):
    return lambda meta: meta["init_params"].__setitem__(key, value)


TAMPERED = {
    "shapes": (_set_init("n_hidden", 16), r"model\.safetensors: does not match the architecture.*shape"),
    "unknown-class": (lambda m: m.__setitem__("model_name", "FooVI"), r"unknown model class 'FooVI'"),
    "class-is-os.system": (lambda m: m.__setitem__("model_name", "os.system"), r"unknown model class 'os.system'"),
    "prior-is-os.system": (
        _set_init("prior", {"__prior__": {"name": "os.system", "kwargs": {"command": "touch {marker}"}}}),
        r"unknown prior 'os.system'",
    ),
    "distribution-is-a-function": (
        _set_init("dispersion_prior", {"__distribution__": {"name": "enable_validation", "args": {"is_validate": 0}}}),
        r"'enable_validation' is not a distribution",
    ),
    "distribution-is-a-dotted-name": (
        _set_init("dispersion_prior", {"__distribution__": {"name": "os.system", "args": {}}}),
        r"'os.system' is not a distribution",
    ),
    "newer-format": (lambda m: m.__setitem__("format_version", FORMAT_VERSION + 1), r"newer pyrovi.*Upgrade pyrovi"),
    "format-zero": (lambda m: m.__setitem__("format_version", 0), r"no valid format_version"),
    "format-as-text": (lambda m: m.__setitem__("format_version", "1"), r"no valid format_version"),
    "format-missing": (lambda m: m.pop("format_version"), r"no valid format_version"),
    "unknown-init-param": (_set_init("bogus", 1), r"init_params do not build a SCVI"),
    "bad-init-value": (_set_init("gene_likelihood", "lognormal"), r"init_params do not build a SCVI"),
    "registry-setup-args": (
        lambda m: m["registry"]["setup_args"].__setitem__("not_an_argument", 1),
        r"registry\) is malformed",
    ),
    "var-names": (lambda m: m.__setitem__("var_names", "gene_0"), r"'var_names' must be a non-empty list"),
    "indices": (lambda m: m.__setitem__("train_indices", [0, -3]), r"'train_indices' must be null or a list"),
    "history": (lambda m: m.__setitem__("history", {"elbo_train": [1, 2]}), r"'history' must be"),
    "not-an-object": (lambda m: m.clear(), r"no valid format_version"),
}


@pytest.mark.parametrize("case", list(TAMPERED), ids=list(TAMPERED))
def test_tampered_json(scvi, saved, tmp_path, case):
    edit, message = TAMPERED[case]
    marker = tmp_path / "ran"

    def apply(meta):
        edit(meta)
        text = json.dumps(meta).replace("{marker}", str(marker))
        meta.clear()
        meta.update(json.loads(text))

    _edit_meta(saved, apply)
    validating = pyro.distributions.is_validation_enabled()
    with pytest.raises(ModelFileError, match=message) as err:
        SCVI.load(saved, scvi[0].adata.copy(), accelerator="cpu")
    assert "model.json" in str(err.value) or "model.safetensors" in str(err.value)
    assert not marker.exists()
    assert pyro.distributions.is_validation_enabled() == validating  # the named function was not called


def test_invalid_json_and_non_object(saved):
    text = (saved / "model.json").read_text()
    (saved / "model.json").write_text(text[: len(text) // 2])
    with pytest.raises(ModelFileError, match=r"model\.json: is not valid JSON \(.* line \d+, column \d+\)"):
        SCVI.load(saved, accelerator="cpu")
    (saved / "model.json").write_text("[1, 2]")
    with pytest.raises(ModelFileError, match=r"must hold a JSON object, got list"):
        SCVI.load(saved, accelerator="cpu")


def test_format_version_is_written(saved):
    meta = json.loads((saved / "model.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION == 1
    assert meta["pyrovi_version"] == pyrovi.__version__


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_files_take_their_permissions_from_the_umask(scvi, tmp_path, umask):
    # safetensors' own writer leaves 0600 whatever the umask: a model saved in a shared project
    # directory would not load for colleagues although its JSON and h5ad beside it do
    previous = os.umask(umask)
    try:
        scvi[0].save(tmp_path / "model", save_anndata=True)
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "model").iterdir()}
    assert set(modes) == {"model.safetensors", "model.json", "adata.h5ad"}
    assert set(modes.values()) == {0o666 & ~umask}


# ---------------------------------------------------------------------------------------------------
# broken and missing files, wrong class


@pytest.mark.parametrize("keep", [0.5, 0.99, 4 / 1e9], ids=["half", "last-byte", "header"])
def test_truncated_weights(saved, keep):
    weights = saved / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: max(int(len(data) * keep), 4)] if keep < 0.99 else data[:-1])
    with pytest.raises(ModelFileError, match=r"model\.safetensors: is not a readable safetensors file \(truncated"):
        SCVI.load(saved, accelerator="cpu")


@pytest.mark.parametrize("missing", ["model.safetensors", "model.json"])
def test_missing_file(saved, missing):
    (saved / missing).unlink()
    with pytest.raises(ModelFileError, match=rf"{missing}: missing; a saved pyrovi model is a directory"):
        SCVI.load(saved, accelerator="cpu")


def test_missing_directory_and_missing_anndata(saved, tmp_path):
    with pytest.raises(ModelFileError, match="no such directory"):
        SCVI.load(tmp_path / "nothing_here", accelerator="cpu")
    (saved / "adata.h5ad").unlink()
    with pytest.raises(ModelFileError, match=r"holds no adata\.h5ad.*Model\.load\(path, adata\)"):
        SCVI.load(saved, accelerator="cpu")


def test_wrong_model_class(tmp_path):
    pyrovi.settings.seed = 0
    adata = pyrovi.datasets.synthetic_citeseq(n_cells=40, n_genes=15, n_proteins=4, seed=0)
    TOTALVI.setup_anndata(adata, "protein_expression", batch_key="batch")
    TOTALVI(adata, n_hidden=8, n_latent=2).save(tmp_path / "tv")
    with pytest.raises(ModelFileError, match=r"holds a TOTALVI model, not a SCVI.*TOTALVI\.load"):
        SCVI.load(tmp_path / "tv", adata, accelerator="cpu")
    assert TOTALVI.load(tmp_path / "tv", adata, accelerator="cpu").module.n_latent == 2


def test_weights_of_another_model(scvi, saved, tmp_path):
    """Two valid files that do not belong together: the shapes say so before anything is loaded."""
    other = SCVI(scvi[0].adata, n_hidden=8, n_latent=3)
    other.save(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "model.safetensors", saved / "model.safetensors")
    mismatch = r"does not match the architecture.* has shape \(3, 8\), the architecture needs \(2, 8\)"
    with pytest.raises(ModelFileError, match=mismatch):
        SCVI.load(saved, accelerator="cpu")


# ---------------------------------------------------------------------------------------------------
# atomic saving


def test_interrupted_save_keeps_the_old_model(scvi, saved, monkeypatch):
    model = scvi[0]
    before = _digest(saved)
    other = SCVI(model.adata, n_hidden=8, n_latent=2)  # different weights

    def fail_after_writing_half(self, data):
        with open(self, "wb") as handle:
            handle.write(data[: len(data) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(Path, "write_bytes", fail_after_writing_half)
    with pytest.raises(OSError, match="disk full"):
        other.save(saved, overwrite=True)
    monkeypatch.undo()
    assert _digest(saved) == before  # no staging, backup or half-written file left either
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model"]
    loaded = SCVI.load(saved, model.adata, accelerator="cpu")
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())


def test_failed_anndata_write_and_failed_rename_keep_the_old_model(scvi, saved, monkeypatch):
    from pyrovi.model.base import _model_dir_writer

    model = scvi[0]
    before = _digest(saved)
    other = SCVI(model.adata, n_hidden=8, n_latent=2)

    def fail_h5ad(*args, **kwargs):
        raise OSError("interrupted (simulated)")

    monkeypatch.setattr(type(model.adata), "write_h5ad", fail_h5ad)
    with pytest.raises(OSError, match="interrupted"):
        other.save(saved, overwrite=True, save_anndata=True)
    monkeypatch.undo()
    assert _digest(saved) == before

    real_replace = os.replace
    calls = []

    def fail_second_rename(source, target):
        calls.append(target)
        if len(calls) == 2:  # the weights are already in place, model.json is not
            raise OSError("rename failed (simulated)")
        return real_replace(source, target)

    monkeypatch.setattr(_model_dir_writer.os, "replace", fail_second_rename)
    with pytest.raises(OSError, match="rename failed"):
        other.save(saved, overwrite=True)
    monkeypatch.undo()
    assert _digest(saved) == before  # the replaced weights were put back
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model"]


def test_mixed_files_of_two_saves_are_detected(scvi, tmp_path):
    model = scvi[0]
    model.save(tmp_path / "a")
    SCVI(model.adata, n_hidden=8, n_latent=2).save(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(ModelFileError, match="SHA-256 differs"):
        SCVI.load(tmp_path / "a", model.adata, accelerator="cpu")


def test_successful_overwrite_replaces_the_model(scvi, saved):
    other = SCVI(scvi[0].adata, n_hidden=8, n_latent=2)
    other.save(saved, overwrite=True)
    assert sorted(p.name for p in saved.iterdir()) == ["model.json", "model.safetensors"]
    loaded = SCVI.load(saved, scvi[0].adata, accelerator="cpu")
    for key, value in other.module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[key], value)
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model"]


def test_overwrite_false_never_touches_an_existing_model(scvi, saved):
    before = _digest(saved)
    mtimes = {p.name: p.stat().st_mtime_ns for p in saved.iterdir()}
    with pytest.raises(FileExistsError, match="overwrite=True"):
        scvi[0].save(saved)
    assert _digest(saved) == before
    assert {p.name: p.stat().st_mtime_ns for p in saved.iterdir()} == mtimes
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model"]


def test_overwrite_writes_beside_other_files_and_never_touches_them(scvi, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        scvi[0].save(folder)
    assert sorted(os.listdir(folder)) == ["notes.txt"]
    scvi[0].save(folder, overwrite=True, save_anndata=True)  # as scvi-tools: the model's files go beside
    assert sorted(os.listdir(folder)) == ["adata.h5ad", "model.json", "model.safetensors", "notes.txt"]
    assert (folder / "notes.txt").read_text() == "keep me"
    # saving again without data removes the data file the previous save wrote, and only that
    scvi[0].save(folder, overwrite=True)
    assert sorted(os.listdir(folder)) == ["model.json", "model.safetensors", "notes.txt"]
    with pytest.raises(ModelFileError, match="saved without save_anndata=True"):
        SCVI.load(folder, accelerator="cpu")
    assert SCVI.load(folder, scvi[0].adata, accelerator="cpu").is_trained
    empty = tmp_path / "empty"
    empty.mkdir()
    scvi[0].save(empty)  # an empty directory is free to use
    assert sorted(os.listdir(empty)) == ["model.json", "model.safetensors"]


def test_a_safetensors_file_whose_header_length_starts_with_the_pickle_byte_is_not_a_pickle(tmp_path):
    """Safetensors headers are padded to multiples of 8, so one length in 32 has 0x80 as its first byte."""
    from safetensors.torch import load_file, save_file

    from pyrovi._files import sniff_pickle

    path = tmp_path / "w.safetensors"
    for pad in range(300):
        save_file({"w": torch.ones(2)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no padding gave a header length whose first byte is 0x80")
    assert sniff_pickle(path) is None
    assert torch.equal(load_file(str(path))["w"], torch.ones(2))
    pickled = tmp_path / "p.pkl"
    pickled.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    assert sniff_pickle(pickled) == "a pickle"
    archive = tmp_path / "a.pt"
    torch.save({"w": torch.ones(2)}, archive)
    assert sniff_pickle(archive) == "a torch.save archive (a zip of pickles)"
