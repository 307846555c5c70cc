"""Latent priors: swap the prior of a model's latent state in one argument.

>>> from pyrovi.priors import MixtureOfGaussians
>>> model = SCVI(adata, prior=MixtureOfGaussians(10))

A prior is a :class:`LatentPrior` (a ``PyroModule``) returning the distribution of ``z`` (event shape
``(n_latent,)``), optionally from the cells' covariates; sample statements inside it are global latent
variables (hyperpriors) that get a guide automatically.
"""

from ._base import LatentPrior, check_latent_prior
from ._builtins import (
    BUILTIN_PRIORS,
    HierarchicalNormal,
    MixtureOfGaussians,
    Normal,
    StandardNormal,
    StudentT,
    VampPrior,
)
from ._config import distribution_from_config, distribution_to_config, prior_from_config, prior_to_config

__all__ = [
    "LatentPrior",
    "StandardNormal",
    "Normal",
    "StudentT",
    "MixtureOfGaussians",
    "VampPrior",
    "HierarchicalNormal",
    "BUILTIN_PRIORS",
    "check_latent_prior",
    "prior_to_config",
    "prior_from_config",
    "distribution_to_config",
    "distribution_from_config",
]
