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


def _validate_values(
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
    dense = not sparse.issparse(matrix)
    for kind in _problem_kinds(matrix.dtype, is_count_data):
        found = _first_dense(matrix, kind) if dense else _first_sparse(matrix, kind)
        if found is None:
            continue
        count, row, col, value = found
        plural = "s" if count > 1 else ""
        where = f"the first is {value!r} in cell {str(obs_names[row])!r}, {col_label} {str(col_names[col])!r}"
        if is_count_data:
            raise ValueError(
                f"{source} must hold raw counts (finite, non-negative integers) but has {count} {kind} "
                f"value{plural}; {where}. {hint}"
            )
        raise ValueError(f"{source} has {count} {kind} value{plural}; {where}. Replace or remove them.")


def _warn_empty_cells(matrix: Matrix, source: str) -> None:
    """Warn about cells whose counts are all zero; only meaningful for non-negative data."""
    totals = np.asarray(matrix.sum(axis=1)).ravel()
    n_empty = int(np.count_nonzero(totals == 0))
    if n_empty:
        warnings.warn(
            f"{n_empty} of {matrix.shape[0]} cells have no counts in {source} (all zeros). They carry no "
            "information for training; consider removing them, e.g. with "
            "scanpy.pp.filter_cells(adata, min_counts=1).",
            UserWarning,
            stacklevel=2,
        )
