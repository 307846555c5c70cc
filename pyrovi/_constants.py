"""Names shared by every layer: the keys of the registry and of a loader's minibatch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class _RegistryKeys:
    X_KEY: str = "X"
    BATCH_KEY: str = "batch"
    LABELS_KEY: str = "labels"
    SIZE_FACTOR_KEY: str = "size_factor"
    CAT_COVS_KEY: str = "extra_categorical_covs"
    CONT_COVS_KEY: str = "extra_continuous_covs"
    PROTEIN_EXP_KEY: str = "proteins"
    INDICES_KEY: str = "indices"


REGISTRY_KEYS = _RegistryKeys()

#: Key in ``adata.uns`` under which a model's registry is stored, as a JSON string so that it
#: survives ``copy()`` and a round trip through ``write_h5ad``/``read_h5ad`` unchanged.
UNS_REGISTRY_KEY = "_pyrovi_registry"

#: Key in ``adata.uns`` of an identifier a model gives each AnnData it is set up with or reads (a hex string).
#: A copy of an AnnData carries its original's identifier until a model reads it, which then gives the copy
#: its own; scvi-tools keeps the same kind of identifier, and code written for it reads it.
UNS_UUID_KEY = "_pyrovi_uuid"
