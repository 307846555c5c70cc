"""Hostile and careless use of files, saving, training arguments, checkpoints, the CLI and devices (issue 17).

Each case asserts the error type and a key phrase of its message, or the correct result; nothing a user did not
write is ever replaced.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import pyrovi
from pyrovi import ModelFileError
from pyrovi.cli import main as cli_main
from pyrovi.model import SCVI, TOTALVI
from pyrovi.model.base._model_dir_writer import _write_new_directory

TRAIN = dict(max_epochs=1, batch_size=32, enable_progress_bar=False, accelerator="cpu")
NO_CUDA = not torch.cuda.is_available()


def _adata(n: int = 30, seed: int = 0):
    adata = pyrovi.data.synthetic_iid(batch_size=n, n_genes=20, seed=seed)
    SCVI.setup_anndata(adata, batch_key="batch")
    return adata


@pytest.fixture(scope="module")
def trained():
    pyrovi.settings.seed = 0
    model = SCVI(_adata(), n_hidden=8, n_latent=2)
    model.train(**TRAIN)
    return model


@pytest.fixture(scope="module")
def saved_master(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "model"
    trained.save(path, save_anndata=True)
    return path


@pytest.fixture
def saved(saved_master, tmp_path):
    import shutil

    path = tmp_path / "model"
    shutil.copytree(saved_master, path)
    return path


def _fresh() -> SCVI:
    return SCVI(_adata(), n_hidden=8, n_latent=2)


def _edit_meta(path: Path, key: str, name: str, value) -> None:
    meta = json.loads((path / "model.json").read_text())
    meta[key][name] = value
    (path / "model.json").write_text(json.dumps(meta))


# ---------------------------------------------------------------------------------------------------
# save(): argument types, paths below files, unwritable places, concurrent saves


@pytest.mark.parametrize("name", ["overwrite", "save_anndata"])
@pytest.mark.parametrize("value", ["no", "False", 1, 0, None, "yes"])
def test_save_switches_must_be_bool(trained, tmp_path, name, value):
    with pytest.raises(TypeError, match=f"{name} must be True or False"):
        trained.save(tmp_path / "m", **{name: value})
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("dir_path", [None, 123, b"/tmp/x", 1.5, ["a"]], ids=["none", "int", "bytes", "float", "list"])
def test_save_dir_path_must_be_a_path(trained, dir_path):
    with pytest.raises(TypeError, match=r"dir_path must be a path \(str or os.PathLike\)"):
        trained.save(dir_path)


@pytest.mark.parametrize("below", ["sub", "a/b/c"])
def test_save_below_a_file_names_the_file(trained, tmp_path, below):
    (tmp_path / "file.txt").write_text("keep")
    with pytest.raises(NotADirectoryError, match=r"file\.txt is a file, not a directory"):
        trained.save(tmp_path / "file.txt" / below)
    assert (tmp_path / "file.txt").read_text() == "keep"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
@pytest.mark.parametrize("target", ["/proc/pyrovi_test_model", "/proc/pyrovi_test/a/b"])
def test_unwritable_location_names_the_users_path(trained, target):
    with pytest.raises(OSError, match="could not save the model to " + target) as err:
        trained.save(target)
    assert ".tmp-" not in str(err.value)


def test_threads_saving_into_one_path_are_serialised(trained, tmp_path):
    other = _fresh()
    errors: list[BaseException] = []

    def save(model):
        try:
            for _ in range(3):
                model.save(tmp_path / "m", overwrite=True)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=save, args=(m,)) for m in (trained, other, trained)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]
    SCVI.load(tmp_path / "m", _adata(), accelerator="cpu")


def test_a_rename_that_loses_a_race_is_a_clear_error(tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "model.json").write_text("{}")  # another process's save got there first
    with pytest.raises(FileExistsError, match="another save into .* happened at the same time; nothing of this save"):
        _write_new_directory({"model.json": lambda p: p.write_text("mine")}, target)
    assert (target / "model.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# ---------------------------------------------------------------------------------------------------
# load(): argument types, devices, loading onto other cells


@pytest.mark.parametrize("dir_path", [None, 123, b"/tmp/x"], ids=["none", "int", "bytes"])
def test_load_dir_path_must_be_a_path(dir_path):
    with pytest.raises(TypeError, match="dir_path must be a path"):
        SCVI.load(dir_path, _adata(), accelerator="cpu")


@pytest.mark.parametrize("device", ["banana", "gpu0", "cuda:x", 1.5, -1, object()], ids=str)
def test_load_refuses_what_is_no_device(saved, device):
    with pytest.raises(ValueError, match="device"):
        SCVI.load(saved, accelerator="cpu", device=device)


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "auto"], ids=str)
def test_load_takes_real_devices(saved, device):
    model = SCVI.load(saved, accelerator="cpu", device=device)
    assert model.device.type == "cpu"


@pytest.mark.skipif(not NO_CUDA, reason="the machine has a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda:5", "cuda", torch.device("cuda", 3), 7, np.int64(0)], ids=str)
def test_to_device_cuda_without_cuda_is_the_no_gpu_error(trained, device):
    with pytest.raises(ValueError, match="no CUDA GPU that torch can use"):
        trained.to_device(device)
    assert trained.device.type == "cpu"


@pytest.mark.skipif(not NO_CUDA, reason="the machine has a CUDA GPU")
def test_load_cuda_device_without_cuda_is_the_no_gpu_error(saved):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        SCVI.load(saved, device="cuda:1")


@pytest.mark.parametrize("device", ["banana", "auto", "meta", -2, None], ids=str)
def test_to_device_refuses_what_is_no_device(trained, device):
    with pytest.raises(ValueError, match="device"):
        trained.to_device(device)


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")], ids=str)
def test_to_device_cpu(trained, device):
    trained.to_device(device)
    assert trained.device.type == "cpu"


@pytest.mark.parametrize(
    "cells", [slice(0, 30), slice(10, None), slice(None, None, 2)], ids=["first-30", "from-10", "every-other"]
)
def test_load_onto_other_cells_drops_a_split_that_does_not_fit(saved, cells):
    adata = _adata()[cells].copy()
    with pytest.warns(UserWarning, match="does not apply to this data"):
        model = SCVI.load(saved, adata, accelerator="cpu")
    assert model.train_indices is None and model.validation_indices is None and model.test_indices is None
    assert model.adata.n_obs == adata.n_obs
    assert np.isfinite(model.get_latent_representation()).all()


def test_load_onto_as_many_cells_keeps_the_split(saved, trained):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model = SCVI.load(saved, _adata(), accelerator="cpu")
    np.testing.assert_array_equal(model.train_indices, trained.train_indices)


def test_the_directorys_own_data_keeps_the_strict_split_check(saved):
    meta = json.loads((saved / "model.json").read_text())
    meta["train_indices"] = [0, 1, 4000]
    (saved / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match=r"'train_indices' names cell position 4000"):
        SCVI.load(saved, accelerator="cpu")


# ---------------------------------------------------------------------------------------------------
# forged sizes: refused before the model is built


@pytest.mark.parametrize(
    "name, value",
    [("n_hidden", 3_000_000), ("n_hidden", 30_000_000), ("n_latent", 30_000_000), ("n_layers", 1_000_000),
     ("n_hidden", 100_000)],
)  # fmt: skip
def test_forged_sizes_are_refused_before_building(saved, name, value):
    _edit_meta(saved, "init_params", name, value)
    with pytest.raises(ModelFileError, match="describe a network of at least .* Nothing was built"):
        SCVI.load(saved, accelerator="cpu")


@pytest.mark.parametrize(
    "kwargs",
    [dict(n_hidden=16, n_latent=5, n_layers=3), dict(n_hidden=4, n_latent=10, n_layers=2, latent_distribution="ln")],
    ids=["deep", "ln-wide-latent"],
)
def test_genuine_sizes_load(tmp_path, kwargs):
    model = SCVI(_adata(), **kwargs)
    model.save(tmp_path / "m", save_anndata=True)
    assert SCVI.load(tmp_path / "m", accelerator="cpu").module.state_dict().keys() == model.module.state_dict().keys()


def _replace_x(path: Path, shape: tuple[int, int]) -> None:
    with h5py.File(path / "adata.h5ad", "r+") as handle:
        del handle["X"]
        handle.create_dataset("X", shape=shape, dtype="float32", chunks=(min(shape[0], 100_000), shape[1]), compression="gzip")


@pytest.mark.parametrize(
    "shape, message",
    [((200_000_000, 20), "stores only 0 bytes"), ((1_000_000, 20), "declares X of shape"), ((60, 19), "declares X")],
    ids=["never-written-16GB", "rows-not-obs", "columns-not-var"],
)
def test_h5ad_x_shape_is_checked_before_reading(saved, shape, message):
    _replace_x(saved, shape)
    with pytest.raises(ModelFileError, match=message):
        SCVI.load(saved, accelerator="cpu")


# ---------------------------------------------------------------------------------------------------
# train(): arguments that train nothing, are read as something else, or fail deep inside Lightning

BAD_TRAIN = {
    "max_steps-0": (dict(max_steps=0), ValueError, "max_steps must be an integer >= 1 .or -1"),
    "max_steps-neg": (dict(max_steps=-2), ValueError, "max_steps"),
    "max_steps-float": (dict(max_steps=1.5), ValueError, "max_steps"),
    "max_steps-str": (dict(max_steps="3"), ValueError, "max_steps"),
    "limit_train-0": (dict(limit_train_batches=0), ValueError, "limit_train_batches .* would run no batch"),
    "limit_train-0.0": (dict(limit_train_batches=0.0), ValueError, "limit_train_batches"),
    "limit_train-neg": (dict(limit_train_batches=-1), ValueError, "limit_train_batches"),
    "limit_train-1.5": (dict(limit_train_batches=1.5), ValueError, "limit_train_batches"),
    "limit_train-str": (dict(limit_train_batches="1"), TypeError, "limit_train_batches"),
    "limit_train-nan": (dict(limit_train_batches=float("nan")), ValueError, "limit_train_batches"),
    "limit_val-0": (dict(limit_val_batches=0), ValueError, "limit_val_batches"),
    "val_check_interval-0": (dict(val_check_interval=0), ValueError, "val_check_interval"),
    "max_time-0s": (dict(max_time={"seconds": 0}), ValueError, "max_time must be a positive duration"),
    "max_time-str0": (dict(max_time="00:00:00:00"), ValueError, "max_time must be a positive duration"),
    "max_time-delta0": (dict(max_time=datetime.timedelta(0)), ValueError, "max_time must be a positive"),
    "max_time-badkey": (dict(max_time={"sekunden": 5}), ValueError, "max_time"),
    "max_time-negative": (dict(max_time={"seconds": -5}), ValueError, "max_time"),
    "max_time-badstr": (dict(max_time="two hours"), ValueError, "DD:HH:MM:SS"),
    "max_time-int": (dict(max_time=5), TypeError, "max_time must be a datetime.timedelta"),
    "check_val-1.5": (dict(check_val_every_n_epoch=1.5), ValueError, "check_val_every_n_epoch must be an integer"),
    "check_val-0": (dict(check_val_every_n_epoch=0), ValueError, "check_val_every_n_epoch"),
    "check_val-str": (dict(check_val_every_n_epoch="1"), ValueError, "check_val_every_n_epoch"),
    "callbacks-str": (dict(callbacks="bogus"), TypeError, "callbacks must be a list of Lightning Callbacks"),
    "callbacks-item": (dict(callbacks=["x"]), TypeError, "callbacks must be a list of Lightning Callbacks.*item 0"),
    "callbacks-int": (dict(callbacks=3), TypeError, "callbacks must be a list"),
    "load_data_on_device-str": (dict(load_data_on_device="yes"), TypeError, "load_data_on_device must be True or False"),
    "shuffle_set_split-str": (dict(shuffle_set_split="no"), TypeError, "shuffle_set_split must be True or False"),
    "load_sparse_tensor-str": (dict(load_sparse_tensor="no"), TypeError, "load_sparse_tensor must be True or False"),
    "early_stopping-str": (dict(early_stopping="yes"), TypeError, "early_stopping must be True or False"),
    "enable_progress_bar-str": (dict(enable_progress_bar="no"), TypeError, "enable_progress_bar must be True"),
    "learning_rate_monitor-int": (dict(learning_rate_monitor=1), TypeError, "learning_rate_monitor must be True"),
    "detect_anomaly-str": (dict(detect_anomaly="yes"), TypeError, "detect_anomaly must be True or False"),
    "enable_model_summary-str": (dict(enable_model_summary="no"), TypeError, "enable_model_summary"),
    "deterministic-str": (dict(deterministic="maybe"), TypeError, "deterministic must be True or False"),
    "precision-bogus": (dict(precision="bogus"), ValueError, "precision must be one of"),
    "min_epochs-neg": (dict(min_epochs=-1), ValueError, "min_epochs must be an integer >= 0"),
    "num_sanity-neg": (dict(num_sanity_val_steps=-2), ValueError, "num_sanity_val_steps"),
    "log_every-0": (dict(log_every_n_steps=0), ValueError, "log_every_n_steps"),
    "accumulate-float": (dict(accumulate_grad_batches=1.5), ValueError, "accumulate_grad_batches"),
    "clip_algorithm": (dict(gradient_clip_algorithm="bogus"), ValueError, "gradient_clip_algorithm"),
    "overfit-neg": (dict(overfit_batches=-1), ValueError, "overfit_batches"),
    "fast_dev_run-neg": (dict(fast_dev_run=-1), ValueError, "fast_dev_run"),
    "reload-neg": (dict(reload_dataloaders_every_n_epochs=-1), ValueError, "reload_dataloaders_every_n_epochs"),
    "patience-float": (dict(early_stopping=True, early_stopping_patience=2.5), ValueError, "early_stopping_patience"),
    "checkpoint_dir-int": (dict(checkpoint_dir=123), TypeError, "checkpoint_dir must be a path"),
    "resume_from-int": (dict(resume_from=123), TypeError, "resume_from must be a path"),
    "default_root_dir-int": (dict(default_root_dir=5), TypeError, "default_root_dir must be a path"),
    "batch_size-str": (dict(batch_size="32"), ValueError, "batch_size must be an integer"),
}


@pytest.mark.parametrize("case", list(BAD_TRAIN))
def test_train_arguments_refused_before_training(case):
    kwargs, error, message = BAD_TRAIN[case]
    model = _fresh()
    with pytest.raises(error, match=message):
        model.train(**{**TRAIN, **kwargs})
    assert not model.is_trained and model.history == {}


@pytest.mark.parametrize(
    "kwargs",
    [dict(max_epochs=np.int64(2)), dict(max_steps=np.int32(2)), dict(check_val_every_n_epoch=np.int64(1)),
     dict(early_stopping=True, early_stopping_patience=np.int64(3), early_stopping_min_delta=np.float64(0.0)),
     dict(limit_train_batches=np.float64(1.0), batch_size=np.int64(16)), dict(callbacks=Callback())],
    ids=["max_epochs", "max_steps", "check_val", "patience", "limit-batch", "one-callback"],
)  # fmt: skip
def test_numpy_numbers_and_one_callback_train(kwargs):
    model = _fresh()
    model.train(**{**TRAIN, **kwargs})
    assert model.is_trained and len(model.history["elbo_train"]) >= 1


class _StopAtStart(Callback):
    def on_train_start(self, trainer, pl_module):
        trainer.should_stop = True


def test_a_fit_without_a_step_does_not_mark_the_model_trained():
    model = _fresh()
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    model.train(**{**TRAIN, "max_epochs": 2}, callbacks=[_StopAtStart()])
    assert model.trainer.global_step == 0
    assert not model.is_trained
    assert all(torch.equal(v, model.module.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("value", ["yes", "no", 1])
def test_totalvi_adversarial_classifier_must_be_bool(value):
    adata = pyrovi.data.synthetic_iid(batch_size=20, n_genes=20, n_proteins=5, seed=1)
    TOTALVI.setup_anndata(adata, protein_expression_obsm_key="protein_expression", protein_names_uns_key="protein_names")
    model = TOTALVI(adata, n_hidden=8, n_latent=2)
    with pytest.raises(TypeError, match="adversarial_classifier must be True or False"):
        model.train(max_epochs=1, adversarial_classifier=value, enable_progress_bar=False, accelerator="cpu")
    assert not model.is_trained


# ---------------------------------------------------------------------------------------------------
# checkpoint_dir: never replace what pyrovi did not write


def test_checkpoint_dir_that_is_a_file(tmp_path):
    (tmp_path / "ck").write_text("user data")
    with pytest.raises(FileExistsError, match="checkpoint_dir=.* is a file, not a directory"):
        _fresh().train(**TRAIN, checkpoint_dir=tmp_path / "ck")
    with pytest.raises(FileExistsError, match="lies below .*ck, which is a file"):
        _fresh().train(**TRAIN, checkpoint_dir=tmp_path / "ck" / "sub")
    assert (tmp_path / "ck").read_text() == "user data"


def _user_text(path):
    path.write_text("my notes")


def _foreign_safetensors(path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(path), metadata={"format": "something-else"})


def _pickle(path):
    torch.save({"w": torch.ones(2)}, path)


def _directory(path):
    path.mkdir()


def _symlink(path):
    (path.parent / "real.ckpt").write_text("mine")
    path.symlink_to(path.parent / "real.ckpt")


def _forged_header_length(path):
    path.write_bytes((2**60).to_bytes(8, "little") + b"{}")


@pytest.mark.parametrize(
    "make, message",
    [(_user_text, "not a pyrovi checkpoint"), (_foreign_safetensors, "not a pyrovi checkpoint"),
     (_pickle, "not a pyrovi checkpoint"), (_directory, "is a directory"), (_symlink, "is a symbolic link"),
     (_forged_header_length, "not a pyrovi checkpoint")],
    ids=["text", "foreign-safetensors", "pickle", "directory", "symlink", "forged-header"],
)  # fmt: skip
def test_a_last_ckpt_pyrovi_did_not_write_is_never_replaced(tmp_path, make, message):
    target = tmp_path / "last.ckpt"
    make(target)
    before = os.lstat(target)
    content = target.read_bytes() if target.is_file() else None
    model = _fresh()
    with pytest.raises(FileExistsError, match=message + ".*never replaces|" + message):
        model.train(**TRAIN, checkpoint_dir=tmp_path)
    assert os.lstat(target).st_mode == before.st_mode
    if content is not None:
        assert target.read_bytes() == content
    assert not model.is_trained


def test_an_earlier_pyrovi_checkpoint_is_replaced_and_resumed_from(tmp_path):
    model = _fresh()
    model.train(**TRAIN, checkpoint_dir=tmp_path)
    first = (tmp_path / "last.ckpt").read_bytes()
    model.train(**{**TRAIN, "max_epochs": 2}, checkpoint_dir=tmp_path, resume_from=tmp_path / "last.ckpt")
    assert len(model.history["elbo_train"]) == 2
    assert (tmp_path / "last.ckpt").read_bytes() != first
    _fresh().train(**TRAIN, checkpoint_dir=tmp_path)  # a new run into the same directory replaces it too


# ---------------------------------------------------------------------------------------------------
# the CLI: user errors are one line and a non-zero status, checked before training


@pytest.mark.parametrize(
    "args, message",
    [(["--max-epochs", "0"], "--max-epochs must be a positive integer"),
     (["--max-epochs", "-1"], "--max-epochs must be a positive integer"),
     (["--max-epochs", "1", "--seed", "-1"], "seed must be a non-negative integer"),
     (["--max-epochs", "1", "--out", "{file}"], "is a file, not a directory"),
     (["--max-epochs", "1", "--out", "{file}/sub"], "which is a file, not a directory")],
    ids=["epochs-0", "epochs-neg", "seed-neg", "out-file", "out-below-file"],
)  # fmt: skip
def test_cli_user_errors_are_one_line(tmp_path, capsys, args, message):
    user_file = tmp_path / "outfile"
    user_file.write_text("mine")
    args = [a.replace("{file}", str(user_file)) for a in args]
    assert cli_main(["quickstart", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err and len(err.strip().splitlines()) == 1
    assert user_file.read_text() == "mine"
