"""Latent priors, one argument away: ``SCVI(adata, prior=pyrovi.priors.MixtureOfGaussians(10))``.

The priors live with the modules (:mod:`pyrovi.module.priors`); this is their user-facing name.
"""

from .module.priors import (  # noqa: F401
    HierarchicalNormal,
    LatentPrior,
    MixtureOfGaussians,
    Normal,
    StandardNormal,
    StudentT,
    VampPrior,
)

__all__ = ["LatentPrior", "StandardNormal", "Normal", "StudentT", "MixtureOfGaussians", "VampPrior", "HierarchicalNormal"]
