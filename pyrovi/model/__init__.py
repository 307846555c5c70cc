"""User-facing models: AnnData in, posterior queries out."""

from .._errors import ModelFileError
from ._cellassign import CellAssign
from ._label_transfer import transfer_labels
from ._scanvi import SCANVI
from ._scvi import SCVI
from ._totalvi import TOTALVI
from .base import BaseModelClass, VAEMixin

__all__ = ["SCVI", "SCANVI", "TOTALVI", "CellAssign", "BaseModelClass", "VAEMixin", "ModelFileError", "transfer_labels"]
