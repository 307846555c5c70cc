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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

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


@dataclass(frozen=True)
class LikelihoodInputs:
    """What a decoder gives the likelihood of a minibatch's counts: every tensor ``(n_cells, n_genes)``.

    The mean is offered both ways and computed only when read: :attr:`mu` (``library * rho``) and
    :attr:`log_mu`, which is exact for tiny means and, when the decoder worked in log space (``log_rho`` is
    its log-softmax), costs one addition instead of a dense ``log``.

    Parameters
    ----------
    library
        ``(n_cells, 1)`` library sizes (observed, or the exponential of the latent log library).
    rho
        Normalised expression: each cell's row sums to 1.
    theta
        Inverse dispersion (the standard deviation for ``"normal"``), None for the Poisson.
    zi_logits
        Logits of the zero-inflation gate, None when the decoder has no gate.
    log_rho
        ``log(rho)`` as the decoder computed it, or None.
    log_library
        The latent log library ``(n_cells, 1)``, or None for an observed library.

    Examples
    --------
    >>> inputs = LikelihoodInputs(torch.tensor([[10.0]]), torch.tensor([[0.2, 0.8]]), torch.ones(1, 2), None)
    >>> inputs.mu.tolist()
    [[2.0, 8.0]]
    >>> COUNT_LIKELIHOODS["poisson"](inputs).mean.round().tolist()
    [[2.0, 8.0]]
    """

    library: torch.Tensor
    rho: torch.Tensor
    theta: torch.Tensor | None
    zi_logits: torch.Tensor | None
    log_rho: torch.Tensor | None = None
    log_library: torch.Tensor | None = None

    @property
    def mu(self) -> torch.Tensor:
        """The mean ``library * rho``."""
        return self.library * self.rho

    @property
    def log_mu(self) -> torch.Tensor:
        """The log mean: ``log_rho + log library`` from log space, else ``log(mu + eps)``."""
        if self.log_rho is None:
            return torch.log(self.mu + _EPS)
        log_library = self.log_library if self.log_library is not None else torch.log(self.library + _EPS)
        return self.log_rho + log_library


#: a user's gene likelihood: ``(mu, theta, zi_logits) -> distribution`` with batch shape ``(n_cells, n_genes)``
LikelihoodFn = Callable[[torch.Tensor, Union[torch.Tensor, None], Union[torch.Tensor, None]], dist.Distribution]

#: gene_likelihood name -> constructor of the distribution from :class:`LikelihoodInputs`. The count
#: likelihoods read the log mean (exact, and one addition from a log-space decoder); the Normal of
#: continuous data reads the mean itself, since its library may be any real total.
COUNT_LIKELIHOODS: dict[str, Callable[[LikelihoodInputs], dist.Distribution]] = {
    "nb": lambda p: negative_binomial(None, p.theta, log_mu=p.log_mu),
    "zinb": lambda p: zero_inflated_negative_binomial(None, p.theta, p.zi_logits, log_mu=p.log_mu),
    "poisson": lambda p: poisson(p.log_mu.exp()),
    # not a count model: theta is the standard deviation of continuous data (e.g. log-normalised expression)
    "normal": lambda p: normal(p.mu, p.theta),
}


def gene_likelihood(likelihood: str | LikelihoodFn, inputs: LikelihoodInputs) -> dist.Distribution:
    """The distribution of a minibatch's counts: a built-in by name, or a user's callable.

    A callable is called as documented, ``likelihood(mu, theta, zi_logits)``; a built-in reads
    :class:`LikelihoodInputs` (the log mean where that is exact and cheaper).

    Examples
    --------
    >>> inputs = LikelihoodInputs(torch.tensor([[10.0]]), torch.tensor([[0.5, 0.5]]), torch.ones(1, 2), None)
    >>> gene_likelihood("nb", inputs).mean.tolist()
    [[5.0, 5.0]]
    >>> gene_likelihood(lambda mu, theta, zi_logits: dist.Poisson(mu), inputs).mean.tolist()
    [[5.0, 5.0]]
    """
    if callable(likelihood):
        return likelihood(inputs.mu, inputs.theta, inputs.zi_logits)
    return COUNT_LIKELIHOODS[likelihood](inputs)
