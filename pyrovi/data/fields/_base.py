"""The contract every data field follows: register, transfer, summarise and encode one piece of an AnnData."""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
from anndata import AnnData
from scipy import sparse


class BaseField(abc.ABC):
    """One piece of an AnnData that a model reads, e.g. the counts or the batch of each cell.

    A field object only holds what the user asked for at setup (which layer, which obs column). Everything
    learnt from the data (gene names, category mappings) lives in its *state*, a JSON-serialisable dict
    returned by :meth:`register` or :meth:`transfer` and stored in the model's registry. All other methods
    take that state, so a field object can be shared between the reference data and any query data.

    Parameters
    ----------
    registry_key
        Key of the field in the registry and in a loader's minibatches, e.g. ``"X"`` or ``"batch"``.

    Examples
    --------
    >>> from pyrovi.data.fields import CategoricalObsField
    >>> field = CategoricalObsField("batch", "batch", "n_batch")
    >>> state = field.register(adata)
    >>> codes = field.get_array(adata, state)
    """

    def __init__(self, registry_key: str):
        if not isinstance(registry_key, str) or not registry_key:
            raise ValueError(f"registry_key must be a non-empty string, got {registry_key!r}.")
        self._registry_key = registry_key

    @property
    def registry_key(self) -> str:
        """Key of the field in the registry and in a loader's minibatches."""
        return self._registry_key

    #: Where the field reads in the AnnData: ``"X"``, ``"layers"``, ``"obs"``, ``"obsm"`` or ``"uns"``.
    attr_name: str = "obs"

    @property
    def attr_key(self) -> str | None:
        """The key inside :attr:`attr_name` (a layer, obs column, obsm entry), None for ``X`` or none."""
        return None

    @property
    def mod_key(self) -> str | None:
        """The MuData modality the field reads; None for AnnData fields."""
        return None

    @property
    @abc.abstractmethod
    def is_empty(self) -> bool:
        """Whether the field is optional and was not set up (it then has state ``{}`` and no array)."""

    @abc.abstractmethod
    def register(self, adata: AnnData) -> dict[str, Any]:
        """Validate ``adata`` and return the field's state.

        Parameters
        ----------
        adata
            The AnnData the model is set up with. It is never modified.

        Returns
        -------
        The JSON-serialisable state (only str, int, float, bool, None, list and dict).
        """

    @abc.abstractmethod
    def transfer(
        self, state: dict[str, Any], adata_target: AnnData, extend_categories: bool = False
    ) -> dict[str, Any]:
        """Validate a new AnnData against a registered state and return the state to use for it.

        Parameters
        ----------
        state
            The state returned by :meth:`register` (or an earlier :meth:`transfer`) on the source data.
        adata_target
            Query data, or the data given when a saved model is loaded. It is never modified.
        extend_categories
            Whether categories unseen at registration are appended to the registered ones (query data
            with new batches) instead of raising an error.

        Returns
        -------
        The state for ``adata_target``; equal to ``state`` unless categories were extended.
        """

    def summary(self, state: dict[str, Any]) -> dict[str, int]:
        """Summary statistics this field contributes to the registry, e.g. ``{"n_batch": 2}``.

        Parameters
        ----------
        state
            The field's state.

        Returns
        -------
        Statistic name to value; empty by default.
        """
        return {}

    @abc.abstractmethod
    def get_array(self, adata: AnnData, state: dict[str, Any]) -> np.ndarray | sparse.csr_matrix:
        """The encoded data a loader reads, aligned with ``state``.

        Parameters
        ----------
        adata
            An AnnData this field was registered or transferred on with ``state``.
        state
            The field's state for ``adata``.

        Returns
        -------
        One row per cell: category codes, numbers, or counts with genes in the registered order. The result
        may share memory with ``adata``; treat it as read-only.
        """

    def data_registry(self, state: dict[str, Any]) -> dict[str, Any]:
        """Where the field's data lives: ``{"attr_name": ..., "attr_key": ...}`` (``mod_key`` for MuData).

        Parameters
        ----------
        state
            The field's state.

        Returns
        -------
        The location of the source data pyrovi reads (codes and reordered genes are computed on read,
        never written into the AnnData).
        """
        key = state.get("obs_key", state.get("obsm_key", state.get("layer", self.attr_key)))
        return {"attr_name": self.attr_name, "attr_key": key}

    def state_registry(self, state: dict[str, Any]) -> dict[str, Any]:
        """The field's state under scvi-tools' names (``categorical_mapping``, ``column_names``...).

        Parameters
        ----------
        state
            The field's state.

        Returns
        -------
        A new dict; numpy arrays where scvi-tools gives arrays. The JSON state stays the reference.
        """
        return dict(state)

    def get_field_data(self, adata: AnnData, state: dict[str, Any]) -> Any:
        """The field's data as :meth:`AnnDataManager.get_from_registry` returns it (scvi-tools' shapes).

        Parameters
        ----------
        adata
            An AnnData this field was registered or transferred on with ``state``.
        state
            The field's state.

        Returns
        -------
        By default :meth:`get_array`; obs fields give one column ``(n_cells, 1)``, joint obs fields a
        DataFrame.
        """
        return self.get_array(adata, state)

    def view_rows(self, state: dict[str, Any]) -> list[tuple[str, str]]:
        """Rows ``(name, value)`` describing the field in :meth:`AnnDataManager.view_registry`.

        Parameters
        ----------
        state
            The field's state.

        Returns
        -------
        The rows, the first being ``("source", ...)``, which says where in the AnnData the data lives.
        """
        return [(str(name), _short(value)) for name, value in state.items()]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(registry_key={self.registry_key!r})"

    # Helpers shared by the concrete fields.

    def _check_state_matches(self, state: dict[str, Any], name: str, expected: Any) -> None:
        """Fail when the field was built with other arguments than the registered state records."""
        if self.is_empty:
            if state:
                raise ValueError(
                    f"Field {self.registry_key!r} was created empty ({name}=None) but the registry it is "
                    f"transferred from has {name}={state.get(name)!r}. Create the fields from the "
                    "registry's setup_args."
                )
            return
        if not state:
            raise ValueError(
                f"Field {self.registry_key!r} was created with {name}={expected!r} but the registry it "
                f"is transferred from has no data for it. Create the fields from the registry's setup_args."
            )
        if state.get(name) != expected:
            raise ValueError(
                f"Field {self.registry_key!r} was created with {name}={expected!r} but the registry it is "
                f"transferred from has {name}={state.get(name)!r}. Create the fields from the registry's "
                "setup_args."
            )


def _short(value: Any, max_items: int = 5) -> str:
    """A one-line rendering of a state value; long lists show their first items and their length."""
    if isinstance(value, list) and len(value) > max_items:
        shown = ", ".join(str(v) for v in value[:max_items])
        return f"{shown}, ... ({len(value)} in all)"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)
