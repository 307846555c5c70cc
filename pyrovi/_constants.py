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
    # a minified AnnData's stored latent posterior and library sizes (scvi-tools' keys)
    LATENT_QZM_KEY: str = "latent_qzm"
    LATENT_QZV_KEY: str = "latent_qzv"
    OBSERVED_LIB_SIZE: str = "observed_lib_size"


REGISTRY_KEYS = _RegistryKeys()

#: Key in ``adata.uns`` under which a model's registry is stored, as a JSON string so that it
#: survives ``copy()`` and a round trip through ``write_h5ad``/``read_h5ad`` unchanged.
UNS_REGISTRY_KEY = "_pyrovi_registry"

#: Key in ``adata.uns`` of an identifier a model gives each AnnData it is set up with or reads (a hex string).
#: A copy of an AnnData carries its original's identifier until a model reads it, which then gives the copy
#: its own; scvi-tools keeps the same kind of identifier, and code written for it reads it.
UNS_UUID_KEY = "_pyrovi_uuid"

#: Key in ``adata.uns`` of a minified AnnData's type (scvi-tools' key): ``"latent_posterior_parameters"`` (counts
#: dropped, the latent posterior kept) or ``"latent_posterior_parameters_with_counts"``.
UNS_MINIFY_TYPE_KEY = "_scvi_adata_minify_type"
