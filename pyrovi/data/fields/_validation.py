"""Vectorised checks of matrix values (raw counts, finiteness) that name the first offending entry."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import sparse

from ._matrix import Matrix

_NONFINITE = "NaN or infinite"
_NEGATIVE = "negative"
_NONINTEGER = "non-integer"

# Dense matrices are checked a block of rows at a time so that the boolean masks stay small
# (about 16 MB) even for a matrix of several gigabytes.
_BLOCK_ELEMENTS = 1 << 24


def summed_duplicates(matrix: Matrix) -> Matrix:
    """``matrix`` with duplicate sparse entries summed: the values every reader of it sees.

    A CSR/CSC/COO matrix may store one cell and gene more than once (e.g. built from ``(data, (row, col))``
    triplets by hand); every read (``toarray``, row slicing then densifying, torch's sparse tensors) adds
    such entries up, so they are checked as their sum: two halves that make a count are a count. A matrix
    without duplicates is returned as it is; otherwise a summed copy is made and the user's matrix is left
    untouched (scipy's ``sum_duplicates`` works in place).
    """
    if not sparse.issparse(matrix) or matrix.format not in ("csr", "csc", "coo"):
        return matrix
    if matrix.format == "coo":
        if matrix.nnz == 0 or not _coo_has_duplicates(matrix):
            return matrix
    elif matrix.has_canonical_format or not _compressed_has_duplicates(matrix):
        return matrix
    summed = matrix.copy()
    summed.sum_duplicates()
    return summed


def _compressed_has_duplicates(matrix: Matrix) -> bool:
    """Whether a CSR/CSC matrix stores some (row, column) twice; unsorted indices alone are not duplicates."""
    if matrix.nnz < 2:
        return False
    # position along the compressed axis of each stored entry, then (major, minor) keys
    major = np.repeat(np.arange(len(matrix.indptr) - 1, dtype=np.int64), np.diff(matrix.indptr))
    keys = major * np.int64(matrix.shape[1] if matrix.format == "csr" else matrix.shape[0]) + matrix.indices
    keys = np.sort(keys, kind="stable")
    return bool(np.any(keys[1:] == keys[:-1]))


def _coo_has_duplicates(matrix: Matrix) -> bool:
    keys = np.sort(matrix.row.astype(np.int64) * np.int64(matrix.shape[1]) + matrix.col)
    return bool(np.any(keys[1:] == keys[:-1]))


def _problem_kinds(dtype: np.dtype, is_count_data: bool) -> list[str]:
    """The kinds of bad values worth looking for in a matrix of ``dtype``, most serious first."""
    if dtype.kind in "bu":
        return []
    if dtype.kind == "i":
        return [_NEGATIVE] if is_count_data else []
    if dtype.kind == "f":
        return [_NONFINITE, _NEGATIVE, _NONINTEGER] if is_count_data else [_NONFINITE]
    raise TypeError(f"Expected a numeric matrix, got dtype {dtype}.")


def _kind_mask(kind: str, values: np.ndarray) -> np.ndarray:
    if kind == _NONFINITE:
        return ~np.isfinite(values)
    if kind == _NEGATIVE:
        return values < 0
    # Only reached once the values are known to be finite, so floor() is exact.
    return values != np.floor(values)


def _first_sparse(matrix: Matrix, kind: str) -> tuple[int, int, int, float] | None:
    """``(count, row, column, value)`` of the bad values of a sparse matrix, checking only stored entries.

    The stored values are scanned in blocks, so the masks stay small however many entries there are.
    """
    if matrix.format not in ("csr", "csc", "coo"):
        matrix = matrix.tocsr()
    data = matrix.data
    count, best = 0, None  # best: (row, col, position) of the first offending entry so far
    for start in range(0, data.size, _BLOCK_ELEMENTS):
        mask = _kind_mask(kind, data[start : start + _BLOCK_ELEMENTS])
        positions = np.flatnonzero(mask)
        count += positions.size
        if positions.size == 0 or (best is not None and matrix.format == "csr"):
            continue
        positions += start
        if matrix.format == "csr":
            # Entries are stored row by row, so the first position lies in the first offending row.
            rows = np.searchsorted(matrix.indptr, positions[:1], side="right") - 1
            cols = matrix.indices[positions[:1]]
        elif matrix.format == "csc":
            rows = matrix.indices[positions]
            cols = np.searchsorted(matrix.indptr, positions, side="right") - 1
        else:
            rows, cols = matrix.row[positions], matrix.col[positions]
        first = np.lexsort((cols, rows))[0]
        candidate = (int(rows[first]), int(cols[first]), int(positions[first]))
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    if best is None:
        return None
    row, col, position = best
    return count, row, col, float(data[position])


def _first_dense(matrix: np.ndarray, kind: str) -> tuple[int, int, int, float] | None:
    """``(count, row, column, value)`` of the bad values of a dense matrix, checked a block of rows at a time."""
    n_rows, n_cols = matrix.shape
    step = max(1, _BLOCK_ELEMENTS // max(n_cols, 1))
    count, first = 0, None
    for start in range(0, n_rows, step):
        mask = _kind_mask(kind, matrix[start : start + step])
        n_bad = int(np.count_nonzero(mask))
        if n_bad and first is None:
            row, col = divmod(int(np.flatnonzero(mask)[0]), n_cols)
            first = (start + row, col)
        count += n_bad
    if first is None:
        return None
    return count, first[0], first[1], float(matrix[first])


def validate_values(
    matrix: Matrix,
    obs_names: Sequence[str],
    col_names: Sequence[str],
    source: str,
    is_count_data: bool,
    hint: str,
    col_label: str = "gene",
) -> None:
    """Raise a ValueError naming the first bad entry of ``matrix``.

    With ``is_count_data`` every stored value must be a finite, non-negative integer; otherwise it must be
    finite. The message names the kind of problem, how many entries have it, and the first one's cell,
    column and value.
    """
    matrix = summed_duplicates(matrix)
    dense = not sparse.issparse(matrix)
    for kind in _problem_kinds(matrix.dtype, is_count_data):
        found = _first_dense(matrix, kind) if dense else _first_sparse(matrix, kind)
        if found is None:
            continue
        count, row, col, value = found
        plural = "s" if count > 1 else ""
        where = f"the first is {value!r} in cell {str(obs_names[row])!r}, {col_label} {str(col_names[col])!r}"
        if is_count_data:
            if kind == _NEGATIVE and matrix.dtype.kind == "i" and matrix.dtype.itemsize < 4:
                hint = (
                    f"{matrix.dtype} holds counts only up to {np.iinfo(matrix.dtype).max}: larger counts "
                    f"converted to {matrix.dtype} wrap around to negative values. Convert the original counts "
                    f"with .astype(np.int32) or .astype(np.float32) instead. {hint}"
                )
            raise ValueError(
                f"{source} must hold raw counts (finite, non-negative integers) but has {count} {kind} "
                f"value{plural}; {where}. {hint}"
            )
        raise ValueError(f"{source} has {count} {kind} value{plural}; {where}. Replace or remove them.")


def nonzero_lines(matrix: Matrix) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the rows and of the columns of ``matrix`` that hold at least one non-zero value.

    Scanned a block at a time (like the value checks) and never summed, so no total can overflow a narrow
    dtype (float16, int8) and stored zeros of a sparse matrix count as zeros.
    """
    n_rows, n_cols = matrix.shape
    rows, cols = np.zeros(n_rows, dtype=bool), np.zeros(n_cols, dtype=bool)
    if not sparse.issparse(matrix):
        step = max(1, _BLOCK_ELEMENTS // max(n_cols, 1))
        for start in range(0, n_rows, step):
            nonzero = matrix[start : start + step] != 0
            rows[start : start + step] = nonzero.any(axis=1)
            cols |= nonzero.any(axis=0)
        return rows, cols
    if matrix.format not in ("csr", "csc", "coo"):
        matrix = matrix.tocsr()
    for start in range(0, matrix.data.size, _BLOCK_ELEMENTS):
        positions = start + np.flatnonzero(matrix.data[start : start + _BLOCK_ELEMENTS] != 0)
        if matrix.format == "coo":
            rows[matrix.row[positions]] = True
            cols[matrix.col[positions]] = True
            continue
        # CSR stores rows along indptr and columns in indices; CSC the other way round.
        major = np.searchsorted(matrix.indptr, positions, side="right") - 1
        minor = matrix.indices[positions]
        if matrix.format == "csc":
            major, minor = minor, major
        rows[major] = True
        cols[minor] = True
    return rows, cols


def warn_empty(cells_with_counts: np.ndarray, genes_with_counts: np.ndarray | None, source: str) -> None:
    """Warn about cells (and, unless ``genes_with_counts`` is None, genes) whose counts are all zero."""
    n_empty = int(np.count_nonzero(~cells_with_counts))
    if n_empty:
        warnings.warn(
            f"{n_empty} of {cells_with_counts.size} cells have no counts in {source} (all zeros). They carry no "
            "information for training; consider removing them, e.g. with "
            "scanpy.pp.filter_cells(adata, min_counts=1).",
            UserWarning,
            stacklevel=3,
        )
    if genes_with_counts is None:
        return
    n_empty = int(np.count_nonzero(~genes_with_counts))
    if n_empty:
        warnings.warn(
            f"{n_empty} of {genes_with_counts.size} genes have no counts in {source} (all zeros). The model "
            "learns nothing about them but still spends time on them; consider removing them before setup, "
            "e.g. with scanpy.pp.filter_genes(adata, min_counts=1).",
            UserWarning,
            stacklevel=3,
        )


#: Largest integer that float16 and float32 represent exactly (every smaller integer is exact too).
_EXACT_INTEGER = {np.dtype(np.float16): 2**11, np.dtype(np.float32): 2**24}


def largest_value(matrix: Matrix) -> float:
    """The largest stored value of ``matrix`` (0 for an empty one)."""
    values = matrix.data if sparse.issparse(matrix) else matrix
    return float(values.max()) if values.size else 0.0


def warn_count_dtype(dtype: np.dtype, max_value: float, source: str) -> None:
    """Warn when the dtype of a count matrix may have lost counts, or when float32 cannot hold them exactly.

    Narrow integers wrap around (or clip) counts they cannot hold when data is converted to them, which no
    later check can detect; float16 rounds integers above 2048. pyrovi computes in float32, exact for counts
    up to 2**24.
    """
    fix = f"Store the raw counts as int32 or float32, e.g. {source} = counts.astype(np.float32)."
    if dtype.kind in "iu" and dtype.itemsize < 4:
        warnings.warn(
            f"{source} stores counts as {dtype}, which holds at most {np.iinfo(dtype).max}: if the counts were "
            f"converted to {dtype} from a wider type, larger counts wrapped around or were clipped without any "
            f"error, and pyrovi cannot tell. {fix}",
            UserWarning,
            stacklevel=3,
        )
    elif dtype == np.float16 and max_value > _EXACT_INTEGER[dtype]:
        warnings.warn(
            f"{source} stores counts as float16, which rounds integers above 2048 (its largest value is "
            f"{max_value:g}): those counts were rounded when they were stored. {fix}",
            UserWarning,
            stacklevel=3,
        )
    if max_value > _EXACT_INTEGER[np.dtype(np.float32)]:
        warnings.warn(
            f"{source} holds counts up to {max_value:g}, above 2**24, the largest integer float32 represents "
            "exactly; pyrovi computes in float32, so such counts are rounded. Raw UMI counts are far smaller: "
            "check that these are raw counts of single cells.",
            UserWarning,
            stacklevel=3,
        )
