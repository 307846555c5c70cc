"""Posterior predictive statistics on plain arrays: no model, no AnnData, only numpy.

Observed counts are an array ``y`` and replicates an array ``y_rep`` with one more, trailing axis of
posterior predictive draws. These functions are the arithmetic behind
:class:`~pyrovi.criticism.PosteriorPredictiveCheck` and can be used on their own.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from numbers import Integral

import numpy as np

from .._checks import check_bool, check_number


def _numbers(name: str, values: object, finite: bool = True) -> np.ndarray:
    """``values`` as a numpy array of numbers (bool, int or float), refusing text, objects and (``finite``) NaN/inf."""
    try:
        array = np.asarray(values)
    except Exception as err:  # noqa: BLE001 - ragged lists and other non-arrays
        raise TypeError(f"{name} must be an array of numbers, got {type(values).__name__} ({err}).") from None
    if array.dtype.kind not in "biuf":
        hint = " (a sparse matrix: pass .toarray())" if hasattr(values, "toarray") else ""
        raise TypeError(
            f"{name} must be an array of numbers, got {type(values).__name__} of dtype {array.dtype}{hint}."
        )
    if finite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values; pass finite numbers.")
    return array


def _axis(axis: object, array: np.ndarray) -> int:
    """``axis`` checked against the array: a whole number within its dimensions, along a non-empty axis."""
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, Integral) or not -array.ndim <= axis < array.ndim:
        raise ValueError(
            f"axis must be an integer in [{-array.ndim}, {array.ndim - 1}] for an array of shape {array.shape}, "
            f"got {axis!r}."
        )
    if array.shape[axis] == 0:
        raise ValueError(f"x has no entries along axis {axis} (shape {array.shape}); nothing to summarise.")
    return int(axis)


def check_levels(levels: object) -> list[float]:
    """Nominal levels: a non-empty sequence of numbers in (0, 1)."""
    if isinstance(levels, (str, bytes)) or not isinstance(levels, (Sequence, np.ndarray)) or len(levels) == 0:
        raise TypeError(f"levels must be a non-empty list of levels in (0, 1), e.g. [0.5, 0.9], got {levels!r:.80}.")
    for level in levels:
        try:
            check_number("level", level, 0.0, 1.0, low_open=True, high_open=True)
        except ValueError:
            raise ValueError(f"levels must be numbers in (0, 1), got {list(levels)!r:.80}.") from None
    return [float(level) for level in levels]


def coefficient_of_variation(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Coefficient of variation ``std / mean`` along ``axis`` (population std, ``ddof=0``).

    NaN where the mean is zero (an all-zero gene or cell has no defined CV).

    Parameters
    ----------
    x
        Counts, e.g. cells x genes.
    axis
        Axis to reduce: 0 gives one CV per gene of a cells x genes matrix, 1 one per cell.

    Returns
    -------
    float64 array with ``axis`` removed.

    Examples
    --------
    >>> import numpy as np
    >>> coefficient_of_variation(np.array([[1.0, 0.0], [3.0, 0.0]]))
    array([0.5, nan])
    """
    x = _numbers("x", x)
    axis = _axis(axis, x)
    mean = x.mean(axis=axis, dtype=np.float64)
    std = x.std(axis=axis, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean > 0, std / np.where(mean > 0, mean, 1.0), np.nan)


def zero_fraction(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Fraction of entries equal to zero along ``axis`` (zeros, not non-zeros).

    Parameters
    ----------
    x
        Counts, e.g. cells x genes.
    axis
        Axis to reduce: 0 gives one fraction per gene of a cells x genes matrix, 1 one per cell.

    Examples
    --------
    >>> import numpy as np
    >>> zero_fraction(np.array([[0, 1], [0, 0], [2, 5]]))
    array([0.66666667, 0.33333333])
    """
    x = _numbers("x", x)
    return (x == 0).mean(axis=_axis(axis, x), dtype=np.float64)


def pit_interval(observed: np.ndarray, replicates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The interval over which the randomised PIT of each observed value is uniform.

    With ``S`` replicates, let ``r<`` be the number of replicates below the observed value and ``r=``
    the number equal to it. The randomised probability integral transform is

    ``u = (r< + V * (r= + 1)) / (S + 1)``,  ``V ~ Uniform(0, 1)``,

    i.e. ``u`` is uniform on ``[r< / (S + 1), (r< + r= + 1) / (S + 1)]``. If the observed value and the
    replicates are exchangeable draws of one distribution (a well-specified model), the rank of the
    observation among the ``S + 1`` values, with ties broken at random, is uniform on ``{0, ..., S}``
    and ``u`` is *exactly* Uniform(0, 1) for any ``S`` and for discrete counts with many ties. The
    plain ECDF version ``F(y - 1) + V (F(y) - F(y - 1))`` is only uniform as ``S -> inf``.

    Parameters
    ----------
    observed
        Observed values, any shape ``(...)``.
    replicates
        Replicates of shape ``(..., S)``.

    Returns
    -------
    ``(lower, upper)``, float64 arrays of the shape of ``observed``.

    Examples
    --------
    >>> import numpy as np
    >>> pit_interval(np.array([2]), np.array([[0, 2, 2, 5]]))
    (array([0.2]), array([0.8]))
    """
    observed = _numbers("observed", observed)
    replicates = _numbers("replicates", replicates)
    if replicates.ndim == 0 or replicates.shape[-1] == 0:
        raise ValueError(f"replicates needs a trailing axis of at least one draw, got shape {replicates.shape}.")
    if replicates.shape[:-1] != observed.shape:
        raise ValueError(
            f"replicates must have the observed shape {observed.shape} plus a trailing draws axis; "
            f"got {replicates.shape}."
        )
    n_draws = replicates.shape[-1]
    y = observed[..., None]
    below = (replicates < y).sum(-1)
    ties = (replicates == y).sum(-1)
    return below / (n_draws + 1), (below + ties + 1) / (n_draws + 1)


def pit_coverage(lower: np.ndarray, upper: np.ndarray, level: float) -> float:
    """Expected fraction of randomised PITs inside the central interval ``|u - 0.5| <= level / 2``.

    Each PIT is uniform on ``[lower, upper]`` (see :func:`pit_interval`), so instead of drawing it we
    average the probability that it falls in the central interval: the overlap length divided by the
    interval length. This is the randomised coverage with the randomisation integrated out (the same
    expectation, no sampling noise, no seed). For a well-specified model the expectation is ``level``.

    Parameters
    ----------
    lower, upper
        PIT intervals from :func:`pit_interval`.
    level
        Nominal level of the central interval, in (0, 1).

    Examples
    --------
    >>> import numpy as np
    >>> pit_coverage(np.array([0.0, 0.4]), np.array([0.5, 0.6]), level=0.5)
    0.75
    """
    check_number("level", level, 0.0, 1.0, low_open=True, high_open=True)
    lower, upper = _numbers("lower", lower), _numbers("upper", upper)
    if lower.shape != upper.shape or lower.size == 0:
        raise ValueError(
            f"lower and upper must be non-empty arrays of one shape (from pit_interval), got {lower.shape} and "
            f"{upper.shape}."
        )
    if not ((lower >= 0) & (upper <= 1) & (lower < upper)).all():
        raise ValueError("lower and upper must be PIT intervals within [0, 1] with lower < upper (from pit_interval).")
    lo, hi = 0.5 - level / 2, 0.5 + level / 2
    overlap = np.clip(np.minimum(upper, hi) - np.maximum(lower, lo), 0.0, None)
    return float(np.mean(overlap / (upper - lower)))


def interval_coverage(observed: np.ndarray, replicates: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Empirical coverage of central posterior predictive intervals at several nominal levels.

    Parameters
    ----------
    observed
        Observed values ``(...)``.
    replicates
        Posterior predictive draws ``(..., S)``.
    levels
        Nominal levels in (0, 1).

    Returns
    -------
    One coverage per level; near ``levels`` for a well-specified model (see :func:`pit_interval`).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y, y_rep = rng.poisson(3, 5000), rng.poisson(3, (5000, 10))
    >>> np.round(interval_coverage(y, y_rep, [0.5, 0.9]), 2)
    array([0.5, 0.9])
    """
    levels = check_levels(levels)
    lower, upper = pit_interval(observed, replicates)
    return np.array([pit_coverage(lower, upper, level) for level in levels])


def randomized_pit(
    observed: np.ndarray, replicates: np.ndarray, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Randomised PIT values, Uniform(0, 1) for a well-specified model (e.g. for a PIT histogram).

    Parameters
    ----------
    observed, replicates
        As in :func:`pit_interval`.
    rng
        Generator or seed of the randomisation.

    Examples
    --------
    >>> import numpy as np
    >>> u = randomized_pit(np.array([1, 4]), np.array([[0, 1, 2], [0, 1, 2]]), rng=0)
    >>> bool(u[1] >= 0.75)
    True
    """
    if not (rng is None or isinstance(rng, np.random.Generator)):
        if isinstance(rng, (bool, np.bool_)) or not isinstance(rng, Integral) or rng < 0:
            raise TypeError(
                f"rng must be None, a non-negative integer seed or a numpy.random.Generator "
                f"(e.g. np.random.default_rng(0)), got {rng!r:.80} ({type(rng).__name__})."
            )
    lower, upper = pit_interval(observed, replicates)
    draws = np.random.default_rng(rng).uniform(size=lower.shape)
    return lower + draws * (upper - lower)


def posterior_predictive_pvalue(
    observed_stat: np.ndarray | float, replicated_stats: np.ndarray, mid_p: bool = False
) -> np.ndarray:
    """Posterior predictive p-value ``P(T(y_rep) >= T(y))``, estimated over the replicates.

    Values near 0 or 1 flag a statistic the model fails to reproduce.

    Parameters
    ----------
    observed_stat
        ``T(y)``: a scalar or an array ``(...)``.
    replicated_stats
        ``T(y_rep)`` per draw: shape ``(..., S)``.
    mid_p
        Count ties with weight 1/2, ``P(T_rep > T) + P(T_rep = T) / 2``: a statistic that cannot tell
        observed from replicated data (always tied) then scores 0.5 rather than 1.

    Returns
    -------
    p-values of the shape of ``observed_stat``.

    Examples
    --------
    >>> import numpy as np
    >>> posterior_predictive_pvalue(2.0, np.array([1.0, 2.0, 3.0, 4.0]))
    array(0.75)
    """
    check_bool("mid_p", mid_p)
    observed_stat = _numbers("observed_stat", observed_stat, finite=False).astype(np.float64)
    replicated_stats = _numbers("replicated_stats", replicated_stats, finite=False).astype(np.float64)
    if replicated_stats.ndim == 0 or replicated_stats.shape[-1] == 0:
        raise ValueError(
            f"replicated_stats needs a trailing axis of at least one replicate, got shape {replicated_stats.shape}."
        )
    if replicated_stats.shape[:-1] != observed_stat.shape:
        raise ValueError(
            f"replicated_stats must have the shape of observed_stat {observed_stat.shape} plus a trailing "
            f"draws axis; got {replicated_stats.shape}."
        )
    # an undefined statistic (NaN, e.g. the CV of an all-zero gene) has no p-value: NaN where it is observed,
    # and replicates where it is NaN do not count
    t_obs = observed_stat[..., None]
    defined = ~np.isnan(replicated_stats)
    n_defined = defined.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        above = ((replicated_stats > t_obs) & defined).sum(-1) / n_defined
        ties = ((replicated_stats == t_obs) & defined).sum(-1) / n_defined
    p_value = above + (0.5 if mid_p else 1.0) * ties
    return np.asarray(np.where(np.isnan(observed_stat) | (n_defined == 0), np.nan, p_value))


def quiet_nanmean(x: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """``np.nanmean`` without the warning for all-NaN slices (they are NaN, which is the answer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


__all__ = [
    "coefficient_of_variation",
    "zero_fraction",
    "pit_interval",
    "pit_coverage",
    "interval_coverage",
    "randomized_pit",
    "posterior_predictive_pvalue",
]
