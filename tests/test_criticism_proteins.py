"""Posterior predictive checks of TOTALVI: its RNA (modality="rna") and its proteins (modality="protein")."""

import importlib.util
import json

import numpy as np
import pytest

import pyrovi
import pyrovi.criticism as pc
from pyrovi.model import SCVI, TOTALVI

if importlib.util.find_spec("matplotlib") is not None:
    import matplotlib

    matplotlib.use("Agg")

needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="pyrovi[plot]")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_CELLS, N_GENES, N_PROTEINS, N_SAMPLES = 300, 40, 8, 10
MISSING = {1: [0]}  # protein_0 is not on batch_1's panel


def _adata(missing=None):
    adata = pyrovi.datasets.synthetic_citeseq(
        n_cells=N_CELLS, n_genes=N_GENES, n_proteins=N_PROTEINS, missing_proteins=missing, seed=2
    )
    TOTALVI.setup_anndata(adata, "protein_expression", batch_key="batch")
    return adata


@pytest.fixture(scope="module")
def fitted():
    """An untrained and a trained TOTALVI on the same data (all proteins on both panels)."""
    adata = _adata()
    pyrovi.settings.seed = 0
    untrained = TOTALVI(adata, n_latent=3)
    pyrovi.settings.seed = 0
    trained = TOTALVI(adata, n_latent=3)
    # the settings the coverage was measured with (before TOTALVI.train took scvi-tools' defaults)
    trained.train(max_epochs=150, batch_size=128, early_stopping=False, reduce_lr_on_plateau=False, lr=1e-3,
                  n_epochs_kl_warmup=400, progress_bar=False)
    return adata, untrained, trained


def test_proteins_are_checked_against_the_registered_protein_counts(fitted):
    adata, _, trained = fitted
    pyrovi.settings.seed = 1
    ppc = pc.PosteriorPredictiveCheck(adata, {"totalVI": trained}, n_samples=N_SAMPLES, modality="protein")
    proteins = adata.obsm["protein_expression"]
    assert ppc.feature_dim == "proteins" and list(ppc.feature_names) == list(trained.protein_names)
    np.testing.assert_array_equal(ppc.observed[("totalVI", "in-sample")], np.asarray(proteins, dtype=np.float32))
    held = trained.validation_indices
    assert ppc.replicates[("totalVI", "held-out")].shape == (len(held), N_PROTEINS, N_SAMPLES)
    cv = ppc.coefficient_of_variation()
    assert list(cv.columns) == ["model", "split", "protein", "observed", "replicated", "abs_error"]
    assert "cv_proteins" in ppc.metrics and "cv_proteins_error" in ppc.metrics
    summary = ppc.summary()
    assert {"cv_protein_mae", "zero_fraction_protein_mae", "calibration_error"} <= set(summary.columns)
    assert np.isfinite(summary["log_predictive_density"]).all()
    assert "8 proteins" in repr(ppc)


def test_a_trained_model_reproduces_the_proteins_and_predicts_them_better(fitted):
    # what the check is for: replicates drawn from the fitted model's protein likelihood follow the
    # observed per-protein means (background and foreground levels differ tenfold), its predictive
    # intervals cover the observed protein counts at their nominal rates (measured on seeds 0 and 1:
    # 0.50-0.51, 0.81, 0.91, 0.95 in sample), and training raises the log predictive density of the
    # observed proteins from about -520 to -40 nats per cell; the untrained model's intervals cover 2%
    # at the 50% level
    adata, untrained, trained = fitted
    pyrovi.settings.seed = 2
    ppc = pc.PosteriorPredictiveCheck(
        adata, {"untrained": untrained, "trained": trained}, n_samples=N_SAMPLES, modality="protein"
    )
    table = ppc.mean_variance()
    rows = table[(table.model == "trained") & (table.split == "in-sample")]
    correlation = np.corrcoef(np.log(rows.observed_mean), np.log(rows.replicated_mean))[0, 1]
    assert correlation > 0.95
    calibration = ppc.calibration().set_index(["model", "split", "level"])["error"]
    assert calibration.loc[("trained", "in-sample")].abs().max() < 0.04  # 2,400 cell-protein entries
    assert calibration.loc[("trained", "held-out")].abs().max() < 0.1  # 240 entries
    assert calibration.loc[("untrained", "in-sample", 0.5)] < -0.3
    lpd = ppc.log_predictive_density().set_index(["model", "split"])["log_predictive_density"]
    # untrained models have no validation split: compare in-sample, where both were evaluated
    assert lpd[("trained", "in-sample")] > lpd[("untrained", "in-sample")] + 100.0


def test_rna_of_a_totalvi_model_is_checked_like_scvi(fitted):
    adata, _, trained = fitted
    ppc = pc.PosteriorPredictiveCheck(adata, {"totalVI": trained}, n_samples=4)
    assert ppc.modality == "rna" and ppc.feature_dim == "genes" and list(ppc.gene_names) == list(adata.var_names)
    np.testing.assert_array_equal(ppc.observed[("totalVI", "in-sample")], adata.X.toarray())
    assert ppc.replicates[("totalVI", "in-sample")].shape == (N_CELLS, N_GENES, 4)
    assert {"cv_gene_mae", "log_predictive_density"} <= set(ppc.summary().columns)


def test_proteins_missing_from_a_panel_are_left_out_with_a_warning():
    adata = _adata(MISSING)
    model = TOTALVI(adata, n_latent=2)
    model.train(max_epochs=2, batch_size=128, progress_bar=False)
    with pytest.warns(UserWarning, match="protein_0"):
        ppc = pc.PosteriorPredictiveCheck(adata, {"t": model}, n_samples=3, modality="protein")
    assert list(ppc.feature_names) == [p for p in model.protein_names if p != "protein_0"]
    assert ppc.observed[("t", "in-sample")].shape == (N_CELLS, N_PROTEINS - 1)
    # the cells of the batch that measured it check every protein, without a warning
    batch_0 = np.flatnonzero((adata.obs["batch"] == "batch_0").to_numpy())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ppc = pc.PosteriorPredictiveCheck(adata, {"t": model}, n_samples=3, indices=batch_0, held_out=False,
                                          modality="protein")
    assert len(ppc.feature_names) == N_PROTEINS
    assert np.isfinite(ppc.log_predictive_density()["log_predictive_density"]).all()


def test_protein_check_errors_name_the_problem(fitted):
    adata, _, trained = fitted
    scvi_data = pyrovi.datasets.synthetic_iid(n_cells=50, n_genes=10)
    SCVI.setup_anndata(scvi_data)
    with pytest.raises(TypeError, match="models no proteins"):
        pc.PosteriorPredictiveCheck(scvi_data, {"scvi": SCVI(scvi_data)}, modality="protein")
    with pytest.raises(ValueError, match="modality must be one of"):
        pc.PosteriorPredictiveCheck(adata, {"t": trained}, modality="adt")
    with pytest.raises(ValueError, match="leave layer=None"):
        pc.PosteriorPredictiveCheck(adata, {"t": trained}, modality="protein", layer="counts")
    ppc = pc.PosteriorPredictiveCheck(adata, {"t": trained}, n_samples=2, modality="protein", held_out=False)
    with pytest.raises(ValueError, match="'proteins' or 'cells'"):
        ppc.zero_fraction("genes")


@needs_matplotlib
def test_protein_report_and_plots(fitted, tmp_path):
    adata, _, trained = fitted
    out = pc.report(adata, {"totalVI": trained}, tmp_path, n_samples=3, modality="protein")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([
        "calibration.png", "cv_proteins.csv", "cv_proteins.png", "mean_variance.csv", "mean_variance.png",
        "metrics.json", "rootogram.png", "zero_fraction_proteins.csv", "zero_fraction_proteins.png",
    ])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["modality"] == "protein" and metrics["n_proteins"] == N_PROTEINS
    figure = pc.plots.plot_rootogram(out["ppc"], gene=trained.protein_names[0])
    assert trained.protein_names[0] in figure.axes[0].get_xlabel()
    with pytest.raises(KeyError, match="proteins"):
        pc.plots.plot_rootogram(out["ppc"], gene="CD3E_not_a_protein")
