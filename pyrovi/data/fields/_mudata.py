"""Fields of a MuData: each reads one modality (an AnnData) of it, or the MuData's own ``obs``.

A MuData field wraps the AnnData field of the same name: it picks the modality ``mdata.mod[mod_key]``,
checks that it holds the MuData's cells, lets the wrapped field register, transfer and encode it, and puts
the rows in the MuData's cell order. ``mudata`` is an optional dependency (``pip install 'pyrovi[mudata]'``),
imported only when a MuData is registered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ._base import BaseField
from ._joint_obs import CategoricalJointObsField, NumericalJointObsField
from ._layer import LayerField
from ._lookup import format_names
from ._obs import CategoricalObsField, NumericalObsField
from ._obsm import ObsmField
from ._protein import batch_mask


class MuDataRequiredError(TypeError, AssertionError):
    """A MuData field was given something other than a MuData (e.g. an AnnData).

    A :class:`TypeError` (and, as scvi-tools raises an ``AssertionError`` there, an ``AssertionError`` too).

    Examples
    --------
    >>> issubclass(MuDataRequiredError, TypeError)
    True
    """


def is_mudata(data: Any) -> bool:
    try:
        from mudata import MuData
    except ImportError:
        return False
    return isinstance(data, MuData)


def _require_mudata(data: Any, field: BaseField) -> None:
    if is_mudata(data):
        return
    try:
        import mudata  # noqa: F401
    except ImportError:
        raise ImportError(
            f"Field {field.registry_key!r} reads a MuData, which needs the optional package mudata: "
            "pip install 'pyrovi[mudata]'."
        ) from None
    raise MuDataRequiredError(
        f"Field {field.registry_key!r} ({type(field).__name__}) reads a MuData, got {type(data).__name__}. Pass "
        "a mudata.MuData, or use the AnnData fields (setup_anndata) for an AnnData."
    )


class MuDataField(BaseField):
    """An AnnData field applied to one modality of a MuData (or to the MuData's ``obs`` without mod_key)."""

    def __init__(self, inner: BaseField, mod_key: str | None, mod_required: bool):
        super().__init__(inner.registry_key)
        if mod_key is not None and not isinstance(mod_key, str):
            raise TypeError(f"mod_key must be a modality name (a string) or None, got {mod_key!r}.")
        if mod_required and mod_key is None and not inner.is_empty:
            raise ValueError(
                f"Field {inner.registry_key!r} needs a modality: pass mod_key=<name of a modality of the MuData>."
            )
        self._inner = inner
        self._mod_key = mod_key
        self.mod_required = bool(mod_required)

    @property
    def mod_key(self) -> str | None:
        return self._mod_key

    @property
    def attr_name(self) -> str:  # type: ignore[override]
        return self._inner.attr_name

    @property
    def attr_key(self) -> Any:
        return self._inner.attr_key

    @property
    def is_empty(self) -> bool:
        return self._inner.is_empty

    def __getattr__(self, name: str) -> Any:
        # setup choices of the wrapped field (layer, obs_key, summary_key...) read through
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    # A modality, checked against the MuData's cells.

    def _modality(self, mdata: Any, mod_key: str | None, allow_view: bool = True) -> tuple[Any, np.ndarray | None]:
        """The data to read (a modality, or the MuData itself) and row positions into it (None: in order).

        A view (e.g. of ``mdata[:10]``, given to a query) is read as it is; only setup refuses one.
        """
        _require_mudata(mdata, self)
        if mod_key is None:
            return mdata, None
        if mod_key not in mdata.mod:
            raise ValueError(
                f"Field {self.registry_key!r} reads the modality {mod_key!r}, which the MuData does not have; its "
                f"modalities are {format_names(mdata.mod.keys())}. Pass the right modality name."
            )
        mod = mdata.mod[mod_key]
        if mod.is_view and not allow_view:
            raise ValueError(
                f"The modality {mod_key!r} is a view; pyrovi does not copy data silently. Pass a MuData of copies, "
                "e.g. mudata.MuData({name: mod.copy() for name, mod in mdata.mod.items()})."
            )
        if mod.n_obs != mdata.n_obs:
            raise ValueError(
                f"The modality {mod_key!r} holds {mod.n_obs} cells but the MuData {mdata.n_obs}: the modalities are "
                "not paired. Keep the cells measured in every modality (mudata.pp.intersect_obs(mdata)), or pad the "
                "modality with rows of zeros for the missing cells."
            )
        if mod.obs_names.equals(mdata.obs_names):
            return mod, None
        rows = mod.obs_names.get_indexer(mdata.obs_names)
        if (rows < 0).any() or not mod.obs_names.is_unique:
            raise ValueError(
                f"The cells of the modality {mod_key!r} are not those of the MuData (e.g. "
                f"{format_names(mdata.obs_names[rows < 0][:5])} are missing from it); call mdata.update() after "
                "changing a modality, and make the cell names unique."
            )
        return mod, rows

    @staticmethod
    def _rows(value: Any, rows: np.ndarray | None) -> Any:
        if rows is None:
            return value
        if isinstance(value, pd.DataFrame):
            return value.iloc[rows]
        return value[rows]

    def register(self, mdata: Any) -> dict[str, Any]:
        _require_mudata(mdata, self)
        if self.is_empty:
            return {}
        mod, _ = self._modality(mdata, self._mod_key, allow_view=False)
        return {**self._inner.register(mod), "mod_key": self._mod_key}

    def transfer(self, state: dict[str, Any], adata_target: Any, extend_categories: bool = False) -> dict[str, Any]:
        _require_mudata(adata_target, self)
        if not state:
            return self._inner.transfer(state, adata_target, extend_categories=extend_categories)
        mod_key = state.get("mod_key", self._mod_key)
        if mod_key != self._mod_key:
            raise ValueError(
                f"Field {self.registry_key!r} was created for the modality {self._mod_key!r} but the registry it "
                f"is transferred from has {mod_key!r}. Create the fields from the registry's setup_args."
            )
        mod, _ = self._modality(adata_target, mod_key)
        inner_state = {k: v for k, v in state.items() if k != "mod_key"}
        new = self._inner.transfer(inner_state, mod, extend_categories=extend_categories)
        return {**new, "mod_key": mod_key}

    def summary(self, state: dict[str, Any]) -> dict[str, int]:
        return self._inner.summary(state)

    def get_array(self, mdata: Any, state: dict[str, Any]) -> Any:
        mod, rows = self._modality(mdata, state.get("mod_key", self._mod_key))
        return self._rows(self._inner.get_array(mod, state), rows)

    def get_field_data(self, mdata: Any, state: dict[str, Any]) -> Any:
        mod, rows = self._modality(mdata, state.get("mod_key", self._mod_key))
        return self._rows(self._inner.get_field_data(mod, state), rows)

    def data_registry(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"mod_key": state.get("mod_key", self._mod_key), **self._inner.data_registry(state)}

    def state_registry(self, state: dict[str, Any]) -> dict[str, Any]:
        return self._inner.state_registry(state) if state else {}

    def view_rows(self, state: dict[str, Any]) -> list[tuple[str, str]]:
        where = "the MuData's obs" if state.get("mod_key", self._mod_key) is None else f"mod {state.get('mod_key')!r}"
        rows = self._inner.view_rows({k: v for k, v in state.items() if k != "mod_key"} if state else state)
        return [("modality", where)] + rows

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._inner!r}, mod_key={self._mod_key!r})"


class MuDataLayerField(MuDataField):
    """:class:`LayerField` of one modality of a MuData (e.g. the RNA counts).

    Parameters
    ----------
    registry_key, layer, is_count_data, correct_data_format, save_column_names
        As for :class:`LayerField`.
    mod_key
        The modality, e.g. ``"rna"``.
    mod_required
        Whether ``mod_key`` must be given.

    Examples
    --------
    >>> field = MuDataLayerField("X", None, mod_key="rna")
    >>> state = field.register(mdata)
    """

    def __init__(
        self,
        registry_key: str,
        layer: str | None = None,
        mod_key: str | None = None,
        mod_required: bool = True,
        is_count_data: bool = True,
        correct_data_format: bool = True,
        save_column_names: bool = False,
    ):
        inner = LayerField(registry_key, layer, is_count_data, correct_data_format, save_column_names)
        super().__init__(inner, mod_key, mod_required)


class MuDataCategoricalObsField(MuDataField):
    """:class:`CategoricalObsField` of a modality's ``obs`` (or the MuData's ``obs`` when ``mod_key`` is None).

    Examples
    --------
    >>> field = MuDataCategoricalObsField("batch", "batch", mod_key="rna")
    """

    def __init__(
        self,
        registry_key: str,
        attr_key: str | None = None,
        mod_key: str | None = None,
        mod_required: bool = False,
        summary_key: str | None = None,
    ):
        super().__init__(CategoricalObsField(registry_key, attr_key, summary_key), mod_key, mod_required)


class MuDataNumericalObsField(MuDataField):
    """:class:`NumericalObsField` of a modality's ``obs`` (or the MuData's ``obs``), e.g. size factors.

    Examples
    --------
    >>> field = MuDataNumericalObsField("size_factor", "size_factor", mod_key="rna")
    """

    def __init__(
        self,
        registry_key: str,
        attr_key: str | None = None,
        mod_key: str | None = None,
        mod_required: bool = False,
        required: bool = True,
        positive: bool = False,
    ):
        super().__init__(NumericalObsField(registry_key, attr_key, positive, required), mod_key, mod_required)


class MuDataCategoricalJointObsField(MuDataField):
    """:class:`CategoricalJointObsField` of a modality's ``obs`` (extra categorical covariates).

    Examples
    --------
    >>> field = MuDataCategoricalJointObsField("extra_categorical_covs", ["donor"], mod_key="rna")
    """

    def __init__(
        self,
        registry_key: str,
        attr_keys: Sequence[str] | None = None,
        mod_key: str | None = None,
        mod_required: bool = False,
    ):
        super().__init__(CategoricalJointObsField(registry_key, attr_keys), mod_key, mod_required)


class MuDataNumericalJointObsField(MuDataField):
    """:class:`NumericalJointObsField` of a modality's ``obs`` (extra continuous covariates).

    Examples
    --------
    >>> field = MuDataNumericalJointObsField("extra_continuous_covs", ["pct_mito"], mod_key="rna")
    """

    def __init__(
        self,
        registry_key: str,
        attr_keys: Sequence[str] | None = None,
        mod_key: str | None = None,
        mod_required: bool = False,
    ):
        super().__init__(NumericalJointObsField(registry_key, attr_keys), mod_key, mod_required)


class MuDataObsmField(MuDataField):
    """:class:`ObsmField` of a modality's ``obsm`` (or the MuData's ``obsm``).

    Examples
    --------
    >>> field = MuDataObsmField("spatial", "spatial", mod_key="rna", is_count_data=False)
    """

    def __init__(
        self,
        registry_key: str,
        attr_key: str | None = None,
        mod_key: str | None = None,
        mod_required: bool = False,
        colnames_uns_key: str | None = None,
        is_count_data: bool = False,
        correct_data_format: bool = True,
    ):
        inner = ObsmField(registry_key, attr_key, colnames_uns_key, is_count_data, correct_data_format)
        super().__init__(inner, mod_key, mod_required)


class _ProteinLayerField(BaseField):
    """Cells x proteins counts in ``X`` or a layer of a protein AnnData, named by its ``var_names``.

    Registered like an :class:`ObsmField` (state ``column_names``, summary ``n_{registry_key}``), so a model
    reads proteins the same way from ``obsm`` or from a modality.
    """

    def __init__(self, registry_key: str, layer: str | None, is_count_data: bool):
        super().__init__(registry_key)
        self._layer = LayerField(registry_key, layer, is_count_data)
        self.layer = layer
        self.is_count_data = bool(is_count_data)

    @property
    def attr_name(self) -> str:  # type: ignore[override]
        return self._layer.attr_name

    @property
    def attr_key(self) -> str | None:
        return self.layer

    @property
    def is_empty(self) -> bool:
        return False

    @staticmethod
    def _to_layer_state(state: dict[str, Any]) -> dict[str, Any]:
        names = state["column_names"]
        return {"layer": state["layer"], "var_names": names, "n_vars": len(names)}

    @staticmethod
    def _from_layer_state(layer_state: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        return {"layer": layer_state["layer"], "column_names": layer_state["var_names"], **extra}

    def register(self, adata: AnnData) -> dict[str, Any]:
        return self._from_layer_state(self._layer.register(adata), {})

    def transfer(self, state: dict[str, Any], adata_target: AnnData, extend_categories: bool = False) -> dict[str, Any]:
        layer_state = self._layer.transfer(self._to_layer_state(state), adata_target, extend_categories)
        extra = {k: v for k, v in state.items() if k not in ("layer", "column_names")}
        return self._from_layer_state(layer_state, extra)

    def summary(self, state: dict[str, Any]) -> dict[str, int]:
        return {f"n_{self.registry_key}": len(state["column_names"])}

    def get_array(self, adata: AnnData, state: dict[str, Any]) -> Any:
        return self._layer.get_array(adata, self._to_layer_state(state))

    def get_field_data(self, adata: AnnData, state: dict[str, Any]) -> Any:
        return self._layer.get_field_data(adata, self._to_layer_state(state))

    def data_registry(self, state: dict[str, Any]) -> dict[str, Any]:
        return self._layer.data_registry(state)

    def state_registry(self, state: dict[str, Any]) -> dict[str, Any]:
        registry = {"column_names": np.asarray(state["column_names"], dtype=object)}
        mask = state.get("protein_batch_mask")
        if mask is not None:
            registry["protein_batch_mask"] = {batch: np.asarray(values) for batch, values in mask.items()}
        return registry

    def view_rows(self, state: dict[str, Any]) -> list[tuple[str, str]]:
        return self._layer.view_rows(self._to_layer_state(state))


class MuDataProteinLayerField(MuDataField):
    """Protein counts in ``X`` or a layer of a MuData modality, with the per-batch panel mask (TOTALVI).

    The proteins are the modality's ``var_names``. With ``use_batch_mask`` the state records, per batch
    category of ``batch_field``, which proteins the batch measured (not zero in all its cells), as
    :class:`ProteinObsmField` does.

    Parameters
    ----------
    registry_key
        Key of the field in the registry and in minibatches, e.g. ``"proteins"``.
    layer
        Layer of the protein modality with the counts; None for its ``X``.
    mod_key
        The protein modality, e.g. ``"prot"``.
    mod_required
        Whether ``mod_key`` must be given.
    use_batch_mask
        Compute the per-batch mask (needs ``batch_field``).
    batch_field
        The batch field of the same setup (a :class:`MuDataCategoricalObsField`).
    is_count_data
        Whether every value must be a finite, non-negative integer.
    correct_data_format
        Accepted for scvi-tools' signature; pyrovi never modifies the data.

    Examples
    --------
    >>> batch = MuDataCategoricalObsField("batch", "batch", mod_key="rna")
    >>> field = MuDataProteinLayerField("proteins", None, mod_key="prot", batch_field=batch)
    """

    def __init__(
        self,
        registry_key: str,
        layer: str | None = None,
        mod_key: str | None = None,
        mod_required: bool = True,
        use_batch_mask: bool = True,
        batch_field: BaseField | None = None,
        is_count_data: bool = True,
        correct_data_format: bool = True,
    ):
        if use_batch_mask and batch_field is None:
            raise ValueError(
                "use_batch_mask=True needs the batch field (batch_field=...), whose categories define the "
                "batches of the mask; pass it, or use_batch_mask=False."
            )
        super().__init__(_ProteinLayerField(registry_key, layer, is_count_data), mod_key, mod_required)
        self.use_batch_mask = bool(use_batch_mask)
        self.batch_field = batch_field
        self.correct_data_format = bool(correct_data_format)

    def register(self, mdata: Any) -> dict[str, Any]:
        state = super().register(mdata)
        if not self.use_batch_mask:
            return state
        batch_state = self.batch_field.register(mdata)
        codes = np.asarray(self.batch_field.get_array(mdata, batch_state)).reshape(-1)
        matrix = self.get_field_data(mdata, state)
        return {**state, "protein_batch_mask": batch_mask(matrix, codes, batch_state["categories"])}
