"""Matrix helpers of the matrix fields: supported types, column alignment and float32 encoding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from ._backed import BackedRows, is_backed_matrix
from ._lookup import format_names

# A numpy array or any scipy sparse matrix/array (a string, so that it is never evaluated).
Matrix = "np.ndarray | sparse.spmatrix | BackedRows"


def check_matrix(matrix: Any, source: str) -> Matrix:
    """``matrix`` as a 2-D numpy array or scipy sparse matrix; other types get a clear error."""
    if matrix is None:
        raise ValueError(f"{source} is empty (None); store the data there or set the field up from another place.")
    if isinstance(matrix, BackedRows):
        return matrix
    if is_backed_matrix(matrix):
        # a backed AnnData: keep the matrix on disk and read rows when a minibatch needs them
        return BackedRows(matrix)
    if sparse.issparse(matrix):
        return matrix
    if isinstance(matrix, np.ndarray):
        if matrix.ndim != 2:
            raise ValueError(f"{source} must be 2-dimensional, got shape {matrix.shape}.")
        if matrix.dtype.kind not in "biuf":
            raise TypeError(f"{source} must hold numbers, got dtype {matrix.dtype}.")
        return matrix
    raise TypeError(
        f"{source} has unsupported type {type(matrix).__name__}; convert it to a numpy array or a scipy "
        "sparse matrix (or read the AnnData with anndata.read_h5ad(path, backed='r'))."
    )


def unique_names(index: pd.Index, source: str, fix: str) -> list[str]:
    """The names of ``index`` as plain strings; duplicates get an error with the ``fix``."""
    names = [str(n) for n in index]
    if len(set(names)) != len(names):
        duplicated = pd.Index(names)[pd.Index(names).duplicated()].unique()
        raise ValueError(f"{source} are not unique (e.g. {format_names(duplicated)}); {fix}")
    return names


def column_indexer(
    target_names: Sequence[str], registered_names: Sequence[str], source: str, what: str
) -> np.ndarray | None:
    """Positions in ``target_names`` of ``registered_names``, or None when they are already identical.

    The target may hold the registered names in any order and extra ones, which are dropped.
    """
    if list(target_names) == list(registered_names):
        return None  # the common case, checked without building string indexes (every query passes here)
    target = pd.Index([str(n) for n in target_names])
    registered = pd.Index(registered_names)
    if target.equals(registered):
        return None
    missing = registered[~registered.isin(target)]
    if len(missing):
        raise ValueError(
            f"{len(missing)} of the {len(registered)} {what} the model was set up with are missing from "
            f"{source}: {format_names(missing)}. The data must contain every registered {what[:-1]} (in any "
            f"order; extra ones are ignored): add the missing ones (e.g. as all-zero columns) or set the model "
            f"up on the shared {what} only."
        )
    if not target.is_unique:
        duplicated = target[target.duplicated() & target.isin(registered)].unique()
        if len(duplicated):
            raise ValueError(
                f"{source} holds some registered {what} more than once ({format_names(duplicated)}); make the "
                "names unique (e.g. adata.var_names_make_unique())."
            )
        # Only unregistered names repeat: look the registered ones up among the first occurrences.
        first = ~target.duplicated()
        positions = np.flatnonzero(first)
        return positions[target[first].get_indexer(registered)]
    return target.get_indexer(registered)


def select_columns(matrix: Matrix, columns: np.ndarray | None) -> Matrix:
    """The columns ``columns`` of ``matrix`` (all of them, uncopied, when None); sparse stays sparse."""
    if columns is None:
        return matrix
    if isinstance(matrix, BackedRows):
        return matrix.select_columns(columns)
    if sparse.issparse(matrix):
        if matrix.format not in ("csr", "csc"):
            matrix = matrix.tocsr()
        return matrix[:, columns]
    return matrix[:, columns]


def to_float32(matrix: Matrix) -> np.ndarray | sparse.csr_matrix:
    """``matrix`` as a float32 numpy array or float32 CSR matrix, copying only what must change.

    A dense result that still shares memory with ``matrix`` is a read-only view, so that a loader cannot
    modify the user's AnnData by writing into it.
    """
    if isinstance(matrix, BackedRows):
        return matrix  # float32 rows are made as they are read
    if sparse.issparse(matrix):
        csr = matrix.tocsr()
        # csr_matrix() shares the arrays when the dtype already fits, and turns sparse arrays into matrices.
        return sparse.csr_matrix(csr, dtype=np.float32)
    dense = np.asarray(matrix).astype(np.float32, copy=False)
    if np.may_share_memory(dense, matrix):
        dense = dense.view()
        dense.flags.writeable = False
    return dense
