"""Export a model's posterior predictive and pointwise log-likelihood to ArviZ."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from .. import __version__
from .._checks import check_int
from ._data import check_models, model_genes, resolve_cells
from ._likelihood import iter_draws


def _require_arviz() -> Any:
    try:
        import arviz_base
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("to_arviz needs arviz-base: pip install 'pyrovi[arviz]'.") from err
    return arviz_base


def to_arviz(
    model: Any,
    adata: AnnData | None = None,
    n_samples: int = 100,
    indices: Sequence[int] | np.ndarray | None = None,
    batch_size: int | None = None,
) -> Any:
    """ArviZ data of a model's posterior predictive: replicates, observed counts, pointwise log-likelihood.

    Each draw ``s`` samples ``z_s ~ q(z | x)`` from the guide, then both the replicated counts
    ``x_rep ~ p(x | z_s)`` and the log-likelihood ``log p(x_ng | z_s)`` of every observed cell-gene
    entry under the same draw, so ArviZ's LOO, LOO-PIT and PPC plots see consistent groups. There is a
    single chain. Memory is ``2 * n_samples * n_cells * n_genes * 4`` bytes (int32 replicates and float32
    log-likelihoods, written in place, without intermediate copies): pass ``indices`` for a subsample of
    cells on large data.

    Parameters
    ----------
    model
        A fitted pyrovi model (e.g. :class:`~pyrovi.model.SCVI`).
    adata
        Data with the model's genes (default: its training data).
    n_samples
        Posterior draws.
    indices
        Row positions (or a boolean mask) of the cells (default: all).
    batch_size
        Minibatch size (default ``pyrovi.settings.batch_size``).

    Returns
    -------
    An ``xarray.DataTree`` made by :func:`arviz_base.from_dict`, with groups ``posterior_predictive``
    (``x``: chain, draw, cell, gene; int32 counts), ``observed_data`` (``x``: cell, gene; int32 when
    the counts are whole numbers) and ``log_likelihood`` (``x``: chain, draw, cell, gene; float32),
    coordinates ``cell`` (obs names) and ``gene`` (the model's genes in its registered order).

    Examples
    --------
    >>> idata = pyrovi.criticism.to_arviz(model, n_samples=50, indices=range(200))
    >>> dict(idata["posterior_predictive"]["x"].sizes)
    {'chain': 1, 'draw': 50, 'cell': 200, 'gene': 50}
    """
    arviz_base = _require_arviz()
    check_int("n_samples", n_samples)
    check_int("batch_size", batch_size, allow_none=True)
    check_models({"model": model})
    if adata is not None and not isinstance(adata, AnnData):
        raise TypeError(f"adata must be an AnnData or None, got {type(adata).__name__}.")
    data = model.adata if adata is None else adata
    cells = resolve_cells(indices, data.n_obs)
    # The outputs are allocated once, in their final dtypes, and each minibatch's draws are written into
    # them: no list of per-batch tensors, no concatenated copy, no float copy of the integer replicates.
    n_cells, n_genes = len(cells), len(model_genes(model))
    observed_np = np.empty((n_cells, n_genes), dtype=np.float32)
    log_lik_np = np.empty((int(n_samples), n_cells, n_genes), dtype=np.float32)
    replicates_np = np.empty((int(n_samples), n_cells, n_genes), dtype=np.int32)
    start = 0
    for draws in iter_draws(model, adata, cells, int(n_samples), batch_size, pointwise=True, replicate=True):
        stop = start + draws.observed.shape[0]
        observed_np[start:stop] = draws.observed.cpu().numpy()
        log_lik_np[:, start:stop] = draws.log_likelihood.cpu().numpy()
        replicates_np[:, start:stop] = draws.replicates.to(torch.int32).cpu().numpy()
        start = stop
    if np.array_equal(observed_np, np.round(observed_np)):  # counts: store as integers, like the replicates
        observed_np = observed_np.astype(np.int32)
    coords = {
        "cell": np.asarray(data.obs_names[cells], dtype=str),
        "gene": np.asarray(model_genes(model), dtype=str),
    }
    return arviz_base.from_dict(
        {
            "posterior_predictive": {"x": replicates_np[None]},
            "observed_data": {"x": observed_np},
            "log_likelihood": {"x": log_lik_np[None]},
        },
        dims={"x": ["cell", "gene"]},
        coords=coords,
        attrs={"/": {"model": type(model).__name__, "pyrovi_version": __version__}},
    )
