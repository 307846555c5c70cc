"""Pyro modules: model/guide pairs with their neural networks and count likelihoods."""

from . import distributions, nn
from .base import BaseModuleClass
from ._vae import VAE

__all__ = ["BaseModuleClass", "VAE", "nn", "distributions"]
