"""The AnnDataManager: registers a model's fields on an AnnData and serves their arrays to the loader."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from anndata import AnnData
from scipy import sparse

from .. import __version__
from ._registry import _write_registry, read_registry
from ._view import _format_registry
from .fields import BaseField
from .fields._lookup import _format_names

# Statistics every model may read; 0 when no field provides them (n_cells and n_vars come from the data).
_DEFAULT_SUMMARY_KEYS = ("n_batch", "n_labels", "n_extra_categorical_covs", "n_extra_continuous_covs")


class AnnDataManager:
    """Registers a model's data fields on an AnnData and serves the encoded arrays to the data loader.

    The registry it builds is a plain JSON-serialisable dict, stored in ``adata.uns[UNS_REGISTRY_KEY]`` as
    a JSON string (the only change ever made to the user's AnnData)::

        {"model_name": str, "pyrovi_version": str, "setup_args": dict,
         "field_states": {registry_key: state}, "summary_stats": {name: int}}

    Parameters
    ----------
    fields
        The model's fields, with distinct registry keys.
    setup_args
        The arguments given to the model's ``setup_anndata``; must be JSON-serialisable. Stored as read back
        from JSON (tuples become lists).
    model_name
        Name of the model class, e.g. ``"SCVI"``.

    Examples
    --------
    >>> from pyrovi._constants import REGISTRY_KEYS
    >>> from pyrovi.data import AnnDataManager, CategoricalObsField, LayerField, read_registry
    >>> fields = [LayerField(REGISTRY_KEYS.X_KEY, None),
    ...           CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, "batch", "n_batch")]
    >>> manager = AnnDataManager(fields, {"layer": None, "batch_key": "batch"}, "SCVI")
    >>> manager = manager.register_fields(adata)  # doctest: +SKIP
    >>> arrays = manager.get_arrays()  # doctest: +SKIP
    >>> query_manager = manager.transfer_fields(adata_query, extend_categories=True)  # doctest: +SKIP
    """

    def __init__(self, fields: Sequence[BaseField], setup_args: dict[str, Any], model_name: str):
        fields = list(fields)
        for field in fields:
            if not isinstance(field, BaseField):
                raise TypeError(f"fields must be BaseField instances, got {type(field).__name__}.")
        keys = [field.registry_key for field in fields]
        duplicated = sorted({key for key in keys if keys.count(key) > 1})
        if duplicated:
            raise ValueError(f"Several fields share the registry key(s) {duplicated}; each key must be unique.")
        if not isinstance(setup_args, dict):
            raise TypeError(f"setup_args must be a dict, got {type(setup_args).__name__}.")
        for name, value in setup_args.items():
            _check_json({name: value}, f"The setup argument {name!r}")
        self._fields = fields
        self._setup_args = _json_copy(setup_args)
        self._model_name = str(model_name)
        self._adata: AnnData | None = None
        self._registry: dict[str, Any] | None = None

    # Registration.

    def register_fields(
        self,
        adata: AnnData,
        source_registry: dict[str, Any] | None = None,
        extend_categories: bool = False,
    ) -> AnnDataManager:
        """Validate ``adata``, build the registry and store it in ``adata.uns``.

        Parameters
        ----------
        adata
            The data to set up. Must not be a view: pass ``adata[mask].copy()`` instead.
        source_registry
            A registry to transfer from (query data, or data given when a saved model is loaded): each field
            then keeps the registered genes and category mappings. None registers the fields afresh.
        extend_categories
            With ``source_registry``, append categories unseen at registration instead of raising an error.

        Returns
        -------
        This manager, now registered on ``adata``.

        Examples
        --------
        >>> manager = AnnDataManager(fields, setup_args, "SCVI").register_fields(adata)  # doctest: +SKIP
        >>> registry = read_registry(adata)  # doctest: +SKIP
        >>> AnnDataManager(fields, registry["setup_args"], "SCVI").register_fields(
        ...     adata_query, source_registry=registry)  # doctest: +SKIP
        """
        _check_adata(adata)
        source_states = None if source_registry is None else _source_states(source_registry, self._fields)
        field_states = {}
        for field in self._fields:
            if source_states is None:
                state = field.register(adata)
            else:
                state = field.transfer(source_states[field.registry_key], adata, extend_categories=extend_categories)
            _check_json(state, f"The state of field {field.registry_key!r}")
            field_states[field.registry_key] = state
        registry = {
            "model_name": self._model_name,
            "pyrovi_version": __version__,
            "setup_args": self._setup_args,
            "field_states": field_states,
            "summary_stats": self._summary_stats(adata, field_states),
        }
        # Written only once every field has validated, so a failed setup leaves the AnnData untouched.
        self._registry = _write_registry(adata, registry)
        self._adata = adata
        return self

    def transfer_fields(self, adata_target: AnnData, extend_categories: bool = False) -> AnnDataManager:
        """A new manager with the same fields, registered on ``adata_target`` from this registry.

        Parameters
        ----------
        adata_target
            Query data with the registered genes (any order, extra genes dropped) and obs columns.
        extend_categories
            Append categories unseen at registration instead of raising an error.

        Returns
        -------
        The new manager; this one is unchanged.

        Examples
        --------
        >>> query_manager = manager.transfer_fields(adata_query, extend_categories=True)  # doctest: +SKIP
        """
        manager = AnnDataManager(self._fields, self._setup_args, self._model_name)
        return manager.register_fields(adata_target, self.registry, extend_categories=extend_categories)

    # Read access.

    @property
    def registry(self) -> dict[str, Any]:
        """The registry (a copy): model name, pyrovi version, setup args, field states, summary stats."""
        return json.loads(json.dumps(self._require_registry()))

    @property
    def summary_stats(self) -> dict[str, int]:
        """``n_cells``, ``n_vars``, ``n_batch``, ``n_labels``, covariate counts and field-specific counts."""
        return dict(self._require_registry()["summary_stats"])

    @property
    def adata(self) -> AnnData:
        """The AnnData this manager is registered on."""
        self._require_registry()
        return self._adata

    @property
    def fields(self) -> list[BaseField]:
        """The fields, in the order given."""
        return list(self._fields)

    @property
    def setup_args(self) -> dict[str, Any]:
        """The setup arguments, as stored in the registry."""
        return _json_copy(self._setup_args)

    @property
    def model_name(self) -> str:
        """Name of the model class the registry belongs to."""
        return self._model_name

    def get_state(self, registry_key: str) -> dict[str, Any]:
        """The state of the field ``registry_key`` (a copy; ``{}`` for an empty field).

        Examples
        --------
        >>> manager.get_state("batch")["categories"]  # doctest: +SKIP
        ['a', 'b']
        """
        states = self._require_registry()["field_states"]
        if registry_key not in states:
            raise KeyError(f"No field with registry key {registry_key!r}; fields: {list(states)}.")
        return _json_copy(states[registry_key])

    def get_arrays(self) -> dict[str, np.ndarray | sparse.csr_matrix]:
        """The encoded arrays of all non-empty fields of the registered AnnData, keyed by registry key.

        Computed on each call. Arrays may share memory with the AnnData: treat them as read-only.

        Returns
        -------
        E.g. ``{"X": float32 CSR (n_cells, n_vars), "batch": int64 (n_cells,), ...}``.

        Examples
        --------
        >>> arrays = manager.get_arrays()  # doctest: +SKIP
        >>> arrays["batch"].dtype  # doctest: +SKIP
        dtype('int64')
        """
        states = self._current_states()
        return {
            field.registry_key: field.get_array(self._adata, states[field.registry_key])
            for field in self._fields
            if not field.is_empty
        }

    def get_array(self, registry_key: str) -> np.ndarray | sparse.csr_matrix | None:
        """The encoded array of one field, as in :meth:`get_arrays`; ``None`` when the field is empty.

        Only that field is read: cheaper than :meth:`get_arrays` when the counts need not be.

        Examples
        --------
        >>> manager.get_array("batch")[:3]  # doctest: +SKIP
        array([0, 0, 1])
        """
        states = self._current_states()
        for field in self._fields:
            if field.registry_key == registry_key:
                return None if field.is_empty else field.get_array(self._adata, states[registry_key])
        raise KeyError(f"No field {registry_key!r}; the fields are {[f.registry_key for f in self._fields]}.")

    def _current_states(self) -> dict[str, Any]:
        """The field states, once the AnnData is checked to still have its registered cells."""
        registry = self._require_registry()
        n_cells = registry["summary_stats"]["n_cells"]
        if self._adata.n_obs != n_cells:
            raise ValueError(
                f"The AnnData has {self._adata.n_obs} cells but {n_cells} when it was registered; it was "
                "modified in place. Set it up again."
            )
        return registry["field_states"]

    def view_registry(self) -> None:
        """Print the setup arguments, summary statistics and each field's source, state and categories.

        Examples
        --------
        >>> manager.view_registry()  # doctest: +SKIP
        """
        print(_format_registry(self._require_registry(), self._fields))

    read_registry = staticmethod(read_registry)

    def __repr__(self) -> str:
        keys = [field.registry_key for field in self._fields]
        if self._registry is None:
            where = "not registered"
        else:
            stats = self._registry["summary_stats"]
            where = f"registered on {stats['n_cells']} cells x {stats['n_vars']} genes"
        return f"AnnDataManager(model_name={self._model_name!r}, fields={keys}, {where})"

    # Helpers.

    def _require_registry(self) -> dict[str, Any]:
        if self._registry is None:
            raise RuntimeError("This AnnDataManager is not registered yet; call register_fields(adata) first.")
        return self._registry

    def _summary_stats(self, adata: AnnData, field_states: dict[str, dict[str, Any]]) -> dict[str, int]:
        stats = {"n_cells": int(adata.n_obs), "n_vars": int(adata.n_vars)}
        stats.update(dict.fromkeys(_DEFAULT_SUMMARY_KEYS, 0))
        provided: dict[str, tuple[str, int]] = {}
        for field in self._fields:
            for name, value in field.summary(field_states[field.registry_key]).items():
                if name in provided and provided[name][1] != value:
                    raise ValueError(
                        f"Fields {provided[name][0]!r} and {field.registry_key!r} both set the summary "
                        f"statistic {name!r}, to {provided[name][1]} and {value}."
                    )
                provided[name] = (field.registry_key, int(value))
                stats[name] = int(value)
        return stats


def _check_adata(adata: AnnData) -> None:
    if not isinstance(adata, AnnData):
        raise TypeError(f"Expected an AnnData, got {type(adata).__name__}.")
    if adata.is_view:
        raise ValueError(
            "The AnnData is a view (e.g. adata[mask]); pyrovi does not copy data silently. Pass a copy "
            "instead, e.g. adata[mask].copy()."
        )
    if adata.n_obs == 0:
        raise ValueError(
            f"The AnnData has no cells (shape {adata.shape}); a model needs at least one cell. Check the cell "
            "filtering or subsetting that produced it."
        )
    if not adata.obs_names.is_unique:
        duplicated = adata.obs_names[adata.obs_names.duplicated()].unique()
        # Not an error: training does not read cell names, but outputs indexed by them and messages that
        # name a cell would be ambiguous.
        warnings.warn(
            f"adata.obs_names holds {len(duplicated)} cell name(s) more than once (e.g. "
            f"{_format_names(duplicated, 5)}); results indexed by cell name and error messages naming a cell "
            "would be ambiguous. Make them unique with adata.obs_names_make_unique().",
            UserWarning,
            stacklevel=4,
        )


def _source_states(source_registry: dict[str, Any], fields: list[BaseField]) -> dict[str, dict[str, Any]]:
    """The field states of ``source_registry``, checking that it has one for every field."""
    if not isinstance(source_registry, dict) or not isinstance(source_registry.get("field_states"), dict):
        raise ValueError("source_registry is not a pyrovi registry (it has no 'field_states'); use read_registry.")
    states = source_registry["field_states"]
    missing = [field.registry_key for field in fields if field.registry_key not in states]
    if missing:
        raise ValueError(
            f"The source registry (model {source_registry.get('model_name')!r}) has no state for the field(s) "
            f"{missing}; it was made for a model with other fields."
        )
    return states


def _check_json(value: Any, what: str) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} is not JSON-serialisable ({err}).") from err


def _json_copy(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` as read back from JSON: a deep copy made of plain types only."""
    return json.loads(json.dumps(value))
