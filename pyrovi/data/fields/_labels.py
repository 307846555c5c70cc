"""Labels with an explicit "unlabeled" category (semi-supervised models) and string entries of ``uns``."""

from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData

from .._errors import MissingKeyError
from ._base import BaseField
from ._encoding import encode_categories, factorize
from ._lookup import did_you_mean, format_names, get_obs_column, obs_source
from ._obs import CategoricalObsField


class LabelsWithUnlabeledObsField(CategoricalObsField):
    """A labels column in which one category marks unlabeled cells; that category is always coded last.

    Parameters
    ----------
    registry_key
        Key of the field in the registry and in minibatches, usually ``"labels"``.
    attr_key
        Column of ``adata.obs`` with the labels (None: every cell is unlabeled).
    unlabeled_category
        The value marking unlabeled cells, e.g. ``"Unknown"``. It is added as the last category when no
        cell carries it, so a model always has a code for "unlabeled".
    summary_key
        Name of the number of categories in the summary statistics; ``f"n_{registry_key}"`` when None.

    Notes
    -----
    State: ``{"obs_key", "categories", "unlabeled_category"}`` with the unlabeled category last. Query data
    without the labels column count as unlabeled (the AnnData is not modified).

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata
    >>> obs = pd.DataFrame({"cell_type": ["T", "Unknown", "B"]}, index=["c1", "c2", "c3"])
    >>> adata = anndata.AnnData(np.ones((3, 2)), obs=obs)
    >>> field = LabelsWithUnlabeledObsField("labels", "cell_type", "Unknown")
    >>> state = field.register(adata)
    >>> state["categories"], field.get_array(adata, state).tolist()
    (['B', 'T', 'Unknown'], [1, 2, 0])
    """

    def __init__(
        self,
        registry_key: str,
        attr_key: str | None,
        unlabeled_category: str | int | float,
        summary_key: str | None = None,
    ):
        super().__init__(registry_key, attr_key, summary_key)
        self.unlabeled_category = str(unlabeled_category)

    def register(self, adata: AnnData) -> dict[str, Any]:
        if self.obs_key is None:
            categories = [self.unlabeled_category]
        else:
            _, categories = factorize(get_obs_column(adata, self.obs_key), obs_source(self.obs_key))
        return self._state(self.obs_key, categories)

    def transfer(
        self, state: dict[str, Any], adata_target: AnnData, extend_categories: bool = False
    ) -> dict[str, Any]:
        self._check_state_matches(state, "obs_key", self.obs_key)
        obs_key = state["obs_key"]
        if obs_key is None or obs_key not in adata_target.obs.columns:
            return dict(state)
        column = get_obs_column(adata_target, obs_key)
        _, categories = encode_categories(column, state["categories"], obs_source(obs_key), extend_categories)
        return self._state(obs_key, categories)

    def get_array(self, adata: AnnData, state: dict[str, Any]) -> np.ndarray:
        obs_key = state["obs_key"]
        unlabeled = state["categories"].index(state["unlabeled_category"])
        if obs_key is None or obs_key not in adata.obs.columns:
            return np.full(adata.n_obs, unlabeled, dtype=np.int64)
        codes, _ = encode_categories(get_obs_column(adata, obs_key), state["categories"], obs_source(obs_key))
        return codes

    def state_registry(self, state: dict[str, Any]) -> dict[str, Any]:
        return {**super().state_registry(state), "unlabeled_category": state["unlabeled_category"]}

    def _state(self, obs_key: str | None, categories: list[str]) -> dict[str, Any]:
        # the unlabeled category goes last, whether cells carry it or not
        categories = [c for c in categories if c != self.unlabeled_category] + [self.unlabeled_category]
        return {"obs_key": obs_key, "categories": categories, "unlabeled_category": self.unlabeled_category}


class StringUnsField(BaseField):
    """A string stored in ``adata.uns`` (e.g. the name of a reference), recorded in the registry.

    Parameters
    ----------
    registry_key
        Key of the field in the registry.
    attr_key
        Entry of ``adata.uns``. None leaves the field empty.
    required
        Whether the entry must exist when ``attr_key`` is given (otherwise a missing entry is recorded as None).

    Notes
    -----
    State: ``{"uns_key": str, "value": str | None}``. The field has no per-cell array: loaders skip it.

    Examples
    --------
    >>> import numpy as np, anndata
    >>> adata = anndata.AnnData(np.ones((2, 2)), uns={"reference": "pbmc"})
    >>> StringUnsField("reference", "reference").register(adata)
    {'uns_key': 'reference', 'value': 'pbmc'}
    """

    attr_name = "uns"

    def __init__(self, registry_key: str, attr_key: str | None = None, required: bool = True):
        super().__init__(registry_key)
        self.uns_key = attr_key
        self.required = bool(required)

    @property
    def attr_key(self) -> str | None:
        return self.uns_key

    @property
    def is_empty(self) -> bool:
        # No per-cell data: the loader never reads this field.
        return True

    def _read(self, adata: AnnData) -> str | None:
        if self.uns_key is None:
            return None
        if self.uns_key not in adata.uns:
            if not self.required:
                return None
            raise MissingKeyError(
                f"adata.uns has no entry {self.uns_key!r}.{did_you_mean(self.uns_key, adata.uns.keys())} "
                f"Available entries: {format_names(adata.uns.keys(), 50)}."
            )
        value = adata.uns[self.uns_key]
        if not isinstance(value, str):
            raise TypeError(f"adata.uns[{self.uns_key!r}] must be a string, got {type(value).__name__}.")
        return value

    def register(self, adata: AnnData) -> dict[str, Any]:
        return {"uns_key": self.uns_key, "value": self._read(adata)} if self.uns_key is not None else {}

    def transfer(
        self, state: dict[str, Any], adata_target: AnnData, extend_categories: bool = False
    ) -> dict[str, Any]:
        return self.register(adata_target)

    def get_array(self, adata: AnnData, state: dict[str, Any]) -> np.ndarray:
        raise KeyError(f"Field {self.registry_key!r} holds a string of adata.uns, not per-cell data.")

    def get_field_data(self, adata: AnnData, state: dict[str, Any]) -> str | None:
        return self._read(adata)
