"""Tests of AnnDataLoader: minibatch contents, coverage, sizes and reproducible shuffling."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from pyrovi._constants import REGISTRY_KEYS
from pyrovi.dataloaders._ann_dataloader import AnnDataLoader

N_CELLS, N_GENES = 53, 7


class FakeManager:
    """The part of AnnDataManager the loaders use: registered arrays and summary statistics."""

    def __init__(self, arrays: dict):
        self._arrays = arrays
        self.summary_stats = {"n_cells": next(iter(arrays.values())).shape[0]}

    def get_arrays(self) -> dict:
        return self._arrays


def make_arrays(sparse: bool = True, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(1.0, size=(N_CELLS, N_GENES)).astype(np.float32)
    return {
        REGISTRY_KEYS.X_KEY: sp.csr_matrix(counts) if sparse else counts,
        REGISTRY_KEYS.BATCH_KEY: rng.integers(2, size=N_CELLS).astype(np.int64),
        REGISTRY_KEYS.LABELS_KEY: rng.integers(3, size=N_CELLS).astype(np.int64),
        REGISTRY_KEYS.SIZE_FACTOR_KEY: rng.uniform(0.5, 2.0, size=N_CELLS).astype(np.float32),
        REGISTRY_KEYS.CAT_COVS_KEY: rng.integers(4, size=(N_CELLS, 2)).astype(np.int64),
        REGISTRY_KEYS.CONT_COVS_KEY: rng.normal(size=(N_CELLS, 3)).astype(np.float32),
        REGISTRY_KEYS.PROTEIN_EXP_KEY: sp.csr_matrix(rng.poisson(5.0, size=(N_CELLS, 4)).astype(np.float32)),
    }


def dense(array) -> np.ndarray:
    return array.toarray() if sp.issparse(array) else np.asarray(array)


def visited(loader) -> np.ndarray:
    return torch.cat([batch[REGISTRY_KEYS.INDICES_KEY] for batch in loader]).numpy()


@pytest.mark.parametrize("sparse", [True, False])
def test_shapes_and_dtypes(sparse):
    arrays = make_arrays(sparse)
    batch = next(iter(AnnDataLoader(FakeManager(arrays), batch_size=10)))
    expected = {
        "X": ((10, N_GENES), torch.float32),
        "batch": ((10,), torch.int64),
        "labels": ((10,), torch.int64),
        "size_factor": ((10,), torch.float32),
        "extra_categorical_covs": ((10, 2), torch.int64),
        "extra_continuous_covs": ((10, 3), torch.float32),
        "proteins": ((10, 4), torch.float32),
        "indices": ((10,), torch.int64),
    }
    assert set(batch) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert tuple(batch[key].shape) == shape, key
        assert batch[key].dtype == dtype, key


def test_casts_to_model_dtypes():
    arrays = make_arrays(sparse=False)
    arrays["X"] = arrays["X"].astype(np.int32)  # integer counts are served as float32
    arrays["batch"] = arrays["batch"].astype(np.float32)  # category codes stored as floats become int64
    batch = next(iter(AnnDataLoader(FakeManager(arrays), batch_size=5)))
    assert batch["X"].dtype == torch.float32 and batch["batch"].dtype == torch.int64


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
def test_rows_match_source_at_indices(sparse, shuffle):
    arrays = make_arrays(sparse)
    subset = np.array([50, 3, 17, 4, 40, 22, 9, 31, 0, 12, 45])
    loader = AnnDataLoader(FakeManager(arrays), indices=subset, batch_size=4, shuffle=shuffle, seed=3)
    for batch in loader:
        rows = batch["indices"].numpy()
        for key, array in arrays.items():
            np.testing.assert_array_equal(batch[key].numpy(), dense(array)[rows], err_msg=key)


@pytest.mark.parametrize("shuffle", [True, False])
def test_each_cell_once_per_epoch(shuffle):
    loader = AnnDataLoader(FakeManager(make_arrays()), batch_size=8, shuffle=shuffle, seed=0)
    for _ in range(2):
        order = visited(loader)
        assert len(order) == N_CELLS
        np.testing.assert_array_equal(np.sort(order), np.sort(loader.indices))
    if not shuffle:
        np.testing.assert_array_equal(order, np.arange(N_CELLS))


def test_subset_indices_and_n_obs():
    subset = np.arange(0, N_CELLS, 3)
    loader = AnnDataLoader(FakeManager(make_arrays()), indices=list(subset), batch_size=4, shuffle=True)
    assert loader.n_obs == len(subset)
    assert loader.indices.dtype == np.int64
    np.testing.assert_array_equal(np.sort(visited(loader)), subset)


def test_boolean_mask_indices():
    mask = np.zeros(N_CELLS, dtype=bool)
    mask[[2, 5, 7]] = True
    loader = AnnDataLoader(FakeManager(make_arrays()), indices=mask)
    np.testing.assert_array_equal(loader.indices, [2, 5, 7])


def test_batch_sizes_and_drop_last():
    manager = FakeManager(make_arrays())
    sizes = [len(b["indices"]) for b in AnnDataLoader(manager, batch_size=10)]
    assert sizes == [10, 10, 10, 10, 10, 3]
    sizes = [len(b["indices"]) for b in AnnDataLoader(manager, batch_size=10, drop_last=True, shuffle=True)]
    assert sizes == [10, 10, 10, 10, 10]
    assert len(AnnDataLoader(manager, batch_size=10, drop_last=True)) == 5


def test_default_batch_size_and_seed_from_settings(monkeypatch):
    from pyrovi._settings import settings

    monkeypatch.setattr(settings, "batch_size", 16)
    loader = AnnDataLoader(FakeManager(make_arrays()))
    assert [len(b["indices"]) for b in loader] == [16, 16, 16, 5]
    assert loader.seed == settings.seed


def test_reproducible_shuffling():
    manager = FakeManager(make_arrays())

    def epochs(seed):
        loader = AnnDataLoader(manager, batch_size=8, shuffle=True, seed=seed)
        return visited(loader), visited(loader)

    first, second = epochs(1)
    again_first, again_second = epochs(1)
    np.testing.assert_array_equal(first, again_first)
    np.testing.assert_array_equal(second, again_second)
    assert not np.array_equal(first, second)  # successive epochs differ
    assert not np.array_equal(first, epochs(2)[0])  # different seeds differ
    assert not np.array_equal(first, np.arange(N_CELLS))


def test_data_and_attributes_subset():
    loader = AnnDataLoader(FakeManager(make_arrays()), data_and_attributes=["X", "batch"], batch_size=5)
    assert set(next(iter(loader))) == {"X", "batch", "indices"}


def test_sparse_stays_sparse_in_memory():
    loader = AnnDataLoader(FakeManager(make_arrays(sparse=True)))
    assert sp.issparse(loader.dataset.arrays["X"])


def test_num_workers_default_zero():
    assert AnnDataLoader(FakeManager(make_arrays())).num_workers == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"data_and_attributes": ["X", "nope"]}, KeyError, "not registered"),
        ({"indices": [0, N_CELLS]}, IndexError, "must lie in"),
        ({"indices": []}, ValueError, "empty"),
        ({"indices": [0.5, 1.0]}, TypeError, "integer row positions"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_sampler": None}, TypeError, "own sampler"),
    ],
)
def test_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        AnnDataLoader(FakeManager(make_arrays()), **kwargs)


def test_rejects_object_without_manager_interface():
    with pytest.raises(TypeError, match="summary_stats"):
        AnnDataLoader(object())


def test_sparse_keys_serve_csr_tensors_with_the_same_rows():
    arrays = make_arrays(sparse=True)
    loader = AnnDataLoader(FakeManager(arrays), batch_size=10, shuffle=True, sparse_keys=["X", "batch"])
    for batch in loader:
        x = batch[REGISTRY_KEYS.X_KEY]
        assert x.layout == torch.sparse_csr and x.dtype == torch.float32
        rows = batch[REGISTRY_KEYS.INDICES_KEY].numpy()
        np.testing.assert_array_equal(x.to_dense().numpy(), dense(arrays[REGISTRY_KEYS.X_KEY])[rows])
        # a dense array named in sparse_keys is served dense, as always
        assert batch[REGISTRY_KEYS.BATCH_KEY].layout == torch.strided


def test_sequential_minibatches_of_consecutive_rows_equal_indexed_ones():
    # sequential passes slice runs of rows instead of fancy indexing: same contents
    arrays = make_arrays(sparse=True)
    indices = np.r_[np.arange(5, 25), [40, 2, 3]]
    for batch in AnnDataLoader(FakeManager(arrays), indices=indices, batch_size=10):
        rows = batch[REGISTRY_KEYS.INDICES_KEY].numpy()
        np.testing.assert_array_equal(batch["X"].numpy(), dense(arrays["X"])[rows])


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sequential_sparse_minibatches_are_copies_of_the_rows():
    # queries slice runs of a CSR matrix straight from its arrays: the same rows, in memory of their own
    arrays = make_arrays(sparse=True)
    source = arrays["X"]
    before = source.toarray()
    for batch in AnnDataLoader(FakeManager(arrays), batch_size=10, sparse_keys=["X"]):
        x = batch["X"]
        assert x.layout == torch.sparse_csr and x.dtype == torch.float32
        rows = batch[REGISTRY_KEYS.INDICES_KEY].numpy()
        np.testing.assert_array_equal(x.to_dense().numpy(), before[rows])
        x.values().fill_(-1.0)
        x.col_indices().zero_()
    np.testing.assert_array_equal(source.toarray(), before)  # the user's matrix is untouched


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sequential_sparse_minibatches_sum_duplicate_entries():
    # a CSR matrix may store one entry twice (it means their sum); sequential batches must agree
    data, indices, indptr = np.array([1.0, 2.0, 3.0, 4.0], np.float32), np.array([0, 0, 2, 1]), np.array([0, 2, 3, 4])
    matrix = sp.csr_matrix((data, indices, indptr), shape=(3, 3))
    assert not matrix.has_canonical_format
    batch = next(iter(AnnDataLoader(FakeManager({"X": matrix}), batch_size=3, sparse_keys=["X"])))
    x = batch["X"]
    np.testing.assert_array_equal(x.to_dense().numpy(), [[3.0, 0, 0], [0, 0, 3.0], [0, 4.0, 0]])
    assert x.values().numel() == 3  # duplicates summed, so log1p of the stored values stays right
