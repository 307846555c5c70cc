"""The field of a cells x genes matrix: ``adata.X`` or one of ``adata.layers``."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from anndata import AnnData
from scipy import sparse

from ..._constants import UNS_MINIFY_TYPE_KEY
from .._errors import MissingKeyError
from ._backed import BackedRows
from ._base import BaseField
from ._lookup import did_you_mean, format_names
from ._matrix import Matrix, check_matrix, column_indexer, select_columns, to_float32, unique_names
from ._validation import (
    largest_value,
    nonzero_lines,
    summed_duplicates,
    validate_values,
    warn_count_dtype,
    warn_empty,
)


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
        to be finite. ``"infer"``: values must be finite, and the state records whether they are counts
        (``state["is_count_data"]``), with a warning when they are not; the model then decides (SCVI accepts
        continuous data only with ``gene_likelihood="normal"``). Later data are checked as the registered
        data were.
    correct_data_format
        Accepted for scvi-tools' signature, which rewrites a Fortran-ordered or CSC matrix of the user's
        AnnData in place. pyrovi never modifies the AnnData: it reads any layout and converts what it reads
        (a CSC matrix is converted with a warning), whatever this is.
    save_column_names
        Accepted for scvi-tools' signature; pyrovi always records the gene names (they align query data).

    Notes
    -----
    State: ``{"layer": str | None, "var_names": list[str], "n_vars": int}``. Summary: ``{"n_vars": n_vars}``.
    :meth:`get_array` returns a float32 numpy array for dense data and a float32 CSR matrix for sparse data
    (CSC and COO are converted, with a warning, since the conversion is a copy; sparse data is never
    densified). Zero genes are an error. With ``is_count_data``, cells (and, at registration, genes) whose counts
    are all zero raise a :class:`UserWarning`, not an error, and so do dtypes that may have lost counts (integers
    narrower than 32 bits, float16 above 2048) or counts above 2**24.

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

    def __init__(
        self,
        registry_key: str,
        layer: str | None = None,
        is_count_data: bool = True,
        correct_data_format: bool = True,
        save_column_names: bool = False,
    ):
        super().__init__(registry_key)
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"layer must be a string or None, got {layer!r}.")
        self.layer = layer
        self.is_count_data = is_count_data if is_count_data == "infer" else bool(is_count_data)
        self.correct_data_format = bool(correct_data_format)
        self.save_column_names = bool(save_column_names)

    @property
    def attr_name(self) -> str:  # type: ignore[override]
        return "X" if self.layer is None else "layers"

    @property
    def attr_key(self) -> str | None:
        return self.layer

    def data_registry(self, state: dict[str, Any]) -> dict[str, Any]:
        layer = state.get("layer", self.layer)
        return {"attr_name": "X" if layer is None else "layers", "attr_key": layer}

    def state_registry(self, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "n_vars": int(state["n_vars"]),
            "column_names": np.asarray(state["var_names"], dtype=object),
        }

    def get_field_data(self, adata: AnnData, state: dict[str, Any]) -> Any:
        """The matrix as stored (dtype and sparsity kept), with the registered genes in their order."""
        matrix = self._get_matrix(adata, state["layer"])
        columns = column_indexer(adata.var_names, state["var_names"], "adata.var_names", "genes")
        matrix = select_columns(matrix, columns)
        if isinstance(matrix, BackedRows):
            return matrix[np.arange(matrix.shape[0])]
        return matrix

    @property
    def is_empty(self) -> bool:
        return False

    def register(self, adata: AnnData) -> dict[str, Any]:
        matrix = self._get_matrix(adata, self.layer)
        var_names = unique_names(
            adata.var_names, "adata.var_names", fix="make them unique with adata.var_names_make_unique()."
        )
        counts = self._validate(matrix, adata, var_names, self.layer, warn_empty_genes=True)
        state = {"layer": self.layer, "var_names": var_names, "n_vars": len(var_names)}
        if self.is_count_data == "infer":
            state["is_count_data"] = counts
        return state

    def transfer(
        self, state: dict[str, Any], adata_target: AnnData, extend_categories: bool = False
    ) -> dict[str, Any]:
        self._check_state_matches(state, "layer", self.layer)
        layer = state["layer"]
        matrix = self._get_matrix(adata_target, layer)
        columns = column_indexer(adata_target.var_names, state["var_names"], "adata.var_names", "genes")
        # Only the registered genes reach the model, so only they are validated.
        counts = state.get("is_count_data", True) if self.is_count_data == "infer" else None
        self._validate(select_columns(matrix, columns), adata_target, state["var_names"], layer, is_count_data=counts)
        out = {"layer": layer, "var_names": list(state["var_names"]), "n_vars": int(state["n_vars"])}
        if "is_count_data" in state:
            out["is_count_data"] = bool(state["is_count_data"])
        return out

    def summary(self, state: dict[str, Any]) -> dict[str, int]:
        return {"n_vars": int(state["n_vars"])}

    def get_array(self, adata: AnnData, state: dict[str, Any]) -> np.ndarray | sparse.csr_matrix:
        matrix = self._get_matrix(adata, state["layer"])
        columns = column_indexer(adata.var_names, state["var_names"], "adata.var_names", "genes")
        return to_float32(select_columns(matrix, columns))

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
            return check_matrix(adata.X, "adata.X")
        if layer not in adata.layers:
            raise MissingKeyError(
                f"adata.layers has no layer {layer!r}.{did_you_mean(layer, adata.layers.keys())} Available "
                f"layers: {format_names(adata.layers.keys())}; pass one of them, or layer=None to use adata.X."
            )
        return check_matrix(adata.layers[layer], _layer_source(layer))

    def _validate(
        self,
        matrix: Matrix,
        adata: AnnData,
        var_names: list[str],
        layer: str | None,
        warn_empty_genes: bool = False,
        is_count_data: bool | None = None,
    ) -> bool:
        """Check the values, then warn about empty cells (and genes) and lossy dtypes; True for counts.

        Empty genes are only worth a warning at registration: query data must keep every registered gene.
        ``is_count_data`` overrides the field's setting (``"infer"``: counts if they pass the count check).
        """
        counts = self.is_count_data if is_count_data is None else is_count_data
        if counts == "infer":
            try:
                return self._validate(matrix, adata, var_names, layer, warn_empty_genes, is_count_data=True)
            except ValueError as err:
                # finite values are required all the same: this raises for NaN or infinite entries
                self._validate(matrix, adata, var_names, layer, warn_empty_genes, is_count_data=False)
                warnings.warn(
                    f"{err} The data are registered as continuous values: only a model of continuous data "
                    "(e.g. SCVI(adata, gene_likelihood='normal')) accepts them; count likelihoods refuse them.",
                    UserWarning,
                    stacklevel=5,
                )
                return False
        source = _layer_source(layer)
        if matrix.shape[1] == 0:
            raise ValueError(
                f"{source} has no genes (shape {matrix.shape}); a model needs at least one gene. Check the gene "
                "filtering that produced this AnnData."
            )
        if sparse.issparse(matrix) and matrix.format != "csr":
            warnings.warn(
                f"{source} is a {matrix.format.upper()} sparse matrix; pyrovi reads cells (rows), so it converts "
                f"it to CSR, a copy, each time it reads the data. Convert it once yourself: "
                f"{source} = {source}.tocsr().",
                UserWarning,
                stacklevel=4,
            )
        if layer is None:
            hint = (
                "Count models need the raw counts: if adata.X was normalised and the counts are stored in a "
                "layer, pass layer='counts' (or that layer's name)."
            )
        else:
            hint = "Count models need the raw counts: pass the layer that holds them, or layer=None for adata.X."
        # on disk, the matrix is checked one chunk of rows at a time (the first bad chunk raises)
        blocks = matrix.chunks() if isinstance(matrix, BackedRows) else [(0, matrix)]
        cells, genes, max_value = [], np.zeros(len(var_names), dtype=bool), 0.0
        for start, block in blocks:
            # duplicate sparse entries are read as their sum, so they are checked (and counted) summed
            block = summed_duplicates(block)
            obs_names = adata.obs_names[start : start + block.shape[0]]
            validate_values(block, obs_names, var_names, source, counts, hint)
            if counts:
                block_cells, block_genes = nonzero_lines(block)
                cells.append(block_cells)
                genes |= block_genes
                max_value = max(max_value, largest_value(block))
        # a minified AnnData has dropped its counts on purpose: its empty cells are no slip to warn about
        if counts and adata.uns.get(UNS_MINIFY_TYPE_KEY) != "latent_posterior_parameters":
            warn_count_dtype(matrix.dtype, max_value, source)
            warn_empty(np.concatenate(cells), genes if warn_empty_genes else None, source)
        return bool(counts)


def _layer_source(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"
