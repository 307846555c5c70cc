"""Encoding an obs column as integer codes into a list of string categories."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._errors import UnseenCategoryError
from ._lookup import _format_names


def _check_no_missing(column: pd.Series, source: str) -> None:
    missing = column.isna().to_numpy()
    n_missing = int(missing.sum())
    if n_missing:
        first = str(column.index[int(np.flatnonzero(missing)[0])])
        raise ValueError(
            f"{source} has {n_missing} missing value{'s' if n_missing > 1 else ''} (NaN), the first in cell "
            f"{first!r}. Fill them (e.g. with an 'unknown' category) or remove those cells before setting up "
            "the data."
        )


def _factorize(column: pd.Series, source: str) -> tuple[np.ndarray, list[str]]:
    """Per-cell codes into ``labels``, and ``labels``: the column's categories as distinct strings.

    A pandas Categorical keeps its category order (unused categories included); any other column gets its
    unique values in sorted order. Labels are strings so that they survive JSON unchanged.
    """
    _check_no_missing(column, source)
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes = column.cat.codes.to_numpy().astype(np.int64)
        uniques = list(column.cat.categories)
    else:
        try:
            codes, uniques = pd.factorize(column, sort=True)
        except TypeError:
            # Values that cannot be compared (mixed types) are sorted by their string form instead.
            codes, uniques = pd.factorize(column, sort=False)
            order = np.argsort([str(u) for u in uniques], kind="stable")
            codes = np.argsort(order)[codes]
            uniques = [uniques[i] for i in order]
        codes = np.asarray(codes, dtype=np.int64)
        uniques = list(uniques)
    labels = [str(u) for u in uniques]
    # Distinct values may print alike (1 and "1"); they are one category once written as strings.
    distinct = list(dict.fromkeys(labels))
    if len(distinct) != len(labels):
        position = {label: i for i, label in enumerate(distinct)}
        codes = np.array([position[label] for label in labels], dtype=np.int64)[codes]
    return codes, distinct


def _encode(
    column: pd.Series, categories: list[str], source: str, extend_categories: bool = False
) -> tuple[np.ndarray, list[str]]:
    """Codes of ``column`` under the registered ``categories``, and the categories used.

    Categories that occur in the column but not in ``categories`` raise an error, or are appended after the
    registered ones when ``extend_categories`` is set.
    """
    codes, labels = _factorize(column, source)
    position = {category: i for i, category in enumerate(categories)}
    occurring = np.unique(codes)
    unseen = [labels[i] for i in occurring if labels[i] not in position]
    if unseen and not extend_categories:
        raise UnseenCategoryError(
            f"{source} has {len(unseen)} categor{'ies' if len(unseen) > 1 else 'y'} not seen when the model "
            f"was set up: {_format_names(unseen)}. Registered categories: {_format_names(categories)}. Pass "
            "extend_categories=True to append the new categories (e.g. query data with new batches), or map "
            "the values to registered categories.",
            source,
            unseen,
            categories,
        )
    n_registered = len(categories)
    categories = list(categories) + unseen
    for i, label in enumerate(unseen):
        position[label] = n_registered + i
    lookup = np.array([position.get(label, -1) for label in labels], dtype=np.int64)
    return lookup[codes], categories
