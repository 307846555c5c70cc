"""Reading a numeric obs column as float32, checking that it is finite (and positive when required)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def numeric_values(column: pd.Series, source: str, positive: bool = False) -> np.ndarray:
    """``column`` as float32 of shape ``(n_cells,)``; non-finite (or, if ``positive``, non-positive) values fail.

    The checks run on the float32 values, so values that overflow or underflow in float32 are caught too.
    """
    if isinstance(column.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(column.dtype):
        raise TypeError(
            f"{source} must be numeric, got dtype {column.dtype}. Convert it, e.g. "
            f"adata.obs[...] = adata.obs[...].astype(float)."
        )
    # Nullable dtypes (Int64, Float64) hold pd.NA, which becomes NaN here and is reported below.
    values = column.to_numpy(dtype=np.float32, na_value=np.nan)
    _check_bad(values, ~np.isfinite(values), column.index, source, "missing or infinite", "must be finite")
    if positive:
        _check_bad(
            values, values <= 0, column.index, source, "zero or negative",
            "must be positive (it scales the expected counts of each cell)",
        )
    return values


def _check_bad(
    values: np.ndarray, bad: np.ndarray, obs_names: pd.Index, source: str, kind: str, rule: str
) -> None:
    n_bad = int(np.count_nonzero(bad))
    if n_bad:
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{source} {rule}, but has {n_bad} {kind} value{'s' if n_bad > 1 else ''}; the first is "
            f"{float(values[first])!r} in cell {str(obs_names[first])!r}. Fix or remove those cells."
        )
