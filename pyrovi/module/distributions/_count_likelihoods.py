"""Count likelihoods in scVI's parameterisation, built on Pyro's own distributions.

scVI writes the negative binomial with its mean ``mu`` and inverse dispersion ``theta``:

.. math::

    \\mathrm{NB}(x; \\mu, \\theta) = \\frac{\\Gamma(x + \\theta)}{\\Gamma(\\theta)\\, x!}
        \\left(\\frac{\\theta}{\\theta + \\mu}\\right)^{\\theta}
        \\left(\\frac{\\mu}{\\theta + \\mu}\\right)^{x},

so that :math:`\\mathbb{E}[x] = \\mu` and :math:`\\mathrm{Var}[x] = \\mu + \\mu^2 / \\theta`. This is
Pyro's (torch's) ``NegativeBinomial(total_count=theta, logits=log mu - log theta)``. The zero-inflated
version mixes a point mass at zero with gate probability ``sigmoid(zi_logits)``. These functions only
translate parameters; the log-densities are Pyro's (through subclasses that evaluate the Gamma
functions on non-zero counts only, see :mod:`._sparse_nb`).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch

from ._sparse_nb import NegativeBinomial, ZeroInflatedNegativeBinomial

_EPS = 1e-8


def _nb_logits(mu: torch.Tensor | None, theta: torch.Tensor, log_mu: torch.Tensor | None) -> torch.Tensor:
    # eps guards log(0) for genes with (numerically) zero expression; a log mean needs no guard
    log_mean = log_mu if log_mu is not None else torch.log(mu + _EPS)
    return log_mean - torch.log(theta + _EPS)


def negative_binomial(
    mu: torch.Tensor | None, theta: torch.Tensor, *, log_mu: torch.Tensor | None = None
) -> NegativeBinomial:
    """Negative binomial with mean ``mu`` and inverse dispersion ``theta``.

    ``log_mu``, when given, replaces ``mu``: a decoder working in log space (a log-softmax) passes the log
    mean directly, which skips a dense ``log`` and is accurate for tiny means.

    Examples
    --------
    >>> d = negative_binomial(torch.tensor([5.0]), torch.tensor([2.0]))
    >>> float(d.mean)  # doctest: +ELLIPSIS
    5.0...
    """
    return NegativeBinomial(total_count=theta, logits=_nb_logits(mu, theta, log_mu))


def zero_inflated_negative_binomial(
    mu: torch.Tensor | None, theta: torch.Tensor, zi_logits: torch.Tensor, *, log_mu: torch.Tensor | None = None
) -> ZeroInflatedNegativeBinomial:
    """Zero-inflated negative binomial: zero with probability ``sigmoid(zi_logits)``, else NB(mu, theta).

    ``log_mu`` may replace ``mu``, as in :func:`negative_binomial`.

    Examples
    --------
    >>> d = zero_inflated_negative_binomial(torch.tensor([5.0]), torch.tensor([2.0]), torch.tensor([0.0]))
    >>> round(float(d.mean), 4)  # half the mass is the zero gate
    2.5
    """
    return ZeroInflatedNegativeBinomial(
        total_count=theta, logits=_nb_logits(mu, theta, log_mu), gate_logits=zi_logits
    )


def poisson(mu: torch.Tensor) -> dist.Poisson:
    """Poisson with mean ``mu``.

    Examples
    --------
    >>> float(poisson(torch.tensor(3.0)).mean)
    3.0
    """
    return dist.Poisson(mu)


def normal(mu: torch.Tensor, sigma: torch.Tensor) -> dist.Normal:
    """Normal with mean ``mu`` and standard deviation ``sigma``: the likelihood of continuous data.

    With ``gene_likelihood="normal"`` the ``theta`` of the count likelihoods is this standard deviation.

    Examples
    --------
    >>> float(normal(torch.tensor(1.5), torch.tensor(2.0)).stddev)
    2.0
    """
    return dist.Normal(mu, sigma)


#: gene_likelihood name -> constructor taking ``(mu, theta, zi_logits, log_mu=None)``; unused arguments
#: are ignored, and ``mu`` may be ``None`` when ``log_mu`` is given.
COUNT_LIKELIHOODS = {
    "nb": lambda mu, theta, zi_logits, log_mu=None: negative_binomial(mu, theta, log_mu=log_mu),
    "zinb": zero_inflated_negative_binomial,
    "poisson": lambda mu, theta, zi_logits, log_mu=None: poisson(log_mu.exp() if mu is None else mu),
    # not a count model: theta is the standard deviation of continuous data (e.g. log-normalised expression)
    "normal": lambda mu, theta, zi_logits, log_mu=None: normal(log_mu.exp() if mu is None else mu, theta),
}
