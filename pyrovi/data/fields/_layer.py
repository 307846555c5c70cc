"""The field of a cells x genes matrix: ``adata.X`` or one of ``adata.layers``."""

from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData
from scipy import sparse

from .._errors import MissingKeyError
from ._backed import BackedRows
from ._base import BaseField
from ._lookup import _format_names
from ._matrix import Matrix, _check_matrix, _column_indexer, _select_columns, _to_float32, _unique_names
from ._validation import _validate_values, _warn_empty_cells


class LayerField(BaseField):
    """A cells x genes matrix, usually the raw counts, in ``adata.X`` or ``adata.layers[layer]``.

    The state records the genes (``var_names``) in their registered order. Data given later may hold them in
    any order and extra genes: the loader's array always has the registered genes, in that order.

    Parameters
    ----------
    registry_key
        Key of the field in the registry and in minibatches, usually ``REGISTRY_KEYS.X_KEY`` (``"X"``).
    layer
        Name of the layer that holds the matrix, or None for ``adata.X``.
    is_count_data
        Whether every value must be a finite, non-negative integer (raw counts). Otherwise values only need
        to be finite.

    Notes
    -----
    State: ``{"layer": str | None, "var_names": list[str], "n_vars": int}``. Summary: ``{"n_vars": n_vars}``.
    :meth:`get_array` returns a float32 numpy array for dense data and a float32 CSR matrix for sparse data
    (CSC and COO are converted; sparse data is never densified). Cells whose counts are all zero raise a
    :class:`UserWarning`, not an error.

    Examples
    --------
    >>> import numpy as np, anndata
    >>> adata = anndata.AnnData(np.array([[1, 0], [2, 3]], dtype=np.float32))
    >>> field = LayerField("X", layer=None)
    >>> state = field.register(adata)
    >>> state["n_vars"]
    2
    >>> field.get_array(adata, state).dtype
    dtype('float32')
    """

    def __init__(self, registry_key: str, layer: str | None, is_count_data: bool = True):
        super().__init__(registry_key)
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"layer must be a string or None, got {layer!r}.")
        self.layer = layer
        self.is_count_data = bool(is_count_data)

    @property
    def is_empty(self) -> bool:
        return False

    def register(self, adata: AnnData) -> dict[str, Any]:
        matrix = self._get_matrix(adata, self.layer)
        var_names = _unique_names(
            adata.var_names, "adata.var_names", fix="make them unique with adata.var_names_make_unique()."
        )
        self._validate(matrix, adata, var_names, self.layer)
        return {"layer": self.layer, "var_names": var_names, "n_vars": len(var_names)}

    def transfer(
        self, state: dict[str, Any], adata_target: AnnData, extend_categories: bool = False
    ) -> dict[str, Any]:
        self._check_state_matches(state, "layer", self.layer)
        layer = state["layer"]
        matrix = self._get_matrix(adata_target, layer)
        columns = _column_indexer(adata_target.var_names, state["var_names"], "adata.var_names", "genes")
        # Only the registered genes reach the model, so only they are validated.
        self._validate(_select_columns(matrix, columns), adata_target, state["var_names"], layer)
        return {"layer": layer, "var_names": list(state["var_names"]), "n_vars": int(state["n_vars"])}

    def summary(self, state: dict[str, Any]) -> dict[str, int]:
        return {"n_vars": int(state["n_vars"])}

    def get_array(self, adata: AnnData, state: dict[str, Any]) -> np.ndarray | sparse.csr_matrix:
        matrix = self._get_matrix(adata, state["layer"])
        columns = _column_indexer(adata.var_names, state["var_names"], "adata.var_names", "genes")
        return _to_float32(_select_columns(matrix, columns))

    def view_rows(self, state: dict[str, Any]) -> list[tuple[str, str]]:
        names = state["var_names"]
        shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
        return [("source", _layer_source(state["layer"])), ("n_vars", str(state["n_vars"])), ("var_names", shown)]

    def __repr__(self) -> str:
        return (
            f"LayerField(registry_key={self.registry_key!r}, layer={self.layer!r}, "
            f"is_count_data={self.is_count_data})"
        )

    def _get_matrix(self, adata: AnnData, layer: str | None) -> Matrix:
        if layer is None:
            return _check_matrix(adata.X, "adata.X")
        if layer not in adata.layers:
            raise MissingKeyError(
                f"adata.layers has no layer {layer!r}. Available layers: {_format_names(adata.layers.keys())}; "
                "pass one of them, or layer=None to use adata.X."
            )
        return _check_matrix(adata.layers[layer], _layer_source(layer))

    def _validate(self, matrix: Matrix, adata: AnnData, var_names: list[str], layer: str | None) -> None:
        source = _layer_source(layer)
        if layer is None:
            hint = (
                "Count models need the raw counts: if adata.X was normalised and the counts are stored in a "
                "layer, pass layer='counts' (or that layer's name)."
            )
        else:
            hint = "Count models need the raw counts: pass the layer that holds them, or layer=None for adata.X."
        if isinstance(matrix, BackedRows):
            # on disk: check one chunk of rows at a time (the first bad chunk raises)
            for start, block in matrix.chunks():
                obs_names = adata.obs_names[start : start + block.shape[0]]
                _validate_values(block, obs_names, var_names, source, self.is_count_data, hint)
        else:
            _validate_values(matrix, adata.obs_names, var_names, source, self.is_count_data, hint)
        if self.is_count_data:
            _warn_empty_cells(matrix, source)


def _layer_source(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"
