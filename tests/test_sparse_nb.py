"""The sparse-aware negative binomials equal Pyro's in value and gradient, on every code path."""

import pyro.distributions as dist
import pytest
import torch

from pyrovi.module.distributions import negative_binomial, zero_inflated_negative_binomial


def _counts(n_cells=16, n_genes=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(n_cells, n_genes, generator=g) * 3.0)
    x[torch.rand(n_cells, n_genes, generator=g) < 0.7] = 0.0  # mostly zeros, as in droplet data
    x[0] = 0.0  # an all-zero cell
    x[1, 0] = 500.0  # a large count
    return x


def _parameters(n_cells, n_genes, gene_wise, seed=1):
    g = torch.Generator().manual_seed(seed)
    mu = (torch.rand(n_cells, n_genes, generator=g, dtype=torch.float64) * 5 + 1e-3).requires_grad_()
    shape = (n_genes,) if gene_wise else (n_cells, n_genes)
    theta = (torch.rand(shape, generator=g, dtype=torch.float64) * 10 + 0.05).requires_grad_()
    gate = torch.randn(n_cells, n_genes, generator=g, dtype=torch.float64).requires_grad_()
    return mu, theta, gate


def _value_and_grads(log_prob_fn, params):
    # a non-uniform upstream gradient, as the ELBO's scaling and masking give: the written-out backward
    # passes must weight every entry by it
    value = log_prob_fn()
    weights = torch.linspace(-1.0, 2.0, value.numel(), dtype=value.dtype).reshape(value.shape)
    grads = torch.autograd.grad((value * weights).sum(), params)
    return value.detach(), grads


@pytest.mark.parametrize("gene_wise", [True, False], ids=["theta-per-gene", "theta-per-cell-gene"])
def test_negative_binomial_equals_pyro_in_value_and_gradient(gene_wise):
    x = _counts().double()
    mu, theta, _ = _parameters(*x.shape, gene_wise)
    ours = _value_and_grads(lambda: negative_binomial(mu, theta).log_prob(x), (mu, theta))
    eps_logits = lambda: torch.log(mu + 1e-8) - torch.log(theta + 1e-8)  # noqa: E731
    ref = _value_and_grads(
        lambda: dist.NegativeBinomial(total_count=theta.expand_as(mu), logits=eps_logits()).log_prob(x), (mu, theta)
    )
    assert ours[0].shape == x.shape
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-10, atol=1e-10)
    for a, b in zip(ours[1], ref[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gene_wise", [True, False], ids=["theta-per-gene", "theta-per-cell-gene"])
def test_zero_inflated_negative_binomial_equals_pyro_in_value_and_gradient(gene_wise):
    x = _counts().double()
    mu, theta, gate = _parameters(*x.shape, gene_wise)
    ours = _value_and_grads(lambda: zero_inflated_negative_binomial(mu, theta, gate).log_prob(x), (mu, theta, gate))
    logits = lambda: torch.log(mu + 1e-8) - torch.log(theta + 1e-8)  # noqa: E731
    ref = _value_and_grads(
        lambda: dist.ZeroInflatedNegativeBinomial(
            total_count=theta.expand_as(mu), logits=logits(), gate_logits=gate
        ).log_prob(x),
        (mu, theta, gate),
    )
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-10, atol=1e-10)
    for a, b in zip(ours[1], ref[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("zero_inflated", [False, True], ids=["nb", "zinb"])
def test_written_out_gradients_pass_gradcheck(zero_inflated):
    # finite differences against the analytic backward passes, second argument theta per gene (expanded)
    x = _counts(n_cells=5, n_genes=7).double()
    mu, theta, gate = _parameters(*x.shape, gene_wise=True)
    if zero_inflated:
        fn = lambda m, t, g: zero_inflated_negative_binomial(m, t, g).log_prob(x)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (mu, theta, gate))
    else:
        fn = lambda m, t: negative_binomial(m, t).log_prob(x)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (mu, theta))


def test_broadcast_values_take_the_dense_formula_and_agree():
    # enumeration and sample dimensions broadcast the value against a larger batch shape
    x = _counts(4, 6)
    mu = torch.rand(3, 4, 6) * 4 + 0.1
    theta = torch.rand(6) + 0.5
    ours = negative_binomial(mu, theta).log_prob(x)
    ref = dist.NegativeBinomial(total_count=theta, logits=torch.log(mu + 1e-8) - torch.log(theta + 1e-8)).log_prob(x)
    assert ours.shape == (3, 4, 6)
    torch.testing.assert_close(ours, ref)


def test_expand_sample_and_event_reinterpretation_keep_the_class():
    d = zero_inflated_negative_binomial(torch.full((5,), 3.0), torch.full((5,), 2.0), torch.zeros(5))
    expanded = d.expand((2, 5))
    assert isinstance(expanded.base_dist, type(d.base_dist))
    assert expanded.sample().shape == (2, 5)
    x = torch.tensor([[0.0, 1.0, 0.0, 4.0, 2.0]] * 2)
    torch.testing.assert_close(expanded.to_event(1).log_prob(x), d.log_prob(x[0]).sum().expand(2))


def test_validation_still_rejects_non_counts():
    d = negative_binomial(torch.full((3,), 2.0), torch.full((3,), 1.0))
    d._validate_args = True
    with pytest.raises(ValueError):
        d.log_prob(torch.tensor([0.5, 1.0, 2.0]))
