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

from ._constants import REGISTRY_KEYS  # noqa: E402
from ._settings import settings  # noqa: E402
from . import data, dataloaders, datasets, module, priors, train, model, criticism  # noqa: E402

__all__ = [
    "REGISTRY_KEYS",
    "settings",
    "data",
    "dataloaders",
    "datasets",
    "module",
    "priors",
    "train",
    "model",
    "criticism",
]
