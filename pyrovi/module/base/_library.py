"""A cell's library size: observed (its total count or a size factor) or a latent with a per-batch prior."""

from __future__ import annotations

import numpy as np
import pyro.distributions as dist
import torch
from torch import nn


def register_library_prior(
    module: nn.Module, library_log_means: np.ndarray | None, library_log_vars: np.ndarray | None
) -> None:
    """Keep the per-batch mean and variance of log library sizes on ``module`` as buffers.

    Buffers, not parameters: the prior comes from the data, follows the module's device and is saved
    with its weights (``library_log_means``, ``library_log_vars``, one value per batch).

    Examples
    --------
    >>> m = torch.nn.Module()
    >>> register_library_prior(m, np.array([7.0, 8.0]), np.array([0.1, 0.2]))
    >>> m.library_log_means.tolist()
    [7.0, 8.0]
    """
    if library_log_means is None or library_log_vars is None:
        raise ValueError("a latent library needs library_log_means and library_log_vars.")
    module.register_buffer("library_log_means", torch.as_tensor(library_log_means).float().reshape(-1))
    module.register_buffer("library_log_vars", torch.as_tensor(library_log_vars).float().reshape(-1))


def library_prior(module: nn.Module, batch_index: torch.Tensor) -> dist.Distribution:
    """``p(log l_n)``: Normal with the mean and variance of the cell's batch, event shape ``(1,)``.

    Examples
    --------
    >>> m = torch.nn.Module()
    >>> register_library_prior(m, np.array([7.0, 8.0]), np.array([0.25, 1.0]))
    >>> library_prior(m, torch.tensor([1, 0])).base_dist.scale.tolist()
    [[1.0], [0.5]]
    """
    loc = module.library_log_means[batch_index].unsqueeze(-1)
    scale = module.library_log_vars[batch_index].sqrt().unsqueeze(-1)
    return dist.Normal(loc, scale).to_event(1)


def observed_library(x: torch.Tensor, size_factor: torch.Tensor | None) -> torch.Tensor:
    """The observed library ``(n_cells, 1)``: the registered size factor, or each cell's total count.

    Examples
    --------
    >>> observed_library(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), None).tolist()
    [[3.0], [7.0]]
    """
    library = size_factor if size_factor is not None else x.sum(-1)
    return library.reshape(-1, 1)
