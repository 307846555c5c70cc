"""pyrovi.criticism.compare: importance-sampled elpd on shared held-out cells, paired SEs, Pareto k."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
from pyro.poutine.messenger import Messenger

import pyrovi
from pyrovi.criticism import compare

pytest.importorskip("arviz_stats")

N_PARTICLES = 30


def _fit(adata, likelihood: str, seed: int, train_size: float = 0.8, epochs: int = 40):
    pyrovi.settings.seed = seed  # the same seed gives every model the same train/validation split
    pyrovi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = pyrovi.model.SCVI(adata, n_latent=5, n_hidden=32, gene_likelihood=likelihood)
    model.train(max_epochs=epochs, train_size=train_size, batch_size=128)
    return model


def _nb_data(seed: int):
    # few, overdispersed counts (NB dispersion 2): a Poisson likelihood cannot fit their variance
    return pyrovi.datasets.synthetic_iid(n_cells=300, n_genes=40, n_batches=1, dispersion=2.0, seed=seed)


@pytest.fixture(scope="module")
def fitted():
    adata = _nb_data(0)
    return adata, {"NB": _fit(adata, "nb", 0), "Poisson": _fit(adata, "poisson", 0)}


def test_table_columns_order_and_sums(fitted):
    adata, models = fitted
    table, per_cell = compare(models, n_particles=N_PARTICLES, pointwise=True)
    assert list(table.columns) == ["rank", "elpd", "se", "elpd_diff", "dse", "p_khat_bad", "n_cells", "warning"]
    assert list(table["rank"]) == [0, 1]
    assert table["elpd"].is_monotonic_decreasing and table["elpd_diff"].iloc[0] == 0.0
    shared = np.intersect1d(models["NB"].validation_indices, models["Poisson"].validation_indices)
    assert (table["n_cells"] == len(shared)).all()
    for name in table.index:
        pointwise = per_cell["elpd_i", name].to_numpy()
        assert table.loc[name, "elpd"] == pytest.approx(pointwise.sum())
        assert table.loc[name, "se"] == pytest.approx(math.sqrt(len(pointwise) * np.var(pointwise)))


def test_paired_se_is_the_se_of_per_cell_differences(fitted):
    _, models = fitted
    table, per_cell = compare(models, n_particles=N_PARTICLES, pointwise=True)
    best, other = table.index
    diff = (per_cell["elpd_i", best] - per_cell["elpd_i", other]).to_numpy()
    # hand computation: n * (mean of squared deviations of the differences)
    n = len(diff)
    by_hand = math.sqrt(n * sum((d - sum(diff) / n) ** 2 for d in diff) / n)
    assert table.loc[other, "dse"] == pytest.approx(by_hand, rel=1e-9)
    assert table.loc[other, "elpd_diff"] == pytest.approx(diff.sum())
    # cells share their difficulty, so the paired SE is well below the unpaired one
    assert table.loc[other, "dse"] < math.hypot(table.loc[best, "se"], table.loc[other, "se"])


def test_pointwise_is_get_marginal_ll(fitted):
    _, models = fitted
    cells = np.arange(20)
    pyro.set_rng_seed(3)
    with pytest.warns(UserWarning):  # briefly trained guides: heavy-tailed weights
        _, per_cell = compare(models, indices=cells, n_particles=N_PARTICLES, pointwise=True)
    pyro.set_rng_seed(3)  # the same draws: compare evaluates "NB" first, as get_marginal_ll draws them
    direct = models["NB"].get_marginal_ll(indices=cells, n_mc_samples=N_PARTICLES, return_mean=False)
    np.testing.assert_allclose(per_cell["elpd_i", "NB"], direct, rtol=1e-5)


@pytest.mark.parametrize("seed", [1, 2])
def test_nb_beats_poisson_on_nb_counts(seed):
    adata = _nb_data(seed)
    models = {"Poisson": _fit(adata, "poisson", seed), "NB": _fit(adata, "nb", seed)}
    table = compare(models, n_particles=N_PARTICLES)
    assert table.index[0] == "NB"
    assert table.loc["Poisson", "elpd_diff"] > 2 * table.loc["Poisson", "dse"]


class _ShiftLatent(Messenger):
    """Draw ``z`` from the guide shifted by three of its standard deviations: a proposal off the posterior."""

    def _pyro_sample(self, msg):
        if msg["name"] == "z" and not msg["is_observed"]:
            fn, ndims = msg["fn"], 0
            while isinstance(fn, dist.Independent):
                ndims += fn.reinterpreted_batch_ndims
                fn = fn.base_dist
            msg["fn"] = dist.Normal(fn.loc + 3.0 * fn.scale, fn.scale).to_event(ndims)


def test_pareto_k_warns_for_a_bad_proposal(fitted, monkeypatch):
    _, models = fitted
    pyro.set_rng_seed(0)
    with pytest.warns(UserWarning):  # briefly trained guides already leave heavy tails in some cells
        plain = compare(models, n_particles=N_PARTICLES)
    module = models["NB"].module
    guide = module.guide
    monkeypatch.setattr(module, "guide", lambda *args, **kwargs: _ShiftLatent()(guide)(*args, **kwargs))
    pyro.set_rng_seed(0)
    with pytest.warns(UserWarning, match=r"Pareto k > 0.7 for 'NB' \(\d+% of cells\)"):
        shifted = compare(models, n_particles=N_PARTICLES)
    assert shifted.loc["NB", "warning"]
    # the displaced proposal leaves far more cells with unreliable weights (0.55 -> 0.88 at seed 0)
    assert shifted.loc["NB", "p_khat_bad"] > plain.loc["NB", "p_khat_bad"] + 0.2


def test_a_refined_proposal_tightens_the_estimate_and_its_pareto_k(fitted):
    _, models = fitted
    pyro.set_rng_seed(1)
    with pytest.warns(UserWarning, match="use proposal='refined'"):
        plain, plain_i = compare(models, n_particles=N_PARTICLES, pointwise=True)
    pyro.set_rng_seed(1)
    refined, refined_i = compare(models, n_particles=N_PARTICLES, pointwise=True, proposal="refined")
    for name in models:
        # both estimate log p(x) from below on average; the refined proposal's estimate is higher and trusted in
        # more cells
        gain = (refined_i[("elpd_i", name)] - plain_i[("elpd_i", name)]).mean()
        assert gain > 0.1, (name, gain)
        assert refined.loc[name, "p_khat_bad"] < plain.loc[name, "p_khat_bad"]
    assert refined.index[0] == "NB"  # the ranking of the true likelihood holds


def test_errors(fitted):
    adata, models = fitted
    with pytest.raises(ValueError, match="two or more models"):
        compare({"NB": models["NB"]})
    with pytest.raises(ValueError, match="n_particles must be at least 25"):
        compare(models, n_particles=5)
    with pytest.raises(ValueError, match="indices is empty"):
        compare(models, indices=[])
    fewer_genes = _fit(adata[:, :30].copy(), "nb", 0, epochs=1)
    with pytest.raises(ValueError, match="share their genes"):
        compare({"NB": models["NB"], "fewer genes": fewer_genes})
    other_cells = _fit(_nb_data(5)[:200].copy(), "nb", 0, epochs=1)
    with pytest.raises(ValueError, match="different AnnData"):
        compare({"NB": models["NB"], "other": other_cells})
    no_held_out = _fit(adata.copy(), "nb", 0, train_size=1.0, epochs=1)
    with pytest.raises(ValueError, match="no held-out validation cells"):
        compare({"NB": models["NB"], "all cells": no_held_out})
    other_split = _fit(adata.copy(), "nb", 7, train_size=0.5, epochs=1)
    other_split.validation_indices = np.setdiff1d(np.arange(adata.n_obs), models["NB"].validation_indices)
    with pytest.raises(ValueError, match="share no held-out validation cells"):
        compare({"NB": models["NB"], "other split": other_split})


def test_plot_compare(fitted):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from pyrovi.criticism.plots import plot_compare

    _, models = fitted
    pyro.set_rng_seed(0)
    with pytest.warns(UserWarning):
        table = compare(models, n_particles=N_PARTICLES)
    figure = plot_compare(table)
    ax = figure.axes[0]
    rows = dict(zip(ax.get_yticks(), (tick.get_text() for tick in ax.get_yticklabels())))
    assert rows[max(rows)].startswith(table.index[0])  # best model on the top row
    assert ax.lines[0].get_xdata()[0] == pytest.approx(table["elpd"].iloc[0])  # dashed line at the best elpd
    with pytest.raises(ValueError, match="pass the DataFrame returned by pyrovi.criticism.compare"):
        plot_compare(table[["rank"]])
    plt.close(figure)
