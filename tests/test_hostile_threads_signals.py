"""Threads, Ctrl-C, SIGTERM and errors inside training (issue 17, items 5 and 6).

Pyro's effect handlers live on one process-wide stack: pyrovi holds one re-entrant lock around each Pyro run, so
models can be trained and queried from several threads at once. A training stopped inside an epoch (Ctrl-C,
SIGTERM, an error) leaves the model at its last finished epoch: weights, history and ``is_trained`` agree.
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from pyro.poutine import runtime

import pyrovi
from pyrovi._pyro_lock import pyro_lock
from pyrovi.model import SCVI, CellAssign

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = {"accelerator": "cpu", "progress_bar": False, "batch_size": 16}
# 60 cells: 54 train in minibatches of 16, 16, 16, 6, so 4 optimiser steps an epoch, 6 validation cells
N_CELLS = 60
WAIT = 30  # seconds a thread waits for another before the test gives up (never reached when all is well)


def _model(seed=0):
    pyrovi.settings.seed = seed
    adata = pyrovi.data.synthetic_iid(batch_size=N_CELLS // 2, n_genes=20, n_proteins=2, n_regions=2, seed=seed)
    SCVI.setup_anndata(adata, batch_key="batch")
    return SCVI(adata, n_hidden=16, n_latent=2)


def _state(model):
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _epochs(model):
    frame = model.history.get("elbo_train")
    return [] if frame is None else list(frame.index)


@pytest.fixture(scope="module")
def trained():
    model = _model(seed=3)
    model.train(max_epochs=2, **TRAIN)
    return model


class _Stop(pl.Callback):
    """Raise ``error`` (or deliver a real SIGINT) at a given epoch and training batch (or validation batch)."""

    def __init__(self, epoch, batch=1, error=KeyboardInterrupt, validation=False, real_signal=False):
        self.epoch, self.batch, self.error, self.validation, self.real_signal = epoch, batch, error, validation, real_signal
        self.epoch_end_state = {}

    def on_train_epoch_end(self, trainer, pl_module):  # weights are final once the epoch's steps are done
        self.epoch_end_state[trainer.current_epoch] = {
            k: v.detach().clone() for k, v in pl_module.module.state_dict().items()
        }

    def _maybe_stop(self, trainer, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            if self.real_signal:
                signal.raise_signal(signal.SIGINT)  # the default handler raises KeyboardInterrupt here
            raise self.error("stop here")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.validation:
            self._maybe_stop(trainer, batch_idx)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.validation:
            self._maybe_stop(trainer, batch_idx)


# ------------------------------------------------------------------------------------------------
# threads


def _run_in_thread(fn, *args):
    """Start ``fn(*args)`` in a thread; returns (thread, outcome) where outcome gets "result" or "error"."""
    outcome = {}

    def target():
        try:
            outcome["result"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - reported to the test
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


class _Rendezvous(pl.Callback):
    """Both trainings wait for each other at the start of their second epoch: they are then surely concurrent."""

    def __init__(self, barrier):
        self.barrier = barrier

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            self.barrier.wait(timeout=WAIT)


def test_two_models_train_in_two_threads_at_once():
    models = [_model(seed=0), _model(seed=1)]
    barrier = threading.Barrier(2)
    filters = list(warnings.filters)
    runs = [_run_in_thread(lambda m: m.train(max_epochs=3, callbacks=[_Rendezvous(barrier)], **TRAIN), m) for m in models]
    for thread, outcome in runs:
        thread.join(WAIT * 2)
        assert not thread.is_alive()
        assert "error" not in outcome, outcome.get("error")
    for model in models:
        assert model.is_trained and _epochs(model) == [0, 1, 2]
        assert np.isfinite(model.history["elbo_train"].to_numpy()).all()
        assert np.isfinite(model.history["elbo_validation"].to_numpy()).all()
        latent = model.get_latent_representation()
        assert latent.shape == (N_CELLS, 2) and np.isfinite(latent).all()
    # the fits' warning filters are counted, not saved and restored: none is left behind by overlapping fits
    assert list(warnings.filters) == filters
    assert runtime._PYRO_STACK == [] and runtime._DIM_ALLOCATOR._stack == []


QUERIES = {
    "get_latent_representation": lambda m: m.get_latent_representation(),
    "get_normalized_expression": lambda m: m.get_normalized_expression(n_samples=2, library_size=1e4),
    "posterior_predictive_sample": lambda m: m.posterior_predictive_sample(n_samples=2),
    "sample_posterior": lambda m: m.sample_posterior(num_samples=3, return_sites=["z"], return_samples=True)["z"],
    "get_elbo": lambda m: m.get_elbo(),
    "get_marginal_ll": lambda m: m.get_marginal_ll(n_mc_samples=3),
    "get_reconstruction_error": lambda m: m.get_reconstruction_error()["reconstruction_loss"],
    "differential_expression": lambda m: m.differential_expression(
        groupby="labels", group1="label_0", group2="label_1", n_samples=5, batch_size=32
    ),
    "get_feature_correlation_matrix": lambda m: m.get_feature_correlation_matrix(n_samples=2, correlation_type="pearson"),
}


def _finite(result):
    if hasattr(result, "select_dtypes"):
        result = result.select_dtypes("number").fillna(0.0)
    values = np.asarray(result, dtype=float)
    return values.size > 0 and np.isfinite(values).all()


@pytest.mark.parametrize("query", sorted(QUERIES))
def test_a_query_in_a_thread_while_another_model_trains(trained, query):
    """The query runs over and over in a thread for as long as another model trains in the main thread."""
    expected_shape = np.shape(QUERIES[query](trained))
    done, results, errors = threading.Event(), [], []

    def keep_querying():
        while not done.is_set() or not results:
            try:
                results.append(QUERIES[query](trained))
            except BaseException as err:  # noqa: BLE001
                errors.append(err)
                return

    thread = threading.Thread(target=keep_querying, daemon=True)
    thread.start()
    other = _model(seed=4)
    try:
        other.train(max_epochs=2, **TRAIN)
    finally:
        done.set()
        thread.join(WAIT)
    assert not errors, errors[0]
    assert other.is_trained and np.isfinite(other.history["elbo_train"].to_numpy()).all()
    assert results and all(np.shape(r) == expected_shape and _finite(r) for r in results)


def _lock_probe(module):
    """Wrap the module's model and guide to record whether the Pyro lock is held whenever they run."""
    seen = []
    for name in ("model", "guide"):
        original = getattr(module, name)

        def probe(*args, _original=original, **kwargs):
            seen.append(pyro_lock()._is_owned())
            return _original(*args, **kwargs)

        object.__setattr__(module, name, probe)
    return seen


def test_every_pyro_run_of_training_and_queries_holds_the_lock():
    model = _model(seed=5)
    seen = _lock_probe(model.module)
    model.train(max_epochs=1, plan_kwargs={"log_train_terms": True}, **TRAIN)
    for query in QUERIES.values():
        query(model)
    ppc = pyrovi.criticism.PosteriorPredictiveCheck(model.adata, {"m": model}, n_samples=2)
    ppc.log_predictive_density()
    assert len(seen) > 20 and all(seen)


def test_cellassign_em_steps_and_predict_hold_the_lock():
    pyrovi.settings.seed = 0
    adata = pyrovi.datasets.synthetic_cellassign(n_cells=60, n_types=3, n_markers_per_type=2, seed=0)
    CellAssign.setup_anndata(adata, size_factor_key="size_factor")
    model = CellAssign(adata, adata.varm["cell_type_markers"], objective="em")
    seen = _lock_probe(model.module)
    model.train(max_epochs=2, steps_per_m_step=1, early_stopping=False, accelerator="cpu", progress_bar=False)
    probabilities = model.predict()
    model.get_normalized_expression()
    assert len(seen) > 8 and all(seen)
    assert np.allclose(probabilities.sum(1), 1.0)


def test_cellassign_and_totalvi_queries_in_threads_while_scvi_trains():
    pyrovi.settings.seed = 0
    cells = pyrovi.datasets.synthetic_cellassign(n_cells=60, n_types=3, n_markers_per_type=2, seed=0)
    CellAssign.setup_anndata(cells, size_factor_key="size_factor")
    cellassign = CellAssign(cells, cells.varm["cell_type_markers"])
    cellassign.train(max_epochs=2, early_stopping=False, accelerator="cpu", progress_bar=False)
    proteins = pyrovi.data.synthetic_iid(batch_size=30, n_genes=20, n_proteins=3, n_regions=2, seed=0)
    pyrovi.model.TOTALVI.setup_anndata(proteins, protein_expression_obsm_key="protein_expression", batch_key="batch")
    totalvi = pyrovi.model.TOTALVI(proteins, n_hidden=16, n_latent=2)
    totalvi.train(max_epochs=1, **TRAIN)
    done = threading.Event()
    counts, errors = {"cellassign": 0, "totalvi": 0}, []

    def keep(name, query):
        while not done.is_set() or not counts[name]:
            try:
                assert _finite(query())
                counts[name] += 1
            except BaseException as err:  # noqa: BLE001
                errors.append(err)
                return

    threads = [
        threading.Thread(target=keep, args=("cellassign", cellassign.predict), daemon=True),
        threading.Thread(target=keep, args=("totalvi", lambda: totalvi.get_normalized_expression(n_samples=2)[1]),
                         daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        _model(seed=19).train(max_epochs=2, **TRAIN)
    finally:
        done.set()
        for thread in threads:
            thread.join(WAIT)
    assert not errors, errors[0]
    assert all(counts.values())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_process_forked_while_another_thread_holds_the_lock_can_take_it():
    held, release = threading.Event(), threading.Event()

    def hold():
        with pyro_lock():
            held.set()
            release.wait(WAIT)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(WAIT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: fine for this child
            pid = os.fork()
        if pid == 0:  # the child: the holding thread does not exist here
            os._exit(0 if pyro_lock().acquire(timeout=5) else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        release.set()
        thread.join(WAIT)


def test_ctrl_c_inside_a_query_leaves_the_lock_and_pyro_free(trained):
    guide = trained.module.guide
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt

    object.__setattr__(trained.module, "guide", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            trained.get_latent_representation()
    finally:
        object.__setattr__(trained.module, "guide", guide)
    assert calls and runtime._PYRO_STACK == [] and runtime._DIM_ALLOCATOR._stack == []
    thread, outcome = _run_in_thread(trained.get_latent_representation)
    thread.join(WAIT)
    assert outcome["result"].shape == (N_CELLS, 2)


class _Hold(pl.Callback):
    """Signal that training is under way, then hold it inside an epoch until released."""

    def __init__(self):
        self.started, self.release = threading.Event(), threading.Event()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 0:
            self.started.set()
            self.release.wait(WAIT)


SAME_MODEL_CALLS = {
    "get_latent_representation": (lambda m: m.get_latent_representation(), "querying it must wait"),
    "sample_posterior": (lambda m: m.sample_posterior(num_samples=2), "querying it must wait"),
    "differential_expression": (lambda m: m.differential_expression(groupby="labels"), "querying it must wait"),
    "train": (lambda m: m.train(max_epochs=1, **TRAIN), "already being trained by another thread"),
    "save": (lambda m: m.save("never_written"), "saving it must wait"),
    "to_device": (lambda m: m.to_device("cpu"), "moving it to another device must wait"),
    "criticism": (
        lambda m: pyrovi.criticism.PosteriorPredictiveCheck(m.adata, {"m": m}, n_samples=2).log_predictive_density(),
        "querying it must wait",
    ),
}


@pytest.mark.parametrize("call", sorted(SAME_MODEL_CALLS))
def test_a_model_training_in_another_thread_refuses_queries_training_saving_and_moving(tmp_path, monkeypatch, call):
    monkeypatch.chdir(tmp_path)
    model = _model(seed=6)
    before = _state(model)
    hold = _Hold()
    thread, outcome = _run_in_thread(lambda: model.train(max_epochs=2, callbacks=[hold], **TRAIN))
    try:
        assert hold.started.wait(WAIT)
        fn, phrase = SAME_MODEL_CALLS[call]
        with pytest.raises(RuntimeError, match="being trained") as info:
            fn(model)
        assert phrase in str(info.value)
        assert "join the training thread" in str(info.value) or "Wait for that train()" in str(info.value)
    finally:
        hold.release.set()
        thread.join(WAIT)
    assert "error" not in outcome, outcome.get("error")
    assert not (tmp_path / "never_written").exists()
    assert model.is_trained and _epochs(model) == [0, 1] and not _same(before, _state(model))
    model.get_latent_representation()  # once training has ended the model answers again


def test_train_called_again_from_inside_training_is_refused_and_leaves_the_model_consistent():
    model = _model(seed=7)
    before = _state(model)

    class _Reenter(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            model.train(max_epochs=1, **TRAIN)

    with pytest.raises(RuntimeError, match="already being trained by this thread"):
        model.train(max_epochs=2, callbacks=[_Reenter()], **TRAIN)
    assert _same(before, _state(model)) and not model.is_trained and model.history == {}
    model.train(max_epochs=1, **TRAIN)  # the claim was released
    assert model.is_trained


def test_training_in_a_thread_leaves_the_signal_handlers_and_shows_a_progress_bar(capsys):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    model = _model(seed=8)
    thread, outcome = _run_in_thread(lambda: model.train(max_epochs=2, **{**TRAIN, "progress_bar": True}))
    thread.join(WAIT * 2)
    assert "error" not in outcome, outcome.get("error")
    assert model.is_trained and _epochs(model) == [0, 1]
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert "Training" in capsys.readouterr().err


def test_a_failed_query_releases_the_lock(trained):
    with pytest.raises(ValueError, match="mc_samples"):
        trained.get_latent_representation(mc_samples=0)
    acquired = []
    thread = threading.Thread(target=lambda: acquired.append(pyro_lock().acquire(timeout=5) and pyro_lock().release() is None))
    thread.start()
    thread.join(WAIT)
    assert acquired == [True]


# ------------------------------------------------------------------------------------------------
# Ctrl-C and errors inside training


@pytest.mark.parametrize(
    "where",
    ["training batch", "real SIGINT", "validation batch"],
)
def test_ctrl_c_in_epoch_1_raises_keyboard_interrupt_and_keeps_epoch_0(where):
    model = _model(seed=9)
    handler = signal.getsignal(signal.SIGINT)
    stop = _Stop(epoch=1, batch=1 if where != "validation batch" else 0, validation=where == "validation batch",
                 real_signal=where == "real SIGINT")
    with pytest.raises(KeyboardInterrupt):
        model.train(max_epochs=4, callbacks=[stop], **TRAIN)
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning would have left SIGINT ignored
    assert _same(_state(model), stop.epoch_end_state[0])  # weights of the last finished epoch
    assert model.is_trained and _epochs(model) == [0]
    assert list(model.history["elbo_validation"].index) == [0]
    assert model.train_indices is not None and model.trainer.finished_epochs == 1
    model.train(max_epochs=1, **TRAIN)  # trains on, the history continuing after epoch 0
    assert _epochs(model) == [0, 1]


def test_ctrl_c_in_the_first_epoch_leaves_an_untrained_model_untouched():
    model = _model(seed=10)
    before = _state(model)
    with pytest.raises(KeyboardInterrupt):
        model.train(max_epochs=3, callbacks=[_Stop(epoch=0, batch=2)], **TRAIN)
    assert _same(before, _state(model)) and not model.is_trained and model.history == {}
    assert model.train_indices is None
    model.train(max_epochs=1, **TRAIN)
    assert model.is_trained and _epochs(model) == [0]


def test_ctrl_c_in_a_second_train_call_keeps_the_first_one():
    model = _model(seed=11)
    model.train(max_epochs=2, **TRAIN)
    after_first, history = _state(model), {k: v.copy() for k, v in model.history.items()}
    with pytest.raises(KeyboardInterrupt):
        model.train(max_epochs=3, callbacks=[_Stop(epoch=0, batch=1)], **TRAIN)
    assert _same(after_first, _state(model)) and model.is_trained
    assert history.keys() == model.history.keys() and all(history[k].equals(model.history[k]) for k in history)


def test_ctrl_c_after_the_last_epoch_keeps_every_epoch():
    model = _model(seed=21)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stop = _Stop(epoch=-1)

    class _StopAtEnd(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.train(max_epochs=2, callbacks=[stop, _StopAtEnd()], **TRAIN)
    assert _same(_state(model), stop.epoch_end_state[1]) and _epochs(model) == [0, 1] and model.is_trained
    model.train(max_epochs=1, **TRAIN)
    assert _epochs(model) == [0, 1, 2]
    assert {s: signal.getsignal(s) for s in handlers} == handlers


def test_step_level_history_is_cut_back_to_the_last_finished_epoch():
    model = _model(seed=12)
    with pytest.raises(KeyboardInterrupt):
        model.train(max_epochs=3, callbacks=[_Stop(epoch=1, batch=2)], plan_kwargs={"on_step": True},
                    log_every_n_steps=1, **TRAIN)
    steps = model.history["train_loss_step"]
    assert list(steps.index) == [0, 1, 2, 3]  # epoch 0's four steps; none of the interrupted epoch
    assert list(model.history["elbo_train_epoch"].index) == [0]


@pytest.mark.parametrize("error", [ValueError, RuntimeError, SystemExit])
def test_an_error_inside_training_leaves_the_model_at_its_last_finished_epoch(error):
    model = _model(seed=13)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    filters = list(warnings.filters)
    stop = _Stop(epoch=1, batch=2, error=error)
    with pytest.raises(error):
        model.train(max_epochs=3, callbacks=[stop], **TRAIN)
    assert _same(_state(model), stop.epoch_end_state[0]) and model.is_trained and _epochs(model) == [0]
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert list(warnings.filters) == filters
    assert model.trainer.stopped_by.__class__ is error


def test_an_interrupt_inside_a_pyro_handler_leaves_no_handler_behind():
    """A Ctrl-C landing between a handler's entry onto Pyro's global stack and its ``with`` block."""
    model = _model(seed=14)

    class _HalfEntered(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1:
                import pyro

                pyro.plate("cells", 10).__enter__()  # entered, never exited: on the stack and holding a dim
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.train(max_epochs=3, callbacks=[_HalfEntered()], **TRAIN)
    assert runtime._PYRO_STACK == [] and runtime._DIM_ALLOCATOR._stack == []
    model.train(max_epochs=1, **TRAIN)  # a later run is not confused by a stale "cells" plate
    assert _epochs(model) == [0, 1]


def test_the_progress_bar_is_closed_when_training_is_interrupted():
    model = _model(seed=15)
    bars = []

    class _Grab(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            bars.extend(c for c in trainer.callbacks if isinstance(c, pyrovi.train.EpochProgressBar))

    with pytest.raises(KeyboardInterrupt):
        model.train(max_epochs=3, callbacks=[_Grab(), _Stop(epoch=1)], **{**TRAIN, "progress_bar": True})
    assert bars and all(bar._bar is None for bar in bars)


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    model = _model(seed=16)
    stop = _Stop(epoch=2, batch=1)
    with pytest.raises(KeyboardInterrupt):
        model.train(max_epochs=4, callbacks=[stop], checkpoint_dir=str(tmp_path), **TRAIN)
    assert _epochs(model) == [0, 1] and _same(_state(model), stop.epoch_end_state[1])
    model.train(max_epochs=4, resume_from=str(tmp_path / "last.ckpt"), **TRAIN)
    assert _epochs(model) == [0, 1, 2, 3] and model.is_trained


def test_ctrl_c_at_a_cellassign_epoch_start_keeps_the_last_finished_epoch():
    pyrovi.settings.seed = 0
    adata = pyrovi.datasets.synthetic_cellassign(n_cells=60, n_types=3, n_markers_per_type=2, seed=1)
    CellAssign.setup_anndata(adata, size_factor_key="size_factor")
    model = CellAssign(adata, adata.varm["cell_type_markers"], objective="em")
    ends = {}

    class _StopAtStart(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            ends[trainer.current_epoch] = {k: v.detach().clone() for k, v in pl_module.module.state_dict().items()}

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.train(max_epochs=4, steps_per_m_step=1, early_stopping=False, batch_size=16, callbacks=[_StopAtStart()],
                    accelerator="cpu", progress_bar=False)
    assert _same(_state(model), ends[1]) and model.is_trained and _epochs(model) == [0, 1]
    assert np.allclose(model.predict().sum(1), 1.0)


def test_a_numerical_fault_still_keeps_the_last_finite_state():
    model = _model(seed=17)
    seen = {}

    class _Poison(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 1:
                seen["state"] = {k: v.detach().clone() for k, v in pl_module.module.state_dict().items()}
                batch["X"][0, 0] = float("nan")

    with pytest.raises(pyrovi.NumericalFaultError):
        model.train(max_epochs=3, callbacks=[_Poison()], **TRAIN)
    assert _same(_state(model), seen["state"]) and not model.is_trained


# ------------------------------------------------------------------------------------------------
# SIGTERM


_SIGTERM_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    import lightning.pytorch as pl
    import pyrovi
    from pyrovi.model import SCVI

    class Term(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 2 and batch_idx == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    pyrovi.settings.seed = 0
    adata = pyrovi.data.synthetic_iid(batch_size=30, n_genes=20, n_proteins=2, n_regions=2, seed=0)
    SCVI.setup_anndata(adata, batch_key="batch")
    model = SCVI(adata, n_hidden=16, n_latent=2)
    try:
        model.train(max_epochs=5, checkpoint_dir=sys.argv[1], callbacks=[Term()], accelerator="cpu",
                    progress_bar=False, batch_size=16)
    finally:
        print("epochs", list(model.history["elbo_train"].index), "trained", model.is_trained, flush=True)
    print("not reached", flush=True)
    """
)


def test_sigterm_ends_the_process_with_a_failure_status_and_a_checkpoint_to_resume_from(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(_SIGTERM_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(pyrovi.__file__).parents[1])}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "ckpt")], capture_output=True, text=True,
                          timeout=240, env=env)
    assert done.returncode == 143, done.stderr[-2000:]
    assert "epochs [0, 1] trained True" in done.stdout and "not reached" not in done.stdout
    assert "SIGTERM" in done.stderr and "last.ckpt" in done.stderr and "resume_from" in done.stderr
    checkpoint = tmp_path / "ckpt" / "last.ckpt"
    assert checkpoint.is_file()
    model = _model(seed=0)
    model.train(max_epochs=4, resume_from=str(checkpoint), **TRAIN)
    assert _epochs(model) == [0, 1, 2, 3] and model.is_trained


def test_sigterm_in_the_main_thread_raises_exit_status_143_and_restores_the_handler():
    model = _model(seed=18)
    handler = signal.getsignal(signal.SIGTERM)

    class _Term(_Stop):
        def _maybe_stop(self, trainer, batch_idx):
            if trainer.current_epoch == self.epoch and batch_idx == self.batch:
                os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler sets a flag; the loop stops after the batch
                time.sleep(0.05)  # let the handler run

    term = _Term(epoch=1, batch=1)
    with pytest.raises(SystemExit) as info:
        model.train(max_epochs=3, callbacks=[term], **TRAIN)
    assert info.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is handler
    assert _same(_state(model), term.epoch_end_state[0]) and _epochs(model) == [0] and model.is_trained
