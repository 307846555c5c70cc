"""pyrovi.criticism's array-level statistics on hand-made arrays: no model involved."""

import numpy as np
import pytest
from scipy import stats

import pyrovi.criticism as pc

LEVELS = (0.5, 0.8, 0.9, 0.95)


def test_zero_fraction_counts_zeros_not_nonzeros():
    x = np.array([[0, 1, 3], [0, 0, 2], [4, 0, 1], [0, 0, 7]])
    np.testing.assert_allclose(pc.zero_fraction(x, axis=0), [3 / 4, 3 / 4, 0.0])
    np.testing.assert_allclose(pc.zero_fraction(x, axis=1), [1 / 3, 2 / 3, 1 / 3, 2 / 3])
    # replicates: the trailing draws axis is kept
    assert pc.zero_fraction(np.zeros((5, 3, 4)), axis=0).shape == (3, 4)


def test_coefficient_of_variation_formula():
    rng = np.random.default_rng(0)
    x = rng.poisson(4.0, size=(50, 6)).astype(np.float32)
    x[:, 2] = 0  # an all-zero gene has no CV
    cv = pc.coefficient_of_variation(x, axis=0)
    with np.errstate(invalid="ignore"):
        expected = x.std(0, ddof=0) / x.mean(0)
    np.testing.assert_allclose(np.delete(cv, 2), np.delete(expected, 2), rtol=1e-6)
    assert np.isnan(cv[2])
    np.testing.assert_allclose(pc.coefficient_of_variation(np.array([[1.0, 3.0]]), axis=1), [0.5])
    # a constant positive gene has CV 0
    assert pc.coefficient_of_variation(np.full((4, 1), 2.0))[0] == 0


def test_pit_interval_ranks_with_ties():
    # 2 is above one replicate and ties with two: u is uniform on [1/5, 4/5]
    lower, upper = pc.pit_interval(np.array([2.0]), np.array([[0.0, 2.0, 2.0, 5.0]]))
    np.testing.assert_allclose([lower[0], upper[0]], [0.2, 0.8])
    lower, upper = pc.pit_interval(np.array([9.0, -1.0]), np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]))
    np.testing.assert_allclose(lower, [0.75, 0.0])
    np.testing.assert_allclose(upper, [1.0, 0.25])
    with pytest.raises(ValueError, match="trailing draws axis"):
        pc.pit_interval(np.zeros(3), np.zeros((4, 2)))


TRUE_DISTRIBUTIONS = {
    "negative binomial": lambda rng, size: rng.negative_binomial(2, 2 / (2 + 6.0), size=size),
    "poisson, mostly zeros": lambda rng, size: rng.poisson(0.3, size=size),
    "poisson, mixed means": lambda rng, size: rng.poisson(np.geomspace(0.1, 50, 40)[:, None], size=size),
}


@pytest.mark.parametrize(("name", "draw"), list(TRUE_DISTRIBUTIONS.items()), ids=list(TRUE_DISTRIBUTIONS))
@pytest.mark.parametrize("n_draws", [5, 30])
def test_pit_coverage_is_nominal_for_replicates_of_the_true_distribution(name, draw, n_draws):
    """Exchangeable observation and replicates: coverage is nominal whatever the ties and the number of draws.

    20,000 entries give a binomial standard error below 0.004 per level; the tolerance is 0.015.
    """
    rng = np.random.default_rng(1)
    shape = (40, 500)
    observed = draw(rng, shape)
    replicates = np.stack([draw(rng, shape) for _ in range(n_draws)], axis=-1)
    coverage = pc.interval_coverage(observed, replicates, LEVELS)
    np.testing.assert_allclose(coverage, LEVELS, atol=0.015, err_msg=name)
    # the randomised PIT itself is uniform
    u = pc.randomized_pit(observed, replicates, rng=0).ravel()
    assert stats.kstest(u, "uniform").statistic < 0.02


def test_pit_coverage_flags_too_narrow_and_too_wide_predictions():
    rng = np.random.default_rng(2)
    shape = (20_000,)
    observed = rng.negative_binomial(2, 2 / (2 + 10.0), size=shape)  # mean 10, overdispersed
    poisson = rng.poisson(10.0, size=(*shape, 20))  # same mean, too narrow
    wide = rng.negative_binomial(0.5, 0.5 / (0.5 + 10.0), size=(*shape, 20))  # too wide
    narrow_cov = pc.interval_coverage(observed, poisson, LEVELS)
    wide_cov = pc.interval_coverage(observed, wide, LEVELS)
    assert (narrow_cov < np.array(LEVELS) - 0.15).all(), narrow_cov
    assert (wide_cov[:2] > np.array(LEVELS[:2]) + 0.05).all(), wide_cov


def test_pit_coverage_integrates_the_randomisation():
    # an interval straddling the central 50% interval's edge counts in proportion to the overlap
    assert pc.pit_coverage(np.array([0.0]), np.array([0.5]), 0.5) == pytest.approx(0.5)
    assert pc.pit_coverage(np.array([0.3]), np.array([0.6]), 0.5) == pytest.approx(1.0)
    assert pc.pit_coverage(np.array([0.8]), np.array([1.0]), 0.5) == pytest.approx(0.0)
    # averaging many randomised draws gives the same number
    rng = np.random.default_rng(3)
    lower = rng.uniform(0, 0.7, size=5000)
    upper = lower + rng.uniform(0.01, 0.3, size=5000)
    u = lower + rng.uniform(size=(200, 5000)) * (upper - lower)
    assert pc.pit_coverage(lower, upper, 0.8) == pytest.approx((np.abs(u - 0.5) <= 0.4).mean(), abs=0.005)
    with pytest.raises(ValueError, match="level"):
        pc.pit_coverage(lower, upper, 1.0)


def test_ppp_value_of_a_statistic_equal_for_observed_and_replicates():
    t_rep = np.full(10, 3.0)
    assert pc.posterior_predictive_pvalue(3.0, t_rep) == 1.0  # P(T_rep >= T_obs) with every draw tied
    assert pc.posterior_predictive_pvalue(3.0, t_rep, mid_p=True) == 0.5
    np.testing.assert_allclose(pc.posterior_predictive_pvalue(2.0, np.array([1.0, 2.0, 3.0, 4.0])), 0.75)
    per_gene = pc.posterior_predictive_pvalue(np.array([0.0, 10.0]), np.array([[1.0, 2.0], [1.0, 2.0]]))
    np.testing.assert_allclose(per_gene, [1.0, 0.0])
    with pytest.raises(ValueError, match="trailing draws axis"):
        pc.posterior_predictive_pvalue(np.zeros(3), np.zeros((2, 5)))
