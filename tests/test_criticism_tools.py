"""PosteriorPredictiveCheck's API, plots, ArviZ export and report on small, briefly trained models.

These tests check shapes, tables, files and errors; the statistical behaviour is in
test_criticism_statistical.py.
"""

import importlib.util
import json
import sys

import numpy as np
import pandas as pd
import pytest

import pyrovi
import pyrovi.criticism as pc
from pyrovi.model import SCVI

if importlib.util.find_spec("matplotlib") is not None:
    import matplotlib

    matplotlib.use("Agg")

needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="pyrovi[plot]")
needs_arviz = pytest.mark.skipif(importlib.util.find_spec("arviz_base") is None, reason="pyrovi[arviz]")

N_CELLS, N_GENES, N_SAMPLES = 80, 20, 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models():
    """Two small SCVI models (NB and Poisson) on one AnnData, trained two epochs to get a validation split."""
    pyrovi.settings.seed = 0
    adata = pyrovi.datasets.synthetic_iid(n_cells=N_CELLS, n_genes=N_GENES, seed=3)
    SCVI.setup_anndata(adata, batch_key="batch")
    fitted = {}
    for name, likelihood in (("NB", "nb"), ("Poisson", "poisson")):
        model = SCVI(adata, n_latent=2, n_hidden=16, gene_likelihood=likelihood)
        model.train(max_epochs=2, batch_size=32, progress_bar=False)
        fitted[name] = model
    return adata, fitted


@pytest.fixture(scope="module")
def ppc(models):
    adata, fitted = models
    pyrovi.settings.seed = 1
    return pc.PosteriorPredictiveCheck(adata, fitted, n_samples=N_SAMPLES)


def test_replicates_observed_and_splits(ppc, models):
    adata, fitted = models
    n_val = len(fitted["NB"].validation_indices)
    assert ppc.keys == [("NB", "in-sample"), ("NB", "held-out"), ("Poisson", "in-sample"), ("Poisson", "held-out")]
    assert ppc.replicates[("NB", "in-sample")].shape == (N_CELLS, N_GENES, N_SAMPLES)
    assert ppc.replicates[("NB", "held-out")].shape == (n_val, N_GENES, N_SAMPLES)
    assert all(r.dtype == np.float32 for r in ppc.replicates.values())
    np.testing.assert_array_equal(ppc.observed[("NB", "in-sample")], adata.X.toarray())
    np.testing.assert_array_equal(ppc.cells[("Poisson", "held-out")], fitted["Poisson"].validation_indices)
    np.testing.assert_array_equal(
        ppc.observed[("NB", "held-out")], adata.X.toarray()[fitted["NB"].validation_indices]
    )
    assert list(ppc.gene_names) == list(adata.var_names)
    assert "4 samples" not in repr(ppc) and "NB held-out" in repr(ppc)


def test_per_feature_tables_are_tidy(ppc):
    cv = ppc.coefficient_of_variation("genes")
    assert list(cv.columns) == ["model", "split", "gene", "observed", "replicated", "abs_error"]
    assert len(cv) == 4 * N_GENES and ppc.metrics["cv_genes"] is cv
    errors = ppc.metrics["cv_genes_error"]
    assert list(errors[["model", "split"]].itertuples(index=False, name=None)) == ppc.keys
    nb = cv[(cv.model == "NB") & (cv.split == "in-sample")]
    assert errors.loc[0, "mae"] == pytest.approx(np.nanmean(np.abs(nb.replicated - nb.observed)))
    # replicated CV: per replicate, then averaged
    reps = ppc.replicates[("NB", "in-sample")]
    np.testing.assert_allclose(
        nb.replicated, np.nanmean(pc.coefficient_of_variation(reps, axis=0), axis=-1), rtol=1e-6
    )

    zeros = ppc.zero_fraction("cells")
    assert list(zeros.columns) == ["model", "split", "cell", "observed", "replicated", "abs_error"]
    held = zeros[(zeros.model == "NB") & (zeros.split == "held-out")]
    np.testing.assert_allclose(held.observed, (ppc.observed[("NB", "held-out")] == 0).mean(1))
    assert list(held.cell) == list(ppc.adata.obs_names[ppc.cells[("NB", "held-out")]])

    mv = ppc.mean_variance()
    assert {"observed_mean", "observed_variance", "replicated_mean", "replicated_variance"} <= set(mv.columns)
    assert (mv.observed_variance >= 0).all() and len(mv) == 4 * N_GENES
    assert {"variance_log_mae", "variance_log_ratio"} <= set(ppc.metrics["mean_variance_error"].columns)


def test_calibration_lpd_ppp_and_summary(ppc):
    cal = ppc.calibration(levels=(0.5, 0.9))
    assert list(cal.columns) == ["model", "split", "level", "coverage", "error"]
    assert len(cal) == 8 and cal.coverage.between(0, 1).all()
    np.testing.assert_allclose(cal.error, cal.coverage - cal.level)
    with pytest.raises(ValueError, match=r"levels must be numbers in \(0, 1\)"):
        ppc.calibration(levels=(0.5, 1.5))

    lpd = ppc.log_predictive_density(n_samples=4)
    assert list(lpd.columns) == ["model", "split", "n_cells", "n_samples", "log_predictive_density",
                                 "standard_error"]  # fmt: skip
    assert (lpd.log_predictive_density < 0).all() and (lpd.n_samples == 4).all()
    cells = ppc.metrics["log_predictive_density_cells"]
    assert len(cells) == 2 * (N_CELLS + len(ppc.cells[("NB", "held-out")]))

    scalar = ppc.ppp_value(lambda x: float(x.max()), name="max")
    assert list(scalar.columns) == ["model", "split", "statistic", "observed", "replicated_mean", "ppp_value"]
    assert len(scalar) == 4 and scalar.ppp_value.between(0, 1).all() and "ppp_max" in ppc.metrics
    per_gene = ppc.ppp_value(lambda x: x.mean(0), name="gene_mean")
    assert "gene" in per_gene.columns and len(per_gene) == 4 * N_GENES
    per_cell = ppc.ppp_value(lambda x: x.sum(1), name="library")
    assert "cell" in per_cell.columns
    tied = ppc.ppp_value(lambda x: 1.0, name="constant")
    assert (tied.ppp_value == 1.0).all()
    with pytest.raises(ValueError, match="scalar or a 1-d array"):
        ppc.ppp_value(lambda x: x, name="matrix")

    summary = ppc.summary()
    assert list(summary.columns) == [
        "model", "split", "n_cells", "cv_gene_mae", "cv_cell_mae", "zero_fraction_gene_mae",
        "zero_fraction_cell_mae", "variance_log_mae", "calibration_error", "log_predictive_density",
    ]  # fmt: skip
    assert len(summary) == 4 and summary.notna().all().all()
    # calibration error is the mean |coverage - level| of the stored table (levels 0.5 and 0.9 here)
    nb = cal[(cal.model == "NB") & (cal.split == "in-sample")]
    assert summary.loc[0, "calibration_error"] == pytest.approx(nb.error.abs().mean())


def test_gene_order_layers_and_options(models):
    adata, fitted = models
    # a model set up on the same genes in another order: the first model's order is used
    reordered = adata[:, ::-1].copy()
    SCVI.setup_anndata(reordered, batch_key="batch")
    reversed_model = SCVI(reordered, n_latent=2, n_hidden=16, gene_likelihood="nb")
    check = pc.PosteriorPredictiveCheck(adata, {"reversed": reversed_model, "NB": fitted["NB"]}, n_samples=1)
    assert list(check.gene_names) == list(adata.var_names[::-1])
    np.testing.assert_array_equal(check.observed[("NB", "in-sample")], adata.X.toarray()[:, ::-1])
    assert check.replicates[("NB", "in-sample")].shape == (N_CELLS, N_GENES, 1)
    # the untrained model has no validation cells: no held-out split for it
    assert check.keys == [("reversed", "in-sample"), ("NB", "in-sample"), ("NB", "held-out")]
    # the same cells with genes reordered are still the training cells; other cells have no held-out split
    same_cells = pc.PosteriorPredictiveCheck(reordered, {"NB": fitted["NB"]}, n_samples=2, indices=[0, 1])
    assert same_cells.keys == [("NB", "in-sample"), ("NB", "held-out")]
    other = pc.PosteriorPredictiveCheck(adata[10:].copy(), {"NB": fitted["NB"]}, n_samples=2)
    assert other.keys == [("NB", "in-sample")]
    assert pc.PosteriorPredictiveCheck(adata, fitted, n_samples=2, held_out=False).keys == [
        ("NB", "in-sample"), ("Poisson", "in-sample")
    ]  # fmt: skip
    mask = np.zeros(N_CELLS, bool)
    mask[:5] = True
    masked = pc.PosteriorPredictiveCheck(adata, {"NB": fitted["NB"]}, n_samples=2, indices=mask)
    assert masked.observed[("NB", "in-sample")].shape == (5, N_GENES)

    # counts in a layer: by default the layer the model was set up with
    layered = adata.copy()
    layered.layers["counts"] = layered.X.copy()
    layered.X = layered.X * 0
    SCVI.setup_anndata(layered, layer="counts", batch_key="batch")
    layer_model = SCVI(layered, n_latent=2, n_hidden=16)
    check = pc.PosteriorPredictiveCheck(layered, {"layer": layer_model}, n_samples=2, indices=np.arange(10))
    assert check.layer == "counts"
    np.testing.assert_array_equal(check.observed[("layer", "in-sample")], adata.X[:10].toarray())
    with pytest.raises(ValueError, match="different layers"):
        pc.PosteriorPredictiveCheck(layered, {"layer": layer_model, "NB": fitted["NB"]}, n_samples=2)


def test_errors_are_clear(models):
    adata, fitted = models
    fewer = adata[:, :10].copy()
    SCVI.setup_anndata(fewer)
    small = SCVI(fewer, n_latent=2, n_hidden=16)
    with pytest.raises(ValueError, match="must share their genes"):
        pc.PosteriorPredictiveCheck(adata, {"NB": fitted["NB"], "small": small})
    with pytest.raises(TypeError, match=r"dict \{name: model\}"):
        pc.PosteriorPredictiveCheck(adata, [fitted["NB"]])
    with pytest.raises(ValueError, match="empty"):
        pc.PosteriorPredictiveCheck(adata, {})
    with pytest.raises(TypeError, match="posterior_predictive_sample"):
        pc.PosteriorPredictiveCheck(adata, {"x": object()})
    with pytest.raises(ValueError, match="n_samples"):
        pc.PosteriorPredictiveCheck(adata, fitted, n_samples=0)
    with pytest.raises(KeyError, match="no layer 'missing'"):
        pc.PosteriorPredictiveCheck(adata, fitted, n_samples=2, layer="missing")
    with pytest.raises(IndexError, match="indices"):
        pc.PosteriorPredictiveCheck(adata, fitted, n_samples=2, indices=[N_CELLS + 5])


# -------------------------------------------------------------------------------------------------
# plots


def _legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


@needs_matplotlib
def test_scatter_plots(ppc, tmp_path):
    from matplotlib.figure import Figure

    fig = pc.plots.plot_cv(ppc)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.collections) == 2 and len(ax.lines) == 1  # one scatter per model, the identity line
    assert _legend_texts(ax) == ["NB", "Poisson", "y = x"]
    fig.savefig(tmp_path / "cv.png")
    assert (tmp_path / "cv.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.pyplot as plt

    assert fig.number in plt.get_fignums()  # an ordinary pyplot figure: shown inline, saved by plt.savefig

    both = pc.plots.plot_zero_fraction(ppc, dim="cells", split=None)
    assert _legend_texts(both.axes[0]) == ["NB", "NB (held-out)", "Poisson", "Poisson (held-out)", "y = x"]
    assert len(both.axes[0].collections) == 4

    mv = pc.plots.plot_mean_variance(ppc)
    ax = mv.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert _legend_texts(ax) == ["observed", "NB", "Poisson", "Poisson (variance = mean)"]
    mv.savefig(tmp_path / "mv.png")
    with pytest.raises(ValueError, match="split"):
        pc.plots.plot_cv(ppc, split="test")


@needs_matplotlib
def test_calibration_and_rootogram_plots(ppc, tmp_path):
    before = ppc.metrics.get("calibration")
    fig = pc.plots.plot_calibration(ppc)
    ax = fig.axes[0]
    assert len(ax.lines) == 5  # four (model, split) curves and the identity
    assert _legend_texts(ax)[-1] == "nominal" and len(ax.lines[0].get_xdata()) == len(pc.plots.CURVE_LEVELS)
    assert ppc.metrics.get("calibration") is before  # the plot's grid of levels is not stored
    fig.savefig(tmp_path / "cal.png")

    root = pc.plots.plot_rootogram(ppc, max_count=8)
    assert len(root.axes) == 2  # one panel per model
    for ax, model in zip(root.axes, ["NB", "Poisson"]):
        assert len(ax.collections[0].get_paths()) == 9  # one bar per count 0..8
        assert sorted(_legend_texts(ax)) == sorted(["observed", f"{model} expected"])
    gene = ppc.gene_names[0]
    standing = pc.plots.plot_rootogram(ppc, gene=gene, split="held-out", style="standing")
    assert [ax.get_title() for ax in standing.axes] == ["NB (held-out)", "Poisson (held-out)"]
    bars = standing.axes[0].collections[0].get_paths()
    assert all(bar.vertices[:, 1].min() == 0 for bar in bars)  # standing: the bars start at zero
    standing.savefig(tmp_path / "root.png")
    with pytest.raises(KeyError, match="not one of"):
        pc.plots.plot_rootogram(ppc, gene="nope")


@needs_matplotlib
def test_hanging_rootogram_bars_hang_from_the_expected_curve(ppc):
    fig = pc.plots.plot_rootogram(ppc, max_count=5)
    ax = fig.axes[0]
    curve = ax.lines[0].get_ydata()
    bars = [bar.vertices[:4] for bar in ax.collections[0].get_paths()]
    tops = np.array([bar[:, 1].max() for bar in bars])
    np.testing.assert_allclose(tops, curve, atol=1e-9)
    observed = ppc.observed[("NB", "in-sample")]
    heights = np.array([bar[:, 1].max() - bar[:, 1].min() for bar in bars])
    np.testing.assert_allclose(heights**2, [(observed == k).sum() for k in range(6)])


# -------------------------------------------------------------------------------------------------
# ArviZ and report


@needs_arviz
def test_to_arviz(models):
    adata, fitted = models
    idata = pc.to_arviz(fitted["NB"], n_samples=5, indices=np.arange(12))
    assert {"posterior_predictive", "observed_data", "log_likelihood"} <= set(idata.children)
    pp = idata["posterior_predictive"]["x"]
    assert pp.dims == ("chain", "draw", "cell", "gene") and pp.shape == (1, 5, 12, N_GENES)
    ll = idata["log_likelihood"]["x"]
    assert ll.dims == pp.dims and ll.shape == pp.shape and bool((ll <= 0).all())
    obs = idata["observed_data"]["x"]
    assert obs.dims == ("cell", "gene")
    np.testing.assert_array_equal(obs.values, adata.X[:12].toarray())
    assert list(obs.coords["cell"].values) == list(adata.obs_names[:12])
    assert list(obs.coords["gene"].values) == list(adata.var_names)
    assert idata.attrs["model"] == "SCVI"
    # the per-cell log-likelihood summed over genes is a proper NB log-likelihood of the counts
    assert np.isfinite(ll.values).all()


@needs_matplotlib
def test_report_writes_json_csv_and_png(models, tmp_path):
    adata, fitted = models
    out = pc.report(adata, fitted, tmp_path / "ppc", n_samples=4)
    files = out["files"]
    assert set(files) == {
        "metrics", "cv_genes", "zero_fraction_genes", "mean_variance", "cv_genes_plot",
        "zero_fraction_genes_plot", "calibration_plot", "mean_variance_plot", "rootogram_plot",
    }  # fmt: skip
    for path in files.values():
        assert path.exists() and path.stat().st_size > 0
        assert path.read_bytes()[:1] != b"\x80"  # never a pickle
    metrics = json.loads(files["metrics"].read_text())
    assert metrics == out["metrics"]
    assert [(r["model"], r["split"]) for r in metrics["summary"]] == out["ppc"].keys
    assert {"calibration", "log_predictive_density", "n_samples"} <= set(metrics)
    assert pd.read_csv(files["cv_genes"]).shape == (4 * N_GENES, 6)
    # a single model, no plots
    single = pc.report(None, fitted["NB"], tmp_path / "single", n_samples=2, plots=False, held_out=False)
    assert sorted(p.name for p in (tmp_path / "single").iterdir()) == [
        "cv_genes.csv", "mean_variance.csv", "metrics.json", "zero_fraction_genes.csv",
    ]  # fmt: skip
    assert single["metrics"]["models"] == {"SCVI": "SCVI"}


def test_optional_dependencies_fail_with_an_install_hint(ppc, models, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # makes `import matplotlib.pyplot` fail
    with pytest.raises(ImportError, match=r"pip install 'pyrovi\[plot\]'"):
        pc.plots.plot_cv(ppc)
    with pytest.raises(ImportError, match=r"pip install 'pyrovi\[plot\]'"):
        pc.report(None, models[1]["NB"], "unused", n_samples=2)
    monkeypatch.setitem(sys.modules, "arviz_base", None)
    with pytest.raises(ImportError, match=r"pip install 'pyrovi\[arviz\]'"):
        pc.to_arviz(models[1]["NB"], n_samples=2)
