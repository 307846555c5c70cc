"""pyrovi.settings: one seed for torch, numpy and Pyro; validated values."""

import logging

import numpy as np
import pytest
import torch

import pyrovi


def test_seed_seeds_torch_and_numpy_together():
    pyrovi.settings.seed = 11
    a = (torch.rand(3), np.random.rand(3))
    pyrovi.settings.seed = 11
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert pyrovi.settings.seed == 11
    with pytest.raises(ValueError, match="non-negative integer"):
        pyrovi.settings.seed = -1


def test_verbosity_accepts_names_and_levels():
    old = pyrovi.settings.verbosity
    try:
        pyrovi.settings.verbosity = "warning"
        assert pyrovi.settings.verbosity == logging.WARNING
        assert logging.getLogger("pyrovi").level == logging.WARNING
        pyrovi.settings.verbosity = logging.DEBUG
        assert logging.getLogger("pyrovi").level == logging.DEBUG
        with pytest.raises(ValueError, match="verbosity"):
            pyrovi.settings.verbosity = "chatty"
    finally:
        pyrovi.settings.verbosity = old
    assert "batch_size=128" in repr(pyrovi.settings)


@pytest.mark.parametrize("name", ["dl_num_workers", "num_threads", "dl_pin_memory"])
def test_scvi_tools_only_settings_warn_and_change_nothing(name):
    before = {n: getattr(pyrovi.settings, n) for n in ("seed", "batch_size", "encode_batch_size", "progress_bar")}
    with pytest.warns(UserWarning, match=f"settings.{name} .a scvi-tools setting. has no effect in pyrovi"):
        setattr(pyrovi.settings, name, 2)
    assert {n: getattr(pyrovi.settings, n) for n in before} == before


def test_a_misspelt_setting_is_an_error_with_a_suggestion():
    with pytest.raises(AttributeError, match="Did you mean 'batch_size'"):
        pyrovi.settings.batchsize = 64


def test_train_reads_settings_batch_size_when_not_given(monkeypatch):
    """settings.batch_size is the training minibatch unless train(batch_size=...) says otherwise (issue 19)."""
    seen = []

    class RecordingSplitter(pyrovi.dataloaders.DataSplitter):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs["batch_size"])
            super().__init__(*args, **kwargs)

    adata = pyrovi.datasets.synthetic_iid(n_cells=80, n_genes=10, seed=0)
    pyrovi.model.SCVI.setup_anndata(adata)
    model = pyrovi.model.SCVI(adata, n_latent=2, n_hidden=8)
    monkeypatch.setattr(model, "_data_splitter_cls", RecordingSplitter)
    old = pyrovi.settings.batch_size
    try:
        pyrovi.settings.batch_size = 37
        model.train(max_epochs=1, accelerator="cpu")
        model.train(max_epochs=1, accelerator="cpu", batch_size=16)
    finally:
        pyrovi.settings.batch_size = old
    assert seen == [37, 16]
