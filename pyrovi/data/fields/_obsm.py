"""The field of a per-cell matrix in ``adata.obsm``, e.g. protein counts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._errors import MissingKeyError
from ._base import BaseField
from ._lookup import did_you_mean, format_names, get_obsm
from ._matrix import Matrix, check_matrix, column_indexer, select_columns, to_float32, unique_names
from ._validation import validate_values


class ObsmField(BaseField):
    """A cells x columns matrix in ``adata.obsm`` (numpy array, scipy sparse matrix or pandas DataFrame).

    Parameters
    ----------
    registry_key
        Key of the field in the registry and in minibatches, e.g. ``"proteins"``.
    attr_key
        Entry of ``adata.obsm``. None leaves the field empty (state ``{}``, no array).
    colnames_uns_key
        Entry of ``adata.uns`` with the column names, for arrays without them. A DataFrame's own columns
        always take precedence.
    is_count_data
        Whether every value must be a finite, non-negative integer. Otherwise values only need to be finite.
    correct_data_format
        Accepted for scvi-tools' signature; pyrovi reads any layout without modifying the AnnData.

    Notes
    -----
    State: ``{"obsm_key": str, "column_names": list[str]}`` (``{}`` when empty). Column names come from the
    DataFrame's columns, else from ``adata.uns[colnames_uns_key]``, else they are ``"0"``, ``"1"``, ...
    Summary: ``{f"n_{registry_key}": n_columns}``. Data given later must have the registered column names
    (any order, extra ones dropped); data without its own column names is taken in the registered order
    when its number of columns matches. A matrix without columns is an error. :meth:`get_array` returns
    float32, CSR when the data is sparse.

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata
    >>> adata = anndata.AnnData(np.ones((2, 3)))
    >>> adata.obsm["protein_counts"] = pd.DataFrame(
    ...     {"CD3": [1, 0], "CD4": [5, 2]}, index=adata.obs_names)
    >>> field = ObsmField("proteins", "protein_counts", is_count_data=True)
    >>> state = field.register(adata)
    >>> state["column_names"], field.summary(state)
    (['CD3', 'CD4'], {'n_proteins': 2})
    """

    attr_name = "obsm"

    def __init__(
        self,
        registry_key: str,
        attr_key: str | None = None,
        colnames_uns_key: str | None = None,
        is_count_data: bool = False,
        correct_data_format: bool = True,
    ):
        super().__init__(registry_key)
        if attr_key is not None and not isinstance(attr_key, str):
            raise TypeError(f"attr_key (the obsm entry) must be a string or None, got {attr_key!r}.")
        self.obsm_key = attr_key
        self.colnames_uns_key = colnames_uns_key
        self.is_count_data = bool(is_count_data)
        self.correct_data_format = bool(correct_data_format)

    @property
    def attr_key(self) -> str | None:
        return self.obsm_key

    def state_registry(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"column_names": np.asarray(state.get("column_names", []), dtype=object)}

    def get_field_data(self, adata: AnnData, state: dict[str, Any]) -> Any:
        """The matrix with the registered columns in their order, dtype and sparsity kept."""
        return self._aligned(adata, state)

    @property
    def is_empty(self) -> bool:
        return self.obsm_key is None

    def register(self, adata: AnnData) -> dict[str, Any]:
        if self.is_empty:
            return {}
        matrix, names, _ = self._read(adata, self.obsm_key)
        self._validate(matrix, adata, names, self.obsm_key)
        return {"obsm_key": self.obsm_key, "column_names": names}

    def transfer(
        self, state: dict[str, Any], adata_target: AnnData, extend_categories: bool = False
    ) -> dict[str, Any]:
        self._check_state_matches(state, "obsm_key", self.obsm_key)
        if self.is_empty:
            return {}
        matrix = self._aligned(adata_target, state)
        self._validate(matrix, adata_target, state["column_names"], state["obsm_key"])
        return {"obsm_key": state["obsm_key"], "column_names": list(state["column_names"])}

    def summary(self, state: dict[str, Any]) -> dict[str, int]:
        return {f"n_{self.registry_key}": len(state.get("column_names", []))}

    def get_array(self, adata: AnnData, state: dict[str, Any]) -> np.ndarray | sparse.csr_matrix:
        return to_float32(self._aligned(adata, state))

    def view_rows(self, state: dict[str, Any]) -> list[tuple[str, str]]:
        if not state:
            return [("source", "not set up")]
        names = state["column_names"]
        shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
        return [
            ("source", _obsm_source(state["obsm_key"])),
            (f"n_{self.registry_key}", str(len(names))),
            ("column_names", shown),
        ]

    def __repr__(self) -> str:
        return (
            f"ObsmField(registry_key={self.registry_key!r}, obsm_key={self.obsm_key!r}, "
            f"colnames_uns_key={self.colnames_uns_key!r}, is_count_data={self.is_count_data})"
        )

    def _read(self, adata: AnnData, obsm_key: str) -> tuple[Matrix, list[str], bool]:
        """The matrix, its column names, and whether the names came from the data (not defaults)."""
        source = _obsm_source(obsm_key)
        value = get_obsm(adata, obsm_key)
        if isinstance(value, pd.DataFrame):
            # names first: with a repeated name, value[name] is a DataFrame, not a column
            names = unique_names(value.columns, f"The column names of {source}", fix="rename them.")
            non_numeric = [c for c, dtype in value.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
            if non_numeric:
                raise TypeError(f"{source} must hold numbers, but columns {format_names(non_numeric)} do not.")
            # float64 holds any numeric column exactly enough, and turns nullable missing values into NaN.
            dense = value.to_numpy(dtype=np.float64, na_value=np.nan)
            return check_matrix(dense, source), names, True
        matrix = check_matrix(value, source)
        n_cols = matrix.shape[1]
        if self.colnames_uns_key is None:
            return matrix, [str(i) for i in range(n_cols)], False
        if self.colnames_uns_key not in adata.uns:
            raise MissingKeyError(
                f"adata.uns has no entry {self.colnames_uns_key!r} with the column names of {source}."
                f"{did_you_mean(self.colnames_uns_key, adata.uns.keys())} Available entries: "
                f"{format_names(adata.uns.keys(), 50)}."
            )
        names = unique_names(
            pd.Index(list(adata.uns[self.colnames_uns_key])),
            f"The column names in adata.uns[{self.colnames_uns_key!r}]",
            fix="rename them.",
        )
        if len(names) != n_cols:
            raise ValueError(
                f"adata.uns[{self.colnames_uns_key!r}] has {len(names)} column names but {source} has "
                f"{n_cols} columns."
            )
        return matrix, names, True

    def _aligned(self, adata: AnnData, state: dict[str, Any]) -> Matrix:
        """The target's matrix with the registered columns in the registered order."""
        obsm_key, registered = state["obsm_key"], state["column_names"]
        matrix, names, named = self._read(adata, obsm_key)
        if not named and len(names) == len(registered):
            # Without its own names, the data can only be taken to be in the registered order.
            return matrix
        columns = column_indexer(names, registered, f"the columns of {_obsm_source(obsm_key)}", "columns")
        return select_columns(matrix, columns)

    def _validate(self, matrix: Matrix, adata: AnnData, names: list[str], obsm_key: str) -> None:
        if matrix.shape[1] == 0:
            raise ValueError(
                f"{_obsm_source(obsm_key)} has no columns (shape {matrix.shape}); store at least one measurement "
                "per cell there (e.g. one column per protein)."
            )
        hint = "Pass the obsm entry that holds the raw counts."
        validate_values(
            matrix, adata.obs_names, names, _obsm_source(obsm_key), self.is_count_data, hint, col_label="column"
        )


def _obsm_source(obsm_key: str) -> str:
    return f"adata.obsm[{obsm_key!r}]"
