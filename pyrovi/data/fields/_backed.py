"""Rows of an on-disk matrix of a backed AnnData, read a minibatch or a chunk at a time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from scipy import sparse

#: Rows read at once when a backed matrix is scanned whole (validation, library sizes).
CHUNK_ROWS = 10_000


def is_backed_matrix(matrix: Any) -> bool:
    """Whether ``matrix`` is an on-disk matrix of a backed AnnData (sparse or dense HDF5 dataset)."""
    try:
        from anndata.abc import CSCDataset, CSRDataset
    except ImportError:  # anndata < 0.10.? without the abstract classes
        return False
    if isinstance(matrix, (CSRDataset, CSCDataset)):
        return True
    return type(matrix).__module__.startswith("h5py") and getattr(matrix, "ndim", 0) == 2


class BackedRows:
    """A cells x genes matrix that stays on disk; rows are read when asked for.

    ``rows[indices]`` reads those rows, in increasing order (one sorted, contiguous-where-possible read
    of the HDF5 file), and returns them in the order asked for as a float32 CSR matrix (or float32
    numpy array for dense data), restricted to the registered columns. Scans over all rows
    (:meth:`chunks`, :meth:`sum`) hold :data:`CHUNK_ROWS` rows at a time, so memory is bounded by the
    chunk and the minibatch, never by the number of cells.

    Parameters
    ----------
    dataset
        ``adata.X`` (or a layer) of an AnnData read with ``anndata.read_h5ad(path, backed="r")``.
    columns
        Positions of the registered genes among the file's columns; all of them when None.

    Examples
    --------
    >>> import anndata
    >>> pyrovi.datasets.synthetic_iid(n_genes=50).write_h5ad("counts.h5ad")
    >>> backed = anndata.read_h5ad("counts.h5ad", backed="r")
    >>> rows = BackedRows(backed.X)
    >>> rows[np.array([10, 3])].shape
    (2, 50)
    """

    def __init__(self, dataset: Any, columns: np.ndarray | None = None):
        self.dataset = dataset
        self.columns = columns
        n_cols = dataset.shape[1] if columns is None else len(columns)
        self.shape = (int(dataset.shape[0]), int(n_cols))
        self.dtype = np.dtype(dataset.dtype)
        self.ndim = 2
        self.is_sparse = not type(dataset).__module__.startswith("h5py")

    def select_columns(self, columns: np.ndarray | None) -> BackedRows:
        """The same rows restricted to ``columns`` (positions among this matrix's columns)."""
        if columns is None:
            return self
        composed = columns if self.columns is None else self.columns[columns]
        return BackedRows(self.dataset, composed)

    def _read(self, rows: np.ndarray | slice) -> np.ndarray | sparse.csr_matrix:
        block = self.dataset[rows] if self.is_sparse else self.dataset[rows, :]
        if self.columns is not None:
            block = block[:, self.columns]
        if sparse.issparse(block):
            return sparse.csr_matrix(block, dtype=np.float32)
        return np.asarray(block, dtype=np.float32)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray | sparse.csr_matrix:
        # HDF5 reads want increasing rows: read the distinct rows sorted, then put them in the asked order
        unique, inverse = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
        return self._read(unique)[inverse.reshape(-1)]

    def chunks(self, chunk_rows: int | None = None) -> Iterator[tuple[int, np.ndarray | sparse.csr_matrix]]:
        """Yield ``(first_row, block)`` over all rows, ``chunk_rows`` (default :data:`CHUNK_ROWS`) at a time."""
        chunk_rows = chunk_rows or CHUNK_ROWS
        for start in range(0, self.shape[0], chunk_rows):
            stop = min(start + chunk_rows, self.shape[0])
            yield start, self._read(slice(start, stop))  # a contiguous read

    def sum(self, axis: int | None = None) -> np.ndarray | float:
        """Sums over ``axis`` computed chunk by chunk (``axis=1``: each cell's total)."""
        if axis == 1:
            return np.concatenate(
                [np.asarray(block.sum(axis=1), dtype=np.float64).reshape(-1) for _, block in self.chunks()]
            )
        if axis == 0:
            return sum(np.asarray(block.sum(axis=0), dtype=np.float64).reshape(-1) for _, block in self.chunks())
        return float(sum(block.sum() for _, block in self.chunks()))

    def __repr__(self) -> str:
        kind = "sparse" if self.is_sparse else "dense"
        return f"BackedRows({kind}, shape={self.shape}, dtype={self.dtype})"
