"""Storing a registry in ``adata.uns`` as a JSON string, and reading it back."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from anndata import AnnData

from .._constants import UNS_REGISTRY_KEY


def read_registry(adata: AnnData) -> dict[str, Any] | None:
    """The registry a model stored in ``adata``, or None when it has none.

    The registry is kept in ``adata.uns[UNS_REGISTRY_KEY]`` as a JSON string, so it survives
    ``adata.copy()`` and a round trip through ``write_h5ad``/``read_h5ad`` unchanged.

    Parameters
    ----------
    adata
        An AnnData set up with :meth:`AnnDataManager.register_fields`.

    Returns
    -------
    The registry: ``{"model_name", "pyrovi_version", "setup_args", "field_states", "summary_stats"}``.

    Examples
    --------
    >>> from pyrovi.data import read_registry
    >>> registry = read_registry(adata)
    >>> registry["summary_stats"]["n_batch"]
    2
    """
    if UNS_REGISTRY_KEY not in adata.uns:
        return None
    value = adata.uns[UNS_REGISTRY_KEY]
    # Readers of h5ad files may hand a string back as a 0-d array or as bytes.
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise ValueError(
            f"adata.uns[{UNS_REGISTRY_KEY!r}] should be a JSON string but is a {type(value).__name__}; it was "
            f"modified outside pyrovi. Delete it (del adata.uns[{UNS_REGISTRY_KEY!r}]) and set the data up again."
        )
    try:
        registry = json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"adata.uns[{UNS_REGISTRY_KEY!r}] is not valid JSON ({err}); delete it and set the data up again."
        ) from err
    if not isinstance(registry, dict) or "field_states" not in registry:
        raise ValueError(f"adata.uns[{UNS_REGISTRY_KEY!r}] does not hold a pyrovi registry; set the data up again.")
    return registry


def write_registry(adata: AnnData, registry: dict[str, Any]) -> dict[str, Any]:
    """Store ``registry`` in ``adata.uns`` and return it as read back, so memory and file always agree."""
    text = json.dumps(registry)
    adata.uns[UNS_REGISTRY_KEY] = text
    return json.loads(text)
