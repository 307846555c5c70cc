"""Calibration of predicted label probabilities: reliability table, expected calibration error, summary.

These functions take any classifier's per-label probabilities (SCANVI's ``predict(soft=True)``,
CellAssign's ``predict()``, or a plain array) and the true labels. A classifier is calibrated when, among
the cells it predicts with confidence ``c``, a fraction ``c`` is predicted correctly. The cells are grouped
into bins of their confidence (the top predicted probability) and each bin's accuracy is compared with its
mean confidence (Guo et al. 2017, "On calibration of modern neural networks"):

``ECE = sum_b (n_b / n) |accuracy_b - confidence_b|``,  ``MCE = max_b |accuracy_b - confidence_b|``.

:func:`reliability_table` holds the per-bin numbers, and the ECE and MCE are computed from it, so the
plot (:func:`pyrovi.criticism.plots.plot_reliability`) and the numbers always agree.
"""

from __future__ import annotations

import warnings
from numbers import Integral
from typing import Any, Literal

import numpy as np
import pandas as pd

from .._checks import check_choice, check_int

#: how far a row of probabilities may sum from 1 (float32 probabilities of many labels stay well within it)
ROW_SUM_TOLERANCE = 1e-4

STRATEGIES = ("uniform", "quantile")

_COLUMNS = ["bin_lower", "bin_upper", "count", "confidence", "accuracy", "gap"]


def _check_binning(n_bins: Any, strategy: Any) -> None:
    check_int("n_bins", n_bins, minimum=1)
    check_choice("strategy", strategy, STRATEGIES)


def _probability_matrix(probabilities: Any) -> np.ndarray:
    """``probabilities`` as a float64 (n, K) matrix whose rows are probability vectors, divided by their sums."""
    if isinstance(probabilities, pd.DataFrame):
        if not probabilities.columns.is_unique:
            duplicated = list(probabilities.columns[probabilities.columns.duplicated()].unique())
            raise ValueError(
                f"probabilities has duplicated label columns {duplicated!r:.80}; each label needs one column."
            )
        numeric = [pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
                   for dtype in probabilities.dtypes]  # fmt: skip
        if not all(numeric):
            bad = [str(column) for column, ok in zip(probabilities.columns, numeric) if not ok]
            raise TypeError(f"probabilities must hold numbers; the columns {bad!r:.80} do not.")
        matrix = probabilities.to_numpy(dtype=np.float64)
    else:
        if hasattr(probabilities, "detach"):  # a torch tensor, possibly on a GPU
            probabilities = probabilities.detach().cpu().numpy()
        try:
            matrix = np.asarray(probabilities)
        except Exception as err:  # noqa: BLE001 - ragged lists and other non-arrays
            raise TypeError(f"probabilities must be an (n_cells, n_labels) array or DataFrame ({err}).") from None
        if matrix.dtype.kind not in "iuf":
            raise TypeError(
                "probabilities must be an (n_cells, n_labels) array of numbers or a DataFrame with one column per "
                f"label, got {type(probabilities).__name__} of dtype {matrix.dtype}."
            )
        matrix = matrix.astype(np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(
            f"probabilities must be an (n_cells, n_labels) matrix with at least one cell and one label, got shape "
            f"{matrix.shape}."
        )
    if not np.isfinite(matrix).all():
        row = int(np.flatnonzero(~np.isfinite(matrix).all(axis=1))[0])
        raise ValueError(f"probabilities holds NaN or infinite values (first in row {row}); pass finite probabilities.")
    if (matrix < 0).any():
        row = int(np.flatnonzero((matrix < 0).any(axis=1))[0])
        raise ValueError(
            f"probabilities holds negative values (first in row {row}: {matrix[row].min():.4g}); pass probabilities "
            "(e.g. predict(soft=True)), not logits or scores."
        )
    sums = matrix.sum(axis=1)
    off = np.abs(sums - 1.0) > ROW_SUM_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise ValueError(
            f"probabilities' rows must sum to 1 (within {ROW_SUM_TOLERANCE:g}); {int(off.sum())} do not, the first is "
            f"row {row} with sum {sums[row]:.6g}. Pass probabilities (e.g. predict(soft=True)), not logits or scores, "
            "or normalise each row by its sum."
        )
    return matrix / sums[:, None]


def _align(probabilities: Any, labels: Any) -> Any:
    """``labels`` in the order of ``probabilities``' cells when both are pandas objects with different indices."""
    if not (isinstance(probabilities, pd.DataFrame) and isinstance(labels, pd.Series)):
        return labels
    if labels.index.equals(probabilities.index):
        return labels
    if labels.index.is_unique and probabilities.index.isin(labels.index).all():
        return labels.loc[probabilities.index]  # e.g. adata.obs["cell_type"] with predictions for some cells
    if probabilities.index.equals(pd.RangeIndex(len(probabilities))) and len(labels) == len(probabilities):
        return labels.to_numpy()  # probabilities without cell names (scvi-tools' CellAssign.predict()): by position
    raise ValueError(
        "labels' index does not hold every cell of probabilities' index, so the labels cannot be matched to the "
        "cells; pass labels indexed by cell (e.g. adata.obs[labels_key]) or plain arrays in the same cell order "
        "(labels.to_numpy())."
    )


def _label_codes(labels: Any, columns: pd.Index | None, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's true label as a column index, -1 where it is missing; and the values that were missing."""
    if isinstance(labels, (str, bytes)) or np.ndim(labels) != 1:
        raise TypeError(f"labels must be a one-dimensional array or Series of labels, got {labels!r:.80}.")
    if hasattr(labels, "detach"):  # a torch tensor of codes
        labels = labels.detach().cpu().numpy()
    values = np.asarray(labels)  # a categorical Series gives its categories, NaN where missing
    if columns is not None:
        # names are matched against the columns; NaN/None and names without a column give -1
        codes = columns.get_indexer(pd.Index(values, dtype=object))
        return codes, values[codes < 0]
    if values.dtype.kind == "f":
        whole = np.isnan(values) | (np.mod(values, 1) == 0)
        if not whole.all():
            raise ValueError(f"integer label codes must be whole numbers, got {values[~whole][0]!r}.")
        codes = np.where(np.isnan(values), -1, values).astype(np.int64)
    elif values.dtype.kind in "iu":
        codes = values.astype(np.int64)
    else:
        raise TypeError(
            "with probabilities as an array, labels must be integer codes (the column of each cell's true label); "
            "to use label names pass probabilities as a DataFrame whose columns are the label names, e.g. "
            "pd.DataFrame(probabilities, columns=names)."
        )
    outside = (codes < 0) | (codes >= n_labels)
    return np.where(outside, -1, codes), values[outside]


def labelled_probabilities(probabilities: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """The checked probabilities and true-label codes of the cells that have a true label among the columns.

    Cells without one (NaN, or a label such as ``"Unknown"`` that the classifier does not predict) are left
    out with a warning that counts them. Shared by the calibration functions and the reliability plot.
    """
    matrix = _probability_matrix(probabilities)
    labels = _align(probabilities, labels)
    columns = probabilities.columns if isinstance(probabilities, pd.DataFrame) else None
    codes, missing = _label_codes(labels, columns, matrix.shape[1])
    if len(codes) != matrix.shape[0]:
        raise ValueError(
            f"probabilities has {matrix.shape[0]} cells (rows) but labels has {len(codes)}; pass one true label per "
            "cell, in the same order."
        )
    kept = codes >= 0
    if not kept.any():
        raise ValueError(
            f"none of the {len(codes)} cells has a true label among the probabilities' {matrix.shape[1]} labels "
            f"(labels such as {list(pd.unique(pd.Series(missing, dtype=object)))[:3]!r:.80}); check that the "
            "labels are the classifier's label names (or column codes for an array)."
        )
    if not kept.all():
        examples = list(pd.unique(pd.Series(missing, dtype=object)))[:3]
        warnings.warn(
            f"{int((~kept).sum())} of {len(codes)} cells have no true label among the probabilities' columns "
            f"(missing or not predicted, e.g. {examples!r:.80}) and are left out.",
            UserWarning,
            stacklevel=3,
        )
    return matrix[kept], codes[kept]


def _confidence_and_correct(matrix: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's top probability, and whether its top label is the true one.

    Exact ties among the top probabilities share the credit: a cell whose true label is one of ``m`` tied top
    labels counts ``1 / m`` correct, the accuracy of breaking the tie at random. So nothing depends on the
    order of the columns (an untrained classifier's uniform probabilities have accuracy ``1 / K``).
    """
    confidence = matrix.max(axis=1)
    top = matrix == confidence[:, None]
    correct = top[np.arange(len(codes)), codes] / top.sum(axis=1)
    return np.minimum(confidence, 1.0), correct.astype(np.float64)


def _table(confidence: np.ndarray, correct: np.ndarray, n_bins: int, strategy: str) -> pd.DataFrame:
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        edges = np.quantile(confidence, np.linspace(0.0, 1.0, n_bins + 1))
    # right-closed bins (lower, upper], the first one closed on both sides
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / count
    return pd.DataFrame(
        {"bin_lower": edges[:-1], "bin_upper": edges[1:], "count": count, "confidence": mean_confidence,
         "accuracy": accuracy, "gap": accuracy - mean_confidence},
        columns=_COLUMNS,
    )  # fmt: skip


def ece_from_table(table: pd.DataFrame) -> float:
    """The ECE of a :func:`reliability_table`: its bins' absolute gaps weighted by their cells."""
    filled = table[table["count"] > 0]
    return float((filled["count"] * filled["gap"].abs()).sum() / filled["count"].sum())


def _mce(table: pd.DataFrame) -> float:
    return float(table.loc[table["count"] > 0, "gap"].abs().max())


def reliability_table(
    probabilities: Any,
    labels: Any,
    n_bins: int = 15,
    strategy: Literal["uniform", "quantile"] = "uniform",
) -> pd.DataFrame:
    """Per-bin confidence and accuracy of predicted labels: the data of a reliability diagram.

    Each cell's confidence is its top predicted probability, and its prediction is correct when the top
    label is its true label. Cells are grouped into bins of confidence; a calibrated classifier has
    ``accuracy == confidence`` in every bin.

    Parameters
    ----------
    probabilities
        Per-label probabilities, one row per cell: a DataFrame with one column per label (as returned by
        SCANVI's ``predict(soft=True)`` or CellAssign's ``predict()``), or an ``(n_cells, n_labels)`` array.
        Rows must be non-negative and sum to 1 (within 1e-4).
    labels
        Each cell's true label: label names (matched to the DataFrame's columns; a Series indexed by cell is
        matched to the DataFrame's index, or by position when the DataFrame has no cell names, only a default
        RangeIndex), or integer column codes for an array. Cells whose label is
        missing (NaN, a code outside the columns) or is not one of the columns (e.g. ``"Unknown"``) are left
        out, with a warning that counts them.
    n_bins
        Number of bins.
    strategy
        ``"uniform"``: bins of equal width on [0, 1]; ``"quantile"``: bins holding equal numbers of cells
        (edges at quantiles of the confidence).

    Returns
    -------
    One row per bin: ``bin_lower``, ``bin_upper`` (bins are ``(lower, upper]``, the first one closed),
    ``count`` (cells), ``confidence`` (their mean confidence), ``accuracy`` (fraction predicted correctly)
    and ``gap`` (``accuracy - confidence``: negative when over-confident). Empty bins have NaN means.

    Notes
    -----
    When several labels tie for the top probability, a cell whose true label is among the ``m`` tied ones
    counts ``1 / m`` correct (the accuracy of breaking the tie at random), so the table does not depend on
    the order of the columns.

    Examples
    --------
    >>> probabilities = pd.DataFrame({"B": [0.9, 0.2, 0.6], "T": [0.1, 0.8, 0.4]})
    >>> reliability_table(probabilities, ["B", "T", "T"], n_bins=2)
       bin_lower  bin_upper  count  confidence  accuracy  gap
    0        0.0        0.5      0         NaN       NaN  NaN
    1        0.5        1.0      3    0.766667  0.666667 -0.1
    """
    _check_binning(n_bins, strategy)
    matrix, codes = labelled_probabilities(probabilities, labels)
    return _table(*_confidence_and_correct(matrix, codes), n_bins, strategy)


def expected_calibration_error(
    probabilities: Any,
    labels: Any,
    n_bins: int = 15,
    strategy: Literal["uniform", "quantile"] = "uniform",
) -> float:
    """Expected calibration error of predicted labels (top-label ECE, Guo et al. 2017).

    ``ECE = sum_b (n_b / n) |accuracy_b - confidence_b|`` over the bins of :func:`reliability_table`: the
    average distance, weighted by cells, between how sure the classifier is and how often it is right.
    0 is perfectly calibrated; the largest value is 1. Finite samples add a small positive bias (about
    ``sqrt(n_bins / n)`` in order of magnitude), so compare classifiers on the same cells and bins.

    Parameters
    ----------
    probabilities, labels, n_bins, strategy
        As in :func:`reliability_table`.

    Examples
    --------
    Three cells predicted with confidences 0.9, 0.9 and 0.6, two of them correctly: with bins [0, 0.5] and
    (0.5, 1] all fall in the second bin, whose accuracy is 2/3 and mean confidence 0.8, so the ECE is
    ``|2/3 - 0.8| = 0.1333``.

    >>> probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    >>> round(expected_calibration_error(probabilities, [0, 1, 1], n_bins=2), 4)
    0.1333
    """
    return ece_from_table(reliability_table(probabilities, labels, n_bins, strategy))


def calibration_summary(
    probabilities: Any,
    labels: Any,
    n_bins: int = 15,
    strategy: Literal["uniform", "quantile"] = "uniform",
) -> pd.Series:
    """Accuracy and calibration of predicted labels in one Series: ECE, MCE, Brier score and log-likelihood.

    - ``n_cells``: cells with a true label among the columns (the others are left out);
    - ``accuracy``: fraction whose top label is the true one; ``confidence``: mean top probability (above
      the accuracy when over-confident);
    - ``ece``: :func:`expected_calibration_error`; ``mce``: maximum calibration error, the largest
      ``|accuracy - confidence|`` of a non-empty bin;
    - ``brier``: mean over cells of ``sum_k (p_k - [k = true label])^2`` (0 best, 2 worst): accuracy and
      calibration of the whole probability vector;
    - ``nll``: mean negative log-probability of the true label (nats; infinite if a true label got
      probability 0).

    Parameters
    ----------
    probabilities, labels, n_bins, strategy
        As in :func:`reliability_table`.

    Examples
    --------
    >>> probabilities = pd.DataFrame({"B": [0.9, 0.2, 0.6], "T": [0.1, 0.8, 0.4]})
    >>> calibration_summary(probabilities, ["B", "T", "T"], n_bins=2).round(3)
    n_cells       3.000
    accuracy      0.667
    confidence    0.767
    ece           0.100
    mce           0.100
    brier         0.273
    nll           0.415
    dtype: float64

    Compare two classifiers on the same cells:

    >>> other = pd.DataFrame({"B": [0.7, 0.3, 0.5], "T": [0.3, 0.7, 0.5]})
    >>> table = pd.DataFrame({"sharp": calibration_summary(probabilities, ["B", "T", "T"]),
    ...                       "soft": calibration_summary(other, ["B", "T", "T"])}).T
    """
    _check_binning(n_bins, strategy)
    matrix, codes = labelled_probabilities(probabilities, labels)
    confidence, correct = _confidence_and_correct(matrix, codes)
    table = _table(confidence, correct, n_bins, strategy)
    rows = np.arange(len(codes))
    onehot = np.zeros_like(matrix)
    onehot[rows, codes] = 1.0
    with np.errstate(divide="ignore"):
        nll = float(-np.log(matrix[rows, codes]).mean())
    return pd.Series(
        {"n_cells": float(len(codes)), "accuracy": float(correct.mean()), "confidence": float(confidence.mean()),
         "ece": ece_from_table(table), "mce": _mce(table), "brier": float(((matrix - onehot) ** 2).sum(axis=1).mean()),
         "nll": nll},
        dtype=np.float64,
    )  # fmt: skip


__all__ = ["reliability_table", "expected_calibration_error", "calibration_summary"]
