"""Calibration of predicted label probabilities (issue 21, item 3): ECE, reliability table, summary, plot.

Statistical tests simulate a classifier whose accuracy at confidence ``c`` is known (``c`` when calibrated,
``c ** 2`` or ``0.8 c`` when over-confident), so the population ECE is known in closed form; the hand-computed
cases check the binning and arithmetic exactly.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest

import pyrovi.criticism as pc

K = 4
LOW = 1.0 / K  # the top probability of K labels is at least 1 / K


def _simulate(seed: int, accuracy, n: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities whose top label has confidence c ~ U(1/K, 1) and is the true label with probability accuracy(c)."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(LOW, 1.0, n)
    predicted = rng.integers(0, K, n)
    probabilities = np.repeat(((1.0 - confidence) / (K - 1))[:, None], K, axis=1)
    probabilities[np.arange(n), predicted] = confidence
    right = rng.uniform(size=n) < accuracy(confidence)
    other = (predicted + rng.integers(1, K, n)) % K  # one of the other labels, uniformly
    return probabilities, np.where(right, predicted, other)


# population ECE of c ~ U(a, 1) when the accuracy is c**2 or 0.8 c (the gap has one sign, so binning keeps it)
_MEAN_C = (1 + LOW) / 2
_MEAN_C2 = (1 + LOW + LOW**2) / 3


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_calibrated_predictions_have_a_small_ece(seed, strategy):
    probabilities, labels = _simulate(seed, lambda c: c)
    ece = pc.expected_calibration_error(probabilities, labels, strategy=strategy)
    assert 0 <= ece < 0.02  # sampling noise alone: about 0.009 with ~1800 cells per bin


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("accuracy", "expected"),
    [(lambda c: c**2, _MEAN_C - _MEAN_C2), (lambda c: 0.8 * c, 0.2 * _MEAN_C)],
    ids=["squared", "shrunk"],
)
def test_overconfident_predictions_give_the_known_ece(seed, accuracy, expected):
    probabilities, labels = _simulate(seed, accuracy)
    # the accuracy of 20 000 cells has a standard deviation near 0.0035: 0.012 is over 3 of them
    for strategy in ("uniform", "quantile"):
        ece = pc.expected_calibration_error(probabilities, labels, strategy=strategy)
        assert ece == pytest.approx(expected, abs=0.012)
    summary = pc.calibration_summary(probabilities, labels)
    assert summary["confidence"] - summary["accuracy"] == pytest.approx(expected, abs=0.012)


def test_quantile_bins_hold_equal_numbers_of_cells():
    probabilities, labels = _simulate(0, lambda c: c, n=3000)
    table = pc.reliability_table(probabilities, labels, n_bins=10, strategy="quantile")
    assert table["count"].sum() == 3000 and table["count"].max() - table["count"].min() <= 1
    assert (np.diff(table["bin_lower"]) > 0).all() and table["bin_upper"].iloc[-1] == probabilities.max()


# --- exact small cases ---------------------------------------------------------------------------------


def test_two_cells_in_separate_bins():
    # confidences 0.72 (right) and 0.84 (wrong), bins of width 0.1: ECE = (0.28 + 0.84) / 2, MCE = 0.84
    probabilities = np.array([[0.72, 0.28], [0.16, 0.84]])
    labels = [0, 0]
    table = pc.reliability_table(probabilities, labels, n_bins=10)
    assert list(table["count"]) == [0] * 7 + [1, 1, 0]
    assert table.loc[7, ["confidence", "accuracy", "gap"]].tolist() == pytest.approx([0.72, 1.0, 0.28])
    assert table.loc[8, ["confidence", "accuracy", "gap"]].tolist() == pytest.approx([0.84, 0.0, -0.84])
    assert table["bin_lower"].tolist() == pytest.approx(np.arange(10) / 10)
    assert pc.expected_calibration_error(probabilities, labels, n_bins=10) == pytest.approx(0.56)
    # one bin: accuracy 1/2 against confidence 0.78
    assert pc.expected_calibration_error(probabilities, labels, n_bins=1) == pytest.approx(0.28)
    summary = pc.calibration_summary(probabilities, labels, n_bins=10)
    assert summary["mce"] == pytest.approx(0.84) and summary["accuracy"] == 0.5
    assert summary["brier"] == pytest.approx((2 * 0.28**2 + 2 * 0.84**2) / 2)
    assert summary["nll"] == pytest.approx(-(np.log(0.72) + np.log(0.16)) / 2)


def test_four_cells_three_labels_two_bins():
    probabilities = pd.DataFrame(
        [[0.4, 0.35, 0.25], [0.1, 0.2, 0.7], [0.05, 0.9, 0.05], [0.3, 0.3, 0.4]], columns=["B", "NK", "T"]
    )
    labels = ["NK", "T", "NK", "B"]  # wrong, right, right, wrong
    table = pc.reliability_table(probabilities, labels, n_bins=2)
    # bin [0, 0.5]: confidences 0.4, 0.4, none right; bin (0.5, 1]: 0.7, 0.9, both right
    assert table["count"].tolist() == [2, 2]
    assert table["confidence"].tolist() == pytest.approx([0.4, 0.8])
    assert table["accuracy"].tolist() == [0.0, 1.0]
    assert pc.expected_calibration_error(probabilities, labels, n_bins=2) == pytest.approx(0.5 * 0.4 + 0.5 * 0.2)
    assert pc.calibration_summary(probabilities, labels, n_bins=2)["mce"] == pytest.approx(0.4)


def test_a_confidence_on_a_bin_edge_belongs_to_the_lower_bin():
    table = pc.reliability_table(np.array([[0.5, 0.5], [0.25, 0.75]]), [0, 1], n_bins=2)
    assert table["count"].tolist() == [1, 1]


def test_tied_top_labels_share_the_credit():
    uniform = np.full((3, 3), 1 / 3)
    # each cell's true label is one of three tied top labels: accuracy 1/3, exactly its confidence
    assert pc.expected_calibration_error(uniform, [0, 1, 2]) == pytest.approx(0.0, abs=1e-12)
    assert pc.calibration_summary(uniform, [0, 0, 0])["accuracy"] == pytest.approx(1 / 3)


def test_agrees_with_torchmetrics_on_continuous_confidences():
    torchmetrics = pytest.importorskip("torchmetrics")  # installed with lightning; bins differ only on edges
    import torch

    rng = np.random.default_rng(3)
    probabilities = rng.dirichlet(np.full(5, 0.5), size=2000)
    labels = rng.integers(0, 5, 2000)
    ours = pc.expected_calibration_error(probabilities, labels, n_bins=12)
    theirs = torchmetrics.functional.classification.multiclass_calibration_error(
        torch.tensor(probabilities, dtype=torch.float64), torch.tensor(labels), num_classes=5, n_bins=12
    )
    assert ours == pytest.approx(float(theirs), abs=1e-6)  # torchmetrics sums in float32


# --- inputs ----------------------------------------------------------------------------------------------


def test_column_order_and_cell_order_of_pandas_inputs_do_not_matter():
    probabilities, codes = _simulate(4, lambda c: c**2, n=500)
    names = np.array(["B", "NK", "T", "mono"])
    cells = [f"cell{i}" for i in range(500)]
    frame = pd.DataFrame(probabilities, columns=names, index=cells)
    labels = pd.Series(names[codes], index=cells)
    reference = pc.calibration_summary(frame, labels)
    shuffled = frame[["T", "mono", "B", "NK"]]
    pd.testing.assert_series_equal(pc.calibration_summary(shuffled, labels), reference)
    pd.testing.assert_series_equal(pc.calibration_summary(probabilities, codes), reference)
    # labels indexed by cell are matched to the probabilities' cells: a permuted or larger Series works
    permuted = labels.sample(frac=1.0, random_state=0)
    pd.testing.assert_series_equal(pc.calibration_summary(frame, permuted), reference)
    larger = pd.concat([labels, pd.Series(["B"], index=["other"])])
    subset = pc.calibration_summary(frame.iloc[:100], labels.iloc[:100])
    pd.testing.assert_series_equal(pc.calibration_summary(frame.iloc[:100], larger), subset)
    # probabilities without cell names (scvi-tools' CellAssign.predict()) are matched by position
    pd.testing.assert_series_equal(pc.calibration_summary(frame.reset_index(drop=True), labels), reference)


def test_categorical_labels_and_torch_inputs():
    import torch

    probabilities = pd.DataFrame({"B": [0.9, 0.3], "T": [0.1, 0.7]})
    labels = pd.Series(pd.Categorical(["B", "B"], categories=["B", "T", "Unknown"]))
    assert pc.expected_calibration_error(probabilities, labels, n_bins=1) == pytest.approx(0.3)
    tensor = torch.tensor([[0.9, 0.1], [0.3, 0.7]], dtype=torch.float32)
    assert pc.expected_calibration_error(tensor, torch.tensor([0, 0]), n_bins=1) == pytest.approx(0.3, abs=1e-6)


def test_cells_without_a_known_label_are_left_out_with_a_count():
    probabilities = pd.DataFrame({"B": [0.9, 0.2, 0.6, 0.5], "T": [0.1, 0.8, 0.4, 0.5]})
    kept = pc.calibration_summary(probabilities.iloc[:2], ["B", "B"])
    for labels in (["B", "B", np.nan, "Unknown"], pd.Series(["B", "B", None, "Unknown"], dtype="category")):
        with pytest.warns(UserWarning, match=r"2 of 4 cells have no true label .*left out"):
            summary = pc.calibration_summary(probabilities, labels)
        pd.testing.assert_series_equal(summary, kept)
    with pytest.warns(UserWarning, match="1 of 3 cells"):
        ece = pc.expected_calibration_error(np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]), [0, 0, 2], n_bins=1)
    assert ece == pytest.approx(abs(0.5 - 0.85))
    with pytest.warns(UserWarning, match="1 of 2 cells"):
        pc.reliability_table(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0.0, np.nan]))


@pytest.mark.parametrize(
    ("probabilities", "labels", "kwargs", "error", "match"),
    [
        (np.array([[0.6, 0.6]]), [0], {}, ValueError, r"rows must sum to 1 .*row 0 with sum 1\.2"),
        (np.array([[0.5, 0.5], [2.0, -1.0]]), [0, 0], {}, ValueError, "negative values .*row 1.*not logits"),
        (np.array([[np.nan, 1.0]]), [0], {}, ValueError, "NaN or infinite"),
        (np.array([[np.inf, 0.0]]), [0], {}, ValueError, "NaN or infinite"),
        (np.array([[0.5, 0.5]]), [0, 1], {}, ValueError, "1 cells .*labels has 2"),
        (np.array([0.5, 0.5]), [0], {}, ValueError, r"\(n_cells, n_labels\) matrix"),
        (np.zeros((0, 2)), [], {}, ValueError, "at least one cell"),
        (np.array([["a", "b"]]), [0], {}, TypeError, "array of numbers"),
        (np.array([[0.5, 0.5]]), ["B"], {}, TypeError, "DataFrame whose columns are the label names"),
        (np.array([[0.5, 0.5]]), [0.5], {}, ValueError, "whole numbers"),
        (np.array([[0.5, 0.5]]), "B", {}, TypeError, "one-dimensional"),
        (np.array([[0.5, 0.5]]), [3], {}, ValueError, "none of the 1 cells"),
        (pd.DataFrame({"B": [0.5], "T": ["x"]}), ["B"], {}, TypeError, r"columns \['T'\]"),
        (pd.DataFrame([[0.5, 0.5]], columns=["B", "B"]), ["B"], {}, ValueError, "duplicated label columns"),
        (pd.DataFrame({"B": [0.5], "T": [0.5]}, index=["c1"]), pd.Series(["B"], index=["c2"]), {}, ValueError,
         "labels' index does not hold every cell"),
        (np.array([[0.5, 0.5]]), [0], {"n_bins": 0}, ValueError, "n_bins must be an integer >= 1"),
        (np.array([[0.5, 0.5]]), [0], {"n_bins": 2.0}, ValueError, "n_bins"),
        (np.array([[0.5, 0.5]]), [0], {"n_bins": True}, ValueError, "n_bins"),
        (np.array([[0.5, 0.5]]), [0], {"strategy": "equal"}, ValueError, "strategy must be one of"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("function", ["reliability_table", "expected_calibration_error", "calibration_summary"])
def test_bad_input_gets_a_clear_error(function, probabilities, labels, kwargs, error, match):
    with pytest.raises(error, match=match):
        getattr(pc, function)(probabilities, labels, **kwargs)


def test_rows_within_the_tolerance_are_accepted():
    probabilities = np.array([[0.7, 0.30005], [0.2, 0.79995]], dtype=np.float32)
    assert pc.expected_calibration_error(probabilities, [0, 1], n_bins=1) == pytest.approx(0.25, abs=1e-4)


# --- the plot -------------------------------------------------------------------------------------------

needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="pyrovi[plot]")


@pytest.fixture
def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.close("all")
    yield plt
    plt.close("all")


@needs_matplotlib
def test_reliability_plot_draws_bins_diagonal_and_histogram(plt, tmp_path):
    probabilities, labels = _simulate(0, lambda c: c**2, n=2000)
    figure = pc.plots.plot_reliability(probabilities, labels, n_bins=10, label="A")
    assert plt.get_fignums() == [figure.number] and plt.gcf() is figure
    (ax,) = figure.axes
    series, diagonal = ax.lines
    table = pc.reliability_table(probabilities, labels, n_bins=10)
    filled = table[table["count"] > 0]
    np.testing.assert_allclose(series.get_xdata(), filled["confidence"])
    np.testing.assert_allclose(series.get_ydata(), filled["accuracy"])
    ece = pc.expected_calibration_error(probabilities, labels, n_bins=10)
    assert series.get_label() == f"A (ECE = {ece:.3f})"
    assert diagonal.get_label() == "perfectly calibrated"
    (histogram,) = ax.patches
    np.testing.assert_allclose(histogram.get_data().values, 0.25 * table["count"] / 2000)
    assert [text.get_text() for text in ax.get_legend().get_texts()] == [series.get_label(), "perfectly calibrated"]
    assert ax.get_xlim() == (0, 1) and ax.get_ylim() == (0, 1)
    figure.savefig(tmp_path / "reliability.png")


@needs_matplotlib
def test_reliability_plot_overlays_two_series_on_one_axes(plt):
    probabilities, labels = _simulate(1, lambda c: c, n=2000)
    sharpened = probabilities**4 / (probabilities**4).sum(axis=1, keepdims=True)
    figure, axes = plt.subplots(1, 2)
    assert pc.plots.plot_reliability(probabilities, labels, ax=axes[1], label="pyrovi") is figure
    assert pc.plots.plot_reliability(sharpened, labels, ax=axes[1], label="scvi-tools") is figure
    assert plt.get_fignums() == [figure.number] and not axes[0].has_data()
    lines = axes[1].lines
    assert len(lines) == 3 and sum(line.get_label() == "perfectly calibrated" for line in lines) == 1  # one diagonal
    first, second = (line for line in lines if line.get_label() != "perfectly calibrated")
    assert first.get_label().startswith("pyrovi (ECE = ") and second.get_label().startswith("scvi-tools (ECE = ")
    assert first.get_color() != second.get_color() and len(axes[1].patches) == 2
    assert len(axes[1].get_legend().get_texts()) == 3


@needs_matplotlib
def test_reliability_plot_checks_its_input_before_drawing(plt):
    with pytest.raises(ValueError, match="rows must sum to 1"):
        pc.plots.plot_reliability(np.array([[0.2, 0.2]]), [0])
    assert plt.get_fignums() == []
