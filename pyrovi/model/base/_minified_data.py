"""Minified AnnData: which fields read its stored posterior, how it is made, and which setup reads it.

A minified AnnData (``model.minify_adata()``) holds, per cell, the mean and variance of the model's
latent posterior (``obsm``) and the observed library size (``obs``), under scvi-tools' names, and an
``uns`` marker of its type; with ``"latent_posterior_parameters"`` its counts are replaced by empty sparse
matrices of the same shape. A model reads it through three more fields, registered only when the data
carry the marker.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from anndata import AnnData
from scipy import sparse

from ..._constants import REGISTRY_KEYS, UNS_MINIFY_TYPE_KEY
from ...data import NumericalObsField, ObsmField

#: ``adata.uns`` key of the minified type (scvi-tools' key, so its code reads pyrovi's data and back).
ADATA_MINIFY_TYPE_UNS_KEY = UNS_MINIFY_TYPE_KEY
#: Counts dropped, latent posterior and library sizes kept.
LATENT_POSTERIOR = "latent_posterior_parameters"
#: Latent posterior and library sizes stored beside the counts.
LATENT_POSTERIOR_WITH_COUNTS = "latent_posterior_parameters_with_counts"
MINIFIED_TYPES = (LATENT_POSTERIOR, LATENT_POSTERIOR_WITH_COUNTS)


def adata_minify_type(adata: Any) -> str | None:
    """The minified type of an AnnData (or MuData), None when it is not minified.

    Examples
    --------
    >>> adata_minify_type(adata) is None
    True
    """
    uns = getattr(adata, "uns", None)
    return None if uns is None else uns.get(ADATA_MINIFY_TYPE_UNS_KEY)


def minified_keys(model_cls: type) -> tuple[str, str, str]:
    """Where a model class stores the posterior mean, variance (``obsm``) and library size (``obs``).

    scvi-tools' names: ``scvi_latent_qzm`` for SCVI, ``totalvi_latent_qzm`` for TOTALVI (a class's
    ``_LATENT_QZM_KEY``; by default its lower-case name), and ``observed_lib_size``.

    Examples
    --------
    >>> minified_keys(SCVI)
    ('scvi_latent_qzm', 'scvi_latent_qzv', 'observed_lib_size')
    """
    name = model_cls.__name__.lower()
    return (
        getattr(model_cls, "_LATENT_QZM_KEY", None) or f"{name}_latent_qzm",
        getattr(model_cls, "_LATENT_QZV_KEY", None) or f"{name}_latent_qzv",
        getattr(model_cls, "_OBSERVED_LIB_SIZE_KEY", None) or "observed_lib_size",
    )


def minified_fields(model_cls: type, adata: Any) -> list:
    """The fields that read a minified ``adata``'s stored posterior: none for data that are not minified.

    Raises a ``ValueError`` for an unknown minified type, a model class that cannot read minified data,
    and a minified MuData (not supported).

    Examples
    --------
    >>> minified_fields(SCVI, adata)
    []
    """
    kind = adata_minify_type(adata) if adata is not None else None
    if kind is None:
        return []
    name = model_cls.__name__
    if kind not in MINIFIED_TYPES:
        raise ValueError(
            f"adata.uns[{ADATA_MINIFY_TYPE_UNS_KEY!r}] is {kind!r}, not a minified type pyrovi knows "
            f"({list(MINIFIED_TYPES)}). Use the full data, or minify it again with model.minify_adata()."
        )
    if not hasattr(model_cls, "minify_adata"):
        raise ValueError(f"{name} does not support minified data; use the full data (with its counts).")
    if not isinstance(adata, AnnData):
        raise ValueError(
            f"This {type(adata).__name__} is minified; pyrovi reads minified AnnData only. Use the full data."
        )
    qzm, qzv, library = minified_keys(model_cls)
    return [
        ObsmField(REGISTRY_KEYS.LATENT_QZM_KEY, qzm),
        ObsmField(REGISTRY_KEYS.LATENT_QZV_KEY, qzv),
        NumericalObsField(REGISTRY_KEYS.OBSERVED_LIB_SIZE, library),
    ]


def with_minified_states(registry: dict[str, Any], fields: list, adata: AnnData) -> dict[str, Any]:
    """``registry`` with the states of the minified ``fields`` it lacks, registered on ``adata``."""
    states = dict(registry["field_states"])
    for field in fields:
        if field.registry_key not in states:
            states[field.registry_key] = field.register(adata)
    return {**registry, "field_states": states}


def minified_copy(
    adata: AnnData, library: np.ndarray, kind: str, keys: tuple[str, str, str], qzm: np.ndarray, qzv: np.ndarray
) -> AnnData:
    """A new AnnData: ``adata``'s annotations, the stored posterior and library sizes, counts dropped or kept.

    ``library`` holds the cells' observed library sizes (the registered counts' row sums). Without counts, ``X``
    and every layer are empty sparse matrices of the same shape (no memory) and ``raw`` is dropped, as
    scvi-tools does; ``adata`` itself is not modified.
    """
    keep = kind == LATENT_POSTERIOR_WITH_COUNTS

    def empty() -> sparse.csr_matrix:
        return sparse.csr_matrix(adata.shape, dtype=np.float32)

    mini = AnnData(
        X=adata.X.copy() if keep else empty(),
        obs=adata.obs.copy(),
        var=adata.var.copy(),
        uns=copy.deepcopy(dict(adata.uns)),
        obsm={key: value.copy() for key, value in adata.obsm.items()},
        varm={key: value.copy() for key, value in adata.varm.items()},
        obsp={key: value.copy() for key, value in adata.obsp.items()},
        varp={key: value.copy() for key, value in adata.varp.items()},
        layers={key: (value.copy() if keep else empty()) for key, value in adata.layers.items()},
    )
    if keep and adata.raw is not None:
        mini.raw = adata.raw.to_adata()
    qzm_key, qzv_key, library_key = keys
    mini.obsm[qzm_key] = np.asarray(qzm, dtype=np.float32)
    mini.obsm[qzv_key] = np.asarray(qzv, dtype=np.float32)
    mini.obs[library_key] = np.asarray(library, dtype=np.float64).reshape(-1)
    mini.uns[ADATA_MINIFY_TYPE_UNS_KEY] = kind
    return mini


def counts_dropped(adata: Any) -> bool:
    """Whether ``adata`` is minified without its counts (its ``X`` and layers are empty).

    Examples
    --------
    >>> counts_dropped(adata)
    False
    """
    return adata_minify_type(adata) == LATENT_POSTERIOR
