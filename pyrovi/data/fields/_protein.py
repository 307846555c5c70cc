"""Protein counts with a per-batch mask of the proteins each batch's panel measured (for TOTALVI)."""

from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData
from scipy import sparse

from ._base import BaseField
from ._obsm import ObsmField


def batch_mask(matrix: Any, codes: np.ndarray, categories: list[str]) -> dict[str, list[bool]] | None:
    """``{batch: [measured per column]}``, a column unmeasured in a batch when it is zero in all its cells.

    None when every batch measured every column (no mask needed).
    """
    mask: dict[str, list[bool]] = {}
    for code, category in enumerate(categories):
        rows = np.flatnonzero(codes == code)
        if rows.size == 0:
            continue
        block = matrix[rows]
        if sparse.issparse(block):
            measured = np.asarray((abs(block)).sum(axis=0)).reshape(-1) > 0
        else:
            measured = np.any(np.asarray(block) != 0, axis=0)
        mask[str(category)] = [bool(v) for v in measured]
    if all(all(values) for values in mask.values()):
        return None
    return mask


class _ProteinMaskMixin:
    """Adds ``protein_batch_mask`` to the state of a cells x proteins field, from a batch field."""

    def _init_mask(self, use_batch_mask: bool, batch_field: BaseField | None) -> None:
        if use_batch_mask and batch_field is None:
            raise ValueError(
                "use_batch_mask=True needs the batch field (batch_field=...), whose categories define the "
                "batches of the mask; pass it, or use_batch_mask=False."
            )
        self.use_batch_mask = bool(use_batch_mask)
        self.batch_field = batch_field

    def _with_mask(self, state: dict[str, Any], adata: Any) -> dict[str, Any]:
        if not state or not self.use_batch_mask:
            return state
        batch_state = self.batch_field.register(adata)
        codes = self.batch_field.get_array(adata, batch_state)
        matrix = self.get_field_data(adata, state)  # type: ignore[attr-defined]
        mask = batch_mask(matrix, np.asarray(codes).reshape(-1), batch_state["categories"])
        return {**state, "protein_batch_mask": mask}

    def _mask_state_registry(self, state: dict[str, Any], registry: dict[str, Any]) -> dict[str, Any]:
        mask = state.get("protein_batch_mask")
        if mask is not None:
            registry["protein_batch_mask"] = {batch: np.asarray(values) for batch, values in mask.items()}
        return registry


class ProteinObsmField(_ProteinMaskMixin, ObsmField):
    """Protein counts in ``adata.obsm``, recording which proteins each batch's panel measured.

    An :class:`ObsmField` of counts whose state also holds ``protein_batch_mask``: for each batch
    category, one boolean per protein, False when the protein is zero in every cell of that batch (the
    panel did not measure it). The mask is None when every batch measured every protein.

    Parameters
    ----------
    registry_key
        Key of the field in the registry and in minibatches, e.g. ``"proteins"``.
    attr_key
        Entry of ``adata.obsm`` with the protein counts.
    use_batch_mask
        Compute the mask (needs ``batch_field``).
    batch_field
        The batch field of the same setup (a :class:`CategoricalObsField`).
    colnames_uns_key
        Entry of ``adata.uns`` with the protein names, for arrays without them.
    is_count_data
        Whether every value must be a finite, non-negative integer.
    correct_data_format
        Accepted for scvi-tools' signature; pyrovi never modifies the AnnData.

    Examples
    --------
    >>> from pyrovi.data import synthetic_iid
    >>> from pyrovi.data.fields import CategoricalObsField, ProteinObsmField
    >>> adata = synthetic_iid(batch_size=20, seed=0)
    >>> batch = CategoricalObsField("batch", "batch")
    >>> field = ProteinObsmField("proteins", "protein_expression", batch_field=batch, colnames_uns_key="protein_names")
    >>> state = field.register(adata)
    >>> state["protein_batch_mask"] is None  # every batch measured every protein
    True
    """

    def __init__(
        self,
        registry_key: str,
        attr_key: str | None = None,
        use_batch_mask: bool = True,
        batch_field: BaseField | None = None,
        colnames_uns_key: str | None = None,
        is_count_data: bool = True,
        correct_data_format: bool = True,
    ):
        super().__init__(registry_key, attr_key, colnames_uns_key, is_count_data, correct_data_format)
        self._init_mask(use_batch_mask, batch_field)

    def register(self, adata: AnnData) -> dict[str, Any]:
        return self._with_mask(super().register(adata), adata)

    def transfer(
        self, state: dict[str, Any], adata_target: AnnData, extend_categories: bool = False
    ) -> dict[str, Any]:
        new = super().transfer(state, adata_target, extend_categories=extend_categories)
        if new and "protein_batch_mask" in state:
            new["protein_batch_mask"] = state["protein_batch_mask"]  # the registered panels stay the model's
        return new

    def state_registry(self, state: dict[str, Any]) -> dict[str, Any]:
        return self._mask_state_registry(state, super().state_registry(state))
