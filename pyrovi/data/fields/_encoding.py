"""Encoding an obs column as integer codes into a list of string categories."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
import pandas as pd

from .._errors import UnseenCategoryError
from ._lookup import format_names


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


def _unique_values(column: pd.Series, source: str) -> tuple[np.ndarray, list[Any]]:
    """Per-cell codes into the column's distinct values, and those values (raw, not yet strings).

    A pandas Categorical gives its categories in their declared order, unused ones included; any other
    column its distinct values sorted (by their string form when they cannot be compared, e.g. mixed types).
    """
    _check_no_missing(column, source)
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.cat.codes.to_numpy().astype(np.int64), list(column.cat.categories)
    try:
        try:
            codes, uniques = pd.factorize(column, sort=True)
        except TypeError as err:
            if "unhashable" in str(err):
                raise
            # Values that cannot be compared (mixed types) are sorted by their string form instead.
            codes, uniques = pd.factorize(column, sort=False)
            order = np.argsort([str(u) for u in uniques], kind="stable")
            codes = np.argsort(order)[codes]
            uniques = [uniques[i] for i in order]
    except TypeError as err:
        example = next((v for v in column if not _is_hashable(v)), None)
        raise TypeError(
            f"{source} holds values that cannot be categories ({type(example).__name__} such as {example!r}; "
            f"{err}). A categorical column needs one label (a string or a number) per cell: convert it, e.g. "
            f"adata.obs[...] = adata.obs[...].astype(str)."
        ) from None
    return np.asarray(codes, dtype=np.int64), list(uniques)


def _is_hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _merge_labels(
    codes: np.ndarray, uniques: list[Any], source: str, warn: bool
) -> tuple[np.ndarray, list[str], list[Any]]:
    """Codes into the distinct string labels of ``uniques``, the labels, and one raw value per label.

    Labels are strings so that they survive JSON unchanged. Distinct values that print alike (``1`` and
    ``"1"``, ``True`` and ``"True"``) become one category; with ``warn`` a warning names them.
    """
    labels = [str(u) for u in uniques]
    distinct = list(dict.fromkeys(labels))
    if len(distinct) == len(labels):
        return codes, labels, list(uniques)
    groups: dict[str, list[Any]] = {}
    for label, value in zip(labels, uniques):
        groups.setdefault(label, []).append(value)
    if warn:
        collisions = [values for values in groups.values() if len(values) > 1]
        shown = "; ".join(
            " and ".join(f"{v!r} ({type(v).__name__})" for v in values) + f" -> {str(values[0])!r}"
            for values in collisions[:5]
        )
        more = f" (and {len(collisions) - 5} more groups)" if len(collisions) > 5 else ""
        warnings.warn(
            f"{source} holds distinct values that are the same category once written as strings, and are "
            f"merged into one: {shown}{more}. If they are different categories, rename them (e.g. "
            "adata.obs[key] = adata.obs[key].map(...)); to silence this, make the column one type, e.g. "
            "adata.obs[key] = adata.obs[key].astype(str).",
            UserWarning,
            stacklevel=5,
        )
    position = {label: i for i, label in enumerate(distinct)}
    codes = np.array([position[label] for label in labels], dtype=np.int64)[codes]
    return codes, distinct, [groups[label][0] for label in distinct]


def factorize(column: pd.Series, source: str, warn: bool = True) -> tuple[np.ndarray, list[str]]:
    """Per-cell codes into ``labels``, and ``labels``: the categories of a column being registered.

    A pandas Categorical keeps the order of its declared categories but only those some cell has: unused
    declared categories (left behind by subsetting, or declared in bulk) are dropped, with a warning,
    so that e.g. ``n_batch`` counts the batches present. Any other column gets its unique values in sorted
    order. Labels are strings; values that print alike are merged, with a warning (``warn``).
    """
    codes, uniques = _unique_values(column, source)
    if isinstance(column.dtype, pd.CategoricalDtype) and len(uniques):
        used = np.zeros(len(uniques), dtype=bool)
        used[np.unique(codes)] = True
        if not used.all():
            unused = [uniques[i] for i in np.flatnonzero(~used)]
            if warn:
                warnings.warn(
                    f"{source} declares {len(unused)} categor{'ies' if len(unused) > 1 else 'y'} that no cell has "
                    f"({format_names(unused, 5)}); {'they are' if len(unused) > 1 else 'it is'} left out, so the "
                    f"model has {int(used.sum())} categor{'ies' if used.sum() > 1 else 'y'} (those of the cells). "
                    "To silence this, drop them first: adata.obs[key] = adata.obs[key].cat.remove_unused_categories().",
                    UserWarning,
                    stacklevel=4,
                )
            kept = np.flatnonzero(used)
            remap = np.full(len(uniques), -1, dtype=np.int64)
            remap[kept] = np.arange(len(kept))
            codes, uniques = remap[codes], [uniques[i] for i in kept]
    codes, labels, _ = _merge_labels(codes, uniques, source, warn)
    return codes, labels


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number (not a bool), else None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _number_label(label: str) -> float | None:
    """The number a registered label was written from (``"1"``, ``"2.5"``, ``"1.0"``), else None.

    Only the way Python writes a number counts: ``"01"`` or ``"1e3"`` are strings a user typed.
    """
    try:
        value = float(label)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    written = {repr(value), str(value)}
    if value.is_integer():
        written.add(str(int(value)))
    return value if label in written else None


def _match_by_value(labels: list[str], values: list[Any], categories: list[str]) -> dict[str, str]:
    """Registered categories for the ``labels`` of numbers not registered as written, matched by value.

    A column of floats (``1.0``) is then read with a setup made on integers (``1``), and the other way round.
    A number equal to several registered categories (``"1"`` and ``"1.0"``) is left unmatched.
    """
    registered = set(categories)
    by_value: dict[float, list[str]] = {}
    for category in categories:
        number = _number_label(category)
        if number is not None:
            by_value.setdefault(number, []).append(category)
    matches = {}
    for label, value in zip(labels, values):
        if label in registered:
            continue
        number = _number(value)
        if number is not None and len(by_value.get(number, [])) == 1:
            matches[label] = by_value[number][0]
    return matches


def encode_categories(
    column: pd.Series, categories: list[str], source: str, extend_categories: bool = False, warn: bool = False
) -> tuple[np.ndarray, list[str]]:
    """Codes of ``column`` under the registered ``categories``, and the categories used.

    Values are matched to the registered categories as strings, and numbers also by value (a float column
    ``1.0`` matches a category registered from the integer ``1``). Categories that occur in the column but
    not in ``categories`` raise an error, or are appended after the registered ones when
    ``extend_categories`` is set. With ``warn``, values that print alike warn as at registration.
    """
    raw_codes, uniques = _unique_values(column, source)
    codes, labels, values = _merge_labels(raw_codes, uniques, source, warn)
    position = {category: i for i, category in enumerate(categories)}
    for label, category in _match_by_value(labels, values, list(categories)).items():
        position[label] = position[category]
    occurring = np.unique(codes)
    unseen = [labels[i] for i in occurring if labels[i] not in position]
    if unseen and not extend_categories:
        raise UnseenCategoryError(
            f"{source} has {len(unseen)} categor{'ies' if len(unseen) > 1 else 'y'} not seen when the model "
            f"was set up: {format_names(unseen)}. Registered categories: {format_names(categories)}. Pass "
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
