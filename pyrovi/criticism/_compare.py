"""Comparing fitted models by their importance-sampled log predictive density on the same (held-out) cells.

For each cell ``n`` and model, ``K`` draws ``z_k ~ q(z | x_n)`` from the guide give log-weights
``w_nk = log p(x_n, z_k) - log q(z_k | x_n)`` (what ``get_marginal_ll`` averages) and the estimate
``log p̂(x_n) = logsumexp_k w_nk - log K``. The expected log predictive density of a model is
``elpd = Σ_n log p̂(x_n)`` with standard error ``sqrt(N · var_n log p̂(x_n))``; two models are compared by
the paired per-cell differences, whose standard error ``dse`` is much smaller than either ``se`` because
cells' difficulty is shared. The Pareto shape ``k̂`` fitted to the tail of each cell's weights (PSIS,
Vehtari et al. 2024, via arviz-stats) says whether the estimate can be trusted: above 0.7 the weights'
variance is effectively infinite and ``log p̂`` may be far too low.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.special import logsumexp

from .._checks import check_bool, check_int
from ..model.base._importance import JOINT, log_importance_weights, model_modalities, modality_observed_sites
from ..model.base._minified_mixin import refuse_if_minified
from ._data import check_models, shared_features

#: Pareto k above which an importance-sampling estimate is unreliable (Vehtari et al. 2024)
KHAT_BAD = 0.7
#: fewest draws per cell whose tail (the largest 20%) holds the 5 draws a Pareto fit needs
MIN_PARTICLES = 25
COLUMNS = ["rank", "elpd", "se", "elpd_diff", "dse", "p_khat_bad", "n_cells", "warning"]


def _require_arviz_stats() -> Any:
    try:
        from arviz_stats.base import array_stats
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("compare needs arviz-stats for the Pareto k diagnostic: pip install 'pyrovi[arviz]'.") from err
    return array_stats


def _shared_cells(models: Mapping[str, Any], adata: AnnData | None, indices: Sequence[int] | None) -> np.ndarray | None:
    """The cells every model is evaluated on: ``indices``, else the models' shared validation cells."""
    names = list(models)
    if adata is None:
        first = models[names[0]].adata
        for name in names[1:]:
            other = models[name].adata
            if other is not first and (other.n_obs != first.n_obs or not other.obs_names.equals(first.obs_names)):
                raise ValueError(
                    f"Models {names[0]!r} and {name!r} were set up on different AnnData ({first.n_obs} and "
                    f"{other.n_obs} cells, or other cell names), so their cells are not the same; train them on the "
                    "same AnnData, or pass adata= (and indices=) to evaluate all of them on the same cells."
                )
    if indices is not None:
        cells = np.asarray(indices)
        if cells.size == 0:
            raise ValueError("indices is empty; pass at least one cell to compare the models on.")
        return cells
    held_out = {name: model.validation_indices for name, model in models.items()}
    missing = [name for name, cells in held_out.items() if cells is None or len(cells) == 0]
    if missing:
        raise ValueError(
            f"Models {missing} have no held-out validation cells (trained with train_size=1, or not trained); "
            "compare them on held-out cells by training with train_size < 1, or pass indices= explicitly."
        )
    shared = np.asarray(sorted(set.intersection(*(set(np.asarray(c).tolist()) for c in held_out.values()))), dtype=int)
    if shared.size == 0:
        raise ValueError(
            f"Models {names} share no held-out validation cells (each drew its own split); train them with the "
            "same pyrovi.settings.seed and train_size, or pass indices= explicitly."
        )
    return shared


def _pareto_k(array_stats: Any, w: np.ndarray) -> np.ndarray:
    """``k̂`` of each cell's log-weights (columns of ``w``); ``-inf`` where its largest weights are all equal.

    Equal weights mean the guide matches the posterior there (an exact estimate): there is no tail to fit, and
    arviz-stats refuses the whole array, so such arrays are fitted cell by cell.
    """
    # arviz-stats smooths the weights of -ary (its input is a log-likelihood, for LOO)
    with np.errstate(divide="ignore", invalid="ignore"):
        try:
            return np.asarray(array_stats.psislw(-w.T, axis=-1)[1], dtype=float)
        except ValueError:
            khat = np.full(w.shape[1], -np.inf)
            for cell in range(w.shape[1]):
                try:
                    khat[cell] = float(array_stats.psislw(-w[:, cell], axis=-1)[1])
                except ValueError:  # all tail values the same
                    pass
            return khat


def _check_modality(models: Mapping[str, Any], modality: str, adata: AnnData | None) -> None:
    """Every model has ``modality``, scores the same data under it, reads counts (not minified), shares features."""
    for name, model in models.items():
        try:
            modality_observed_sites(model, modality)
        except (TypeError, ValueError) as err:
            raise type(err)(f"models[{name!r}]: {err}") from None
        refuse_if_minified(model, adata, "compare")
    if modality == JOINT:
        kinds = {name: model_modalities(model) for name, model in models.items()}
        if len({tuple(sorted(k)) for k in kinds.values()}) > 1:
            shared = sorted(set.intersection(*(set(k) for k in kinds.values())) - {JOINT})
            raise ValueError(
                f"modality='joint' scores all observed data of each model, and these models observe different data "
                f"({kinds}): their densities are not comparable. Compare one shared modality, e.g. modality="
                f"{shared[0]!r}." if shared else "modality='joint' needs models that observe the same data."
            )
    shared_features(models)
    if modality == "protein" or (modality == JOINT and "protein" in model_modalities(next(iter(models.values())))):
        shared_features(check_models(models, "protein"), "protein")


def _table(pointwise: dict[str, np.ndarray], khat: dict[str, np.ndarray]) -> pd.DataFrame:
    """ArviZ's compare table from per-cell log predictive densities and Pareto k of each model."""
    n = len(next(iter(pointwise.values())))
    elpd = {name: float(values.sum()) for name, values in pointwise.items()}
    order = sorted(elpd, key=elpd.get, reverse=True)
    best = pointwise[order[0]]
    rows = []
    for rank, name in enumerate(order):
        values = pointwise[name]
        share_bad = float(np.mean(khat[name] > KHAT_BAD))
        rows.append({
            "rank": rank,
            "elpd": elpd[name],
            "se": math.sqrt(n * np.var(values)),
            "elpd_diff": elpd[order[0]] - elpd[name],
            "dse": math.sqrt(n * np.var(best - values)),  # paired: the SE of the per-cell differences
            "p_khat_bad": share_bad,
            "n_cells": n,
            "warning": share_bad > 0,
        })
    return pd.DataFrame(rows, index=pd.Index(order, name="model"), columns=COLUMNS)


def compare(
    models: Mapping[str, Any],
    adata: AnnData | None = None,
    indices: Sequence[int] | None = None,
    n_particles: int = 100,
    batch_size: int | None = None,
    pointwise: bool = False,
    modality: str = "joint",
    proposal: str = "guide",
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Rank fitted models by the importance-sampled log predictive density of the same cells.

    Each model's ``log p(x_n)`` is estimated per cell by importance sampling, with its guide as proposal (or,
    with ``proposal="refined"``, the guide refined for each cell). By default all observed data count jointly
    (TOTALVI's RNA and proteins), the estimate of ``get_marginal_ll``; ``modality`` picks one. The per-cell
    estimates are summed over cells into the ``elpd``; differences to the best model come with the standard
    error of the paired per-cell differences.
    A Pareto shape ``k̂ > 0.7`` of a cell's importance weights flags an unreliable estimate (a warning names the
    models and the share of such cells). See the guide's "Comparing models" section for the maths.

    Parameters
    ----------
    models
        ``{name: fitted model}`` (two or more), set up on the same genes and cells.
    adata
        Cells to evaluate (default: the models' own AnnData).
    indices
        Rows of ``adata`` to evaluate (default: the validation cells all models held out from training).
    n_particles
        Importance draws ``K`` per cell (the estimate's bias falls as ``K`` grows; at least 25, so that
        ``k̂`` can be fitted to the largest 20% of the draws).
    batch_size
        Minibatch size of the queries (default: the models' own).
    pointwise
        Also return the per-cell values.
    modality
        Which observed data are the evidence ``x`` scored by every model: ``"joint"`` (all of them: the models
        must observe the same data), ``"rna"`` (the counts: any model; TOTALVI's proteins and SCANVI's labels
        are marginalised), ``"protein"`` (TOTALVI's proteins, the RNA marginalised) or ``"labels"`` (SCANVI's
        observed labels). The guide stays the proposal, conditioned on all the data.
    proposal
        ``"guide"``: the amortized guide ``q(z | x_n)``, as ``get_marginal_ll``. ``"refined"``: for each cell,
        the guide's Gaussian latents (``z``, a latent library size) re-optimised for that cell's ELBO with the
        model fixed, then widened 1.5 times (:func:`~pyrovi.module.base.refine_proposal`); any proposal that
        depends on the cell's data only is valid, and this one closes most of the gap an amortized encoder
        leaves on held-out cells, so fewer cells have ``k̂ > 0.7`` (about five times the cost).

    Returns
    -------
    A DataFrame with one row per model, best first (columns ``rank``, ``elpd``, ``se``, ``elpd_diff``,
    ``dse``, ``p_khat_bad``, ``n_cells``, ``warning``), as ArviZ's ``compare``. With ``pointwise``, also a
    DataFrame indexed by the cells' row positions with columns ``("elpd_i", model)`` (each cell's
    ``log p̂(x_n)``) and ``("khat", model)``.

    Examples
    --------
    >>> table = pyrovi.criticism.compare({"NB": nb_model, "Poisson": poisson_model}, n_particles=30)
    >>> list(table.columns)
    ['rank', 'elpd', 'se', 'elpd_diff', 'dse', 'p_khat_bad', 'n_cells', 'warning']

    TOTALVI's proteins alone (its RNA marginalised), here of one model against itself:

    >>> proteins = pyrovi.criticism.compare({"A": totalvi, "B": totalvi}, indices=range(10), n_particles=25,
    ...                                     modality="protein")
    >>> proteins["n_cells"].tolist()
    [10, 10]
    """
    models = check_models(models)
    if len(models) < 2:
        raise ValueError(f"compare needs two or more models to compare, got {len(models)}; pass {{name: model}} for each.")
    check_int("n_particles", n_particles)
    check_bool("pointwise", pointwise)
    if n_particles < MIN_PARTICLES:
        raise ValueError(
            f"n_particles must be at least {MIN_PARTICLES} (Pareto k is fitted to the largest 20% of a cell's draws, "
            f"at least 5 of them), got {n_particles}."
        )
    array_stats = _require_arviz_stats()
    _check_modality(models, modality, adata)
    cells = _shared_cells(models, adata, indices)
    elpd_i, khat = {}, {}
    for name, model in models.items():
        w = log_importance_weights(model, adata, cells, n_particles, batch_size, modality=modality, proposal=proposal)
        w = w.double().cpu().numpy()
        elpd_i[name] = logsumexp(w, axis=0) - math.log(n_particles)
        khat[name] = _pareto_k(array_stats, w)
    table = _table(elpd_i, khat)
    bad = {name: share for name, share in table["p_khat_bad"].items() if share > 0}
    if bad:
        listed = ", ".join(f"{name!r} ({share:.0%} of cells)" for name, share in bad.items())
        warnings.warn(
            f"Pareto k > {KHAT_BAD} for {listed}: their importance-sampled log p(x) is unreliable there (the guide is a "
            "poor proposal for those cells); "
            + ("use proposal='refined' (the guide refined for each cell), " if proposal == "guide" else "")
            + "raise n_particles, or train the model longer or with a richer guide.",
            UserWarning,
            stacklevel=2,
        )
    if not pointwise:
        return table
    columns = {("elpd_i", name): values for name, values in elpd_i.items()}
    columns.update({("khat", name): values for name, values in khat.items()})
    return table, pd.DataFrame(columns, index=pd.Index(cells, name="cell"))
