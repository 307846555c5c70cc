"""Data fields: each reads, validates and encodes one piece of an AnnData for a model.

A field holds only the user's setup choices; what it learns from the data (gene order, category mappings)
is its JSON-serialisable *state*, kept in the model's registry. :class:`BaseField` defines the contract;
the concrete fields cover counts in ``X``/layers, obs columns (categorical and numeric, single or joint)
and matrices in ``obsm``.
"""

from ._base import BaseField
from ._joint_obs import CategoricalJointObsField, NumericalJointObsField
from ._layer import LayerField
from ._obs import CONSTANT_CATEGORY, CategoricalObsField, NumericalObsField
from ._obsm import ObsmField

__all__ = [
    "BaseField",
    "LayerField",
    "CategoricalObsField",
    "NumericalObsField",
    "CategoricalJointObsField",
    "NumericalJointObsField",
    "ObsmField",
    "CONSTANT_CATEGORY",
]
