"""pyrovi: probabilistic programming for single-cell omics on Pyro.

Every model is a Pyro model/guide pair with amortized (neural) guides, trained by stochastic variational
inference under Lightning, and wrapped in an scvi-tools style API::

    import pyrovi
    adata = pyrovi.datasets.pbmc68k_reduced()
    pyrovi.model.SCVI.setup_anndata(adata)
    m = pyrovi.model.SCVI(adata)
    m.train(max_epochs=50)
    z = m.get_latent_representation()
"""

from __future__ import annotations

__version__ = "0.1.0"

import pyro as _pyro

# Parameters live on their modules, never in Pyro's global param store: state_dict() is the whole model
# and several models coexist in one session.
_pyro.settings.set(module_local_params=True)

import importlib as _importlib  # noqa: E402

from ._constants import REGISTRY_KEYS  # noqa: E402
from ._errors import ModelFileError, NumericalFaultError  # noqa: E402
from ._pyro_lock import pyro_lock  # noqa: E402
from ._settings import settings  # noqa: E402

#: Subpackages are imported on first use (PEP 562): ``import pyrovi`` stays cheap, and Lightning, which
#: the training stack needs, is loaded only when a model or loader is touched.
_SUBPACKAGES = (
    "data", "dataloaders", "datasets", "module", "priors", "train", "model", "criticism", "external", "utils",
)


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        module = _importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'pyrovi' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBPACKAGES])


__all__ = ["REGISTRY_KEYS", "ModelFileError", "NumericalFaultError", "pyro_lock", "settings", *_SUBPACKAGES]
