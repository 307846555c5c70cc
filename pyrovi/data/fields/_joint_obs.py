"""Fields of several obs columns read together: extra categorical or continuous covariates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ._base import BaseField
from ._encoding import encode_categories, factorize
from ._lookup import check_key_list, get_obs_column, obs_source
from ._numeric import numeric_values
from ._obs import category_rows, typed_categories


class CategoricalJointObsField(BaseField):
    """Several categorical obs columns (extra categorical covariates), one integer code per column.

    Parameters
    ----------
    registry_key
        Key of the field in the registry and in minibatches, e.g. ``"extra_categorical_covs"``.
    attr_keys
        Columns of ``adata.obs``. None or ``[]`` leaves the field empty (state ``{}``, no array).

    Notes
    -----
    State: ``{"obs_keys": list[str], "categories": {obs_key: list[str]}, "n_cats_per_key": list[int]}``;
    each column is encoded like :class:`CategoricalObsField` (same ordering, missing-value and
    unseen-category rules). :meth:`get_array` returns int64 codes of shape ``(n_cells, len(obs_keys))``.
    Summary: ``{"n_extra_categorical_covs": len(obs_keys)}``.

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata
    >>> obs = pd.DataFrame({"donor": ["d1", "d2"], "site": ["x", "x"]}, index=["c1", "c2"])
    >>> adata = anndata.AnnData(np.ones((2, 2)), obs=obs)
    >>> field = CategoricalJointObsField("extra_categorical_covs", ["donor", "site"])
    >>> state = field.register(adata)
    >>> state["n_cats_per_key"], field.get_array(adata, state).tolist()
    ([2, 1], [[0, 0], [1, 0]])
    """

    def __init__(self, registry_key: str, attr_keys: Sequence[str] | None = None):
        super().__init__(registry_key)
        self.obs_keys = check_key_list(attr_keys, "attr_keys")

    attr_name = "obs"

    @property
    def attr_key(self) -> list[str]:
        return list(self.obs_keys)

    @property
    def is_empty(self) -> bool:
        return not self.obs_keys

    def data_registry(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"attr_name": "obs", "attr_key": list(state.get("obs_keys", []))}

    def state_registry(self, state: dict[str, Any]) -> dict[str, Any]:
        if not state:
            return {"mappings": {}, "field_keys": [], "n_cats_per_key": []}
        return {
            "mappings": {key: typed_categories(state["categories"][key]) for key in state["obs_keys"]},
            "field_keys": list(state["obs_keys"]),
            "n_cats_per_key": list(state["n_cats_per_key"]),
        }

    def get_field_data(self, adata: AnnData, state: dict[str, Any]) -> pd.DataFrame:
        return pd.DataFrame(self.get_array(adata, state), index=adata.obs_names, columns=state["obs_keys"])

    def register(self, adata: AnnData) -> dict[str, Any]:
        if self.is_empty:
            return {}
        categories = {
            key: factorize(get_obs_column(adata, key), obs_source(key))[1] for key in self.obs_keys
        }
        return _joint_state(self.obs_keys, categories)

    def transfer(
        self, state: dict[str, Any], adata_target: AnnData, extend_categories: bool = False
    ) -> dict[str, Any]:
        self._check_state_matches(state, "obs_keys", self.obs_keys)
        if self.is_empty:
            return {}
        categories = {
            key: encode_categories(get_obs_column(adata_target, key), state["categories"][key], obs_source(key),
                         extend_categories)[1]
            for key in state["obs_keys"]
        }
        return _joint_state(state["obs_keys"], categories)

    def summary(self, state: dict[str, Any]) -> dict[str, int]:
        return {"n_extra_categorical_covs": len(state.get("obs_keys", []))}

    def get_array(self, adata: AnnData, state: dict[str, Any]) -> np.ndarray:
        columns = [
            encode_categories(get_obs_column(adata, key), state["categories"][key], obs_source(key))[0]
            for key in state["obs_keys"]
        ]
        return np.stack(columns, axis=1).astype(np.int64, copy=False)

    def view_rows(self, state: dict[str, Any]) -> list[tuple[str, str]]:
        if not state:
            return [("source", "not set up")]
        rows = [("source", ", ".join(obs_source(key) for key in state["obs_keys"]))]
        for key in state["obs_keys"]:
            rows += category_rows(state["categories"][key], prefix=f"{key}: ")
        return rows

    def __repr__(self) -> str:
        return f"CategoricalJointObsField(registry_key={self.registry_key!r}, obs_keys={self.obs_keys!r})"


class NumericalJointObsField(BaseField):
    """Several numeric obs columns (extra continuous covariates) as one float32 matrix.

    Parameters
    ----------
    registry_key
        Key of the field in the registry and in minibatches, e.g. ``"extra_continuous_covs"``.
    attr_keys
        Columns of ``adata.obs``. None or ``[]`` leaves the field empty (state ``{}``, no array).

    Notes
    -----
    State: ``{"obs_keys": list[str]}``. Every value must be finite. :meth:`get_array` returns float32 of
    shape ``(n_cells, len(obs_keys))``, columns in ``obs_keys`` order. Summary:
    ``{"n_extra_continuous_covs": len(obs_keys)}``.

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata
    >>> obs = pd.DataFrame({"pct_mito": [0.1, 0.2], "age": [30, 40]}, index=["c1", "c2"])
    >>> adata = anndata.AnnData(np.ones((2, 2)), obs=obs)
    >>> field = NumericalJointObsField("extra_continuous_covs", ["age", "pct_mito"])
    >>> field.get_array(adata, field.register(adata)).shape
    (2, 2)
    """

    def __init__(self, registry_key: str, attr_keys: Sequence[str] | None = None):
        super().__init__(registry_key)
        self.obs_keys = check_key_list(attr_keys, "attr_keys")

    attr_name = "obs"

    @property
    def attr_key(self) -> list[str]:
        return list(self.obs_keys)

    @property
    def is_empty(self) -> bool:
        return not self.obs_keys

    def data_registry(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"attr_name": "obs", "attr_key": list(state.get("obs_keys", []))}

    def state_registry(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"columns": np.asarray(state.get("obs_keys", []), dtype=object)}

    def get_field_data(self, adata: AnnData, state: dict[str, Any]) -> pd.DataFrame:
        self.get_array(adata, state)  # validated as the loader reads it
        return adata.obs[list(state["obs_keys"])].copy()

    def register(self, adata: AnnData) -> dict[str, Any]:
        if self.is_empty:
            return {}
        self.get_array(adata, {"obs_keys": self.obs_keys})
        return {"obs_keys": list(self.obs_keys)}

    def transfer(
        self, state: dict[str, Any], adata_target: AnnData, extend_categories: bool = False
    ) -> dict[str, Any]:
        self._check_state_matches(state, "obs_keys", self.obs_keys)
        if self.is_empty:
            return {}
        self.get_array(adata_target, state)
        return {"obs_keys": list(state["obs_keys"])}

    def summary(self, state: dict[str, Any]) -> dict[str, int]:
        return {"n_extra_continuous_covs": len(state.get("obs_keys", []))}

    def get_array(self, adata: AnnData, state: dict[str, Any]) -> np.ndarray:
        columns = [numeric_values(get_obs_column(adata, key), obs_source(key)) for key in state["obs_keys"]]
        return np.stack(columns, axis=1)

    def view_rows(self, state: dict[str, Any]) -> list[tuple[str, str]]:
        if not state:
            return [("source", "not set up")]
        return [("source", ", ".join(obs_source(key) for key in state["obs_keys"]))]

    def __repr__(self) -> str:
        return f"NumericalJointObsField(registry_key={self.registry_key!r}, obs_keys={self.obs_keys!r})"


def _joint_state(obs_keys: list[str], categories: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "obs_keys": list(obs_keys),
        "categories": {key: categories[key] for key in obs_keys},
        # The decoder sizes one embedding or one-hot block per covariate from these.
        "n_cats_per_key": [len(categories[key]) for key in obs_keys],
    }
