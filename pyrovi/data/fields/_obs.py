"""Fields of one obs column: a categorical covariate (batch, labels) or a number per cell (size factor)."""

from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData

from ._base import BaseField
from ._encoding import encode_categories, factorize
from ._lookup import get_obs_column, obs_source
from ._numeric import numeric_values

#: The single category of a :class:`CategoricalObsField` set up without an obs column: every cell has code 0.
CONSTANT_CATEGORY = "0"

# Rows of category mappings shown by view_registry before the rest are summarised.
_MAX_VIEW_CATEGORIES = 20


class CategoricalObsField(BaseField):
    """A categorical obs column (e.g. batch or cell type) encoded as integer codes.

    Parameters
    ----------
    registry_key
        Key of the field in the registry and in minibatches, e.g. ``"batch"``.
    attr_key
        Column of ``adata.obs``. None puts every cell in one category, :data:`CONSTANT_CATEGORY` (``"0"``),
        so that a model always has e.g. a batch index; the field is then not empty.
    summary_key
        Name of the number of categories in the summary statistics; ``f"n_{registry_key}"`` when None
        (``"n_batch"``, ``"n_labels"``).

    Notes
    -----
    State: ``{"obs_key": str | None, "categories": list[str]}``, where a code is a position in
    ``categories``. A pandas Categorical column keeps its category order (unused categories included); any
    other column gets its unique values, sorted, written as strings. Missing values are an error.
    :meth:`get_array` returns int64 codes of shape ``(n_cells,)``. Summary: ``{summary_key: n_categories}``.
    On transfer, the registered mapping is kept; unseen categories raise an error unless
    ``extend_categories=True``, which appends them after the registered ones.

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata
    >>> adata = anndata.AnnData(np.ones((3, 2)), obs=pd.DataFrame({"batch": ["b", "a", "b"]}, index=["c1", "c2", "c3"]))
    >>> field = CategoricalObsField("batch", "batch")
    >>> state = field.register(adata)
    >>> state["categories"], field.get_array(adata, state).tolist()
    (['a', 'b'], [1, 0, 1])
    """

    def __init__(self, registry_key: str, attr_key: str | None = None, summary_key: str | None = None):
        super().__init__(registry_key)
        if attr_key is not None and not isinstance(attr_key, str):
            raise TypeError(f"attr_key (the obs column) must be a string or None, got {attr_key!r}.")
        self.obs_key = attr_key
        self.summary_key = f"n_{registry_key}" if summary_key is None else summary_key

    @property
    def attr_key(self) -> str | None:
        return self.obs_key

    @property
    def is_empty(self) -> bool:
        return False

    def state_registry(self, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "categorical_mapping": typed_categories(state["categories"]),
            "original_key": state["obs_key"],
        }

    def get_field_data(self, adata: AnnData, state: dict[str, Any]) -> np.ndarray:
        return self.get_array(adata, state).reshape(-1, 1)

    def register(self, adata: AnnData) -> dict[str, Any]:
        if self.obs_key is None:
            return {"obs_key": None, "categories": [CONSTANT_CATEGORY]}
        _, categories = factorize(get_obs_column(adata, self.obs_key), obs_source(self.obs_key))
        return {"obs_key": self.obs_key, "categories": categories}

    def transfer(
        self, state: dict[str, Any], adata_target: AnnData, extend_categories: bool = False
    ) -> dict[str, Any]:
        self._check_state_matches(state, "obs_key", self.obs_key)
        obs_key = state["obs_key"]
        if obs_key is None:
            return {"obs_key": None, "categories": list(state["categories"])}
        column = get_obs_column(adata_target, obs_key)
        _, categories = encode_categories(column, state["categories"], obs_source(obs_key), extend_categories)
        return {"obs_key": obs_key, "categories": categories}

    def summary(self, state: dict[str, Any]) -> dict[str, int]:
        return {self.summary_key: len(state["categories"])}

    def get_array(self, adata: AnnData, state: dict[str, Any]) -> np.ndarray:
        obs_key = state["obs_key"]
        if obs_key is None:
            return np.zeros(adata.n_obs, dtype=np.int64)
        codes, _ = encode_categories(get_obs_column(adata, obs_key), state["categories"], obs_source(obs_key))
        return codes

    def view_rows(self, state: dict[str, Any]) -> list[tuple[str, str]]:
        obs_key = state["obs_key"]
        source = "constant (no obs column)" if obs_key is None else obs_source(obs_key)
        rows = [("source", source), (self.summary_key, str(len(state["categories"])))]
        return rows + category_rows(state["categories"])

    def __repr__(self) -> str:
        return (
            f"CategoricalObsField(registry_key={self.registry_key!r}, obs_key={self.obs_key!r}, "
            f"summary_key={self.summary_key!r})"
        )


class NumericalObsField(BaseField):
    """A numeric obs column, e.g. the size factor of each cell, as float32.

    Parameters
    ----------
    registry_key
        Key of the field in the registry and in minibatches, e.g. ``"size_factor"``.
    attr_key
        Column of ``adata.obs`` (scvi-tools' name for it). None leaves the field empty (state ``{}``, no
        array).
    positive
        Whether every value must be strictly positive, as size factors must.
    required
        Accepted for scvi-tools' signature. pyrovi's models pass None for an optional column (the
        field is then empty), so None is always accepted.

    Notes
    -----
    State: ``{"obs_key": str}`` (``{}`` when empty). Values must be finite. The field contributes no summary
    statistics: whether it is set up is recorded by the state (and the model's setup arguments).
    :meth:`get_array` returns float32 values of shape ``(n_cells,)``.

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata
    >>> adata = anndata.AnnData(np.ones((2, 2)), obs=pd.DataFrame({"sf": [1.0, 2.5]}, index=["c1", "c2"]))
    >>> field = NumericalObsField("size_factor", "sf", positive=True)
    >>> field.get_array(adata, field.register(adata)).tolist()
    [1.0, 2.5]
    """

    def __init__(self, registry_key: str, attr_key: str | None = None, positive: bool = False, required: bool = True):
        super().__init__(registry_key)
        if attr_key is not None and not isinstance(attr_key, str):
            raise TypeError(f"attr_key (the obs column) must be a string or None, got {attr_key!r}.")
        self.obs_key = attr_key
        self.positive = bool(positive)

    @property
    def attr_key(self) -> str | None:
        return self.obs_key

    def state_registry(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"original_key": state.get("obs_key")}

    def get_field_data(self, adata: AnnData, state: dict[str, Any]) -> np.ndarray:
        column = get_obs_column(adata, state["obs_key"])
        self.get_array(adata, state)  # validated as the loader reads it
        return column.to_numpy().reshape(-1, 1)

    @property
    def is_empty(self) -> bool:
        return self.obs_key is None

    def register(self, adata: AnnData) -> dict[str, Any]:
        if self.is_empty:
            return {}
        self._values(adata, self.obs_key)
        return {"obs_key": self.obs_key}

    def transfer(
        self, state: dict[str, Any], adata_target: AnnData, extend_categories: bool = False
    ) -> dict[str, Any]:
        self._check_state_matches(state, "obs_key", self.obs_key)
        if self.is_empty:
            return {}
        self._values(adata_target, state["obs_key"])
        return {"obs_key": state["obs_key"]}

    def get_array(self, adata: AnnData, state: dict[str, Any]) -> np.ndarray:
        return self._values(adata, state["obs_key"])

    def view_rows(self, state: dict[str, Any]) -> list[tuple[str, str]]:
        if not state:
            return [("source", "not set up")]
        return [("source", obs_source(state["obs_key"])), ("positive", str(self.positive))]

    def __repr__(self) -> str:
        return (
            f"NumericalObsField(registry_key={self.registry_key!r}, obs_key={self.obs_key!r}, "
            f"positive={self.positive})"
        )

    def _values(self, adata: AnnData, obs_key: str) -> np.ndarray:
        return numeric_values(get_obs_column(adata, obs_key), obs_source(obs_key), self.positive)


def typed_categories(categories: list[str]) -> np.ndarray:
    """The categories as an array, as integers when every one is an integer written out (``"6"`` -> 6).

    Registries keep categories as strings (they survive JSON unchanged); scvi-tools' mappings keep the
    column's own values, so integer columns compare equal to integers there.
    """
    try:
        as_int = [int(c) for c in categories]
    except ValueError:
        return np.asarray(categories, dtype=object)
    if [str(v) for v in as_int] == list(categories):
        return np.asarray(as_int)
    return np.asarray(categories, dtype=object)


def category_rows(categories: list[str], prefix: str = "") -> list[tuple[str, str]]:
    """``(code, category)`` rows of a category mapping; long mappings end with a count of the rest."""
    rows = [(f"{prefix}{code}", category) for code, category in enumerate(categories[:_MAX_VIEW_CATEGORIES])]
    if len(categories) > _MAX_VIEW_CATEGORIES:
        rows.append((f"{prefix}...", f"{len(categories) - _MAX_VIEW_CATEGORIES} more categories"))
    return rows
