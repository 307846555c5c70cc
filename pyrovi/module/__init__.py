"""Pyro modules: model/guide pairs with their neural networks and count likelihoods."""

from . import distributions, nn, priors
from ._vae import VAE, GeneLikelihood
from .base import BaseModuleClass

__all__ = ["BaseModuleClass", "VAE", "GeneLikelihood", "nn", "distributions", "priors"]
