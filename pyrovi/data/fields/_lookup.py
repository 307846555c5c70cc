"""Looking up obs columns, layers and obsm entries by name, with errors that list what is available."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
from anndata import AnnData

from .._errors import MissingKeyError


def format_names(names: Iterable[Any], max_items: int = 10) -> str:
    """``'a', 'b', ... (+n more)``: enough names to recognise the problem without flooding the message."""
    names = list(names)
    shown = ", ".join(repr(str(n)) for n in names[:max_items])
    if len(names) > max_items:
        shown += f", ... (+{len(names) - max_items} more)"
    return f"[{shown}]"


def did_you_mean(key: str, available: Iterable[Any]) -> str:
    """`` Did you mean 'x'?`` naming the available names closest to a mistyped ``key`` ('' when none is close)."""
    close = difflib.get_close_matches(str(key), [str(name) for name in available], n=3, cutoff=0.6)
    if not close:
        return ""
    return f" Did you mean {' or '.join(repr(name) for name in close)}?"


def obs_source(obs_key: str) -> str:
    return f"adata.obs[{obs_key!r}]"


def get_obs_column(adata: AnnData, obs_key: str) -> pd.Series:
    """The column ``adata.obs[obs_key]``; a clear error lists the columns when it is absent."""
    if obs_key not in adata.obs.columns:
        raise MissingKeyError(
            f"adata.obs has no column {obs_key!r}.{did_you_mean(obs_key, adata.obs.columns)} Available columns: "
            f"{format_names(adata.obs.columns, 50)}; pass one of them, or add the column to adata.obs."
        )
    column = adata.obs[obs_key]
    if isinstance(column, pd.DataFrame):
        # Duplicated column names make adata.obs[key] a DataFrame, which no field can encode.
        raise ValueError(f"adata.obs has several columns named {obs_key!r}; rename them so that each is unique.")
    return column


def get_obsm(adata: AnnData, obsm_key: str) -> Any:
    """The entry ``adata.obsm[obsm_key]``; a clear error lists the entries when it is absent."""
    if obsm_key not in adata.obsm:
        raise MissingKeyError(
            f"adata.obsm has no entry {obsm_key!r}.{did_you_mean(obsm_key, adata.obsm.keys())} Available "
            f"entries: {format_names(adata.obsm.keys(), 50)}; pass one of them, or store the matrix in adata.obsm."
        )
    return adata.obsm[obsm_key]


def check_key_list(keys: Sequence[str] | None, argument: str) -> list[str]:
    """``keys`` as a list of distinct strings (``[]`` for None)."""
    if keys is None:
        return []
    if isinstance(keys, str):
        # A bare string would otherwise be read as a list of one-letter keys.
        raise TypeError(f"{argument} must be a list of column names, got the string {keys!r}; use [{keys!r}].")
    keys = list(keys)
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"{argument} must contain strings, got {key!r}.")
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise ValueError(f"{argument} names the same column more than once: {format_names(duplicated)}.")
    return keys
