"""Tests of DataSplitter: set sizes, disjointness, reproducibility, explicit sets and Lightning use."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from pyrovi._constants import REGISTRY_KEYS
from pyrovi.dataloaders._ann_dataloader import AnnDataLoader
from pyrovi.dataloaders._data_splitting import DataSplitter


class FakeManager:
    """The part of AnnDataManager the loaders use: registered arrays and summary statistics."""

    def __init__(self, n_cells: int, n_genes: int = 5):
        rng = np.random.default_rng(0)
        self._arrays = {
            REGISTRY_KEYS.X_KEY: sp.csr_matrix(rng.poisson(1.0, size=(n_cells, n_genes)).astype(np.float32)),
            REGISTRY_KEYS.BATCH_KEY: rng.integers(2, size=n_cells),
        }
        self.summary_stats = {"n_cells": n_cells}

    def get_arrays(self) -> dict:
        return self._arrays


def sizes(loader) -> list[int]:
    return [len(batch[REGISTRY_KEYS.INDICES_KEY]) for batch in loader]


@pytest.mark.parametrize(
    ("n", "train_size", "validation_size", "expected"),
    [
        (100, 0.9, None, (90, 10, 0)),
        (10, 0.7, None, (7, 3, 0)),  # 0.7 * 10 is 7.000000000000001 in floating point
        (101, 0.9, None, (91, 10, 0)),  # ceil for training
        (100, 0.8, 0.1, (80, 10, 10)),
        (105, 0.8, 0.15, (84, 15, 6)),  # floor for validation
        (50, 1.0, None, (50, 0, 0)),
        (7, 0.85, 0.15, (6, 1, 0)),
    ],
)
def test_sizes(n, train_size, validation_size, expected):
    splitter = DataSplitter(FakeManager(n), train_size=train_size, validation_size=validation_size)
    assert (splitter.n_train, splitter.n_val, splitter.n_test) == expected


def test_disjoint_covering_and_int64():
    splitter = DataSplitter(FakeManager(200), train_size=0.7, validation_size=0.2, seed=4)
    parts = [splitter.train_idx, splitter.val_idx, splitter.test_idx]
    assert all(part.dtype == np.int64 for part in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(200))


def test_seeded_split_is_reproducible():
    manager = FakeManager(200)
    a = DataSplitter(manager, seed=3)
    b = DataSplitter(manager, seed=3)
    c = DataSplitter(manager, seed=4)
    np.testing.assert_array_equal(a.train_idx, b.train_idx)
    np.testing.assert_array_equal(a.val_idx, b.val_idx)
    assert not np.array_equal(a.train_idx, c.train_idx)


def test_unshuffled_split_is_in_order():
    # scvi-tools' order: validation cells first, then training, then test
    splitter = DataSplitter(FakeManager(20), train_size=0.5, validation_size=0.25, shuffle_set_split=False)
    np.testing.assert_array_equal(splitter.val_idx, np.arange(5))
    np.testing.assert_array_equal(splitter.train_idx, np.arange(5, 15))
    np.testing.assert_array_equal(splitter.test_idx, np.arange(15, 20))


def test_explicit_indices():
    manager = FakeManager(30)
    first = DataSplitter(manager, train_size=0.6, validation_size=0.3, seed=9)
    again = DataSplitter(manager, train_idx=first.train_idx, val_idx=list(first.val_idx), test_idx=first.test_idx)
    for name in ("train_idx", "val_idx", "test_idx"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
        assert getattr(again, name).dtype == np.int64
    only_train = DataSplitter(manager, train_idx=[0, 1, 2, 3])
    assert (only_train.n_train, only_train.n_val, only_train.n_test) == (4, 0, 0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"train_size": 0.0}, ValueError, "train_size"),
        ({"train_size": 1.2}, ValueError, "train_size"),
        ({"train_size": 0.8, "validation_size": 0.3}, ValueError, "must be between 0 and 1"),
        ({"validation_size": -0.1}, ValueError, "validation_size"),
        ({"train_idx": [0, 1], "val_idx": [1, 2]}, ValueError, "disjoint"),
        ({"train_idx": [0, 99]}, IndexError, "must lie in"),
        ({"val_idx": [0, 1]}, ValueError, "need train_idx"),
        ({"shuffle": True}, TypeError, "shuffl"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        DataSplitter(FakeManager(20), **kwargs)


def test_loaders_cover_their_sets():
    splitter = DataSplitter(FakeManager(100), train_size=0.6, validation_size=0.2, batch_size=16, seed=1)
    for loader, idx in [
        (splitter.train_dataloader(), splitter.train_idx),
        (splitter.val_dataloader(), splitter.val_idx),
        (splitter.test_dataloader(), splitter.test_idx),
    ]:
        assert isinstance(loader, AnnDataLoader)
        seen = np.concatenate([batch["indices"].numpy() for batch in loader])
        np.testing.assert_array_equal(np.sort(seen), np.sort(idx))
    # validation and test are served in order; training is shuffled
    val_seen = np.concatenate([batch["indices"].numpy() for batch in splitter.val_dataloader()])
    np.testing.assert_array_equal(val_seen, splitter.val_idx)
    train_seen = np.concatenate([batch["indices"].numpy() for batch in splitter.train_dataloader()])
    assert not np.array_equal(train_seen, splitter.train_idx)


def test_empty_sets_give_empty_lists():
    splitter = DataSplitter(FakeManager(40), train_size=1.0)
    assert splitter.val_dataloader() == [] and splitter.test_dataloader() == []


@pytest.mark.parametrize(
    ("n_train", "expected"),
    [(65, [32, 32]), (66, [32, 32]), (67, [32, 32, 3]), (64, [32, 32]), (2, [2])],
)
def test_tiny_last_training_batch_is_dropped(n_train, expected):
    splitter = DataSplitter(FakeManager(n_train), train_size=1.0, batch_size=32)
    assert sorted(sizes(splitter.train_dataloader()), reverse=True) == expected


def test_loader_kwargs_are_passed_on():
    splitter = DataSplitter(FakeManager(40), batch_size=8, data_and_attributes=["X"])
    assert set(next(iter(splitter.train_dataloader()))) == {"X", "indices"}


# Lightning warns about the empty validation list by design; that is the behaviour under test.
@pytest.mark.filterwarnings("ignore:Total length of .* is zero")
def test_lightning_fit_skips_empty_validation():
    import lightning.pytorch as pl
    import torch

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(5, 1)
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch["indices"])
            return self.layer(batch["X"]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            raise AssertionError("there is no validation set")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    splitter = DataSplitter(FakeManager(50), train_size=1.0, batch_size=16)
    model = Tiny()
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=splitter)
    seen = torch.cat(model.seen).numpy()
    assert len(seen) == 48 and len(np.unique(seen)) == 48  # 50 = 3 * 16 + 2: the 2-cell batch is dropped
