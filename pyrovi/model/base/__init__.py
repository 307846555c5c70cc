"""The model base class, its persistence, and the query mixins shared by models."""

from ._base_model import BaseModelClass
from ._de_mixin import DEMixin
from ._posterior_sampling import PosteriorSamplingMixin
from ._vae_mixin import VAEMixin

__all__ = ["BaseModelClass", "VAEMixin", "DEMixin", "PosteriorSamplingMixin"]
