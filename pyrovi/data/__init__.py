"""The data layer: how a model reads an AnnData.

A model declares its *fields* (counts in ``X`` or a layer, batch and label columns, size factors,
extra covariates, ``obsm`` matrices). An :class:`AnnDataManager` registers them on an AnnData:
every field validates its data (raw counts, no missing values, known categories) and records a
JSON-serialisable state (gene order, category mappings). The resulting *registry* is stored in
``adata.uns[UNS_REGISTRY_KEY]`` as a JSON string, the only change the data layer makes to the user's
AnnData, so it survives ``copy()`` and ``write_h5ad``/``read_h5ad``. Query data and data given when a model is
loaded are *transferred*: validated against the registered states, with genes reordered and
categories mapped (or extended) accordingly. The loader reads :meth:`AnnDataManager.get_arrays`.

Examples
--------
>>> from pyrovi.data import AnnDataManager, CategoricalObsField, LayerField, read_registry
>>> fields = [LayerField("X", None), CategoricalObsField("batch", "batch")]
>>> setup = {"model_name": "SCVI", "setup_args": {"batch_key": "batch"}}
>>> manager = AnnDataManager(fields=fields, setup_method_args=setup).register_fields(adata)
>>> manager.summary_stats.n_batch
2
"""

from ._anntorchdataset import AnnTorchDataset
from ._errors import MissingKeyError, RegisteredDataChangedError, UnseenCategoryError
from ._manager import AnnDataManager
from ._registry import read_registry
from ._synthetic import synthetic_iid
from .fields import (
    CONSTANT_CATEGORY,
    AnnDataField,
    BaseField,
    CategoricalJointObsField,
    CategoricalObsField,
    LabelsWithUnlabeledObsField,
    LayerField,
    MuDataCategoricalJointObsField,
    MuDataCategoricalObsField,
    MuDataLayerField,
    MuDataNumericalJointObsField,
    MuDataNumericalObsField,
    MuDataObsmField,
    MuDataProteinLayerField,
    NumericalJointObsField,
    NumericalObsField,
    ObsmField,
    ProteinObsmField,
    StringUnsField,
)

__all__ = [
    "AnnDataManager",
    "AnnTorchDataset",
    "read_registry",
    "synthetic_iid",
    "BaseField",
    "LayerField",
    "CategoricalObsField",
    "NumericalObsField",
    "CategoricalJointObsField",
    "NumericalJointObsField",
    "ObsmField",
    "AnnDataField",
    "ProteinObsmField",
    "LabelsWithUnlabeledObsField",
    "StringUnsField",
    "MuDataLayerField",
    "MuDataCategoricalObsField",
    "MuDataNumericalObsField",
    "MuDataCategoricalJointObsField",
    "MuDataNumericalJointObsField",
    "MuDataObsmField",
    "MuDataProteinLayerField",
    "MissingKeyError",
    "UnseenCategoryError",
    "RegisteredDataChangedError",
    "CONSTANT_CATEGORY",
]
