"""A cheap fingerprint of the data a registry reads, to notice data changed in place after setup.

Validating the counts reads every stored value; the fingerprint reads a fixed sample of them and the
identity, shape and dtype of each registered array, so it costs about a millisecond whatever the number of
cells. :meth:`pyrovi.data.AnnDataManager.check_unchanged` compares it with the one taken when the data was
validated and validates again only when it differs.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from .fields import BaseField
from .fields._backed import BackedRows, is_backed_matrix

#: Stored values of a matrix read by the fingerprint (spread over the whole matrix, the same every time).
_N_SAMPLE_VALUES = 4096
#: Cells of an obs column or DataFrame read by the fingerprint.
_N_SAMPLE_ROWS = 256


def _positions(n: int, k: int) -> np.ndarray:
    """``k`` (or ``n``, when fewer) fixed positions spread evenly over ``range(n)``."""
    if n <= k:
        return np.arange(n, dtype=np.int64)
    return np.linspace(0, n - 1, num=k).astype(np.int64)


def _crc(*arrays: Any) -> int:
    value = 0
    for array in arrays:
        value = zlib.crc32(np.ascontiguousarray(array).tobytes(), value)
    return value


def _matrix_print(matrix: Any, with_identity: bool) -> tuple:
    """Type, shape, dtype and a checksum of a fixed sample of the values of one matrix."""
    if isinstance(matrix, BackedRows) or is_backed_matrix(matrix):
        # on disk: reading values would cost a disk access; the shape and dtype still tell a replaced file
        return ("backed", tuple(matrix.shape), str(matrix.dtype), str(getattr(matrix, "filename", "")))
    identity = (id(matrix),) if with_identity else ()
    if sparse.issparse(matrix):
        data = matrix.data
        positions = _positions(data.size, _N_SAMPLE_VALUES)
        minor = matrix.col if matrix.format == "coo" else getattr(matrix, "indices", np.zeros(0))
        minor = minor[positions] if minor.size == data.size else minor[:0]
        identity += (id(data),) if with_identity else ()
        return ("sparse", matrix.format, *identity, tuple(matrix.shape), str(matrix.dtype), int(matrix.nnz),
                _crc(data[positions], minor))
    if isinstance(matrix, pd.DataFrame):
        rows = _positions(matrix.shape[0], _N_SAMPLE_ROWS)
        values = matrix.iloc[rows].to_numpy()
        sample = _crc(values) if values.dtype.kind in "biuf" else zlib.crc32(repr(values.tolist()).encode())
        return ("frame", *identity, tuple(matrix.shape), tuple(map(str, matrix.columns)),
                tuple(map(str, matrix.dtypes)), sample)
    if isinstance(matrix, np.ndarray):
        if matrix.ndim == 2 and matrix.size:
            generator = np.random.default_rng(0)  # the same cells and genes every time
            n = min(matrix.size, _N_SAMPLE_VALUES)
            rows = generator.integers(0, matrix.shape[0], size=n)
            cols = generator.integers(0, matrix.shape[1], size=n)
            sample = _crc(matrix[rows, cols])
        else:
            sample = _crc(matrix.reshape(-1)[: _N_SAMPLE_VALUES])
        return ("dense", *identity, tuple(matrix.shape), str(matrix.dtype), sample)
    return ("other", type(matrix).__name__, *identity, tuple(getattr(matrix, "shape", ())))


def _column_print(column: pd.Series) -> tuple:
    """Dtype and a checksum of a fixed sample of the cells of one obs column."""
    rows = _positions(len(column), _N_SAMPLE_ROWS)
    if isinstance(column.dtype, pd.CategoricalDtype):
        categories = column.cat.categories
        return ("categorical", len(categories), zlib.crc32(repr(list(categories[:100])).encode()),
                _crc(column.cat.codes.to_numpy()[rows]))
    values = column.iloc[rows].to_numpy()
    if values.dtype.kind in "biuf":
        return (str(column.dtype), _crc(values))
    return (str(column.dtype), zlib.crc32(repr(values.tolist()).encode()))


def _field_print(adata: Any, field: BaseField, state: dict[str, Any]) -> tuple:
    """The fingerprint of what one field reads (any failure to read it is a fingerprint of its own)."""
    try:
        where = field.data_registry(state)
        container = adata
        mod_key = where.get("mod_key")
        if mod_key is not None:
            container = adata.mod[mod_key]
        with_identity = not getattr(container, "is_view", False)  # a view hands out new objects every time
        attr_name, attr_key = where.get("attr_name"), where.get("attr_key")
        if attr_name == "X":
            return _matrix_print(container.X, with_identity)
        if attr_name == "layers":
            return _matrix_print(container.layers[attr_key], with_identity)
        if attr_name == "obsm":
            return _matrix_print(container.obsm[attr_key], with_identity)
        if attr_name == "obs":
            keys = [attr_key] if isinstance(attr_key, str) else list(attr_key or [])
            return tuple(_column_print(container.obs[key]) for key in keys)
        return ("unread", str(attr_name))
    except Exception as err:  # noqa: BLE001 - the validation that follows names the real problem
        return ("unreadable", type(err).__name__)


def data_fingerprint(adata: Any, fields: Sequence[BaseField], states: dict[str, dict[str, Any]]) -> dict[str, tuple]:
    """``{registry_key: fingerprint}`` of the data each non-empty field reads, plus the data's shape.

    Parameters
    ----------
    adata
        The registered AnnData (or MuData).
    fields
        The registered fields.
    states
        Their states.

    Returns
    -------
    Equal for two calls when nothing the fields read was replaced, reshaped or (in the sampled values)
    changed; otherwise the entries of the changed fields differ.

    Examples
    --------
    >>> fingerprint = data_fingerprint(manager.adata, manager.fields, manager.registry["field_states"])
    """
    prints: dict[str, tuple] = {"_shape": tuple(getattr(adata, "shape", ()))}
    for field in fields:
        if not field.is_empty:
            prints[field.registry_key] = _field_print(adata, field, states[field.registry_key])
    return prints
