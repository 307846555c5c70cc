"""Plots of a :class:`~pyrovi.criticism.PosteriorPredictiveCheck`, several models overlaid, and reliability
diagrams of predicted labels (:func:`plot_reliability`, from any classifier's probabilities), and the
model comparison of :func:`~pyrovi.criticism.compare` (:func:`plot_compare`).

Each function draws an ordinary pyplot figure, as scanpy's and matplotlib's own plots do: it is shown
inline in a notebook, ``plt.savefig("ppc.png")`` (or ``fig.savefig``) saves it, and ``plt.close(fig)``
frees it. Pass ``ax=`` to draw into axes of your own (a panel of a larger figure); the function then
returns that axes' figure. matplotlib is imported only when a plot is made (``pip install 'pyrovi[plot]'``).

Series are named ``"<model>"`` for the in-sample split and ``"<model> (held-out)"`` for the held-out
split; a model keeps its colour across plots, its held-out series is drawn dashed or with hollow markers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ._calibration import ece_from_table, reliability_table
from ._data import HELD_OUT, IN_SAMPLE, SPLITS
from ._ppc import PosteriorPredictiveCheck

if TYPE_CHECKING:  # matplotlib is optional: only for type hints here
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# The rootogram's default range stops at the observed 99th percentile, and at most here.
_MAX_DEFAULT_COUNT = 100

# A reliability diagram's histogram: a bin holding every cell reaches this fraction of the axes' height.
_HISTOGRAM_HEIGHT = 0.25
_DIAGONAL = "pyrovi-reliability-diagonal"

#: nominal levels of the calibration curve when none are given
CURVE_LEVELS = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))


def require_matplotlib() -> Any:
    """matplotlib's pyplot, or an ImportError that says how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "pyrovi.criticism's plots need matplotlib: pip install 'pyrovi[plot]'."
        ) from err
    return plt


def _figure_and_axes(ax: Axes | None, figsize: tuple[float, float] = (5.0, 4.5)) -> tuple[Figure, Axes]:
    """The given axes and its figure, or a new pyplot figure (so ``plt.savefig`` and inline display see it)."""
    if ax is not None:
        return ax.figure, ax
    figure = require_matplotlib().figure(figsize=figsize, layout="constrained")
    return figure, figure.add_subplot()


def _series(ppc: PosteriorPredictiveCheck, split: str | None) -> list[tuple[str, str]]:
    """The ``(model, split)`` pairs to draw: one split, or every split when ``split`` is None."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None (all), got {split!r}.")
    keys = [key for key in ppc.keys if split is None or key[1] == split]
    if not keys:
        raise ValueError(f"The check has no {split!r} split; its (model, split) pairs are {ppc.keys}.")
    return keys


def _label(model: str, split: str) -> str:
    return model if split == IN_SAMPLE else f"{model} ({split})"


def _style(ppc: PosteriorPredictiveCheck, model: str, split: str) -> dict[str, Any]:
    colour = f"C{list(ppc.models).index(model) % 10}"
    return {"color": colour, "held_out": split == HELD_OUT}


def _metric(ppc: PosteriorPredictiveCheck, name: str, compute: Any) -> Any:
    """A stored metric table, computed first when missing."""
    if name not in ppc.metrics:
        compute()
    return ppc.metrics[name]


def _identity(ax: Axes, values: np.ndarray) -> None:
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    ax.plot([lo, hi], [lo, hi], color="0.3", linestyle=":", linewidth=1, label="y = x")


def _scatter_observed_vs_replicated(
    ppc: PosteriorPredictiveCheck, table: Any, split: str | None, ax: Axes | None, title: str
) -> Figure:
    figure, ax = _figure_and_axes(ax)
    values = []
    for model, part in _series(ppc, split):
        rows = table[(table["model"] == model) & (table["split"] == part)]
        style = _style(ppc, model, part)
        ax.scatter(
            rows["observed"], rows["replicated"], s=10, alpha=0.6, label=_label(model, part),
            color=style["color"] if not style["held_out"] else "none",
            edgecolors=style["color"], linewidths=0.8,
        )  # fmt: skip
        values.append(rows[["observed", "replicated"]].to_numpy(dtype=float).ravel())
    _identity(ax, np.concatenate(values))
    ax.set_xlabel(f"observed {title}")
    ax.set_ylabel(f"replicated {title}")
    ax.legend(frameon=False)
    return figure


def plot_cv(
    ppc: PosteriorPredictiveCheck,
    dim: Literal["genes", "proteins", "cells"] | None = None,
    split: str | None = IN_SAMPLE,
    ax: Axes | None = None,
) -> Figure:
    """Observed vs replicated coefficient of variation, one point per gene (or cell), identity line.

    Replicated values are posterior predictive means (the statistic of each replicate, averaged).
    Points below the line are genes whose variability the model underestimates.

    Parameters
    ----------
    ppc
        The check.
    dim
        ``"genes"`` (``"proteins"`` in a check of proteins; the default) or ``"cells"``.
    split
        ``"in-sample"``, ``"held-out"`` or None for both.
    ax
        Axes to draw on (default: a new figure).

    Examples
    --------
    >>> fig = pyrovi.criticism.plots.plot_cv(ppc)
    >>> fig.savefig("cv.png")
    """
    dim = dim or ppc.feature_dim
    table = _metric(ppc, f"cv_{dim}", lambda: ppc.coefficient_of_variation(dim))
    return _scatter_observed_vs_replicated(ppc, table, split, ax, f"CV per {dim[:-1]}")


def plot_zero_fraction(
    ppc: PosteriorPredictiveCheck,
    dim: Literal["genes", "proteins", "cells"] | None = None,
    split: str | None = IN_SAMPLE,
    ax: Axes | None = None,
) -> Figure:
    """Observed vs replicated fraction of zeros, one point per gene (or cell), identity line.

    Parameters
    ----------
    ppc, dim, split, ax
        As in :func:`plot_cv`.

    Examples
    --------
    >>> fig = pyrovi.criticism.plots.plot_zero_fraction(ppc, dim="cells")
    """
    dim = dim or ppc.feature_dim
    table = _metric(ppc, f"zero_fraction_{dim}", lambda: ppc.zero_fraction(dim))
    return _scatter_observed_vs_replicated(ppc, table, split, ax, f"zero fraction per {dim[:-1]}")


def plot_calibration(
    ppc: PosteriorPredictiveCheck,
    levels: Any | None = None,
    split: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Calibration curve: empirical coverage of central predictive intervals against their nominal level.

    A well-calibrated model follows the identity line; a curve below it means intervals that are too
    narrow (underdispersed predictions). Coverage is computed as in
    :meth:`~pyrovi.criticism.PosteriorPredictiveCheck.calibration`, on a grid of levels, without
    changing ``ppc.metrics``.

    Parameters
    ----------
    ppc
        The check.
    levels
        Nominal levels (default 0.05, 0.10, ..., 0.95).
    split
        ``"in-sample"``, ``"held-out"`` or None for both (the default).
    ax
        Axes to draw on (default: a new figure).

    Examples
    --------
    >>> fig = pyrovi.criticism.plots.plot_calibration(ppc, split="held-out")
    """
    keys = _series(ppc, split)
    table = ppc._calibration_table(CURVE_LEVELS if levels is None else levels)
    figure, ax = _figure_and_axes(ax)
    for model, part in keys:
        rows = table[(table["model"] == model) & (table["split"] == part)]
        style = _style(ppc, model, part)
        ax.plot(
            rows["level"], rows["coverage"], marker="o", markersize=3, color=style["color"],
            linestyle="--" if style["held_out"] else "-", label=_label(model, part),
        )  # fmt: skip
    ax.plot([0, 1], [0, 1], color="0.3", linestyle=":", linewidth=1, label="nominal")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal level of the central interval")
    ax.set_ylabel("empirical coverage")
    ax.legend(frameon=False)
    return figure


def plot_mean_variance(
    ppc: PosteriorPredictiveCheck, split: str | None = IN_SAMPLE, ax: Axes | None = None
) -> Figure:
    """Per-gene (or per-protein) variance against mean on log-log axes: observed and each model's replicates.

    The dashed line is the Poisson relation ``variance = mean``; overdispersed counts lie above it, and a
    model that reproduces them follows the observed points.

    Parameters
    ----------
    ppc, split, ax
        As in :func:`plot_cv`. The observed points are those of the first series drawn.

    Examples
    --------
    >>> fig = pyrovi.criticism.plots.plot_mean_variance(ppc)
    """
    keys = _series(ppc, split)
    table = _metric(ppc, "mean_variance", ppc.mean_variance)
    figure, ax = _figure_and_axes(ax)
    first = table[(table["model"] == keys[0][0]) & (table["split"] == keys[0][1])]
    positive = (first["observed_mean"] > 0) & (first["observed_variance"] > 0)
    ax.scatter(first.loc[positive, "observed_mean"], first.loc[positive, "observed_variance"], s=12,
               color="black", label="observed")  # fmt: skip
    means = [first.loc[positive, "observed_mean"].to_numpy()]
    for model, part in keys:
        rows = table[(table["model"] == model) & (table["split"] == part)]
        keep = (rows["replicated_mean"] > 0) & (rows["replicated_variance"] > 0)
        style = _style(ppc, model, part)
        ax.scatter(
            rows.loc[keep, "replicated_mean"], rows.loc[keep, "replicated_variance"], s=10, alpha=0.6,
            color=style["color"] if not style["held_out"] else "none", edgecolors=style["color"],
            linewidths=0.8, label=_label(model, part),
        )  # fmt: skip
        means.append(rows.loc[keep, "replicated_mean"].to_numpy())
    grid = np.concatenate(means)
    grid = grid[grid > 0]
    lo, hi = (grid.min(), grid.max()) if grid.size else (0.1, 10.0)
    ax.plot([lo, hi], [lo, hi], color="0.3", linestyle="--", linewidth=1, label="Poisson (variance = mean)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"mean count per {ppc.feature_dim[:-1]}")
    ax.set_ylabel(f"variance per {ppc.feature_dim[:-1]}")
    ax.legend(frameon=False)
    return figure


def _frequencies(values: np.ndarray, max_count: int) -> np.ndarray:
    """How many entries equal 0, 1, ..., max_count (larger values are not counted)."""
    flat = np.asarray(values).ravel()
    flat = flat[flat <= max_count].astype(np.int64)
    return np.bincount(flat, minlength=max_count + 1).astype(np.float64)


def _bars(ax: Axes, x: np.ndarray, bottom: np.ndarray, height: np.ndarray, label: str) -> None:
    """Bars as one PolyCollection: one artist however many counts (``ax.bar`` makes a patch per bar)."""
    from matplotlib.collections import PolyCollection

    left, right, top = x - 0.4, x + 0.4, bottom + height
    verts = np.stack(
        [np.stack([left, bottom], -1), np.stack([left, top], -1), np.stack([right, top], -1),
         np.stack([right, bottom], -1)],
        axis=1,
    )  # fmt: skip
    ax.add_collection(PolyCollection(verts, facecolors="0.75", edgecolors="0.4", linewidths=0.5, label=label))
    ax.update_datalim(np.concatenate([verts.reshape(-1, 2), [[x.min() - 0.5, 0.0]]]))
    ax.autoscale_view()


def plot_rootogram(
    ppc: PosteriorPredictiveCheck,
    gene: str | None = None,
    max_count: int | None = None,
    split: str = IN_SAMPLE,
    style: Literal["hanging", "standing"] = "hanging",
    ax: Axes | None = None,
) -> Figure:
    """Rootogram of count frequencies: observed against each model's expected, on a square-root scale.

    For each count ``k = 0, ..., max_count`` the observed frequency (number of cell-gene entries equal to
    ``k``) is compared with the expected frequency under the posterior predictive (the mean over
    replicates of the same number). The square-root scale makes deviations comparable across rare and
    frequent counts. In a *hanging* rootogram the observed bars hang from the model's curve, so a bar
    that stops above zero marks counts the model predicts too often, one that reaches below zero counts
    it predicts too rarely; in a *standing* one the bars stand on zero under the curve. One panel per
    model.

    Parameters
    ----------
    ppc
        The check.
    gene
        A gene name (a protein name in a check of proteins), or None to pool all of them.
    max_count
        Largest count shown (default: the observed 99th percentile, between 1 and 100).
    split
        ``"in-sample"`` or ``"held-out"``.
    style
        ``"hanging"`` or ``"standing"``.
    ax
        Axes to draw on when the check has one model (default: a new figure, one panel per model).

    Examples
    --------
    >>> fig = pyrovi.criticism.plots.plot_rootogram(ppc, gene="gene_3", max_count=20)
    """
    if split is None:
        raise ValueError("plot_rootogram draws one split; pass split='in-sample' or 'held-out'.")
    if style not in ("hanging", "standing"):
        raise ValueError(f"style must be 'hanging' or 'standing', got {style!r}.")
    keys = _series(ppc, split)
    columns = slice(None)
    if gene is not None:
        if gene not in ppc.feature_names:
            raise KeyError(f"{gene!r} is not one of the check's {len(ppc.feature_names)} {ppc.feature_dim}.")
        columns = int(ppc.feature_names.get_loc(gene))
    if max_count is None:
        max_count = min(_MAX_DEFAULT_COUNT, max(1, int(np.quantile(ppc.observed[keys[0]][:, columns], 0.99))))
    if int(max_count) < 1:
        raise ValueError(f"max_count must be a positive integer, got {max_count!r}.")
    max_count = int(max_count)

    if ax is not None:
        if len(keys) != 1:
            raise ValueError(
                f"plot_rootogram draws one panel per model ({len(keys)} here); ax= takes one axes, so pass it "
                "only for a check of one model, or leave ax out for a new figure."
            )
        figure, axes = ax.figure, [ax]
    else:
        figure, axes = require_matplotlib().subplots(
            1, len(keys), sharey=True, squeeze=False, figsize=(4.0 * len(keys), 3.6), layout="constrained"
        )
        axes = axes[0]
    counts = np.arange(max_count + 1)
    for ax, (model, part) in zip(axes, keys):
        observed = np.sqrt(_frequencies(ppc.observed[(model, part)][:, columns], max_count))
        replicates = ppc.replicates[(model, part)][:, columns]
        expected = np.mean(
            [_frequencies(replicates[..., s], max_count) for s in range(replicates.shape[-1])], axis=0
        )
        expected = np.sqrt(expected)
        colour = _style(ppc, model, part)["color"]
        bottom = expected - observed if style == "hanging" else np.zeros_like(observed)
        _bars(ax, counts, bottom, observed, label="observed")
        ax.plot(counts, expected, color=colour, marker="o", markersize=3, label=f"{_label(model, part)} expected")
        ax.axhline(0.0, color="0.3", linewidth=0.8)
        ax.set_title(_label(model, part))
        ax.set_xlabel("count" + (f" ({gene})" if gene is not None else f" (all {ppc.feature_dim})"))
        ax.legend(frameon=False, fontsize="small")
    axes[0].set_ylabel("sqrt(frequency)")
    return figure


def plot_reliability(
    probabilities: Any,
    labels: Any,
    n_bins: int = 15,
    strategy: Literal["uniform", "quantile"] = "uniform",
    label: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Reliability diagram of predicted labels: accuracy against confidence per bin, with the ECE in the legend.

    Each point is a bin of :func:`~pyrovi.criticism.reliability_table`: the mean confidence (top predicted
    probability) of its cells against the fraction of them predicted correctly. A calibrated classifier
    follows the dotted diagonal; points below it are over-confident bins. The shaded steps along the bottom
    show the share of cells in each bin (a bin holding every cell would reach a quarter of the height), so
    that bins of few cells, whose accuracy is noisy, can be told apart. Call it again with the same ``ax``
    and another ``label`` to overlay a second classifier on the same cells; each series takes the axes'
    next colour.

    Parameters
    ----------
    probabilities, labels, n_bins, strategy
        As in :func:`~pyrovi.criticism.reliability_table` (cells without a true label among the columns
        are left out, with a warning).
    label
        Name of the series in the legend (shown with its ECE).
    ax
        Axes to draw on (default: a new figure).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> probabilities = rng.dirichlet(np.ones(3), size=500)
    >>> labels = [rng.choice(3, p=row) for row in probabilities]  # calibrated by construction
    >>> fig = pyrovi.criticism.plots.plot_reliability(probabilities, labels, n_bins=10, label="model A")
    >>> fig = pyrovi.criticism.plots.plot_reliability(probabilities ** 3 / (probabilities ** 3).sum(1, keepdims=True),
    ...                                               labels, n_bins=10, label="sharpened", ax=fig.axes[0])
    """
    table = reliability_table(probabilities, labels, n_bins, strategy)
    ece = ece_from_table(table)
    figure, ax = _figure_and_axes(ax)
    filled = table[table["count"] > 0]
    name = f"ECE = {ece:.3f}" if label is None else f"{label} (ECE = {ece:.3f})"
    (line,) = ax.plot(filled["confidence"], filled["accuracy"], marker="o", markersize=4, label=name)
    share = table["count"].to_numpy() / table["count"].sum()
    edges = np.append(table["bin_lower"].to_numpy(), table["bin_upper"].iloc[-1])
    ax.stairs(
        _HISTOGRAM_HEIGHT * share, edges, fill=True, alpha=0.25, color=line.get_color(),
        transform=ax.get_xaxis_transform(),  # x in data, height in axes fractions
    )  # fmt: skip
    if not any(other.get_gid() == _DIAGONAL for other in ax.lines):
        ax.plot([0, 1], [0, 1], color="0.3", linestyle=":", linewidth=1, label="perfectly calibrated", gid=_DIAGONAL)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top predicted probability)")
    ax.set_ylabel("accuracy")
    ax.legend(frameon=False, loc="upper left")
    return figure


def plot_compare(table: Any, ax: Axes | None = None) -> Figure:
    """Model comparison plot of :func:`~pyrovi.criticism.compare`'s table, as ArviZ's ``plot_compare``.

    One row per model, best at the top: a filled circle at its ``elpd`` with ``± se`` bars, and, for the
    others, a hollow triangle at ``best elpd - elpd_diff`` with ``± dse`` bars (the paired standard error of
    the difference, narrower than ``se``). A difference whose bars reach the dashed line of the best model
    is within noise. Models with unreliable importance weights (``warning``) are marked ``(k̂!)``.

    Parameters
    ----------
    table
        The DataFrame returned by :func:`~pyrovi.criticism.compare`.
    ax
        Axes to draw on (default: a new figure).

    Examples
    --------
    >>> table = pyrovi.criticism.compare({"NB": nb_model, "Poisson": poisson_model}, n_particles=30)
    >>> fig = pyrovi.criticism.plots.plot_compare(table)
    """
    missing = sorted({"elpd", "se", "elpd_diff", "dse"} - set(getattr(table, "columns", ())))
    if missing:
        raise ValueError(f"table lacks the columns {missing}; pass the DataFrame returned by pyrovi.criticism.compare.")
    table = table.sort_values("elpd", ascending=False)
    figure, ax = _figure_and_axes(ax, figsize=(5.0, 1.0 + 0.6 * len(table)))
    rows = np.arange(len(table))[::-1]
    best = float(table["elpd"].iloc[0])
    ax.axvline(best, color="0.5", linestyle="--", linewidth=1)
    ax.errorbar(table["elpd"], rows, xerr=table["se"], fmt="o", color="black", capsize=3, label="elpd ± se")
    others = table.iloc[1:]
    if len(others):
        ax.errorbar(
            best - others["elpd_diff"], rows[1:] - 0.2, xerr=others["dse"], fmt="^", color="0.4", mfc="white",
            capsize=3, label="difference to best ± dse",
        )  # fmt: skip
    flagged = table["warning"] if "warning" in table.columns else [False] * len(table)
    ax.set_yticks(rows, [f"{name} (k̂!)" if bad else str(name) for name, bad in zip(table.index, flagged)])
    ax.set_xlabel("elpd (importance-sampled log p(x), summed over cells; higher is better)")
    ax.legend(frameon=False, loc="best")
    return figure


__all__ = [
    "plot_cv", "plot_zero_fraction", "plot_calibration", "plot_mean_variance", "plot_rootogram", "plot_reliability",
    "plot_compare",
]  # fmt: skip
