"""Names of the registry's top-level entries, under the names scvi-tools' data layer uses for them."""

#: Entry of the setup-method dict (and of the registry) naming the model class.
MODEL_NAME_KEY = "model_name"
#: Entry holding the arguments given to ``setup_anndata``/``setup_mudata``.
SETUP_ARGS_KEY = "setup_args"
#: Entry of ``manager.registry`` with one ``{"data_registry", "state_registry", "summary_stats"}`` per field.
FIELD_REGISTRIES_KEY = "field_registries"
DATA_REGISTRY_KEY = "data_registry"
STATE_REGISTRY_KEY = "state_registry"
SUMMARY_STATS_KEY = "summary_stats"
#: Entry of ``adata.uns`` holding the AnnData's identifier (see :data:`pyrovi._constants.UNS_UUID_KEY`).
_SCVI_UUID_KEY = "_pyrovi_uuid"
