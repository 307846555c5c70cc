"""The plate of cells every pyrovi module puts its per-cell sites in."""

from __future__ import annotations

import pyro
import torch

from ._per_cell import CELL_PLATE


def cell_plate(n_cells: int, indices: torch.Tensor | None = None, n_obs: int | None = None) -> pyro.plate:
    """The ``"cells"`` plate of a minibatch of ``n_cells`` cells, the rows ``indices`` of ``n_obs`` cells.

    Sites inside it are scaled by ``n_obs / n_cells``, so a minibatch's ELBO is an unbiased estimate of the
    full-data ELBO. The subsample is the minibatch's own ``indices`` (never ``subsample_size=``): the
    estimate stays right when several processes each draw their own cells. ``n_obs=None`` (posterior
    queries) means the minibatch is the data set: no scaling.

    Parameters
    ----------
    n_cells
        Number of cells in the minibatch (the plate's size when ``n_obs`` is None).
    indices
        The minibatch's rows in the data set, or None.
    n_obs
        Number of cells the minibatch was drawn from, or None.

    Examples
    --------
    >>> with cell_plate(4, torch.arange(4), n_obs=100) as rows:
    ...     print(rows.tolist())
    [0, 1, 2, 3]
    """
    return pyro.plate(CELL_PLATE, n_obs if n_obs is not None else n_cells, subsample=indices, dim=-1)
