"""Bayesian differential expression from posterior draws: statistics, the FDR rule, the result table.

Everything here is model-independent: it works on arrays of posterior draws of normalised expression
(``rho``, one row per draw, one column per gene) and on raw counts, and on the cell groups of an
AnnData. :class:`~pyrovi.model.base.DEMixin` draws the samples from a model and calls these functions.

Two hypothesis tests compare the draws of two groups, paired draw by draw (the draws of each group are
independent and identically distributed, so pairing row ``i`` with row ``i`` is a random pairing):

``"vanilla"``
    ``M1: rho1 > rho2`` against ``M2: rho1 <= rho2``; ``proba_m1`` is the fraction of pairs with
    ``rho1 > rho2``.
``"change"``
    ``H1: |lfc| >= delta`` against ``H0: |lfc| < delta`` with ``lfc = log2(rho1 + eps) - log2(rho2 + eps)``;
    ``proba_de`` is the fraction of pairs with ``|lfc| >= delta``.

The Bayes factor is the log posterior odds of the first hypothesis. Genes are called DE by the posterior
expected false discovery rate (:func:`posterior_expected_fdr_mask`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import rankdata

#: Added to rho before taking log2 fold changes, so that genes with (near) zero expression in both groups
#: get a finite lfc near 0 instead of log(0); far below the expression of any detected gene (rho sums to 1
#: over genes, so a gene seen once per 10^4 counts has rho ~ 1e-4).
LFC_EPS = 1e-8
#: Probabilities are clipped to [eps, 1 - eps] before taking log odds, so a Bayes factor stays finite when
#: every draw agrees (it then reads about +-18.4).
PROBA_EPS = 1e-8
#: Genes processed at once by the statistics, bounding the temporaries to n_samples x this many values.
_GENE_BLOCK = 1024
#: Scale of ``raw_normalized_mean``: counts per 10^4 counts of the cell (the usual "CP10k").
_RAW_NORMALIZATION = 1e4
#: Name of the complement of a group in one-vs-rest comparisons (as scvi-tools).
REST = "Rest"
#: Column order of the result table (a mode has either the proba_de or the proba_m1 pair).
_COLUMNS = (
    "proba_de", "proba_not_de", "proba_m1", "proba_m2", "bayes_factor", "scale1", "scale2",
    "pseudocounts", "delta", "lfc_mean", "lfc_median", "lfc_std", "lfc_min", "lfc_max",
    "raw_mean1", "raw_mean2", "non_zeros_proportion1", "non_zeros_proportion2",
    "raw_normalized_mean1", "raw_normalized_mean2",
)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# the decision rule


def posterior_expected_fdr_mask(proba_de: np.ndarray | Sequence[float], fdr_target: float = 0.05) -> np.ndarray:
    """Call genes DE so that the posterior expected false discovery rate stays at most ``fdr_target``.

    Genes are ranked by their posterior probability of being DE, ``p``. Calling the top ``k`` genes DE
    has expected false discovery rate ``mean(1 - p)`` over those ``k`` genes; the largest ``k`` with
    expected FDR at most ``fdr_target`` is chosen. Because ``1 - p`` increases down the ranking, the
    expected FDR of the top ``k`` grows with ``k`` and the called genes are exactly a top set.
    Genes with equal probabilities are called alike: if the cut would split such a tie, the whole tie is
    left out (the smaller set still meets the target).

    Parameters
    ----------
    proba_de
        Posterior probability of each gene being DE, in [0, 1].
    fdr_target
        Largest acceptable posterior expected FDR, in (0, 1).

    Returns
    -------
    Boolean array, ``True`` for the genes called DE, in the order of ``proba_de``.

    Examples
    --------
    >>> posterior_expected_fdr_mask([0.99, 0.5, 0.97, 0.9], fdr_target=0.05)
    array([ True, False,  True,  True])
    """
    p = np.asarray(proba_de, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"proba_de must be one-dimensional (one value per gene), got shape {p.shape}.")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("proba_de must hold probabilities in [0, 1] (no NaN); check the input.")
    _check_fdr_target(fdr_target)
    order = np.argsort(-p, kind="stable")
    ranked = p[order]
    expected_fdr = np.cumsum(1 - ranked) / np.arange(1, p.size + 1)
    # small tolerance: a mean of values exactly at the target must not fail on rounding
    k = int(np.count_nonzero(expected_fdr <= fdr_target + 1e-12))
    while 0 < k < p.size and ranked[k] == ranked[k - 1]:
        k -= 1
    mask = np.zeros(p.size, dtype=bool)
    mask[order[:k]] = True
    return mask


# --------------------------------------------------------------------------------------------------
# statistics of posterior draws


def _check_draws(draws1: np.ndarray, draws2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    draws1, draws2 = np.asarray(draws1), np.asarray(draws2)
    if draws1.ndim != 2 or draws1.shape != draws2.shape:
        raise ValueError(
            "draws1 and draws2 must be arrays of the same shape (n_samples, n_genes), got "
            f"{draws1.shape} and {draws2.shape}; draw as many samples for each group."
        )
    if draws1.shape[0] == 0:
        raise ValueError("draws1 and draws2 hold no samples; draw at least one per group.")
    return draws1, draws2


def _gene_blocks(n_genes: int, block: int = _GENE_BLOCK) -> Iterator[slice]:
    for start in range(0, n_genes, block):
        yield slice(start, min(start + block, n_genes))


def _log_odds(p: np.ndarray, eps: float = PROBA_EPS) -> np.ndarray:
    p = np.clip(p, eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def log2_fold_changes(draws1: np.ndarray, draws2: np.ndarray, eps: float = LFC_EPS) -> np.ndarray:
    """Paired log2 fold changes ``log2(rho1 + eps) - log2(rho2 + eps)``, one per pair of draws and gene.

    Examples
    --------
    >>> log2_fold_changes(np.array([[0.4, 0.1]]), np.array([[0.1, 0.1]])).round(6)
    array([[2., 0.]])
    """
    return np.log2(np.asarray(draws1) + eps) - np.log2(np.asarray(draws2) + eps)


def _lfc_summaries(lfc: np.ndarray, cred_interval_lvls: Sequence[float] = ()) -> dict[str, np.ndarray]:
    out = {
        "lfc_mean": lfc.mean(0),
        "lfc_median": np.median(lfc, 0),
        "lfc_std": lfc.std(0),
        "lfc_min": lfc.min(0),
        "lfc_max": lfc.max(0),
    }
    for level in cred_interval_lvls:
        low, high = highest_density_interval(lfc, level)
        out[f"lfc_confidence_interval_{str(level)[:5]}_min"] = low
        out[f"lfc_confidence_interval_{str(level)[:5]}_max"] = high
    return out


def highest_density_interval(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Shortest interval holding a fraction ``level`` of the draws, per column of ``draws`` (n_draws, n).

    Examples
    --------
    >>> low, high = highest_density_interval(np.arange(10.0)[:, None], 0.5)
    >>> float(low[0]), float(high[0])
    (0.0, 5.0)
    """
    if not 0 < level < 1:
        raise ValueError(f"credible interval levels must lie strictly between 0 and 1, got {level!r}.")
    ordered = np.sort(np.asarray(draws), axis=0)
    n = ordered.shape[0]
    inside = int(np.floor(level * n))
    if inside >= n:
        raise ValueError(f"{n} draws are too few for a {level} credible interval; draw more samples.")
    widths = ordered[inside:] - ordered[: n - inside]
    start = np.argmin(widths, axis=0)
    columns = np.arange(ordered.shape[1])
    return ordered[start, columns], ordered[start + inside, columns]


def _default_change(rho1: np.ndarray, rho2: np.ndarray, pseudocounts: float) -> np.ndarray:
    return np.log2(rho1 + pseudocounts) - np.log2(rho2 + pseudocounts)


def change_function(change_fn: Any) -> Callable[[np.ndarray, np.ndarray, float], np.ndarray]:
    if change_fn is None or change_fn == "log-fold":
        return _default_change
    if not callable(change_fn):
        raise ValueError(f"change_fn must be None, 'log-fold' or a function (rho1, rho2, pseudocounts), got {change_fn!r}.")
    return change_fn


def _block_statistics(
    rho1: np.ndarray,
    rho2: np.ndarray,
    mode: Literal["vanilla", "change"],
    delta: float,
    eps: float,
    pseudocounts: float | None,
    test_mode: str,
    change_fn: Callable,
    m1_domain_fn: Callable | None,
    cred_interval_lvls: Sequence[float],
) -> dict[str, np.ndarray]:
    if mode == "vanilla":
        proba_m1 = (rho1 > rho2).mean(0)
        stats = {"proba_m1": proba_m1, "proba_m2": 1 - proba_m1, "bayes_factor": _log_odds(proba_m1)}
        stats["scale1"], stats["scale2"] = rho1.mean(0), rho2.mean(0)
        stats.update(_lfc_summaries(log2_fold_changes(rho1, rho2, eps), cred_interval_lvls))
        return stats
    test_offset = eps if pseudocounts is None else pseudocounts
    # the fold-change summaries take a 1000 times smaller offset, as scvi-tools: the offset is there to keep
    # unexpressed genes out of the test, not to shrink the reported fold changes
    summary_offset = eps if pseudocounts is None else 1e-3 * pseudocounts
    change = change_fn(rho1, rho2, test_offset)
    if m1_domain_fn is None:
        up, down = change >= delta, change < -delta
    else:
        domain = m1_domain_fn(change)
        up, down = domain if isinstance(domain, tuple) else (domain, np.zeros_like(domain, dtype=bool))
    proba_up, proba_down = np.mean(up, 0), np.mean(down, 0)
    proba_de = proba_up + proba_down if test_mode == "two" else np.maximum(proba_up, proba_down)
    stats = {"proba_de": proba_de, "proba_not_de": 1 - proba_de, "bayes_factor": _log_odds(proba_de)}
    stats["scale1"], stats["scale2"] = rho1.mean(0), rho2.mean(0)
    stats["pseudocounts"] = np.full(rho1.shape[1], test_offset)
    stats["delta"] = np.full(rho1.shape[1], np.nan if delta is None else delta)
    stats.update(_lfc_summaries(change_fn(rho1, rho2, summary_offset), cred_interval_lvls))
    return stats


def de_statistics(
    draws1: np.ndarray,
    draws2: np.ndarray,
    mode: Literal["vanilla", "change"] = "change",
    delta: float | None = 0.25,
    eps: float = LFC_EPS,
    *,
    pseudocounts: float | None = None,
    test_mode: Literal["two", "three"] = "three",
    change_fn: str | Callable | None = None,
    m1_domain_fn: Callable | None = None,
    cred_interval_lvls: Sequence[float] | None = None,
) -> dict[str, np.ndarray]:
    """Per-gene Bayesian DE statistics of two groups' posterior draws of normalised expression.

    Draw ``i`` of group 1 is compared with draw ``i`` of group 2. Computed over blocks of genes, so the
    temporaries (fold changes, comparisons) stay at ``n_samples x 1024`` values whatever the gene count
    (a custom ``change_fn`` must therefore work gene by gene).

    Parameters
    ----------
    draws1, draws2
        Arrays ``(n_samples, n_genes)`` of posterior draws of ``rho`` for each group.
    mode
        ``"change"``: probability of a change ``r = change_fn(rho1, rho2)`` beyond ``delta``;
        ``"vanilla"``: probability that ``rho1 > rho2``.
    delta
        Smallest ``|log2 fold change|`` that counts as a change (``"change"`` mode). ``None``: estimated
        from the genes' mean fold changes (:func:`estimate_delta`).
    eps
        Offset added to ``rho`` before the log2 when ``pseudocounts`` is None (see :data:`LFC_EPS`).
    pseudocounts
        Offset added to ``rho`` before the log2 in the test; the ``lfc_*`` summaries use a 1000 times
        smaller one (as scvi-tools).
    test_mode
        ``"three"`` (up, down and no change): ``proba_de = max(P(r >= delta), P(r < -delta))``; ``"two"``:
        ``proba_de = P(|r| >= delta)``.
    change_fn
        ``None``/``"log-fold"`` (log2 fold change) or a function ``(rho1, rho2, pseudocounts) -> r``.
    m1_domain_fn
        Function of the change draws returning the masks ``(up, down)`` of draws that count as DE (or
        one mask), replacing the ``delta`` rule.
    cred_interval_lvls
        Levels of highest-density credible intervals of the fold change to add
        (``lfc_confidence_interval_<level>_min`` / ``_max``).

    Returns
    -------
    dict of arrays of length ``n_genes``: ``proba_de``/``proba_not_de`` (change) or
    ``proba_m1``/``proba_m2`` (vanilla); ``bayes_factor`` (log odds of the first); ``scale1``, ``scale2``
    (mean draws); in change mode ``pseudocounts`` and ``delta``; ``lfc_mean``, ``lfc_median``,
    ``lfc_std``, ``lfc_min``, ``lfc_max``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> draws1 = rng.dirichlet(np.ones(5), size=1000)
    >>> stats = de_statistics(draws1, draws1[::-1], mode="change", delta=0.5)
    >>> sorted(stats)[:3]
    ['bayes_factor', 'delta', 'lfc_max']
    """
    draws1, draws2 = _check_draws(draws1, draws2)
    _check_mode(mode, delta)
    if test_mode not in ("two", "three"):
        raise ValueError(f"test_mode must be 'two' or 'three', got {test_mode!r}.")
    change = change_function(change_fn)
    if mode == "change" and delta is None and m1_domain_fn is None:
        offset = eps if pseudocounts is None else pseudocounts
        means = np.concatenate(
            [change(draws1[:, g], draws2[:, g], offset).mean(0) for g in _gene_blocks(draws1.shape[1])]
        )
        delta = estimate_delta(means)
    levels = list(cred_interval_lvls or ())
    blocks = [
        _block_statistics(
            draws1[:, genes], draws2[:, genes], mode, delta, eps, pseudocounts, test_mode, change, m1_domain_fn, levels
        )
        for genes in _gene_blocks(draws1.shape[1])
    ]
    return {key: np.concatenate([block[key] for block in blocks]) for key in blocks[0]}


def estimate_delta(lfc_means: np.ndarray, coef: float = 0.6, min_thres: float = 0.1) -> float:
    """A fold-change threshold from the genes' mean log fold changes.

    Fits a three-component Gaussian mixture (down, unchanged, up) to the means by EM and returns ``coef``
    times the average distance of the outer components' means from 0, at least ``min_thres``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> means = np.concatenate([rng.normal(-2, 0.1, 50), rng.normal(0, 0.1, 500), rng.normal(2, 0.1, 50)])
    >>> round(estimate_delta(means), 1)
    1.2
    """
    x = np.asarray(lfc_means, dtype=np.float64).reshape(-1)
    if x.size < 3 or np.ptp(x) == 0:
        return float(min_thres)
    centres = np.quantile(x, [0.05, 0.5, 0.95])
    variances = np.full(3, max(x.var(), 1e-6))
    weights = np.full(3, 1 / 3)
    for _ in range(200):
        log_resp = np.log(weights) - 0.5 * np.log(2 * np.pi * variances) - (x[:, None] - centres) ** 2 / (2 * variances)
        log_resp -= log_resp.max(1, keepdims=True)
        resp = np.exp(log_resp)
        resp /= resp.sum(1, keepdims=True)
        totals = resp.sum(0) + 1e-12
        weights = totals / totals.sum()
        centres = (resp * x[:, None]).sum(0) / totals
        variances = np.maximum((resp * (x[:, None] - centres) ** 2).sum(0) / totals, 1e-6)
    ordered = np.sort(centres)
    return float(max(min_thres, coef * np.abs(ordered[[0, -1]]).mean()))


def estimate_pseudocounts(
    draws1: np.ndarray,
    draws2: np.ndarray,
    unexpressed1: np.ndarray,
    unexpressed2: np.ndarray,
    quantile: float = 0.9,
) -> float:
    """Pseudocount for the fold changes: the expression the model gives genes a group does not express.

    For each group, the largest draw of each gene the group does not express (mean count below a
    threshold) is taken, and the ``quantile`` of those over genes; the larger of the two groups' values,
    divided by the number of genes (at least 1e-10), is added to ``rho`` before the log2. Fold changes of
    unexpressed genes then shrink towards 0 instead of reflecting decoder noise.

    Examples
    --------
    >>> draws = np.full((10, 4), 0.25)
    >>> estimate_pseudocounts(draws, draws, np.array([True, False, False, False]), np.zeros(4, bool))
    0.0625
    """
    values = [1e-10, 1e-10]
    for i, (draws, unexpressed) in enumerate(((draws1, unexpressed1), (draws2, unexpressed2))):
        unexpressed = np.asarray(unexpressed, dtype=bool)
        if unexpressed.shape != (draws.shape[1],):
            raise ValueError("the unexpressed masks need one entry per gene of the draws.")
        if unexpressed.any():
            values[i] = float(np.quantile(np.max(draws, 0)[unexpressed], quantile))
    return float(max(1e-10, max(values) / draws1.shape[1]))


def _check_mode(mode: str, delta: float | None) -> None:
    if mode not in ("vanilla", "change"):
        raise ValueError(f"mode must be 'vanilla' or 'change', got {mode!r}.")
    if delta is not None and not (
        isinstance(delta, Real) and not isinstance(delta, bool) and math.isfinite(delta) and delta > 0
    ):
        raise ValueError(
            f"delta must be a positive number (the smallest |log2 fold change| that counts, used with "
            f"mode='change'), or None to estimate it; got {delta!r:.80}."
        )


def _check_fdr_target(fdr_target: float) -> None:
    if isinstance(fdr_target, bool) or not isinstance(fdr_target, Real) or not 0 < fdr_target < 1:
        raise ValueError(f"fdr_target must lie strictly between 0 and 1, got {fdr_target!r}.")


def check_test_arguments(mode: str, delta: float | None, fdr_target: float) -> None:
    """Raise a clear error for a bad ``mode``, ``delta`` or ``fdr_target`` before any sampling is done.

    Examples
    --------
    >>> check_test_arguments("change", 0.25, 0.05)
    """
    _check_mode(mode, delta)
    _check_fdr_target(fdr_target)


# --------------------------------------------------------------------------------------------------
# statistics of raw counts


def _row_scaled(x: np.ndarray | sp.spmatrix, factors: np.ndarray) -> np.ndarray | sp.spmatrix:
    if sp.issparse(x):
        return sp.diags(factors) @ x
    return x * factors[:, None]


def _column_mean(x: np.ndarray | sp.spmatrix) -> np.ndarray:
    return np.asarray(x.mean(axis=0), dtype=np.float64).reshape(-1)


def raw_count_statistics(counts: np.ndarray | sp.spmatrix, suffix: str = "") -> dict[str, np.ndarray]:
    """Per-gene summaries of a group's raw counts (cells x genes, dense or sparse).

    Returns
    -------
    dict with ``raw_mean`` (mean count), ``non_zeros_proportion`` (fraction of cells with a count above
    0) and ``raw_normalized_mean`` (mean of counts per 10^4 counts of the cell; cells without counts
    contribute 0), each name followed by ``suffix``.

    Examples
    --------
    >>> raw_count_statistics(np.array([[0, 2], [1, 3]]), suffix="1")["non_zeros_proportion1"]
    array([0.5, 1. ])
    """
    if counts.shape[0] == 0:
        raise ValueError("raw_count_statistics needs at least one cell.")
    totals = np.asarray(counts.sum(axis=1), dtype=np.float64).reshape(-1)
    per_10k = np.divide(_RAW_NORMALIZATION, totals, out=np.zeros_like(totals), where=totals > 0)
    return {
        f"raw_mean{suffix}": _column_mean(counts),
        f"non_zeros_proportion{suffix}": _column_mean(counts > 0),
        f"raw_normalized_mean{suffix}": _column_mean(_row_scaled(counts, per_10k)),
    }


# --------------------------------------------------------------------------------------------------
# the result table


def fdr_column(fdr_target: float) -> str:
    """Name of the DE call column, e.g. ``is_de_fdr_0.05``.

    Examples
    --------
    >>> fdr_column(0.1)
    'is_de_fdr_0.1'
    """
    return f"is_de_fdr_{fdr_target}"


def de_table(
    stats: dict[str, np.ndarray],
    gene_names: Sequence[str],
    fdr_target: float,
    group1: str,
    group2: str,
) -> pd.DataFrame:
    """Assemble one comparison's statistics into a table indexed by gene, sorted by Bayes factor.

    The DE call ``is_de_fdr_<fdr_target>`` applies :func:`posterior_expected_fdr_mask` to ``proba_de``
    (change mode) or, in vanilla mode, to ``max(proba_m1, proba_m2)``: the probability that the gene
    differs in the direction the posterior favours.

    Parameters
    ----------
    stats
        Output of :func:`de_statistics`, optionally merged with :func:`raw_count_statistics`.
    gene_names
        One name per gene, in the order of the arrays.
    fdr_target
        Target of the posterior expected FDR.
    group1, group2
        Names of the compared groups, stored in the ``group1``, ``group2`` and ``comparison`` columns.

    Examples
    --------
    >>> stats = de_statistics(np.full((10, 2), 0.5), np.full((10, 2), 0.5), delta=0.5)
    >>> de_table(stats, ["a", "b"], 0.05, "A", "B")["comparison"].tolist()
    ['A vs B', 'A vs B']
    """
    proba = stats["proba_de"] if "proba_de" in stats else np.maximum(stats["proba_m1"], stats["proba_m2"])
    columns = [c for c in _COLUMNS if c in stats] + [c for c in stats if c not in _COLUMNS]
    table = pd.DataFrame({c: stats[c] for c in columns}, index=pd.Index(list(gene_names)))
    table[fdr_column(fdr_target)] = posterior_expected_fdr_mask(proba, fdr_target)
    table["comparison"] = f"{group1} vs {group2}"
    table["group1"], table["group2"] = group1, group2
    return table.sort_values("bayes_factor", ascending=False, kind="stable")


# --------------------------------------------------------------------------------------------------
# cell groups


@dataclass(frozen=True)
class Comparison:
    """Two disjoint, non-empty sets of cells (row positions) and their names."""

    name1: str
    name2: str
    cells1: np.ndarray
    cells2: np.ndarray


def comparisons_from_groups(
    obs: pd.DataFrame,
    groupby: str,
    group1: Any | Sequence[Any] | None = None,
    group2: Any | None = None,
) -> list[Comparison]:
    """The comparisons asked for by an ``obs`` column and group names.

    Each of ``group1`` (default: every group present, in category order) is compared with ``group2``,
    or with the rest of the cells when ``group2`` is ``None``. Groups are matched as strings, so
    ``group1=1`` finds the category ``"1"``.

    Examples
    --------
    >>> obs = pd.DataFrame({"type": ["a", "b", "b", "c"]})
    >>> [(c.name1, c.name2) for c in comparisons_from_groups(obs, "type")]
    [('a', 'Rest'), ('b', 'Rest'), ('c', 'Rest')]
    """
    if groupby not in obs.columns:
        raise ValueError(
            f"groupby={groupby!r} is not a column of adata.obs; pass the name of a column of cell groups."
        )
    labels = obs[groupby].astype(str).to_numpy()
    available = _groups_present(obs[groupby])
    if group1 is None:
        names1 = available
    elif isinstance(group1, (list, tuple, np.ndarray, pd.Index)):
        names1 = [str(g) for g in group1]
    else:
        names1 = [str(group1)]
    if not names1:
        raise ValueError("group1 is an empty list; name at least one group of adata.obs[groupby].")
    for name in [*names1, *([] if group2 is None else [str(group2)])]:
        if name not in available:
            raise ValueError(
                f"group {name!r} has no cells in adata.obs[{groupby!r}]; available groups: {available}."
            )
    comparisons = []
    for name1 in names1:
        in1 = labels == name1
        in2 = ~in1 if group2 is None else labels == str(group2)
        name2 = REST if group2 is None else str(group2)
        if name1 == name2:
            raise ValueError(f"group1 and group2 are both {name1!r}; compare two different groups.")
        if not in2.any():
            raise ValueError(
                f"no cells outside group {name1!r} in adata.obs[{groupby!r}]: one-vs-rest needs another group."
            )
        comparisons.append(Comparison(name1, name2, np.flatnonzero(in1), np.flatnonzero(in2)))
    return comparisons


def _groups_present(column: pd.Series) -> list[str]:
    if isinstance(column.dtype, pd.CategoricalDtype):
        present = set(column.dropna().astype(str))
        return [str(c) for c in column.cat.categories if str(c) in present]
    return sorted(set(column.dropna().astype(str)))


def _positions(idx: Any, n_cells: int, name: str) -> np.ndarray:
    """Row positions of a boolean mask or a list of integer positions, checked."""
    idx = np.asarray(idx)
    if idx.dtype == np.bool_:
        if idx.shape != (n_cells,):
            raise ValueError(f"{name} as a boolean mask needs one entry per cell ({n_cells}), got shape {idx.shape}.")
        positions = np.flatnonzero(idx)
    elif idx.ndim == 1 and (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
        positions = idx.astype(np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= n_cells):
            raise ValueError(f"{name} holds positions outside [0, {n_cells}); pass row positions of adata.")
    else:
        raise ValueError(
            f"{name} must be a boolean mask or a 1-d array of integer row positions, got dtype {idx.dtype} "
            f"and shape {idx.shape}. To select by obs name use np.flatnonzero(adata.obs_names.isin(names))."
        )
    positions = np.unique(positions)
    if positions.size == 0:
        raise ValueError(f"{name} selects no cells; a group needs at least one cell.")
    return positions


def comparison_from_indices(idx1: Any, idx2: Any | None, n_cells: int) -> Comparison:
    """The comparison of two explicit cell sets (boolean masks or integer positions; ``idx2=None``: rest).

    Examples
    --------
    >>> c = comparison_from_indices([0, 1], None, n_cells=4)
    >>> c.cells2, c.name2
    (array([2, 3]), 'Rest')
    """
    cells1 = _positions(idx1, n_cells, "idx1")
    if idx2 is None:
        cells2 = np.setdiff1d(np.arange(n_cells), cells1)
        if cells2.size == 0:
            raise ValueError("idx1 selects every cell, so the rest is empty; pass idx2 or a smaller idx1.")
        return Comparison("idx1", REST, cells1, cells2)
    cells2 = _positions(idx2, n_cells, "idx2")
    overlap = np.intersect1d(cells1, cells2)
    if overlap.size:
        raise ValueError(
            f"idx1 and idx2 share {overlap.size} cell(s) (e.g. position {overlap[0]}); the groups must be disjoint."
        )
    return Comparison("idx1", "idx2", cells1, cells2)


# --------------------------------------------------------------------------------------------------
# feature correlation


def feature_correlation(
    data: np.ndarray, correlation_type: Literal["spearman", "pearson"] = "spearman"
) -> np.ndarray:
    """Correlation between the columns (features) of ``data`` (observations x features).

    Spearman's is Pearson's correlation of the ranks (ties get their average rank). A constant feature
    has no defined correlation and gets NaN.

    Examples
    --------
    >>> data = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 1.0], [3.0, 9.0, 2.0]])
    >>> float(feature_correlation(data, "spearman")[0, 1])
    1.0
    """
    if correlation_type not in ("spearman", "pearson"):
        raise ValueError(f"correlation_type must be 'spearman' or 'pearson', got {correlation_type!r}.")
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] < 2:
        raise ValueError(f"feature_correlation needs a 2-d array with at least 2 rows, got shape {data.shape}.")
    if correlation_type == "spearman":
        data = rankdata(data, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(data, rowvar=False)
    corr = np.atleast_2d(corr)
    # rounding can leave |r| a hair above 1, the matrix a hair asymmetric and the diagonal a hair off 1;
    # all three are exact in theory
    corr = np.clip((corr + corr.T) / 2, -1.0, 1.0)
    diagonal = np.diag(corr).copy()
    np.fill_diagonal(corr, np.where(np.isnan(diagonal), np.nan, 1.0))
    return corr


# --------------------------------------------------------------------------------------------------
# outlier cells


def robust_inliers(points: np.ndarray, contamination: float = 0.1, n_steps: int = 30) -> np.ndarray | None:
    """Mask of the points that are not among the ``contamination`` fraction farthest from a robust centre.

    The centre and covariance are those of the half of the points with the smallest Mahalanobis distances
    (minimum covariance determinant, found by concentration steps from the full sample); the points
    farthest from it by that distance are the outliers. Returns ``None`` when the covariance cannot be
    estimated (fewer points than dimensions plus two, or a singular covariance).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> points = np.vstack([rng.normal(size=(95, 2)), rng.normal(8, 0.1, size=(5, 2))])
    >>> bool(robust_inliers(points)[95:].any())
    False
    """
    x = np.asarray(points, dtype=np.float64)
    n, d = x.shape
    if n < d + 2:
        return None
    h = (n + d + 1) // 2
    subset = np.arange(n)
    distances = None
    for _ in range(n_steps):
        centre = x[subset].mean(0)
        cov = np.cov(x[subset], rowvar=False).reshape(d, d)
        try:
            precision = np.linalg.inv(cov)
        except np.linalg.LinAlgError:
            return None
        if not np.isfinite(precision).all():
            return None
        diff = x - centre
        distances = np.einsum("ij,jk,ik->i", diff, precision, diff)
        new = np.sort(np.argsort(distances, kind="stable")[:h])
        if np.array_equal(new, subset):
            break
        subset = new
    n_out = int(np.floor(contamination * n))
    keep = np.ones(n, dtype=bool)
    if n_out:
        keep[np.argsort(-distances, kind="stable")[:n_out]] = False
    return keep
