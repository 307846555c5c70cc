"""Criticism plots are ordinary pyplot figures, draw into given axes; report's argument order (issue 19)."""

import importlib.util

import numpy as np
import pytest

import pyrovi
import pyrovi.criticism as pc
from pyrovi.model import SCVI

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="pyrovi[plot]"),
]

PLOTS = ("plot_cv", "plot_zero_fraction", "plot_calibration", "plot_mean_variance", "plot_rootogram")


@pytest.fixture(scope="module")
def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@pytest.fixture(scope="module")
def fitted():
    pyrovi.settings.seed = 0
    adata = pyrovi.datasets.synthetic_iid(n_cells=60, n_genes=15, seed=2)
    SCVI.setup_anndata(adata)
    model = SCVI(adata, n_latent=2, n_hidden=8)
    model.train(max_epochs=2, batch_size=32, progress_bar=False)
    return adata, model


@pytest.fixture(scope="module")
def ppc(fitted):
    adata, model = fitted
    return pc.PosteriorPredictiveCheck(adata, {"NB": model}, n_samples=3)


def _non_blank(plt, path) -> bool:
    image = plt.imread(path)
    return image.shape[0] > 50 and float(np.ptp(image[..., :3])) > 0.1  # more than one colour


@pytest.mark.parametrize("name", PLOTS)
def test_a_plot_is_the_current_pyplot_figure_and_plt_savefig_writes_it(ppc, plt, name, tmp_path):
    plt.close("all")
    figure = getattr(pc.plots, name)(ppc)
    assert plt.get_fignums() == [figure.number] and plt.gcf() is figure
    plt.savefig(tmp_path / "plot.png")
    assert _non_blank(plt, tmp_path / "plot.png")
    plt.close("all")


@pytest.mark.parametrize("name", PLOTS)
def test_ax_draws_into_the_given_axes(ppc, plt, name):
    plt.close("all")
    figure, axes = plt.subplots(1, 2)
    returned = getattr(pc.plots, name)(ppc, ax=axes[1])
    assert returned is figure and plt.get_fignums() == [figure.number]  # no new figure
    assert axes[1].has_data() and not axes[0].has_data()
    plt.close("all")


def test_rootogram_ax_needs_a_single_panel(fitted, ppc, plt):
    adata, model = fitted
    two = pc.PosteriorPredictiveCheck(adata, {"a": model, "b": model}, n_samples=2, held_out=False)
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="one panel per model"):
        pc.plots.plot_rootogram(two, ax=ax)
    plt.close("all")


def test_report_takes_the_data_first_and_the_old_order_warns(fitted, plt, tmp_path):
    adata, model = fitted
    plt.close("all")
    new = pc.report(adata, model, tmp_path / "new", n_samples=2, held_out=False)
    assert plt.get_fignums() == []  # the report's figures are written and closed
    with pytest.warns(FutureWarning, match=r"report\(adata, models, out_dir\)"):
        old = pc.report(model, adata, tmp_path / "old", n_samples=2, held_out=False, plots=False)
    with pytest.warns(FutureWarning, match="model_or_models"):
        pc.report(adata, model_or_models=model, out_dir=tmp_path / "kw", n_samples=2, plots=False)
    assert new["metrics"]["models"] == old["metrics"]["models"] == {"SCVI": "SCVI"}
    with pytest.raises(TypeError, match="needs models"):
        pc.report(adata, None, tmp_path / "none")


def test_checks_and_reports_show_a_progress_bar_unless_turned_off(fitted, capsys, tmp_path):
    adata, model = fitted
    old = pyrovi.settings.progress_bar
    try:
        pyrovi.settings.progress_bar = True
        pc.PosteriorPredictiveCheck(adata, {"NB": model}, n_samples=2).draw()
        assert "Posterior predictive draws" in capsys.readouterr().err
        pc.report(adata, model, tmp_path / "r", n_samples=2, plots=False)
        assert "Report" in capsys.readouterr().err
        pyrovi.settings.progress_bar = False
        pc.report(adata, model, tmp_path / "quiet", n_samples=2, plots=False)
        assert "Report" not in capsys.readouterr().err
    finally:
        pyrovi.settings.progress_bar = old
