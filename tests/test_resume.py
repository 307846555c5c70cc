"""Resumable training: pickle-free checkpoints from which a run continues exactly as if never stopped."""

import os
import pickle
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

import pyrovi
from pyrovi.dataloaders import AnnDataLoader
from pyrovi.model import SCVI
from pyrovi.train import SafeCheckpointIO

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = {"batch_size": 16, "accelerator": "cpu", "progress_bar": False}
# warm-up over 4 epochs and a plateau scheduler: the resumed run must continue both where they were
PLAN = {"n_epochs_kl_warmup": 4, "reduce_lr_on_plateau": True, "lr_patience": 1, "lr_factor": 0.5}


def _model():
    pyrovi.settings.seed = 3
    adata = pyrovi.datasets.synthetic_iid(n_cells=60, n_genes=20, seed=0)
    SCVI.setup_anndata(adata, batch_key="batch")
    return SCVI(adata, n_hidden=8, n_latent=2)  # dropout: the random state must continue too


def _state(model):
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


class _Crash(Exception):
    pass


class _CrashAt(pl.Callback):
    """Fail in the middle of an epoch, as a killed job would."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise _Crash()


def test_resumed_training_reaches_the_parameters_of_an_uninterrupted_run(tmp_path):
    whole = _model()
    whole.train(max_epochs=6, plan_kwargs=PLAN, **TRAIN)

    first = _model()
    with pytest.raises(_Crash):  # 4 steps an epoch: step 10 is in epoch 2
        first.train(max_epochs=6, plan_kwargs=PLAN, checkpoint_dir=str(tmp_path), callbacks=[_CrashAt(10)], **TRAIN)
    checkpoint = tmp_path / "last.ckpt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # one file, replaced every epoch
    saved = SafeCheckpointIO().load_checkpoint(checkpoint)
    assert (saved["epoch"], saved["global_step"]) == (1, 8)  # written as epoch 1 ended
    assert saved["lr_schedulers"][0]["last_epoch"] == 2  # the plateau scheduler's step of epoch 1 is in it

    # a fresh process would start from a fresh model; something else draws random numbers meanwhile
    torch.rand(10), np.random.rand(10)
    middle = _model()  # resumed from an epoch start, stopped by max_epochs and resumed again from its end
    middle.train(max_epochs=4, plan_kwargs=PLAN, checkpoint_dir=str(tmp_path), resume_from=str(checkpoint), **TRAIN)
    resumed = _model()
    resumed.train(max_epochs=6, plan_kwargs=PLAN, resume_from=str(checkpoint), **TRAIN)

    _assert_same_state(_state(resumed), _state(whole))
    for key in ("elbo_train", "elbo_validation", "kl_weight"):
        np.testing.assert_array_equal(resumed.history[key].to_numpy(), whole.history[key].to_numpy())
    assert resumed.history["elbo_train"].index.tolist() == list(range(6))


def test_the_interrupted_run_differs_without_resuming(tmp_path):
    """The check above can fail: training on from the first run's weights without its state differs."""
    whole = _model()
    whole.train(max_epochs=4, plan_kwargs=PLAN, **TRAIN)
    part = _model()
    part.train(max_epochs=2, plan_kwargs=PLAN, **TRAIN)
    part.train(max_epochs=2, plan_kwargs=PLAN, **TRAIN)  # new optimiser, epoch 0 again
    assert any(not torch.equal(a, b) for a, b in zip(_state(part).values(), _state(whole).values()))


def test_the_shuffle_order_depends_on_seed_and_epoch_only(tmp_path):
    model = _model()
    orders = []
    for _ in range(2):
        loader = AnnDataLoader(model.adata_manager, batch_size=60, shuffle=True, seed=7)
        orders.append([next(iter(loader))["indices"].tolist() for _ in range(3)])  # three passes = three epochs
    assert orders[0] == orders[1]
    assert orders[0][0] != orders[0][1] != orders[0][2]
    late = AnnDataLoader(model.adata_manager, batch_size=60, shuffle=True, seed=7)
    late.sampler.set_epoch(2)  # as Lightning does on resuming at epoch 2
    assert next(iter(late))["indices"].tolist() == orders[0][2]
    late.sampler.set_epoch(0)  # and back
    assert next(iter(late))["indices"].tolist() == orders[0][0]
    # the orders of torch's RandomSampler over one seeded generator, as before resuming existed: seeded
    # results of earlier versions are unchanged
    reference = torch.utils.data.RandomSampler(range(60), generator=torch.Generator().manual_seed(7))
    assert [list(reference) for _ in range(3)] == orders[0]


def test_a_checkpoint_holds_no_pickle(tmp_path):
    model = _model()
    model.train(max_epochs=1, plan_kwargs=PLAN, checkpoint_dir=str(tmp_path), **TRAIN)
    raw = (tmp_path / "last.ckpt").read_bytes()
    assert not raw.startswith((b"\x80", b"PK"))
    state = SafeCheckpointIO().load_checkpoint(tmp_path / "last.ckpt")
    assert state["epoch"] == 0 and state["global_step"] == 4  # written as epoch 0 ended
    assert isinstance(state["optimizer_states"][0]["state"], dict)
    # created like any file (the umask's permissions), not owner-only as safetensors' own writer leaves it
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "last.ckpt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no staging file left behind


class _Payload:
    """Unpickling this creates a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_checkpoint_with_a_pickle_payload_is_refused_without_running_it(tmp_path, writer):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.ckpt"
    content = {"state_dict": {}, "epoch": 1, "payload": _Payload(marker)}
    if writer == "torch.save":
        torch.save(content, evil)
    else:
        evil.write_bytes(pickle.dumps(content))
    assert not marker.exists()
    model = _model()
    before = {k: v.detach().clone() for k, v in model.module.named_parameters()}
    with pytest.raises(pyrovi.ModelFileError, match="never unpickles"):
        model.train(max_epochs=2, resume_from=str(evil), **TRAIN)
    assert not marker.exists()
    _assert_same_state({k: v.detach().clone() for k, v in model.module.named_parameters()}, before)
    # the test can fail: unpickling the file does run the payload
    pickle.loads(evil.read_bytes()) if writer == "pickle" else torch.load(evil, weights_only=False)
    assert marker.exists()


def test_a_foreign_or_corrupt_file_is_a_model_file_error(tmp_path):
    model = _model()
    model.train(max_epochs=1, plan_kwargs=PLAN, checkpoint_dir=str(tmp_path / "ok"), **TRAIN)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((tmp_path / "ok" / "last.ckpt").read_bytes()[:100])
    with pytest.raises(pyrovi.ModelFileError, match="truncated or corrupt"):
        SafeCheckpointIO().load_checkpoint(truncated)
    model.save(str(tmp_path / "saved"))
    with pytest.raises(pyrovi.ModelFileError, match="not a pyrovi training checkpoint"):
        SafeCheckpointIO().load_checkpoint(tmp_path / "saved" / "model.safetensors")
    with pytest.raises(FileNotFoundError):
        SafeCheckpointIO().load_checkpoint(tmp_path / "missing.ckpt")
