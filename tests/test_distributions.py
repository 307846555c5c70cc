"""Pyro's log-densities in scVI's parameterisation equal the closed-form NB/ZINB/Poisson formulas."""

import math

import pytest
import torch

from pyrovi.module.distributions import negative_binomial, poisson, zero_inflated_negative_binomial


def _nb_log_pmf(x: float, mu: float, theta: float) -> float:
    # Gamma(x + theta) / (Gamma(theta) x!) (theta / (theta + mu))^theta (mu / (theta + mu))^x
    return (
        math.lgamma(x + theta)
        - math.lgamma(theta)
        - math.lgamma(x + 1)
        + theta * math.log(theta / (theta + mu))
        + x * math.log(mu / (theta + mu))
    )


def _zinb_log_pmf(x: float, mu: float, theta: float, zi_logit: float) -> float:
    pi = 1.0 / (1.0 + math.exp(-zi_logit))
    if x == 0:
        return math.log(pi + (1 - pi) * math.exp(_nb_log_pmf(0, mu, theta)))
    return math.log(1 - pi) + _nb_log_pmf(x, mu, theta)


CASES = [(0, 0.5, 2.0), (0, 30.0, 0.3), (1, 2.0, 5.0), (7, 3.5, 1.2), (120, 80.0, 10.0), (3, 0.01, 100.0)]


@pytest.mark.parametrize("x,mu,theta", CASES)
def test_negative_binomial_matches_closed_form(x, mu, theta):
    d = negative_binomial(torch.tensor(mu, dtype=torch.float64), torch.tensor(theta, dtype=torch.float64))
    assert d.log_prob(torch.tensor(float(x), dtype=torch.float64)).item() == pytest.approx(
        _nb_log_pmf(x, mu, theta), rel=1e-6, abs=1e-6
    )


@pytest.mark.parametrize("x,mu,theta", CASES)
@pytest.mark.parametrize("zi_logit", [-3.0, 0.0, 2.5])
def test_zero_inflated_negative_binomial_matches_closed_form(x, mu, theta, zi_logit):
    d = zero_inflated_negative_binomial(
        torch.tensor(mu, dtype=torch.float64),
        torch.tensor(theta, dtype=torch.float64),
        torch.tensor(zi_logit, dtype=torch.float64),
    )
    assert d.log_prob(torch.tensor(float(x), dtype=torch.float64)).item() == pytest.approx(
        _zinb_log_pmf(x, mu, theta, zi_logit), rel=1e-6, abs=1e-6
    )


@pytest.mark.parametrize("x,mu", [(0, 0.3), (4, 4.0), (50, 42.0)])
def test_poisson_matches_closed_form(x, mu):
    expected = x * math.log(mu) - mu - math.lgamma(x + 1)
    assert poisson(torch.tensor(mu, dtype=torch.float64)).log_prob(
        torch.tensor(float(x), dtype=torch.float64)
    ).item() == pytest.approx(expected, rel=1e-9)


def test_moments_follow_scvi_parameterisation():
    torch.manual_seed(0)
    mu, theta = torch.tensor(6.0), torch.tensor(2.0)
    samples = negative_binomial(mu, theta).sample((200_000,))
    assert samples.mean().item() == pytest.approx(6.0, rel=0.02)
    assert samples.var().item() == pytest.approx(6.0 + 36.0 / 2.0, rel=0.05)  # mu + mu^2 / theta
    zinb = zero_inflated_negative_binomial(mu, theta, torch.tensor(0.0)).sample((200_000,))
    assert zinb.mean().item() == pytest.approx(3.0, rel=0.03)  # half the cells are gated to zero
