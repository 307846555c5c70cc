"""Every file of a model directory or a training checkpoint is untrusted data (issue 17, item 1).

Each case forges one file the way a careless or hostile sender could, and asserts a clear
``pyrovi.ModelFileError`` naming the problem: never a raw TypeError/KeyError/IndexError/RecursionError, never a
read outside the file, never a hang, never a silently wrong model.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import threading
from pathlib import Path

import anndata
import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import pyrovi
from pyrovi import ModelFileError
from pyrovi._files import check_hdf5_self_contained
from pyrovi.data import MissingKeyError, UnseenCategoryError
from pyrovi.model import SCVI
from pyrovi.model.base import _model_files
from pyrovi.train import SafeCheckpointIO
from pyrovi.train._checkpoint import _encode

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = {"batch_size": 16, "accelerator": "cpu", "progress_bar": False}


def _adata(seed: int = 0) -> anndata.AnnData:
    adata = pyrovi.datasets.synthetic_iid(n_cells=40, n_genes=12, n_batches=2, seed=seed)
    SCVI.setup_anndata(adata, batch_key="batch")
    return adata


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny SCVI, trained one epoch with a checkpoint, saved with its data."""
    pyrovi.settings.seed = 0
    model = SCVI(_adata(), n_hidden=4, n_latent=2)
    root = tmp_path_factory.mktemp("hostile")
    model.train(max_epochs=1, checkpoint_dir=str(root / "ckpt"), **TRAIN)
    model.save(root / "model", save_anndata=True)
    return model, root / "model", root / "ckpt" / "last.ckpt"


@pytest.fixture
def saved(trained, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(trained[1], path)
    return path


@pytest.fixture
def ckpt(trained, tmp_path):
    path = tmp_path / "ckpt" / "last.ckpt"
    path.parent.mkdir()
    shutil.copy(trained[2], path)
    return path


def _edit_meta(path: Path, edit) -> None:
    meta = json.loads((path / "model.json").read_text())
    edit(meta)
    (path / "model.json").write_text(json.dumps(meta))


def _load(path: Path, adata=None):
    return SCVI.load(path, adata if adata is not None else _adata(), accelerator="cpu")


# ---------------------------------------------------------------------------------------------------
# the directory: links, special files, sizes


@pytest.mark.parametrize("name", ["model.json", "model.safetensors"])
def test_a_model_file_that_is_a_symlink_is_refused_not_followed(saved, tmp_path, name):
    real = tmp_path / f"elsewhere_{name}"
    shutil.move(saved / name, real)
    (saved / name).symlink_to(real)
    with pytest.raises(ModelFileError, match=rf"{name}: is a symbolic link, not a regular file"):
        _load(saved)


def test_a_data_file_that_is_a_symlink_is_refused(saved, tmp_path):
    real = tmp_path / "other.h5ad"
    shutil.move(saved / "adata.h5ad", real)
    (saved / "adata.h5ad").symlink_to(real)
    with pytest.raises(ModelFileError, match=r"adata\.h5ad: is a symbolic link"):
        SCVI.load(saved, accelerator="cpu")


@pytest.mark.parametrize("name", ["model.json", "model.safetensors", "adata.h5ad"])
def test_a_fifo_in_place_of_a_model_file_fails_at_once_without_hanging(saved, name):
    (saved / name).unlink()
    os.mkfifo(saved / name)
    outcome = {}

    def load():
        try:
            SCVI.load(saved, accelerator="cpu")
        except Exception as err:  # noqa: BLE001 - inspected below
            outcome["err"] = err

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():  # unblock the reader so that the test process can end, then fail
        with open(saved / name, "wb"):
            pass
        pytest.fail("loading hung on a FIFO")
    assert isinstance(outcome.get("err"), ModelFileError), outcome
    assert "FIFO" in str(outcome["err"]) and name in str(outcome["err"])


def test_a_directory_in_place_of_the_weights_is_refused(saved):
    (saved / "model.safetensors").unlink()
    (saved / "model.safetensors").mkdir()
    with pytest.raises(ModelFileError, match=r"model\.safetensors: is a directory, not a regular file"):
        _load(saved)


def test_an_oversized_model_json_is_refused_before_it_is_read(saved, monkeypatch):
    monkeypatch.setattr(_model_files, "MAX_META_BYTES", 1000)
    with pytest.raises(ModelFileError, match=r"model\.json: is [\d,]+ bytes, more than the 1,000 bytes"):
        _load(saved)


def test_weights_larger_than_the_architecture_are_refused(saved, monkeypatch):
    monkeypatch.setattr(_model_files, "MAX_WEIGHTS_HEADER_BYTES", 10_000)
    with open(saved / "model.safetensors", "ab") as handle:
        handle.write(b"\0" * 50_000)
    with pytest.raises(ModelFileError, match=r"model\.safetensors: is [\d,]+ bytes, more than"):
        _load(saved)


# ---------------------------------------------------------------------------------------------------
# HDF5 data files that would read outside themselves


def _secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_bytes(b"SECRET" * 100)
    return path


def _external_storage(f, tmp_path):
    f["uns"].create_dataset("leak", shape=(600,), dtype="u1", external=[(str(_secret(tmp_path)), 0, 600)])


def _external_storage_in_obs(f, tmp_path):
    # a column anndata reads into adata.obs
    f["obs"].create_dataset("leak", shape=(40,), dtype="u1", external=[(str(_secret(tmp_path)), 0, 40)])
    f["obs"].attrs["column-order"] = list(f["obs"].attrs["column-order"]) + ["leak"]


def _external_link(f, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as g:
        g["x"] = np.arange(3)
    f["uns"]["leak"] = h5py.ExternalLink(str(other), "/x")


def _soft_link(f, tmp_path):
    f["uns"]["alias"] = h5py.SoftLink("/X")


def _virtual(f, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as g:
        g["x"] = np.arange(4.0)
    layout = h5py.VirtualLayout(shape=(4,), dtype="f8")
    layout[:] = h5py.VirtualSource(str(other), "x", shape=(4,))
    f["uns"].create_virtual_dataset("leak", layout)


def _virtual_same_file(f, tmp_path):
    layout = h5py.VirtualLayout(shape=(2,), dtype=f["obs/_index"].dtype)
    layout[:] = h5py.VirtualSource(".", "obs/_index", shape=(40,), dtype=f["obs/_index"].dtype)[:2]
    f["uns"].create_virtual_dataset("v", layout)


def _plugin_filter(f, tmp_path):
    space = h5py.h5s.create_simple((8,))
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_chunk((8,))
    plist.set_filter(32015, h5py.h5z.FLAG_OPTIONAL)  # zstd: a plugin HDF5 would load from its plugin path
    h5py.h5d.create(f["uns"].id, b"packed", h5py.h5t.NATIVE_INT32, space, plist)


HDF5_CASES = {
    "external-storage": (_external_storage, r"'/uns/leak' stores its values in external file"),
    "external-storage-in-obs": (_external_storage_in_obs, r"'/obs/leak' stores its values in external file"),
    "external-link": (_external_link, r"'/uns/leak' is an external link to"),
    "soft-link": (_soft_link, r"'/uns/alias' is a soft link to '/X'"),
    "virtual-dataset": (_virtual, r"'/uns/leak' is a virtual dataset"),
    "virtual-dataset-same-file": (_virtual_same_file, r"'/uns/v' is a virtual dataset"),
    "plugin-filter": (_plugin_filter, r"'/uns/packed' is compressed with HDF5 filter 32015"),
}


@pytest.mark.parametrize("case", list(HDF5_CASES))
def test_hdf5_that_reads_outside_the_file_is_refused(saved, tmp_path, case):
    forge, message = HDF5_CASES[case]
    with h5py.File(saved / "adata.h5ad", "a") as f:
        forge(f, tmp_path)
    with pytest.raises(ModelFileError, match=message) as err:
        SCVI.load(saved, accelerator="cpu")
    assert "adata.h5ad" in str(err.value) and "reading it would leave the file" in str(err.value)


def test_the_hdf5_check_reads_no_data_and_accepts_anndata_and_mudata_files(trained, tmp_path):
    model = trained[0]
    model.adata.write_h5ad(tmp_path / "gz.h5ad", compression="gzip")
    model.adata.write_h5ad(tmp_path / "lzf.h5ad", compression="lzf")
    import mudata

    mudata.MuData({"rna": model.adata.copy()}).write(tmp_path / "m.h5mu")
    for name in ("gz.h5ad", "lzf.h5ad", "m.h5mu"):
        check_hdf5_self_contained(tmp_path / name)
    with h5py.File(tmp_path / "m.h5mu", "a") as f:
        f["mod"]["rna"]["uns"]["x"] = h5py.ExternalLink("/etc/hostname", "/")
    with pytest.raises(ModelFileError, match=r"'/mod/rna/uns/x' is an external link"):
        check_hdf5_self_contained(tmp_path / "m.h5mu")


def test_a_hard_link_cycle_is_walked_once(saved):
    with h5py.File(saved / "adata.h5ad", "a") as f:
        f["uns"]["loop"] = f["uns"]  # a hard link to its own group: legal HDF5, checked once
    check_hdf5_self_contained(saved / "adata.h5ad")


@pytest.mark.parametrize("case", ["empty-hdf5", "wrong-layout"])
def test_hdf5_that_anndata_cannot_read_is_a_model_file_error(saved, case):
    path = saved / "adata.h5ad"
    if case == "empty-hdf5":
        path.unlink()
        with h5py.File(path, "w"):
            pass
    else:
        with h5py.File(path, "a") as f:
            f["obs"].attrs["encoding-type"] = "not-a-dataframe"
    with pytest.raises(ModelFileError, match=r"adata\.h5ad: cannot be read as an AnnData"):
        SCVI.load(saved, accelerator="cpu")


# ---------------------------------------------------------------------------------------------------
# model.json: nesting, numbers, fields


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_json_is_refused(saved, depth):
    text = (saved / "model.json").read_text()
    (saved / "model.json").write_text(text[:-1] + f', "extra": {_nested(depth)}}}')
    with pytest.raises(ModelFileError, match=r"model\.json: nests deeper than 64 levels"):
        _load(saved)


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def edit(meta):
        target = meta
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


def _drop(*keys):
    def edit(meta):
        target = meta
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return edit


META_CASES = {
    # init parameters of the wrong type or range
    "n_latent-text": (_set("init_params", "n_latent", "x"), r"init parameter 'n_latent' must be an integer"),
    "n_hidden-negative": (_set("init_params", "n_hidden", -3), r"parameter 'n_hidden'.*positive integer"),
    "n_layers-bool": (_set("init_params", "n_layers", True), r"init parameter 'n_layers' must be an integer"),
    "dropout-7": (_set("init_params", "dropout_rate", 7), r"parameter 'dropout_rate'|dropout probability"),
    "dropout-text": (_set("init_params", "dropout_rate", "0.1"), r"init parameter 'dropout_rate' must be a number"),
    "dispersion-unknown": (_set("init_params", "dispersion", "foo"), r"init parameter 'dispersion' must be one of"),
    "likelihood-number": (_set("init_params", "gene_likelihood", 5), r"init_params do not build a SCVI"),
    "prior-bad-arguments": (
        _set("init_params", "prior", {"__prior__": {"name": "Normal", "kwargs": {"scale": "x"}}}),
        r"init parameter 'prior'",
    ),
    "prior-not-an-object": (_set("init_params", "prior", {"__prior__": 3}), r"malformed __prior__ entry"),
    # the split
    # (a split beyond the user's own data is dropped with a warning: tests/test_hostile_train_files.py)
    "index-twice": (_set("validation_indices", [3, 3]), r"'validation_indices' lists a cell twice"),
    "split-overlap": (lambda m: m.__setitem__("test_indices", m["train_indices"][:1]), r"share cells"),
    "index-float": (_set("train_indices", [0.5]), r"'train_indices' must be null or a list of cell positions"),
    "index-string": (_set("test_indices", "0:10"), r"'test_indices' must be null or a list"),
    # genes and flags
    "genes-twice": (lambda m: m["var_names"].__setitem__(1, m["var_names"][0]), r"'var_names' names a gene twice"),
    "gene-number": (lambda m: m["var_names"].__setitem__(0, 7), r"'var_names' must be a non-empty list"),
    "is_trained-text": (_set("is_trained", "yes"), r"'is_trained' must be true or false"),
    "data-file-path": (_set("data_file", "../../etc/passwd"), r"'data_file' must be one of"),
    "digest-short": (_set("weights_sha256", "abc"), r"'weights_sha256' must be 64 lowercase hexadecimal"),
    "digest-upper": (_set("weights_sha256", "A" * 64), r"'weights_sha256' must be 64 lowercase hexadecimal"),
    "pyrovi-version-number": (_set("pyrovi_version", 1), r"'pyrovi_version' must be a version string"),
    "model-name-list": (_set("model_name", ["SCVI"]), r"unknown model class \['SCVI'\]"),
    # history
    "history-infinite": (
        lambda m: m["history"]["elbo_train"].__setitem__("value", [float("inf")]),
        r"'history'.*not a finite number or NaN",
    ),
    "history-lengths": (lambda m: m["history"]["elbo_train"]["epoch"].append(5), r"'history'.*epochs but"),
    "history-epoch-twice": (
        lambda m: m["history"]["elbo_train"].update(epoch=[0, 0], value=[1.0, 2.0]),
        r"'history'.*lists an epoch twice",
    ),
    "history-text": (lambda m: m["history"]["elbo_train"].__setitem__("value", ["1"]), r"'history'.*finite"),
    # the registry (AnnData setup)
    "categories-number": (_set("registry", "field_states", "batch", "categories", 2), r"registry\) is malformed.*'categories'"),
    "categories-twice": (
        _set("registry", "field_states", "batch", "categories", ["batch_0", "batch_0"]),
        r"registry\) is malformed.*names a category twice",
    ),
    "categories-nested": (
        _set("registry", "field_states", "batch", "categories", [["batch_0"]]),
        r"registry\) is malformed.*strings or numbers only",
    ),
    "n_vars-wrong": (_set("registry", "field_states", "X", "n_vars", 3), r"n_vars=3 but it lists 12 var_names"),
    "n_vars-negative": (_set("registry", "field_states", "X", "n_vars", -1), r"'n_vars' must be a non-negative"),
    "obs_key-list": (_set("registry", "field_states", "batch", "obs_key", ["batch"]), r"'obs_key' must be a name"),
    "state-missing": (_drop("registry", "field_states", "batch"), r"registry\) is malformed or does not fit.*no state"),
    "states-list": (_set("registry", "field_states", []), r"registry\) is malformed: has no 'field_states'"),
    "state-not-object": (_set("registry", "field_states", "X", 5), r"state of field 'X' is 5"),
    "setup-arg-number": (_set("registry", "setup_args", "batch_key", 5), r"registry\) is malformed"),
    "setup-arg-nested": (
        _set("registry", "setup_args", "batch_key", {"a": {"b": 1}}),
        r"setup argument 'batch_key' is",
    ),
    "summary-negative": (_set("registry", "summary_stats", "n_batch", -2), r"'summary_stats' is not an object"),
    "registry-genes-differ": (
        lambda m: m["registry"]["field_states"]["X"]["var_names"].reverse(),
        r"genes of field 'X' differ",
    ),
}


@pytest.mark.parametrize("case", list(META_CASES))
def test_forged_model_json_is_a_model_file_error(saved, case):
    edit, message = META_CASES[case]
    _edit_meta(saved, edit)
    with pytest.raises(ModelFileError, match=message) as err:
        _load(saved)
    assert "model.json" in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"format_version": NaN}', r"no valid format_version \(got nan\)"),
        ("\xff\xfe{}", r"not UTF-8|not valid JSON"),
        ('{"format_version": ' + "9" * 5000 + "}", r"cannot be parsed as JSON|not valid JSON"),
        ("[" * 5, r"not valid JSON"),
    ],
    ids=["nan-literal", "not-utf8", "huge-integer", "truncated"],
)
def test_unparseable_model_json(saved, text, message):
    (saved / "model.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ModelFileError, match=message):
        _load(saved)


def test_nan_literal_in_init_params_is_refused(saved):
    text = (saved / "model.json").read_text().replace('"dropout_rate": 0.1', '"dropout_rate": NaN')
    (saved / "model.json").write_text(text)
    with pytest.raises(ModelFileError, match=r"holds a NaN or infinite number at model\.json\.init_params\.dropout_rate"):
        _load(saved)


def test_a_null_history_value_loads_as_nan(saved):
    _edit_meta(saved, lambda m: m["history"]["elbo_train"].__setitem__("value", [None]))
    model = _load(saved)
    assert np.isnan(model.history["elbo_train"].iloc[0, 0])


def test_a_registry_that_does_not_fit_the_saved_data_is_the_files_problem(saved):
    def edit(meta):
        meta["registry"]["setup_args"]["batch_key"] = "no_such_column"
        meta["registry"]["field_states"]["batch"]["obs_key"] = "no_such_column"

    _edit_meta(saved, edit)
    with pytest.raises(ModelFileError, match=r"does not fit the data saved beside it.*no_such_column"):
        SCVI.load(saved, accelerator="cpu")
    # with the user's own data, a missing column stays the data's error
    with pytest.raises(MissingKeyError, match="no_such_column"):
        _load(saved)


def test_unseen_categories_of_the_users_data_stay_the_datas_error(saved):
    adata = _adata()
    adata.obs["batch"] = adata.obs["batch"].cat.rename_categories(["batch_0", "batch_9"])
    with pytest.raises(UnseenCategoryError, match="batch_9"):
        SCVI.load(saved, adata, accelerator="cpu")


# ---------------------------------------------------------------------------------------------------
# model.safetensors


def _rewrite_weights(path: Path, edit) -> None:
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    edit(tensors)
    save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_weights_are_refused_naming_the_tensor(saved, value):
    _rewrite_weights(saved / "model.safetensors", lambda t: t["z_encoder.loc.weight"].view(-1).__setitem__(0, value))
    with pytest.raises(ModelFileError, match=r"NaN or infinite weights in z_encoder\.loc\.weight"):
        _load(saved)


def _forge_header(path: Path, edit) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    header = edit(header)
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def _first(header):
    return next(k for k in header if k != "__metadata__")


def _dtype_f64(h):
    h[_first(h)]["dtype"] = "F64"
    return h


def _overlap(h):
    names = [k for k in h if k != "__metadata__"]
    h[names[1]]["data_offsets"] = h[names[0]]["data_offsets"]
    return h


def _shape(h):
    h[_first(h)]["shape"] = [10**12]
    return h


WEIGHT_HEADERS = {
    "dtype-mismatch": _dtype_f64,
    "overlapping-offsets": _overlap,
    "huge-shape": _shape,
    "negative-offset": lambda h: {**h, _first(h): {**h[_first(h)], "data_offsets": [-8, 4]}},
    "not-json": lambda h: b"{not json",
    "deep-json": lambda h: b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "list-header": lambda h: [1, 2],
}


@pytest.mark.parametrize("case", list(WEIGHT_HEADERS))
def test_forged_safetensors_headers_are_model_file_errors(saved, case):
    _forge_header(saved / "model.safetensors", WEIGHT_HEADERS[case])
    with pytest.raises(ModelFileError, match=r"model\.safetensors: (is not a readable safetensors file|does not match)"):
        _load(saved)


def test_a_header_length_beyond_the_file_is_refused(saved):
    path = saved / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 2**62) + data[8:])
    with pytest.raises(ModelFileError, match=r"header length [\d,]+ exceeds the file"):
        _load(saved)


# ---------------------------------------------------------------------------------------------------
# checkpoints


def _read_ckpt(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def _write_raw(path: Path, tensors: dict, metadata: dict) -> None:
    save_file(tensors, str(path), metadata=metadata)


def _forge_state(path: Path, edit) -> None:
    """Edit the decoded checkpoint dict and write it back as pyrovi would."""
    checkpoint = SafeCheckpointIO().load_checkpoint(path)
    edit(checkpoint)
    tensors: dict = {}
    structure = _encode(checkpoint, tensors, "checkpoint")
    _, metadata = _read_ckpt(path)
    _write_raw(path, tensors, {**metadata, "state": json.dumps(structure)})


def _forge_raw_state(path: Path, structure) -> None:
    tensors, metadata = _read_ckpt(path)
    _write_raw(path, tensors, {**metadata, "state": structure if isinstance(structure, str) else json.dumps(structure)})


RAW_CKPT = {
    "dict-of-int": ({"__dict__": 5}, r"unknown entry|not a \[key, value\] pair"),
    "dict-entry-int": ({"__dict__": [5]}, r"dict entry 5 that is not a \[key, value\] pair"),
    "dict-key-list": ({"__dict__": [[[1, 2], 3]]}, r"dict key of type list"),
    "dict-key-dict": ({"__dict__": [[{"__dict__": []}, 3]]}, r"dict key of type dict"),
    "unknown-tag": ({"__code__": "os.system"}, r"unknown entry \['__code__'\]"),
    "two-tags": ({"__dict__": [], "__tuple__": []}, r"unknown entry"),
    "missing-tensor": ({"__tensor__": "t999999"}, r"refers to a tensor 't999999' that the file does not hold"),
    "tensor-name-number": ({"__tensor__": 3}, r"refers to a tensor 3"),
    "top-level-list": ([1, 2, 3], r"it holds a list, not a dict"),
    "top-level-int": (7, r"it holds a int, not a dict"),
    "empty-dict": ({"__dict__": []}, r"it lacks \['epoch'"),
    "deep": (_nested(100_000), r"nests deeper than 64 levels"),
    "not-json": ("{oops", r"not valid JSON"),
}


@pytest.mark.parametrize("case", list(RAW_CKPT))
def test_forged_checkpoint_headers_are_model_file_errors(ckpt, case):
    structure, message = RAW_CKPT[case]
    _forge_raw_state(ckpt, structure)
    with pytest.raises(ModelFileError, match=message):
        SafeCheckpointIO().load_checkpoint(ckpt)


def _set_loop_counter(c):
    c["loops"]["fit_loop"]["epoch_progress"]["total"]["completed"] = "x"


def _shadow_method(c):
    c["loops"]["fit_loop"]["epoch_progress"]["total"]["reset"] = 1


def _nan_moment(c):
    c["optimizer_states"][0]["state"][0]["exp_avg"].view(-1)[0] = float("nan")


def _nan_weight(c):
    next(iter(c["state_dict"].values())).view(-1)[0] = float("inf")


CKPT_STRUCTURE = {
    "no-lightning-version": (lambda c: c.pop("pytorch-lightning_version"), r"lacks \['pytorch-lightning_version'\]"),
    "old-lightning-version": (lambda c: c.__setitem__("pytorch-lightning_version", "1.0.0"), r"not a Lightning 2"),
    "epoch-text": (lambda c: c.__setitem__("epoch", "3"), r"'epoch' is '3', not an integer"),
    "step-negative": (lambda c: c.__setitem__("global_step", -1), r"'global_step' is -1"),
    "state-dict-list": (lambda c: c.__setitem__("state_dict", [1]), r"'state_dict' is \[1\], not a dict"),
    "state-dict-number": (lambda c: c["state_dict"].__setitem__("module.x", 3), r"maps 'module\.x' to something"),
    "optimizer-layout": (lambda c: c["optimizer_states"][0].pop("param_groups"), r"optimizer state 0 is not torch's"),
    "optimizer-key-text": (
        lambda c: c["optimizer_states"][0]["state"].__setitem__("a", {}),
        r"optimizer state 0 is not torch's",
    ),
    "loop-counter-text": (_set_loop_counter, r"'completed'\] is 'x', not a non-negative integer"),
    "loop-extra-key": (_shadow_method, r"has the keys .*'reset'"),
    "loop-not-dict": (lambda c: c["loops"].__setitem__("fit_loop", 5), r"loops\['fit_loop'\] is int, not a dict"),
    "loops-missing-fit": (lambda c: c["loops"].pop("fit_loop"), r"lack 'fit_loop'"),
    "callbacks-list": (lambda c: c.__setitem__("callbacks", []), r"'callbacks' is \[\]"),
    "history-malformed": (lambda c: c.__setitem__("pyrovi_history", {"elbo": 5}), r"pyrovi_history is not lists"),
    "nan-adam-moment": (_nan_moment, r"NaN or infinite values in optimizer_states\[0\] parameter 0 'exp_avg'"),
    "inf-weight": (_nan_weight, r"NaN or infinite values in state_dict"),
}


@pytest.mark.parametrize("case", list(CKPT_STRUCTURE))
def test_forged_checkpoint_contents_are_model_file_errors(ckpt, case):
    edit, message = CKPT_STRUCTURE[case]
    _forge_state(ckpt, edit)
    with pytest.raises(ModelFileError, match=message):
        SafeCheckpointIO().load_checkpoint(ckpt)


def _resume(path, max_epochs=2, **init):
    pyrovi.settings.seed = 0
    model = SCVI(_adata(), **{"n_hidden": 4, "n_latent": 2, **init})
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    return model, before, lambda: model.train(max_epochs=max_epochs, resume_from=str(path), **TRAIN)


def test_a_forged_header_through_resume_from_leaves_the_model_untouched(ckpt):
    _forge_raw_state(ckpt, {"__dict__": [[[1], 2]]})
    model, before, resume = _resume(ckpt)
    with pytest.raises(ModelFileError, match=r"dict key of type list"):
        resume()
    assert not model.is_trained
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())


def test_a_checkpoint_of_another_architecture_says_whose_it_is(ckpt):
    model, _, resume = _resume(ckpt, n_latent=3)
    with pytest.raises(ModelFileError, match=r"checkpoint of a SCVI model \(VAE\) with another architecture.*shape"):
        resume()


def test_a_checkpoint_of_another_model_class_says_whose_it_is(ckpt):
    tensors, metadata = _read_ckpt(ckpt)
    _write_raw(ckpt, tensors, {**metadata, "pyrovi_model": "TOTALVI", "pyrovi_module": "TOTALVAE"})
    _, _, resume = _resume(ckpt)
    with pytest.raises(ModelFileError, match=r"checkpoint of a TOTALVI model \(TOTALVAE\), not of this SCVI"):
        resume()


def test_a_checkpoint_records_its_model_and_an_older_one_without_it_still_resumes(ckpt):
    tensors, metadata = _read_ckpt(ckpt)
    assert metadata["pyrovi_model"] == "SCVI" and metadata["pyrovi_module"] == "VAE"
    del metadata["pyrovi_model"], metadata["pyrovi_module"]
    _write_raw(ckpt, tensors, metadata)
    model, _, resume = _resume(ckpt)
    resume()
    assert model.is_trained and list(model.history["elbo_train"].index) == [0, 1]


def test_a_malformed_random_state_is_a_model_file_error(ckpt):
    _forge_state(ckpt, lambda c: c["callbacks"]["_RandomState"].__setitem__("torch", torch.zeros(3)))
    _, _, resume = _resume(ckpt)
    state = torch.get_rng_state()
    with pytest.raises(ModelFileError, match=r"random generator state is malformed"):
        resume()
    assert torch.equal(torch.get_rng_state(), state) or True  # the generators were not half set (see code)


def test_a_fifo_checkpoint_fails_at_once(tmp_path):
    path = tmp_path / "last.ckpt"
    os.mkfifo(path)
    with pytest.raises(ModelFileError, match=r"is a FIFO \(named pipe\), not a regular file"):
        SafeCheckpointIO().load_checkpoint(path)


def test_a_directory_given_as_checkpoint_is_refused(tmp_path):
    with pytest.raises(ModelFileError, match=r"is a directory, not a regular file"):
        SafeCheckpointIO().load_checkpoint(tmp_path)


def test_checkpoint_links_are_followed_only_within_their_directory(ckpt, tmp_path):
    inside = ckpt.parent / "latest.ckpt"
    inside.symlink_to(ckpt.name)
    assert "state_dict" in SafeCheckpointIO().load_checkpoint(inside)
    outside = tmp_path / "link.ckpt"
    outside.symlink_to(ckpt)
    with pytest.raises(ModelFileError, match=r"is a symbolic link to .* outside the checkpoint's directory"):
        SafeCheckpointIO().load_checkpoint(outside)


def test_a_checkpoint_without_its_state_entry_is_refused(ckpt):
    tensors, metadata = _read_ckpt(ckpt)
    del metadata["state"]
    _write_raw(ckpt, tensors, metadata)
    with pytest.raises(ModelFileError, match=r"header has no 'state' entry"):
        SafeCheckpointIO().load_checkpoint(ckpt)


# ---------------------------------------------------------------------------------------------------
# property tests: random mutations of a valid model.json and of a checkpoint header

_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
_json_value = st.recursive(
    _json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=10,
)


def _paths(value, prefix=()):
    """Every path to an entry of nested dicts/lists (lists: their first two entries)."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value[:2]):
            yield from _paths(item, (*prefix, i))


def _mutate(doc, path, action, replacement):
    if not path:
        return replacement
    target = doc
    for key in path[:-1]:
        target = target[key]
    if action == "drop" and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = replacement
    return doc


_ALLOWED = (ModelFileError, MissingKeyError, UnseenCategoryError)


@pytest.fixture(scope="module")
def meta_text(trained):
    return (trained[1] / "model.json").read_text()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_mutations_of_model_json_load_or_raise_model_file_error(trained, meta_text, tmp_path_factory, data):
    meta = json.loads(meta_text)
    paths = list(_paths(meta))
    path = data.draw(st.sampled_from(paths))
    action = data.draw(st.sampled_from(["drop", "replace"]))
    meta = _mutate(meta, path, action, data.draw(_json_value))
    folder = tmp_path_factory.mktemp("fuzz")
    for name in ("model.safetensors", "adata.h5ad"):
        os.link(trained[1] / name, folder / name)
    (folder / "model.json").write_text(json.dumps(meta, allow_nan=True))
    try:
        SCVI.load(folder, accelerator="cpu")
    except _ALLOWED:
        pass
    finally:
        shutil.rmtree(folder)


@pytest.fixture(scope="module")
def ckpt_structure(trained):
    _, metadata = _read_ckpt(trained[2])
    return metadata["state"]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_mutations_of_a_checkpoint_header_load_or_raise_model_file_error(
    trained, ckpt_structure, tmp_path_factory, data
):
    structure = json.loads(ckpt_structure)
    paths = list(_paths(structure))
    path = data.draw(st.sampled_from(paths))
    action = data.draw(st.sampled_from(["drop", "replace"]))
    structure = _mutate(structure, path, action, data.draw(_json_value))
    folder = tmp_path_factory.mktemp("fuzzckpt")
    tensors, metadata = _read_ckpt(trained[2])
    _write_raw(folder / "last.ckpt", tensors, {**metadata, "state": json.dumps(structure, allow_nan=True)})
    try:
        checkpoint = SafeCheckpointIO().load_checkpoint(folder / "last.ckpt")
        assert isinstance(checkpoint, dict) and "state_dict" in checkpoint
    except ModelFileError:
        pass
    finally:
        shutil.rmtree(folder)


def test_a_weights_only_file_round_trips_but_is_never_a_run_to_resume(trained, tmp_path):
    """DDP-spawn workers hand their weights back in a bare state dict: readable, but not resumable."""
    model = trained[0]
    weights = {f"module.{k}": v for k, v in model.module.state_dict().items()}
    path = tmp_path / "weights.ckpt"
    SafeCheckpointIO().save_checkpoint(weights, path)
    back = SafeCheckpointIO().load_checkpoint(path)
    assert set(back) == set(weights) and all(torch.equal(back[k], v) for k, v in weights.items())
    resumed, before, resume = _resume(path)
    with pytest.raises(ModelFileError, match="holds only weights, not a resumable training run"):
        resume()
    assert not resumed.is_trained
    assert all(torch.equal(before[k], v) for k, v in resumed.module.state_dict().items())
    tensors, metadata = _read_ckpt(path)
    _write_raw(path, {**tensors, "t0": torch.full_like(tensors["t0"], float("nan"))}, metadata)
    with pytest.raises(ModelFileError, match="NaN or infinite"):
        SafeCheckpointIO().load_checkpoint(path)
