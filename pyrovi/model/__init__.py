"""User-facing models: AnnData in, posterior queries out."""

from ._scvi import SCVI
from .base import BaseModelClass, VAEMixin

__all__ = ["SCVI", "BaseModelClass", "VAEMixin"]
