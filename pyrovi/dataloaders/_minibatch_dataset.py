"""A map-style dataset that returns a whole minibatch of cells per access."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import Dataset

from pyrovi._constants import REGISTRY_KEYS
from pyrovi.data.fields._backed import BackedRows

#: Registry keys that hold category codes; everything else numeric is a measurement.
_CATEGORICAL_KEYS = frozenset(
    {REGISTRY_KEYS.BATCH_KEY, REGISTRY_KEYS.LABELS_KEY, REGISTRY_KEYS.CAT_COVS_KEY}
)


def _target_dtype(key: str, array: np.ndarray | sp.spmatrix) -> np.dtype:
    """The numpy dtype a registry array is served as.

    Category codes become int64 because embeddings and ``one_hot`` need integer indices; measurements become
    float32, the dtype of every network weight. An unknown key keeps integer codes integer.
    """
    if key in _CATEGORICAL_KEYS:
        return np.dtype(np.int64)
    if key in {
        REGISTRY_KEYS.X_KEY,
        REGISTRY_KEYS.SIZE_FACTOR_KEY,
        REGISTRY_KEYS.CONT_COVS_KEY,
        REGISTRY_KEYS.PROTEIN_EXP_KEY,
    }:
        return np.dtype(np.float32)
    if np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_):
        return np.dtype(np.int64)
    return np.dtype(np.float32)


def _prepare(key: str, array: object) -> np.ndarray | sp.csr_matrix:
    """Convert one registry array once, so that serving a minibatch is only row selection."""
    if isinstance(array, BackedRows):
        return array  # stays on disk; a minibatch's rows are read (sorted) when it is served
    if sp.issparse(array):
        # CSR makes row selection cheap; the cast happens on the sparse data, never on a dense copy.
        return array.tocsr().astype(_target_dtype(key, array), copy=False)
    array = np.asarray(array)
    return np.ascontiguousarray(array, dtype=_target_dtype(key, array))


class MinibatchDataset(Dataset):
    """Registry arrays of a set of cells, served a whole minibatch at a time.

    ``dataset[positions]`` takes the positions (into ``indices``) of every cell of a minibatch at once and
    returns one dict of tensors: one fancy-indexing per array instead of one access per cell, and no AnnData
    indexing at all. Sparse arrays stay sparse in memory and only the selected rows are densified.

    Parameters
    ----------
    arrays
        Registry key -> array with one row per cell of the AnnData (numpy or scipy sparse).
    indices
        Row positions in the AnnData of the cells this dataset serves.
    """

    def __init__(
        self,
        arrays: Mapping[str, object],
        indices: np.ndarray,
        device: torch.device | None = None,
        sparse_keys: Sequence[str] = (),
    ):
        self.arrays = {key: _prepare(key, value) for key, value in arrays.items()}
        self.sparse_keys = frozenset(sparse_keys)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.device = None if device is None else torch.device(device)
        if self.device is not None:
            # only this dataset's cells move: a training and a validation loader together hold one copy
            self._on_device = {key: _to_device(value, self.indices, self.device) for key, value in self.arrays.items()}
            self._indices_on_device = torch.from_numpy(self.indices).to(self.device)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, positions: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        if self.device is not None:
            return self._gather_on_device(positions)
        rows = self.indices[np.asarray(positions, dtype=np.int64)]
        # a sequential pass (queries) asks for runs of consecutive rows: a CSR slice is far cheaper than
        # fancy row indexing; dense arrays keep the indexing copy so no batch is a view of the user's data
        run = slice(int(rows[0]), int(rows[-1]) + 1) if _is_run(rows) else None
        batch = {}
        for key, array in self.arrays.items():
            if run is not None and key in self.sparse_keys and _is_canonical_csr(array):
                batch[key] = _csr_run_tensor(array, run.start, run.stop)
                continue
            selected = array[run] if run is not None and sp.issparse(array) else array[rows]
            if sp.issparse(selected) and key in self.sparse_keys:
                batch[key] = _csr_tensor(selected)
                continue
            if sp.issparse(selected):
                selected = selected.toarray()
            batch[key] = torch.from_numpy(np.ascontiguousarray(selected))
        batch[REGISTRY_KEYS.INDICES_KEY] = torch.from_numpy(rows.copy())
        return batch

    def _gather_on_device(self, positions: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        # the dataset's rows already live on the device: one index_select per array, no host transfer
        positions = torch.as_tensor(np.asarray(positions, dtype=np.int64)).to(self.device, non_blocking=True)
        batch = {}
        for key, array in self._on_device.items():
            selected = array.index_select(0, positions)
            batch[key] = selected.to_dense() if selected.is_sparse else selected
        batch[REGISTRY_KEYS.INDICES_KEY] = self._indices_on_device.index_select(0, positions)
        return batch


def _torch_csr(crow: np.ndarray, col: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """A torch sparse CSR tensor over these (canonical: sorted, in-range, unique) arrays, not copied."""
    with warnings.catch_warnings():
        # torch calls its sparse CSR layout "beta"; the operations used here (embedding_bag over its arrays) are stable
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(crow), torch.from_numpy(col), torch.from_numpy(values), size=shape,
            check_invariants=False,  # canonical scipy CSR arrays: valid by construction
        )


def _csr_tensor(matrix: sp.csr_matrix) -> torch.Tensor:
    """A scipy CSR minibatch as a torch sparse CSR tensor (its own copy of the arrays)."""
    matrix = matrix.tocsr()
    if not matrix.has_canonical_format:
        matrix = matrix.copy()
        matrix.sum_duplicates()  # also sorts the column indices, as torch's CSR expects
    return _torch_csr(
        matrix.indptr.astype(np.int64), matrix.indices.astype(np.int64), np.ascontiguousarray(matrix.data),
        matrix.shape,
    )


def _is_canonical_csr(array: object) -> bool:
    """Whether ``array`` is a scipy CSR matrix with sorted, unique column indices (checked once, cached)."""
    return sp.issparse(array) and array.format == "csr" and array.has_canonical_format


def _csr_run_tensor(matrix: sp.csr_matrix, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of a canonical CSR matrix as a torch CSR tensor, sliced straight from its arrays.

    A run of rows is a contiguous stretch of ``indices`` and ``data``: copying those stretches is about 6x
    cheaper than scipy's row slicing plus the conversion in :func:`_csr_tensor`. The copies keep the
    minibatch independent of the user's matrix; the index dtype stays scipy's (int32 or int64).
    """
    offsets = matrix.indptr[start : stop + 1]
    first, last = int(offsets[0]), int(offsets[-1])
    return _torch_csr(
        offsets - offsets[0],
        matrix.indices[first:last].astype(offsets.dtype),
        np.array(matrix.data[first:last], dtype=np.float32),
        (stop - start, matrix.shape[1]),
    )


def _is_run(rows: np.ndarray) -> bool:
    """Whether ``rows`` are consecutive increasing row positions."""
    return len(rows) > 1 and rows[-1] - rows[0] == len(rows) - 1 and bool(np.all(np.diff(rows) == 1))


def _to_device(array: np.ndarray | sp.csr_matrix, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """The ``rows`` of a registry array as one tensor on ``device``; sparse stays sparse (COO)."""
    if isinstance(array, BackedRows):
        raise ValueError(
            "load_data_on_device=True needs the data in memory, but the AnnData is backed (on disk); read it "
            "without backed='r', or train with load_data_on_device=False."
        )
    # fancy indexing makes a fresh, writable host copy of this dataset's cells (never the user's memory)
    array = array[rows]
    if sp.issparse(array):
        coo = array.tocoo()
        indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
        values = torch.from_numpy(coo.data)
        # indices come from scipy and are in range; coalesce() sums duplicates a CSR matrix may hold
        tensor = torch.sparse_coo_tensor(indices, values, coo.shape, check_invariants=False).coalesce()
        return tensor.to(device)
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def device_nbytes(array: object) -> int:
    """Bytes an array takes once moved to a device (COO sparse: values plus two int64 indices)."""
    if isinstance(array, BackedRows):
        return 0
    if sp.issparse(array):
        return int(array.nnz) * (array.dtype.itemsize + 16)
    return int(np.asarray(array).nbytes)
