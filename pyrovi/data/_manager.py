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
from ..utils import attrdict
from ._constants import (
    DATA_REGISTRY_KEY,
    FIELD_REGISTRIES_KEY,
    MODEL_NAME_KEY,
    SETUP_ARGS_KEY,
    STATE_REGISTRY_KEY,
    SUMMARY_STATS_KEY,
)
from ._errors import RegisteredDataChangedError
from ._fingerprint import data_fingerprint
from ._registry import write_registry, read_registry
from ._view import format_registry
from .fields import BaseField
from .fields._lookup import format_names
from .fields._mudata import is_mudata, MuDataField

# Statistics every model may read; 0 when no field provides them (n_cells and n_vars come from the data).
_DEFAULT_SUMMARY_KEYS = ("n_batch", "n_labels", "n_extra_categorical_covs", "n_extra_continuous_covs")


class AnnDataManager:
    """Registers a model's data fields on an AnnData and serves the encoded arrays to the data loader.

    The registry it builds is a plain JSON-serialisable dict, stored in ``adata.uns[UNS_REGISTRY_KEY]`` as
    a JSON string (the only change the data layer makes to the user's AnnData; a model's setup adds an
    identifier, see :mod:`pyrovi.model`)::

        {"model_name": str, "pyrovi_version": str, "setup_args": dict,
         "field_states": {registry_key: state}, "summary_stats": {name: int}}

    Parameters
    ----------
    fields
        The model's fields, with distinct registry keys.
    setup_method_args
        What the model's ``setup_anndata`` was called with, as scvi-tools passes it:
        ``{"model_name": "SCVI", "setup_args": {...}}``. A plain dict of setup arguments (pyrovi's earlier
        form, with ``model_name`` as the third argument) is accepted too. Setup arguments must be
        JSON-serialisable and are stored as read back from JSON (tuples become lists).
    model_name
        Name of the model class, e.g. ``"SCVI"``, when ``setup_method_args`` does not name it.
    validation_checks
        Accepted for scvi-tools' signature; pyrovi's fields always validate their data.

    Examples
    --------
    >>> from pyrovi._constants import REGISTRY_KEYS
    >>> from pyrovi.data import AnnDataManager, CategoricalObsField, LayerField, read_registry
    >>> fields = [LayerField(REGISTRY_KEYS.X_KEY, None), CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, "batch")]
    >>> manager = AnnDataManager(
    ...     fields=fields,
    ...     setup_method_args={"model_name": "SCVI", "setup_args": {"layer": None, "batch_key": "batch"}},
    ... )
    >>> manager = manager.register_fields(adata)
    >>> manager.summary_stats.n_batch, manager.data_registry.batch.attr_key
    (2, 'batch')
    >>> arrays = manager.get_arrays()
    >>> sorted(arrays)
    ['X', 'batch']
    >>> adata_query = pyrovi.datasets.synthetic_iid(n_cells=30, n_genes=50, seed=1)
    >>> query_manager = manager.transfer_fields(adata_query, extend_categories=True)
    >>> query_manager.get_array("batch").shape
    (30,)
    """

    def __init__(
        self,
        fields: Sequence[BaseField] | None = None,
        setup_method_args: dict[str, Any] | None = None,
        model_name: str | None = None,
        validation_checks: Any = None,
    ):
        setup_args, model_name = _split_setup_method_args(setup_method_args, model_name)
        fields = list(fields or [])
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
        #: what the registered data looked like when it was last validated (see check_unchanged)
        self._fingerprint: dict[str, tuple] | None = None

    # Registration.

    def register_fields(
        self,
        adata: AnnData,
        source_registry: dict[str, Any] | None = None,
        extend_categories: bool = False,
        read_only: bool = False,
        **transfer_kwargs: Any,
    ) -> AnnDataManager:
        """Validate ``adata``, build the registry and store it in ``adata.uns``.

        Parameters
        ----------
        adata
            The data to set up. Must not be a view (pass ``adata[mask].copy()``), except with ``read_only``.
        source_registry
            A registry to transfer from (query data, or data given when a saved model is loaded): each field
            then keeps the registered genes and category mappings. None registers the fields afresh.
        extend_categories
            With ``source_registry``, append categories unseen at registration instead of raising an error.
        read_only
            With ``source_registry``: validate and read ``adata`` without writing the registry to its ``uns``,
            so that a view (query data such as ``adata[:10]``) can be read as it is. Models read views this way.
        **transfer_kwargs
            scvi-tools' other transfer options; none is needed by pyrovi's fields, so any given is an error.

        Returns
        -------
        This manager, now registered on ``adata``.

        Examples
        --------
        >>> from pyrovi.data import CategoricalObsField, LayerField, read_registry
        >>> fields = [LayerField("X", None), CategoricalObsField("batch", "batch")]
        >>> setup_args = {"layer": None, "batch_key": "batch"}
        >>> manager = AnnDataManager(fields, setup_args, "SCVI").register_fields(adata)
        >>> registry = read_registry(adata)
        >>> adata_query = pyrovi.datasets.synthetic_iid(n_cells=30, n_genes=50, seed=1)
        >>> AnnDataManager(fields, registry["setup_args"], "SCVI").register_fields(
        ...     adata_query, source_registry=registry)
        AnnDataManager(...)
        """
        _check_transfer_kwargs(transfer_kwargs)
        if read_only and source_registry is None:
            raise ValueError("read_only=True needs a source_registry: a first setup must write its registry.")
        _check_adata(adata, self._fields, allow_view=read_only)
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
        self._registry = json.loads(json.dumps(registry)) if read_only else write_registry(adata, registry)
        self._adata = adata
        self._fingerprint = data_fingerprint(adata, self._fields, field_states)
        return self

    def transfer_fields(
        self, adata_target: AnnData, extend_categories: bool = False, read_only: bool = False, **kwargs: Any
    ) -> AnnDataManager:
        """A new manager with the same fields, registered on ``adata_target`` from this registry.

        Parameters
        ----------
        adata_target
            Query data with the registered genes (any order, extra genes dropped) and obs columns.
        extend_categories
            Append categories unseen at registration instead of raising an error.
        read_only
            Read ``adata_target`` without writing the registry to its ``uns``; needed for a view, which is
            otherwise refused (as in scvi-tools).
        **kwargs
            scvi-tools' other transfer options; none is needed by pyrovi's fields, so any given is an error.

        Returns
        -------
        The new manager; this one is unchanged.

        Examples
        --------
        >>> adata_query = pyrovi.datasets.synthetic_iid(n_cells=30, n_genes=50, seed=1)
        >>> query_manager = manager.transfer_fields(adata_query, extend_categories=True)
        >>> query_manager.adata is adata_query
        True
        """
        _check_transfer_kwargs(kwargs)
        manager = AnnDataManager(self._fields, self._setup_args, self._model_name)
        return manager.register_fields(
            adata_target, self.registry, extend_categories=extend_categories, read_only=read_only
        )

    def register_new_fields(self, fields: Sequence[BaseField]) -> None:
        """Register more fields on the AnnData this manager is registered on (their keys must be new).

        Parameters
        ----------
        fields
            The fields to add; each validates its data as at setup. The registry in ``adata.uns`` is rewritten.

        Examples
        --------
        >>> from pyrovi.data import ObsmField
        >>> adata.obsm["pca"] = np.zeros((adata.n_obs, 2), dtype=np.float32)
        >>> manager.register_new_fields([ObsmField("pca_coordinates", "pca")])
        >>> manager.get_array("pca_coordinates").shape
        (200, 2)
        """
        registry = self._require_registry()
        fields = list(fields)
        keys = [field.registry_key for field in self._fields]
        for field in fields:
            if not isinstance(field, BaseField):
                raise TypeError(f"fields must be BaseField instances, got {type(field).__name__}.")
            if field.registry_key in keys:
                raise ValueError(f"A field with registry key {field.registry_key!r} is registered already.")
            keys.append(field.registry_key)
        states = dict(registry["field_states"])
        for field in fields:
            state = field.register(self._adata)
            _check_json(state, f"The state of field {field.registry_key!r}")
            states[field.registry_key] = state
        self._fields = self._fields + fields
        new = {**registry, "field_states": states, "summary_stats": self._summary_stats(self._adata, states)}
        self._registry = write_registry(self._adata, new)
        self._fingerprint = data_fingerprint(self._adata, self._fields, states)

    def validate(self) -> None:
        """Check that the registered AnnData still holds what was registered (cells, genes, categories).

        Every field validates its data against its registered state again, as for query data.

        Examples
        --------
        >>> manager.validate()
        """
        states = self._current_states()
        for field in self._fields:
            field.transfer(states[field.registry_key], self._adata)

    def check_unchanged(self) -> bool:
        """Check, cheaply, that the registered data was not changed since it was validated; validate it if so.

        A fingerprint of what the fields read (each array's identity, shape and dtype, and a checksum of a
        fixed sample of its values: about a millisecond for any number of cells; shape and dtype only for
        backed data) was taken when the data was registered. When it differs now, e.g. ``adata.X`` was
        replaced or log-normalised in place, or ``adata.obs['batch']`` was rewritten, every field is
        validated again against the registry, as :meth:`validate` does. Models call this when training
        starts and loaders when they read the data, so changed data never trains silently.

        Returns
        -------
        True when nothing changed; False when the data changed but still validates (e.g. the same counts
        in a copy), whose fingerprint is then kept.

        Raises
        ------
        RegisteredDataChangedError
            The data changed and no longer validates (e.g. counts replaced by normalised values, genes
            removed, new categories); the message names the changed data, the validation error and the fix.

        Examples
        --------
        >>> manager.check_unchanged()
        True
        >>> adata.X = np.log1p(adata.X)
        >>> manager.check_unchanged()
        Traceback (most recent call last):
        ...
        pyrovi.data._errors.RegisteredDataChangedError: The data registered for SCVI changed after it was set up (adata.X) ...
        """
        registry = self._require_registry()
        current = data_fingerprint(self._adata, self._fields, registry["field_states"])
        if current == self._fingerprint:
            return True
        try:
            self.validate()
        except (ValueError, TypeError, KeyError) as err:
            previous = self._fingerprint or {}
            changed = [
                _field_source(field, registry["field_states"][field.registry_key])
                for field in self._fields
                if not field.is_empty and current.get(field.registry_key) != previous.get(field.registry_key)
            ]
            if current.get("_shape") != previous.get("_shape"):
                changed.insert(0, f"shape {previous.get('_shape')} -> {current.get('_shape')}")
            what = ", ".join(changed) or "the registered fields"
            raise RegisteredDataChangedError(
                f"The data registered for {self._model_name} changed after it was set up ({what}) and no longer "
                f"passes the setup's checks: {_message(err)} Restore the data the model was set up with (e.g. the "
                "raw counts from a copy kept in a layer: adata.X = adata.layers['counts'].copy()), or set the data "
                "up again as it is now "
                f"({self._model_name}.setup_anndata(adata, ...)) and create a new model."
            ) from err
        self._fingerprint = current
        return False

    def update_setup_method_args(self, setup_method_args: dict[str, Any]) -> None:
        """Add or replace setup arguments recorded in the registry (JSON values).

        Parameters
        ----------
        setup_method_args
            ``{name: value}``, or scvi-tools' ``{"setup_args": {name: value}}``.

        Examples
        --------
        >>> manager.update_setup_method_args({"unlabeled_category": "Unknown"})
        """
        if not isinstance(setup_method_args, dict):
            raise TypeError(f"setup_method_args must be a dict, got {type(setup_method_args).__name__}.")
        update = setup_method_args.get(SETUP_ARGS_KEY, setup_method_args)
        for name, value in update.items():
            _check_json({name: value}, f"The setup argument {name!r}")
        self._setup_args = _json_copy({**self._setup_args, **update})
        if self._registry is not None:
            self._registry = write_registry(self._adata, {**self._registry, "setup_args": self._setup_args})

    def _get_setup_method_args(self) -> dict[str, Any]:
        """``{"model_name": ..., "setup_args": ...}``, as scvi-tools' managers give it."""
        return {MODEL_NAME_KEY: self._model_name, SETUP_ARGS_KEY: self.setup_args}

    # Read access.

    @property
    def registry(self) -> dict[str, Any]:
        """The registry (a copy): model name, pyrovi version, setup args, field states, summary stats.

        ``registry["field_registries"]`` gives, per field, scvi-tools' view of it (``data_registry``,
        ``state_registry``, ``summary_stats``); it is built when first read and is not stored.
        """
        return _Registry(json.loads(json.dumps(self._require_registry())), self)

    @property
    def summary_stats(self) -> attrdict:
        """``n_cells``, ``n_vars``, ``n_batch``, ``n_labels``, covariate counts and field-specific counts.

        Read as ``summary_stats["n_batch"]`` or ``summary_stats.n_batch``.
        """
        return attrdict(self._require_registry()["summary_stats"])

    @property
    def data_registry(self) -> attrdict:
        """Where each non-empty field reads: ``{registry_key: {"attr_name", "attr_key"}}`` (``mod_key`` for MuData).

        ``data_registry.batch.attr_key`` is the obs column of the batches. Category codes and the registered
        gene order are computed when the data is read, never written into the AnnData.
        """
        states = self._require_registry()["field_states"]
        return attrdict(
            {
                field.registry_key: field.data_registry(states[field.registry_key])
                for field in self._fields
                if not field.is_empty
            }
        )

    def get_state_registry(self, registry_key: str) -> attrdict:
        """The state of a field under scvi-tools' names (``categorical_mapping``, ``column_names``, ...).

        Examples
        --------
        >>> manager.get_state_registry("batch").categorical_mapping
        array(['batch_0', 'batch_1'], dtype=object)
        """
        field = self._field(registry_key)
        return attrdict(field.state_registry(self.get_state(registry_key)), recursive=False)

    def get_from_registry(self, registry_key: str) -> Any:
        """The data of one field as scvi-tools returns it, read from the registered AnnData.

        Category codes and numbers of one obs column come as a column ``(n_cells, 1)``, joint obs columns as a
        DataFrame indexed by cell, matrices with the registered columns in their order (dtype and sparsity
        as stored).

        Examples
        --------
        >>> manager.get_from_registry("batch")[:2]
        array([[0], [0]])
        """
        states = self._current_states()
        return self._field(registry_key).get_field_data(self._adata, states[registry_key])

    def create_torch_dataset(
        self,
        indices: Sequence[int] | np.ndarray | None = None,
        data_and_attributes: list[str] | dict[str, Any] | None = None,
        load_sparse_tensor: bool = False,
    ) -> Any:
        """An :class:`~pyrovi.data.AnnTorchDataset` over the registered data (a ``Subset`` with ``indices``).

        Examples
        --------
        >>> dataset = manager.create_torch_dataset()
        >>> dataset[[0, 1]]["X"].shape
        (2, 50)
        """
        import torch

        from ._anntorchdataset import AnnTorchDataset

        dataset = AnnTorchDataset(self, getitem_tensors=data_and_attributes, load_sparse_tensor=load_sparse_tensor)
        if indices is None:
            return dataset
        return torch.utils.data.Subset(dataset, np.asarray(indices).tolist())

    def _field(self, registry_key: str) -> BaseField:
        for field in self._fields:
            if field.registry_key == registry_key:
                return field
        raise KeyError(f"No field {registry_key!r}; the fields are {[f.registry_key for f in self._fields]}.")

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
        >>> manager.get_state("batch")["categories"]
        ['batch_0', 'batch_1']
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
        >>> arrays = manager.get_arrays()
        >>> arrays["batch"].dtype
        dtype('int64')
        """
        self.check_unchanged()
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
        >>> manager.get_array("batch")[:3]
        array([0, 0, 0])
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

    def view_registry(self, hide_state_registries: bool = False) -> None:
        """Print the setup arguments, summary statistics and each field's source, state and categories.

        Parameters
        ----------
        hide_state_registries
            Show only each field's source, not its state (categories, genes).

        Examples
        --------
        >>> manager.view_registry(hide_state_registries=True)  # doctest: +ELLIPSIS
        Registry of SCVI (pyrovi ...): 200 cells x 50 genes
        <BLANKLINE>
        Setup arguments
          layer                       None
          batch_key                   'batch'
        ...
        Summary statistics
          n_cells                     200
          n_vars                      50
          n_batch                     2
        ...
        """
        print(format_registry(self._require_registry(), self._fields, hide_state_registries))

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


class _Registry(dict):
    """A registry copy that builds scvi-tools' ``field_registries`` entry when it is first read."""

    def __init__(self, registry: dict[str, Any], manager: AnnDataManager):
        super().__init__(registry)
        self._manager = manager

    def __missing__(self, key: str) -> Any:
        if key != FIELD_REGISTRIES_KEY:
            raise KeyError(key)
        manager = self._manager
        states = self["field_states"]
        value = {}
        for field in manager.fields:
            state = states[field.registry_key]
            value[field.registry_key] = {
                DATA_REGISTRY_KEY: field.data_registry(state) if not field.is_empty else {},
                STATE_REGISTRY_KEY: field.state_registry(state),
                SUMMARY_STATS_KEY: field.summary(state),
            }
        self[key] = value
        return value


def _split_setup_method_args(
    setup_method_args: dict[str, Any] | None, model_name: str | None
) -> tuple[dict[str, Any], str]:
    """``(setup_args, model_name)`` from scvi-tools' ``{"model_name", "setup_args"}`` or a plain args dict."""
    if setup_method_args is None:
        return {}, model_name or "unknown"
    if not isinstance(setup_method_args, dict):
        raise TypeError(f"setup_method_args must be a dict, got {type(setup_method_args).__name__}.")
    if SETUP_ARGS_KEY in setup_method_args and isinstance(setup_method_args[SETUP_ARGS_KEY], dict):
        name = setup_method_args.get(MODEL_NAME_KEY, model_name)
        return dict(setup_method_args[SETUP_ARGS_KEY]), str(name or "unknown")
    return setup_method_args, model_name or "unknown"


def _check_transfer_kwargs(kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise TypeError(
            f"Unknown transfer option(s) {sorted(kwargs)}; pyrovi's transfer takes extend_categories only."
        )


def _check_adata(adata: AnnData, fields: Sequence[BaseField] = (), allow_view: bool = False) -> None:
    mudata_given = is_mudata(adata)
    if not isinstance(adata, AnnData) and not mudata_given:
        raise TypeError(f"Expected an AnnData (or a MuData for MuData fields), got {type(adata).__name__}.")
    if mudata_given:
        anndata_fields = [f.registry_key for f in fields if not f.is_empty and not isinstance(f, MuDataField)]
        if anndata_fields:
            raise TypeError(
                f"Got a MuData, but the field(s) {anndata_fields} read an AnnData. Set a MuData up with the "
                "model's setup_mudata (MuData fields), or pass one of its modalities, e.g. mdata.mod['rna']."
            )
        _check_mudata_names(adata, fields)
    if adata.is_view and not allow_view:
        raise ValueError(
            f"The {type(adata).__name__} is a view (e.g. adata[mask]); pyrovi does not copy data silently. Pass a "
            "copy instead, e.g. adata[mask].copy()."
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
            f"{format_names(duplicated, 5)}); results indexed by cell name and error messages naming a cell "
            "would be ambiguous. Make them unique with adata.obs_names_make_unique().",
            UserWarning,
            stacklevel=4,
        )


def _check_mudata_names(mdata: Any, fields: Sequence[BaseField]) -> None:
    """Cell names must be unique in a MuData and its modalities, and gene names in each modality read.

    A MuData pairs the cells of its modalities by name: a name given twice pairs the wrong rows (or makes
    the MuData and its modalities disagree in length), so it is an error, not a warning as for an AnnData.
    """
    fix = (
        "Make the names unique in every modality, e.g. `for mod in mdata.mod.values(): mod.obs_names_make_unique()`"
        ", then mdata.update() (the repeats become name-1, name-2...: check that the modalities' cells still pair)."
    )
    where = [("The MuData", mdata.obs_names)]
    where += [(f"mdata.mod[{name!r}]", mod.obs_names) for name, mod in mdata.mod.items()]
    for source, names in where:
        if not names.is_unique:
            duplicated = names[names.duplicated()].unique()
            raise ValueError(
                f"{source} holds {len(duplicated)} cell name(s) more than once ({format_names(duplicated, 5)}); "
                f"a MuData pairs the cells of its modalities by name, so duplicated names pair the wrong cells. {fix}"
            )
    read = {f.mod_key for f in fields if not f.is_empty and isinstance(f, MuDataField) and f.mod_key is not None}
    for name in sorted(read):
        mod = mdata.mod[name] if name in mdata.mod else None
        if mod is not None and not mod.var_names.is_unique:
            duplicated = mod.var_names[mod.var_names.duplicated()].unique()
            raise ValueError(
                f"mdata.mod[{name!r}].var_names holds {len(duplicated)} name(s) more than once "
                f"({format_names(duplicated, 5)}); genes and proteins are matched by name, so each must be "
                f"unique. Make them unique, e.g. mdata.mod[{name!r}].var_names_make_unique(), then mdata.update()."
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


def _field_source(field: BaseField, state: dict[str, Any]) -> str:
    """Where a field reads, as a user writes it: ``adata.X``, ``adata.layers['counts']``, ``adata.obs['batch']``."""
    where = field.data_registry(state)
    prefix = "adata" if where.get("mod_key") is None else f"mdata.mod[{where['mod_key']!r}]"
    name, key = where.get("attr_name"), where.get("attr_key")
    if name == "X" or key is None:
        return f"{prefix}.{name}"
    if isinstance(key, list):
        return ", ".join(f"{prefix}.{name}[{k!r}]" for k in key)
    return f"{prefix}.{name}[{key!r}]"


def _message(err: BaseException) -> str:
    """An exception's message as printed (a KeyError's without the quotes its repr adds)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return text if text.endswith(".") else text + "."


def _check_json(value: Any, what: str) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} is not JSON-serialisable ({err}).") from err


def _json_copy(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` as read back from JSON: a deep copy made of plain types only."""
    return json.loads(json.dumps(value))
