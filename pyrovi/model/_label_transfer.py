"""Reference labels carried to query cells by a k-nearest-neighbour vote in a shared latent space."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from .._checks import check_bool, check_choice, check_int, check_number

UNKNOWN = "Unknown"
_PREDICTED, _UNCERTAINTY = "predicted_label", "uncertainty"


def transfer_labels(
    reference_latent: np.ndarray | pd.DataFrame,
    reference_labels: Sequence[Any] | np.ndarray | pd.Series | pd.Categorical,
    query_latent: np.ndarray | pd.DataFrame,
    n_neighbors: int = 15,
    weights: str = "distance",
    unknown_threshold: float | None = None,
    query_index: Sequence[Hashable] | pd.Index | None = None,
    return_probabilities: bool = False,
) -> pd.DataFrame:
    r"""Transfer reference labels to query cells by a k-nearest-neighbour vote in the latent space.

    The scArches recipe: embed the reference with the reference model
    (``reference_model.get_latent_representation()``), map the query with ``load_query_data``, train it
    briefly and embed it (``query_model.get_latent_representation()``); both then live in the same latent
    space, and each query cell takes the label its ``n_neighbors`` nearest (Euclidean) labelled reference
    cells vote for.

    Each query cell :math:`i` with neighbours :math:`N_k(i)` at distances :math:`d_{ij}` gives neighbour
    :math:`j` the weight :math:`w_{ij} = 1` (``weights="uniform"``) or :math:`w_{ij} = 1 / d_{ij}`
    (``weights="distance"``, inverse distance, as scikit-learn's ``KNeighborsClassifier``). A query cell at
    distance 0 from some reference cells takes their vote alone (:math:`w_{ij} = [d_{ij} = 0]`), so a query
    cell identical to a reference cell takes its label. The vote share of label :math:`c` is

    .. math::

        p_i(c) = \frac{\sum_{j \in N_k(i)} w_{ij} \, [y_j = c]}{\sum_{j \in N_k(i)} w_{ij}},

    the predicted label is :math:`\arg\max_c p_i(c)` (a tie goes to the first label in the reference's
    category order) and the uncertainty is :math:`1 - \max_c p_i(c)`: 0 when all neighbours agree, up to
    :math:`1 - 1/C` with :math:`C` labels voting evenly.

    Neighbours are found with a k-d tree (:class:`scipy.spatial.cKDTree`); memory grows with the number of
    query cells times ``n_neighbors``, never with query times reference cells.

    Parameters
    ----------
    reference_latent
        Latent representation of the reference cells, ``(n_reference, n_latent)``: an array or a DataFrame.
    reference_labels
        One label per reference cell, in the same order (an array, list, ``pd.Series`` or
        ``pd.Categorical``). Missing labels (NaN or None: unlabelled cells) are left out of the vote, with a
        warning that counts them. A categorical's categories, in their order, are the labels that can be
        predicted (unused ones get share 0); otherwise the sorted distinct labels are.
    query_latent
        Latent representation of the query cells, ``(n_query, n_latent)``, in the reference's latent space.
    n_neighbors
        Number of labelled reference cells voting for each query cell: at least 1 and at most the number of
        labelled reference cells.
    weights
        ``"distance"`` (inverse distance) or ``"uniform"`` (one vote per neighbour).
    unknown_threshold
        If given (in ``[0, 1]``), cells whose uncertainty exceeds it are labelled ``"Unknown"``, added as a
        category (kept as one category if the reference already has it).
    query_index
        Index of the result (e.g. ``query.obs_names``). By default the index of ``query_latent`` when it is a
        DataFrame, else ``0, ..., n_query - 1``.
    return_probabilities
        Add one column per reference label with its vote share (the columns sum to 1 for each cell).

    Returns
    -------
    pd.DataFrame
        One row per query cell: ``"predicted_label"`` (categorical, with the reference's categories),
        ``"uncertainty"`` and, with ``return_probabilities=True``, the vote share of each label.

    Raises
    ------
    ValueError
        Latents that are not 2-D or not finite, latent dimensions or lengths that differ, no labelled
        reference cell, ``n_neighbors`` out of range, a ``query_index`` of another length, or indexes of
        pandas inputs that disagree.

    Examples
    --------
    >>> from pyrovi.model import transfer_labels
    >>> reference = np.array([[0.0, 0.0], [0.2, 0.0], [0.0, 0.2], [5.0, 5.0], [5.2, 5.0], [5.0, 5.2]])
    >>> labels = ["B cell", "B cell", "B cell", "T cell", "T cell", "T cell"]
    >>> query = np.array([[0.1, 0.1], [5.1, 5.1], [2.6, 2.6]])
    >>> transfer_labels(reference, labels, query, n_neighbors=3, query_index=["q1", "q2", "q3"]).round(2)
       predicted_label  uncertainty
    q1          B cell         0.00
    q2          T cell         0.00
    q3          B cell         0.34

    The third cell, halfway between the clusters, is called ``"Unknown"`` when its uncertainty exceeds 0.3:

    >>> result = transfer_labels(reference, labels, query, n_neighbors=4, weights="uniform",
    ...                          unknown_threshold=0.3, return_probabilities=True)
    >>> result
      predicted_label  uncertainty  B cell  T cell
    0          B cell         0.25    0.75    0.25
    1          T cell         0.25    0.25    0.75
    2         Unknown         0.50    0.50    0.50
    >>> result["predicted_label"].cat.categories.tolist()
    ['B cell', 'T cell', 'Unknown']
    """
    check_int("n_neighbors", n_neighbors)
    check_choice("weights", weights, ["distance", "uniform"])
    check_number("unknown_threshold", unknown_threshold, 0.0, 1.0, allow_none=True)
    check_bool("return_probabilities", return_probabilities)

    reference = _latent("reference_latent", reference_latent)
    query = _latent("query_latent", query_latent)
    if reference.shape[1] != query.shape[1]:
        raise ValueError(
            f"reference_latent has {reference.shape[1]} latent dimensions and query_latent {query.shape[1]}: "
            "embed both with models of the same latent space (the query model from load_query_data)."
        )
    reference, query = _common_scale(reference, query)
    labels = _labels(reference_labels, reference_latent, len(reference))
    if len(labels) == 0:
        raise ValueError("reference_latent has no cells: nothing to transfer labels from.")
    index = _query_index(query_index, query_latent, len(query))
    categories = labels.categories
    if _PREDICTED in categories or _UNCERTAINTY in categories:
        raise ValueError(
            f"reference_labels has a label named {_PREDICTED!r} or {_UNCERTAINTY!r}, which are the result's "
            "column names: rename it."
        )

    labelled = labels.codes >= 0
    n_unlabelled = int((~labelled).sum())
    if n_unlabelled == len(labels):
        raise ValueError("reference_labels has no label (all are missing): nothing to transfer.")
    if n_unlabelled:
        warnings.warn(
            f"{n_unlabelled} of {len(labels)} reference cells have no label (NaN) and are left out of the vote.",
            UserWarning,
            stacklevel=2,
        )
    n_labelled = len(labels) - n_unlabelled
    if n_neighbors > n_labelled:
        raise ValueError(
            f"n_neighbors={n_neighbors} is more than the {n_labelled} labelled reference cells: "
            f"pass n_neighbors <= {n_labelled}."
        )

    shares = _vote_shares(reference[labelled], labels.codes[labelled], query, n_neighbors, weights, len(categories))
    winner, uncertainty = shares.argmax(axis=1), 1.0 - shares.max(axis=1)
    predicted = pd.Categorical.from_codes(winner, categories=categories)
    if unknown_threshold is not None:
        if UNKNOWN not in categories:
            predicted = predicted.add_categories([UNKNOWN])
        predicted[uncertainty > unknown_threshold] = UNKNOWN
    result = pd.DataFrame({_PREDICTED: predicted, _UNCERTAINTY: uncertainty}, index=index)
    if return_probabilities:
        result = pd.concat([result, pd.DataFrame(shares, index=index, columns=categories)], axis=1)
    return result


def _vote_shares(
    reference: np.ndarray, codes: np.ndarray, query: np.ndarray, k: int, weights: str, n_categories: int
) -> np.ndarray:
    """``(n_query, n_categories)`` weighted vote shares of each query cell's ``k`` nearest reference cells."""
    if len(query) == 0:
        return np.zeros((0, n_categories))
    distances, neighbours = cKDTree(reference).query(query, k=k)
    distances, neighbours = distances.reshape(len(query), k), neighbours.reshape(len(query), k)
    if weights == "uniform":
        w = np.ones_like(distances)
    else:
        # distances relative to the nearest keep 1/d finite (no overflow near 0); the shares are unchanged
        nearest = distances[:, :1]
        exact = nearest == 0
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(exact, (distances == 0).astype(float), nearest / distances)
    rows = np.repeat(np.arange(len(query)), k)
    votes = np.bincount(rows * n_categories + codes[neighbours].reshape(-1), w.reshape(-1),
                        minlength=len(query) * n_categories)  # fmt: skip
    votes = votes.reshape(len(query), n_categories)
    return votes / votes.sum(axis=1, keepdims=True)


def _common_scale(reference: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both latents divided by a common power of two when their squared distances could overflow to inf.

    Neighbours and the shares' weights (distances relative to the nearest) do not change with a common scale.
    """
    largest = max(float(np.abs(reference).max(initial=0.0)), float(np.abs(query).max(initial=0.0)))
    if largest < 1e100:
        return reference, query
    scale = 2.0 ** np.ceil(np.log2(largest))
    return reference / scale, query / scale


def _latent(name: str, value: Any) -> np.ndarray:
    array = np.asarray(value.to_numpy() if isinstance(value, pd.DataFrame) else value)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (cells, latent dimensions), got shape {array.shape}.")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}.")
    array = array.astype(np.float64, copy=False)
    if array.shape[1] == 0:
        raise ValueError(f"{name} has no latent dimension (shape {array.shape}).")
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{name} has {int(bad.sum())} cells with NaN or infinite values (first at row {int(bad.argmax())}): "
            "drop them or recompute the latent representation."
        )
    return array


def _labels(value: Any, reference_latent: Any, n_reference: int) -> pd.Categorical:
    if isinstance(value, pd.DataFrame):
        raise ValueError("reference_labels must be one label per cell (1-D), got a DataFrame: pass one column.")
    if isinstance(value, pd.Series) and isinstance(reference_latent, pd.DataFrame):
        if not value.index.equals(reference_latent.index):
            raise ValueError(
                "reference_labels' index differs from reference_latent's: align them first, e.g. "
                "reference_labels.loc[reference_latent.index]."
            )
    if isinstance(value, (pd.Series, pd.Categorical)):
        series = pd.Series(value)
    else:
        # a list keeps NaN and None as missing (numpy would turn ["a", nan] into the string "nan")
        array = value if isinstance(value, np.ndarray) else np.asarray(value, dtype=object)
        if array.ndim != 1:
            raise ValueError(f"reference_labels must be one label per cell (1-D), got shape {array.shape}.")
        series = pd.Series(array)
    if len(series) != n_reference:
        raise ValueError(
            f"reference_labels has {len(series)} labels but reference_latent has {n_reference} cells: "
            "pass one label per reference cell, in the same order."
        )
    return series.astype("category").array


def _query_index(query_index: Any, query_latent: Any, n_query: int) -> pd.Index:
    own = query_latent.index if isinstance(query_latent, pd.DataFrame) else None
    if query_index is None:
        return own if own is not None else pd.RangeIndex(n_query)
    index = pd.Index(query_index)
    if len(index) != n_query:
        raise ValueError(
            f"query_index has {len(index)} entries but query_latent has {n_query} cells: pass one name per "
            "query cell (e.g. query.obs_names)."
        )
    if own is not None and not index.equals(own):
        raise ValueError(
            "query_index differs from query_latent's own index: pass one of them (the DataFrame's index is "
            "used when query_index is None)."
        )
    return index
