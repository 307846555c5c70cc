"""Pyro modules: model/guide pairs with their neural networks and count likelihoods."""

from . import distributions, nn, priors
from ._cellassign import CellAssignModule
from ._scanvae import SCANVAE
from ._totalvae import TOTALVAE
from ._vae import VAE, GeneLikelihood
from .base import BaseModuleClass

__all__ = ["BaseModuleClass", "VAE", "SCANVAE", "TOTALVAE", "CellAssignModule", "GeneLikelihood", "nn", "distributions", "priors"]
