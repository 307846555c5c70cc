"""Data fields: each reads, validates and encodes one piece of an AnnData (or a MuData) for a model.

A field holds only the user's setup choices; what it learns from the data (gene order, category mappings)
is its JSON-serialisable *state*, kept in the model's registry. :class:`BaseField` defines the contract;
the concrete fields cover counts in ``X``/layers, obs columns (categorical and numeric, single or joint),
matrices in ``obsm``, protein counts with their per-batch panel mask, labels with an unlabeled category,
strings of ``uns``, and the same for the modalities of a MuData (``MuData*`` fields, which take
``mod_key``). Constructors take scvi-tools' arguments (``CategoricalObsField(registry_key, attr_key)``).
"""

from ._base import BaseField
from ._joint_obs import CategoricalJointObsField, NumericalJointObsField
from ._labels import LabelsWithUnlabeledObsField, StringUnsField
from ._layer import LayerField
from ._mudata import (
    MuDataCategoricalJointObsField,
    MuDataCategoricalObsField,
    MuDataLayerField,
    MuDataNumericalJointObsField,
    MuDataNumericalObsField,
    MuDataObsmField,
    MuDataProteinLayerField,
    MuDataRequiredError,
)
from ._obs import CONSTANT_CATEGORY, CategoricalObsField, NumericalObsField
from ._obsm import ObsmField
from ._protein import ProteinObsmField

#: scvi-tools' name of the field base class.
AnnDataField = BaseField

__all__ = [
    "BaseField",
    "AnnDataField",
    "LayerField",
    "CategoricalObsField",
    "NumericalObsField",
    "CategoricalJointObsField",
    "NumericalJointObsField",
    "ObsmField",
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
    "MuDataRequiredError",
    "CONSTANT_CATEGORY",
]
