"""The model base class and its persistence."""

from ._base_model import BaseModelClass
from ._vae_mixin import VAEMixin

__all__ = ["BaseModelClass", "VAEMixin"]
