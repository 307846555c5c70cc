"""The guide's latent posterior read from a minified minibatch instead of computed by the encoder.

A minified AnnData (``model.minify_adata()``) keeps, per cell, the mean and variance of the Gaussian
``q(u | x)`` and the observed library size, and drops the counts. Its minibatches carry them under
``REGISTRY_KEYS.LATENT_QZM_KEY``, ``LATENT_QZV_KEY`` and ``OBSERVED_LIB_SIZE``; a module's guide then draws
``u ~ N(qzm, sqrt(qzv))`` and its model uses the stored library, so every query that runs the guide works
unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from ..._constants import REGISTRY_KEYS


def stored_posterior_kwargs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The model's and guide's keyword arguments from a minified minibatch (none from a full one).

    ``latent_qzm`` and ``latent_qzv`` are the stored posterior; the stored library becomes ``size_factor``
    (the observed library the model uses), unless a size factor is registered, which stays the library.

    Examples
    --------
    >>> batch = {"latent_qzm": torch.zeros(2, 3), "latent_qzv": torch.ones(2, 3),
    ...          "observed_lib_size": torch.tensor([[10.0], [20.0]])}
    >>> sorted(stored_posterior_kwargs(batch))
    ['latent_qzm', 'latent_qzv', 'size_factor']
    >>> stored_posterior_kwargs({"X": torch.zeros(2, 3)})
    {}
    """
    if REGISTRY_KEYS.LATENT_QZM_KEY not in batch:
        return {}
    kwargs: dict[str, Any] = {
        "latent_qzm": batch[REGISTRY_KEYS.LATENT_QZM_KEY],
        "latent_qzv": batch[REGISTRY_KEYS.LATENT_QZV_KEY],
    }
    if batch.get(REGISTRY_KEYS.SIZE_FACTOR_KEY) is None and REGISTRY_KEYS.OBSERVED_LIB_SIZE in batch:
        kwargs["size_factor"] = batch[REGISTRY_KEYS.OBSERVED_LIB_SIZE]
    return kwargs


def stored_latent_params(latent_qzm: torch.Tensor, latent_qzv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Location and scale of the stored Gaussian posterior: ``(qzm, sqrt(qzv))``.

    Examples
    --------
    >>> loc, scale = stored_latent_params(torch.zeros(1, 2), torch.full((1, 2), 4.0))
    >>> scale.tolist()
    [[2.0, 2.0]]
    """
    return latent_qzm, latent_qzv.sqrt()
