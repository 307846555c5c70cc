"""The model-independent core of differential expression: FDR rule, statistics, tables, cell groups."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import norm, spearmanr

from pyrovi.model.base._differential import (
    LFC_EPS,
    comparison_from_indices,
    comparisons_from_groups,
    de_statistics,
    de_table,
    feature_correlation,
    fdr_column,
    log2_fold_changes,
    posterior_expected_fdr_mask,
    raw_count_statistics,
)

# ---------------------------------------------------------------------------------------------------
# the posterior expected FDR rule


def test_fdr_rule_on_a_hand_computed_case():
    # ranked 0.99, 0.97, 0.90, 0.50: expected FDR of the top k = 0.01, 0.02, 0.0467, 0.16
    p = np.array([0.99, 0.5, 0.97, 0.9])
    np.testing.assert_array_equal(posterior_expected_fdr_mask(p, 0.05), [True, False, True, True])
    np.testing.assert_array_equal(posterior_expected_fdr_mask(p, 0.03), [True, False, True, False])
    np.testing.assert_array_equal(posterior_expected_fdr_mask(p, 0.005), [False] * 4)
    np.testing.assert_array_equal(posterior_expected_fdr_mask(p, 0.2), [True] * 4)


def test_fdr_rule_extremes_and_exact_target():
    assert posterior_expected_fdr_mask(np.ones(5), 0.05).all()
    assert not posterior_expected_fdr_mask(np.zeros(5), 0.05).any()
    assert not posterior_expected_fdr_mask(np.full(5, 0.9), 0.05).any()
    # mean(1 - p) of the top 2 is exactly 0.05: allowed despite floating point
    np.testing.assert_array_equal(posterior_expected_fdr_mask([0.92, 0.98, 0.1], 0.05), [True, True, False])


def test_fdr_rule_keeps_ties_together():
    # top 1: 0, top 2: 0.05 (allowed) - but that would split the tie at 0.9, so only the first is called
    np.testing.assert_array_equal(posterior_expected_fdr_mask([1.0, 0.9, 0.9], 0.05), [True, False, False])
    # a tie entirely inside the called set is kept
    np.testing.assert_array_equal(posterior_expected_fdr_mask([0.99, 0.99, 0.5], 0.05), [True, True, False])


def test_fdr_rule_is_the_largest_top_set_under_target():
    rng = np.random.default_rng(0)
    p = rng.beta(0.3, 0.3, size=500)
    for target in (0.01, 0.05, 0.1, 0.3):
        mask = posterior_expected_fdr_mask(p, target)
        assert np.mean(1 - p[mask]) <= target if mask.any() else True
        # a top set: every called gene is more probable than every uncalled one
        if mask.any() and (~mask).any():
            assert p[mask].min() > p[~mask].max()
        # the next gene would push the expected FDR over the target
        nxt = p[~mask].max()
        assert np.mean(1 - np.append(p[mask], nxt)) > target
        # order does not matter
        perm = rng.permutation(p.size)
        np.testing.assert_array_equal(posterior_expected_fdr_mask(p[perm], target), mask[perm])


@pytest.mark.parametrize(
    ("proba", "target", "message"),
    [
        ([0.5, np.nan], 0.05, "no NaN"),
        ([0.5, 1.2], 0.05, r"\[0, 1\]"),
        ([[0.5]], 0.05, "one-dimensional"),
        ([0.5], 0.0, "strictly between"),
        ([0.5], 1.0, "strictly between"),
    ],
)
def test_fdr_rule_rejects_bad_input(proba, target, message):
    with pytest.raises(ValueError, match=message):
        posterior_expected_fdr_mask(proba, target)


# ---------------------------------------------------------------------------------------------------
# statistics of posterior draws


def _draws_with_known_lfc(n: int, mu: np.ndarray, sd: np.ndarray, seed: int = 0):
    """Draws whose paired log2 ratio is exactly N(mu, sd) per gene (values ~1, so eps is negligible)."""
    rng = np.random.default_rng(seed)
    draws2 = np.exp(rng.normal(0, 0.3, size=(n, mu.size)))
    lfc = rng.normal(mu, sd, size=(n, mu.size))
    return draws2 * 2.0**lfc, draws2, lfc


def test_change_mode_statistics_match_the_known_lfc_distribution():
    mu = np.array([2.0, 0.0, -1.0, 0.3, 0.0])
    sd = np.array([1e-9, 0.2, 0.5, 0.3, 1.0])
    delta = 0.5
    draws1, draws2, lfc = _draws_with_known_lfc(20_000, mu, sd)
    stats = de_statistics(draws1, draws2, mode="change", delta=delta, test_mode="two")
    expected = norm.sf((delta - mu) / sd) + norm.cdf((-delta - mu) / sd)  # P(|N(mu, sd)| >= delta)
    three = de_statistics(draws1, draws2, mode="change", delta=delta)  # the default: the likelier direction
    np.testing.assert_allclose(three["proba_de"], np.maximum(norm.sf((delta - mu) / sd), norm.cdf((-delta - mu) / sd)),
                               atol=0.015)  # fmt: skip
    np.testing.assert_allclose(stats["proba_de"], expected, atol=0.015)
    np.testing.assert_allclose(stats["proba_de"] + stats["proba_not_de"], 1)
    p = np.clip(stats["proba_de"], 1e-8, 1 - 1e-8)
    np.testing.assert_allclose(stats["bayes_factor"], np.log(p / (1 - p)), rtol=1e-6)
    assert stats["bayes_factor"][0] == pytest.approx(np.log((1 - 1e-8) / 1e-8))  # all draws agree: finite
    np.testing.assert_allclose(stats["lfc_mean"], mu, atol=0.02)
    np.testing.assert_allclose(stats["lfc_median"], mu, atol=0.03)
    np.testing.assert_allclose(stats["lfc_std"], sd, atol=0.02)
    np.testing.assert_allclose(stats["lfc_min"], lfc.min(0), atol=1e-5)
    np.testing.assert_allclose(stats["lfc_max"], lfc.max(0), atol=1e-5)
    np.testing.assert_allclose(stats["scale1"], draws1.mean(0))
    np.testing.assert_allclose(stats["scale2"], draws2.mean(0))


def test_vanilla_mode_probability_of_rho1_above_rho2():
    mu = np.array([1.0, 0.0, -0.5])
    sd = np.array([1.0, 1.0, 0.5])
    draws1, draws2, _ = _draws_with_known_lfc(20_000, mu, sd, seed=1)
    stats = de_statistics(draws1, draws2, mode="vanilla")
    np.testing.assert_allclose(stats["proba_m1"], norm.cdf(mu / sd), atol=0.015)
    np.testing.assert_allclose(stats["proba_m1"] + stats["proba_m2"], 1)
    np.testing.assert_allclose(stats["bayes_factor"], np.log(stats["proba_m1"] / stats["proba_m2"]), rtol=1e-6)
    assert "lfc_mean" in stats and "proba_de" not in stats


def test_lfc_eps_keeps_absent_genes_finite():
    zeros = np.zeros((3, 1))
    assert log2_fold_changes(zeros, zeros).tolist() == [[0.0]] * 3
    lfc = log2_fold_changes(np.full((1, 1), 1e-3), zeros)
    assert lfc[0, 0] == pytest.approx(np.log2((1e-3 + LFC_EPS) / LFC_EPS))


def test_statistics_do_not_depend_on_gene_blocks():
    rng = np.random.default_rng(2)
    draws1, draws2 = rng.dirichlet(np.ones(2500), size=(2, 50)).astype(np.float32)
    whole = de_statistics(draws1, draws2, delta=0.5)
    for genes in (slice(0, 1000), slice(1000, 2500)):
        part = de_statistics(draws1[:, genes], draws2[:, genes], delta=0.5)
        for key in whole:
            np.testing.assert_array_equal(whole[key][genes], part[key])


def test_statistics_reject_bad_input():
    draws = np.full((4, 3), 0.3)
    with pytest.raises(ValueError, match="same shape"):
        de_statistics(draws, draws[:2])
    with pytest.raises(ValueError, match="delta must be a positive number"):
        de_statistics(draws, draws, mode="change", delta=0)
    with pytest.raises(ValueError, match="'vanilla' or 'change'"):
        de_statistics(draws, draws, mode="t-test")


# ---------------------------------------------------------------------------------------------------
# raw counts and the table


def test_raw_count_statistics_dense_and_sparse():
    counts = np.array([[0, 2, 8], [1, 3, 0], [0, 0, 0]], dtype=np.float32)
    dense = raw_count_statistics(counts, suffix="1")
    sparse = raw_count_statistics(sp.csr_matrix(counts), suffix="1")
    for key in dense:
        np.testing.assert_allclose(dense[key], sparse[key])
    np.testing.assert_allclose(dense["raw_mean1"], [1 / 3, 5 / 3, 8 / 3])
    np.testing.assert_allclose(dense["non_zeros_proportion1"], [1 / 3, 2 / 3, 1 / 3])
    # per 10^4 counts of the cell; the empty cell counts as 0
    np.testing.assert_allclose(dense["raw_normalized_mean1"], np.array([2500, 2000 + 7500, 8000]) / 3)


def _toy_stats(mode="change"):
    rng = np.random.default_rng(3)
    draws1 = rng.dirichlet(np.ones(6), size=400)
    draws2 = draws1 * np.array([8.0, 1, 1, 1, 1, 1 / 8])
    return de_statistics(draws1, draws2 / draws2.sum(1, keepdims=True), mode=mode, delta=0.5)


def test_de_table_columns_order_and_calls():
    stats = _toy_stats()
    stats.update(raw_count_statistics(np.ones((2, 6)), "1"))
    stats.update(raw_count_statistics(np.ones((3, 6)), "2"))
    genes = [f"g{i}" for i in range(6)]
    table = de_table(stats, genes, 0.05, "A", "B")
    assert list(table.columns) == [
        "proba_de", "proba_not_de", "bayes_factor", "scale1", "scale2", "pseudocounts", "delta", "lfc_mean",
        "lfc_median", "lfc_std", "lfc_min", "lfc_max", "raw_mean1", "raw_mean2", "non_zeros_proportion1",
        "non_zeros_proportion2", "raw_normalized_mean1", "raw_normalized_mean2", "is_de_fdr_0.05",
        "comparison", "group1", "group2",
    ]  # fmt: skip
    assert sorted(table.index) == genes
    assert table["bayes_factor"].is_monotonic_decreasing
    assert set(table.index[table["is_de_fdr_0.05"]]) == {"g0", "g5"}
    assert (table["comparison"] == "A vs B").all() and (table["group1"] == "A").all()
    assert fdr_column(0.1) == "is_de_fdr_0.1"


def test_de_table_vanilla_calls_on_the_favoured_direction():
    table = de_table(_toy_stats("vanilla"), [f"g{i}" for i in range(6)], 0.05, "A", "B")
    # g0 is 8x higher in group 2 (proba_m2 ~ 1) and g5 8x lower (proba_m1 ~ 1): both are called
    assert set(table.index[table["is_de_fdr_0.05"]]) == {"g0", "g5"}
    assert table.loc["g0", "proba_m2"] > 0.99 and table.loc["g5", "proba_m1"] > 0.99
    assert table.index[0] == "g5" and table.index[-1] == "g0"  # sorted by the log odds of M1


# ---------------------------------------------------------------------------------------------------
# cell groups


@pytest.fixture
def obs():
    return pd.DataFrame(
        {"type": pd.Categorical(["a", "b", "b", "c", "a"], categories=["c", "a", "b", "unused"]),
         "number": [1, 2, 2, 1, 3]}  # fmt: skip
    )


def test_one_vs_rest_for_every_present_group(obs):
    comparisons = comparisons_from_groups(obs, "type")
    assert [(c.name1, c.name2) for c in comparisons] == [("c", "Rest"), ("a", "Rest"), ("b", "Rest")]
    assert comparisons[1].cells1.tolist() == [0, 4] and comparisons[1].cells2.tolist() == [1, 2, 3]


def test_named_groups_and_lists(obs):
    (only,) = comparisons_from_groups(obs, "type", "a", "b")
    assert (only.name1, only.name2, only.cells1.tolist(), only.cells2.tolist()) == ("a", "b", [0, 4], [1, 2])
    several = comparisons_from_groups(obs, "type", ["a", "c"], "b")
    assert [(c.name1, c.name2) for c in several] == [("a", "b"), ("c", "b")]
    # numbers match as strings
    (numeric,) = comparisons_from_groups(obs, "number", 2, "1")
    assert numeric.cells1.tolist() == [1, 2] and numeric.cells2.tolist() == [0, 3]


def test_group_errors(obs):
    with pytest.raises(ValueError, match=r"'zzz' has no cells.*available groups: \['c', 'a', 'b'\]"):
        comparisons_from_groups(obs, "type", "zzz")
    with pytest.raises(ValueError, match="'unused' has no cells"):
        comparisons_from_groups(obs, "type", "a", "unused")
    with pytest.raises(ValueError, match="not a column of adata.obs"):
        comparisons_from_groups(obs, "cell_type")
    with pytest.raises(ValueError, match="both 'a'"):
        comparisons_from_groups(obs, "type", "a", "a")
    with pytest.raises(ValueError, match="empty list"):
        comparisons_from_groups(obs, "type", [])
    with pytest.raises(ValueError, match="one-vs-rest needs another group"):
        comparisons_from_groups(pd.DataFrame({"g": ["x", "x"]}), "g")


def test_explicit_indices():
    mask = np.array([True, False, True, False, False])
    c = comparison_from_indices(mask, [3, 1], n_cells=5)
    assert (c.name1, c.name2, c.cells1.tolist(), c.cells2.tolist()) == ("idx1", "idx2", [0, 2], [1, 3])
    rest = comparison_from_indices([4, 0], None, n_cells=5)
    assert rest.name2 == "Rest" and rest.cells2.tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("idx1", "idx2", "message"),
    [
        ([0, 1], [1, 2], "share 1 cell"),
        ([], [1], "selects no cells"),
        (np.zeros(5, bool), None, "selects no cells"),
        ([0, 7], None, r"outside \[0, 5\)"),
        (np.ones(3, bool), None, "one entry per cell"),
        (["cell_0"], None, "integer row positions"),
        (np.arange(5), None, "rest is empty"),
    ],
)
def test_explicit_index_errors(idx1, idx2, message):
    with pytest.raises(ValueError, match=message):
        comparison_from_indices(idx1, idx2, n_cells=5)


# ---------------------------------------------------------------------------------------------------
# feature correlation


def test_feature_correlation_matches_numpy_and_scipy():
    rng = np.random.default_rng(4)
    data = rng.lognormal(size=(200, 6))
    data[:, 1] = data[:, 0] ** 3 + 0.01 * data[:, 1]  # monotone in gene 0: Spearman ~1, Pearson less
    spear = feature_correlation(data, "spearman")
    np.testing.assert_allclose(spear, spearmanr(data).statistic, atol=1e-12)
    pear = feature_correlation(data, "pearson")
    np.testing.assert_allclose(pear, np.corrcoef(data, rowvar=False), atol=1e-12)
    for corr in (spear, pear):
        np.testing.assert_array_equal(corr, corr.T)
        np.testing.assert_array_equal(np.diag(corr), 1.0)
    assert spear[0, 1] > 0.99 > pear[0, 1]
    assert feature_correlation(data[:, :2]).shape == (2, 2)  # two features still give a matrix
    with pytest.raises(ValueError, match="'spearman' or 'pearson'"):
        feature_correlation(data, "kendall")
