"""Data-parallel training on two CPU processes (gloo): sharded cells, identical replicas, correct ELBO."""

import json

import numpy as np
import pytest
import torch
from _ddp_helpers import DumpRankState
from safetensors.torch import load_file

import pyrovi
from pyrovi.model import SCVI

N_EPOCHS = 12


def _fit(tmp_path, batch_size=64, **trainer_kwargs):
    pyrovi.settings.seed = 0
    torch.manual_seed(0)
    adata = pyrovi.datasets.synthetic_iid(n_cells=400, n_genes=60, seed=0)
    SCVI.setup_anndata(adata, batch_key="batch")
    model = SCVI(adata, n_latent=4, n_hidden=32, gene_likelihood="nb")
    model.train(max_epochs=N_EPOCHS, batch_size=batch_size, accelerator="cpu", progress_bar=False,
                plan_kwargs={"n_epochs_kl_warmup": 4}, **trainer_kwargs)
    return model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ddp")
    ddp = _fit(directory, devices=2, strategy="ddp_spawn", callbacks=[DumpRankState(str(directory))])
    # the same optimisation in one process: 2 ranks x 64 cells a step = 128 cells a step, as many steps
    single = _fit(directory, batch_size=128, devices=1)
    return directory, ddp, single


def test_both_ranks_end_with_identical_parameters(runs):
    directory, ddp, _ = runs
    rank0, rank1 = (load_file(str(directory / f"rank{r}.safetensors")) for r in (0, 1))
    assert rank0.keys() == rank1.keys() and len(rank0) > 5
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0, msg=key)
    # the replicas are what the main process got back
    for key, value in ddp.module.state_dict().items():
        torch.testing.assert_close(value.cpu(), rank0[key], rtol=0, atol=0, msg=key)


def test_ranks_see_disjoint_cells_that_change_with_the_epoch(runs):
    directory, ddp, _ = runs
    logs = [json.loads((directory / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(log["world_size"] == 2 for log in logs)
    n_train = len(ddp.train_indices)
    for epoch in ("0", "1"):
        a, b = (np.asarray(log["cells"][epoch]) for log in logs)
        assert len(a) == len(b) == int(np.ceil(n_train / 2))
        # together they cover the training set; only the padding that evens out the shards repeats
        assert set(a) | set(b) == set(ddp.train_indices.tolist())
        assert len(set(a) & set(b)) <= len(a) + len(b) - n_train
    assert logs[0]["cells"]["0"] != logs[0]["cells"]["1"]  # a fresh permutation every epoch


def test_elbo_matches_the_single_process_run(runs):
    _, ddp, single = runs
    val = single.validation_indices
    np.testing.assert_array_equal(ddp.validation_indices, val)
    elbo_ddp, elbo_single = ddp.get_elbo(indices=val), single.get_elbo(indices=val)
    # Both are unbiased SGD runs with the same steps of 128 cells (two ranks of 64 against one process of
    # 128); the cells drawn per step and the dropout masks differ, so agreement is within optimisation
    # noise, not exact. (Measured: single-process runs at batch 128 over seeds 0-4 spread -274 to -293;
    # against batch 64, which takes twice the steps, the two-rank run was 5.2% lower; against batch 128,
    # -272.5 vs -273.3, 0.3%.)
    assert abs(elbo_ddp - elbo_single) / abs(elbo_single) < 0.05
    # and the full-data scaling held: per-cell ELBOs, not ELBOs scaled by a rank's share
    assert ddp.history["elbo_validation"]["elbo_validation"].iloc[-1] == pytest.approx(-elbo_ddp, rel=0.05)
