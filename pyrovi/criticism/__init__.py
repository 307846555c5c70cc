"""Model criticism: posterior predictive checks of fitted pyrovi models.

A posterior predictive check asks whether data replicated from a fitted model look like the observed
data. :class:`PosteriorPredictiveCheck` draws replicate count matrices from one or several models and
compares them with the observed counts, in-sample and on each model's held-out validation cells:

- summary statistics per gene or cell: coefficient of variation, fraction of zeros, mean and variance;
- calibration: empirical coverage of central predictive intervals (randomised PIT, exact for counts);
- the log predictive density of the observed counts (higher is better);
- posterior predictive p-values of any statistic;
- :meth:`~PosteriorPredictiveCheck.summary`, one row per model and split.

:mod:`pyrovi.criticism.plots` draws them (``pip install 'pyrovi[plot]'``), :func:`report` writes metrics
and plots to a directory, and :func:`to_arviz` exports a model's posterior predictive and pointwise
log-likelihood to ArviZ (``pip install 'pyrovi[arviz]'``). The array-level statistics
(:func:`coefficient_of_variation`, :func:`zero_fraction`, :func:`pit_interval`, ...) work on plain numpy.

For predicted labels, :func:`reliability_table`, :func:`expected_calibration_error` and
:func:`calibration_summary` measure how well any classifier's probabilities (SCANVI's ``predict(soft=True)``,
CellAssign's ``predict()``) are calibrated on cells with known labels, and :func:`plots.plot_reliability`
draws the reliability diagram.

:func:`compare` ranks fitted models by the importance-sampled log predictive density of the same held-out
cells (elpd, paired standard errors of the differences, Pareto k diagnostics; ``pip install 'pyrovi[arviz]'``),
and :func:`plots.plot_compare` draws the table.

Examples
--------
>>> import pyrovi.criticism
>>> ppc = pyrovi.criticism.PosteriorPredictiveCheck(
...     adata, {"NB": nb_model, "Poisson": poisson_model}, n_samples=5)
>>> summary = ppc.summary()
>>> fig = pyrovi.criticism.plots.plot_calibration(ppc)
"""

from . import plots
from ._arviz import to_arviz
from ._compare import compare
from ._calibration import calibration_summary, expected_calibration_error, reliability_table
from ._data import HELD_OUT, IN_SAMPLE
from ._metrics import (
    coefficient_of_variation,
    interval_coverage,
    pit_coverage,
    pit_interval,
    posterior_predictive_pvalue,
    randomized_pit,
    zero_fraction,
)
from ._ppc import DEFAULT_LEVELS, PosteriorPredictiveCheck
from ._report import report

__all__ = [
    "PosteriorPredictiveCheck",
    "compare",
    "report",
    "to_arviz",
    "plots",
    "coefficient_of_variation",
    "zero_fraction",
    "pit_interval",
    "pit_coverage",
    "interval_coverage",
    "randomized_pit",
    "posterior_predictive_pvalue",
    "reliability_table",
    "expected_calibration_error",
    "calibration_summary",
    "DEFAULT_LEVELS",
    "IN_SAMPLE",
    "HELD_OUT",
]
