"""``pyrovi.model.transfer_labels``: kNN label transfer from reference to query latents (issue 20, item 4)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from pyrovi.model import transfer_labels

# --------------------------------------------------------------------------------------------------
# statistical behaviour (fixed seeds, stated tolerances)


def _clusters(n_per_cluster: int, seed: int, n_clusters: int = 4, n_latent: int = 10, spread: float = 4.0):
    """Gaussian clusters of unit variance whose centres lie ``spread`` apart on the coordinate axes."""
    rng = np.random.default_rng(seed)
    centres = spread * np.eye(n_clusters, n_latent)
    labels = np.repeat([f"type {c}" for c in range(n_clusters)], n_per_cluster)
    points = np.repeat(centres, n_per_cluster, axis=0) + rng.normal(size=(n_clusters * n_per_cluster, n_latent))
    return centres, points, labels


@pytest.mark.parametrize("weights", ["distance", "uniform"])
def test_held_out_points_of_gaussian_clusters_get_their_cluster_label(weights):
    # centres 5.7 sd apart: the Bayes classifier errs on under 1% of points, and 15-NN with 100 points per
    # cluster scores 0.995 on these seeds (1.0 on others); 0.95 leaves room for other random draws
    _, reference, reference_labels = _clusters(100, seed=0)
    _, query, query_labels = _clusters(50, seed=1)
    result = transfer_labels(reference, reference_labels, query, weights=weights)
    accuracy = (result["predicted_label"].to_numpy() == query_labels).mean()
    assert accuracy >= 0.95


def test_uncertainty_is_higher_between_clusters_than_at_their_centres():
    centres, reference, labels = _clusters(100, seed=2)
    midpoints = np.array([(centres[a] + centres[b]) / 2 for a in range(4) for b in range(a + 1, 4)])
    at_centres = transfer_labels(reference, labels, centres)["uncertainty"]
    between = transfer_labels(reference, labels, midpoints)["uncertainty"]
    # at a centre the 15 nearest of 100 points are its own; a midpoint is equidistant from two clusters
    assert at_centres.max() < 0.05
    assert between.mean() > 0.25
    assert between.min() > at_centres.max()


def test_vote_shares_agree_with_scikit_learn():
    neighbors = pytest.importorskip("sklearn.neighbors")
    _, reference, labels = _clusters(30, seed=3, spread=1.5)
    query = np.random.default_rng(4).normal(size=(40, 10))
    for weights in ("distance", "uniform"):
        ours = transfer_labels(reference, labels, query, n_neighbors=7, weights=weights, return_probabilities=True)
        knn = neighbors.KNeighborsClassifier(n_neighbors=7, weights=weights).fit(reference, labels)
        np.testing.assert_allclose(ours[list(knn.classes_)].to_numpy(), knn.predict_proba(query), atol=1e-12)
        assert (ours["predicted_label"].to_numpy() == knn.predict(query)).all()


# --------------------------------------------------------------------------------------------------
# exact small cases


def test_one_neighbour_gives_the_nearest_reference_cells_label():
    rng = np.random.default_rng(5)
    reference, query = rng.normal(size=(60, 3)), rng.normal(size=(25, 3))
    labels = rng.choice(["a", "b", "c"], size=60)
    nearest = ((query[:, None, :] - reference[None, :, :]) ** 2).sum(-1).argmin(1)
    result = transfer_labels(reference, labels, query, n_neighbors=1)
    assert (result["predicted_label"].to_numpy() == labels[nearest]).all()
    assert (result["uncertainty"] == 0).all()


def test_uniform_weights_count_the_votes():
    reference = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    labels = ["x", "y", "y", "z", "z"]
    result = transfer_labels(reference, labels, np.array([[0.0]]), n_neighbors=3, weights="uniform",
                             return_probabilities=True)  # fmt: skip
    # neighbours of 0: 0 (x), 1 (y), 2 (y)
    assert result.loc[0, "predicted_label"] == "y"
    assert result.loc[0, "uncertainty"] == pytest.approx(1 / 3)
    assert result.loc[0, ["x", "y", "z"]].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])


def test_distance_weights_are_inverse_distances():
    reference = np.array([[1.0], [3.0], [4.0]])
    labels = ["near", "far", "far"]
    result = transfer_labels(reference, labels, np.array([[0.0]]), n_neighbors=3, return_probabilities=True)
    # weights 1/1, 1/3, 1/4: "near" has 1 / (1 + 1/3 + 1/4) = 12/19 of the vote, outvoting two "far" cells
    assert result.loc[0, "far"] == pytest.approx(7 / 19) and result.loc[0, "near"] == pytest.approx(12 / 19)
    assert result.loc[0, "predicted_label"] == "near"
    assert result.loc[0, "uncertainty"] == pytest.approx(7 / 19)


def test_a_query_cell_identical_to_a_reference_cell_takes_its_label():
    reference = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.1, 0.1]])
    labels = ["rare", "common", "common", "common"]
    result = transfer_labels(reference, labels, np.array([[0.0, 0.0]]), n_neighbors=4)
    assert result.loc[0, "predicted_label"] == "rare" and result.loc[0, "uncertainty"] == 0.0
    # two identical reference cells with different labels share the vote
    tied = transfer_labels(np.array([[0.0], [0.0], [1.0]]), ["a", "b", "b"], np.array([[0.0]]), n_neighbors=3)
    assert tied.loc[0, "uncertainty"] == pytest.approx(0.5)


def test_tiny_distances_give_finite_shares():
    reference = np.array([[5e-324], [1e-320], [1.0]])
    result = transfer_labels(reference, ["a", "b", "b"], np.array([[0.0]]), n_neighbors=3, return_probabilities=True)
    assert np.isfinite(result[["uncertainty", "a", "b"]].to_numpy()).all()
    assert result.loc[0, ["a", "b"]].sum() == pytest.approx(1.0)


def test_a_tie_goes_to_the_first_category():
    result = transfer_labels(np.array([[-1.0], [1.0]]), pd.Categorical(["b", "a"], categories=["b", "a"]),
                             np.array([[0.0]]), n_neighbors=2)  # fmt: skip
    assert result.loc[0, "predicted_label"] == "b" and result.loc[0, "uncertainty"] == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------------
# labels, categories, index and result columns


def test_the_prediction_keeps_the_references_categories_in_their_order():
    labels = pd.Categorical(["t", "b", "t"], categories=["t", "nk", "b"])
    result = transfer_labels(np.array([[0.0], [1.0], [2.0]]), labels, np.array([[0.9], [2.1]]), n_neighbors=1,
                             return_probabilities=True)  # fmt: skip
    assert result["predicted_label"].cat.categories.tolist() == ["t", "nk", "b"]
    assert result.columns.tolist() == ["predicted_label", "uncertainty", "t", "nk", "b"]
    assert (result["nk"] == 0).all()
    np.testing.assert_allclose(result[["t", "nk", "b"]].sum(axis=1), 1.0)


def test_integer_labels_and_a_labelled_series():
    result = transfer_labels(np.array([[0.0], [5.0]]), pd.Series([3, 7], index=["c1", "c2"]), np.array([[4.0]]),
                             n_neighbors=1)  # fmt: skip
    assert result.loc[0, "predicted_label"] == 7
    assert result["predicted_label"].cat.categories.tolist() == [3, 7]


def test_missing_reference_labels_are_left_out_with_a_count():
    reference = np.array([[0.0], [0.1], [5.0], [5.1]])
    labels = pd.Series(["a", None, np.nan, "b"])
    with pytest.warns(UserWarning, match="2 of 4 reference cells have no label"):
        result = transfer_labels(reference, labels, np.array([[0.05], [5.05]]), n_neighbors=1)
    assert result["predicted_label"].tolist() == ["a", "b"]
    assert result["predicted_label"].cat.categories.tolist() == ["a", "b"]
    with pytest.warns(UserWarning, match="1 of 4 reference cells have no label"):
        from_list = transfer_labels(reference, ["a", "a", np.nan, "b"], np.array([[5.0]]), n_neighbors=1)
    assert from_list["predicted_label"].cat.categories.tolist() == ["a", "b"]


def test_the_query_dataframes_index_is_kept():
    query = pd.DataFrame([[0.0, 0.0], [5.0, 5.0]], index=pd.Index(["AAAC-1", "TTTG-1"], name="obs_names"))
    reference = pd.DataFrame([[0.0, 0.1], [5.0, 5.1]], index=["r1", "r2"])
    labels = pd.Series(["B", "T"], index=["r1", "r2"])
    result = transfer_labels(reference, labels, query, n_neighbors=1)
    assert result.index.equals(query.index)
    assert result["predicted_label"].tolist() == ["B", "T"]
    assert transfer_labels(reference, labels, query, n_neighbors=1, query_index=query.index).index.equals(query.index)


def test_query_index_names_the_rows_of_an_array_query():
    result = transfer_labels(np.zeros((2, 2)), ["a", "a"], np.ones((3, 2)), n_neighbors=2,
                             query_index=["x", "y", "z"])  # fmt: skip
    assert result.index.tolist() == ["x", "y", "z"]
    assert transfer_labels(np.zeros((2, 2)), ["a", "a"], np.ones((3, 2)), n_neighbors=2).index.equals(
        pd.RangeIndex(3)
    )


def test_an_empty_query_gives_an_empty_result_with_the_columns():
    result = transfer_labels(np.zeros((2, 2)), ["a", "b"], np.zeros((0, 2)), n_neighbors=1, unknown_threshold=0.5,
                             return_probabilities=True)  # fmt: skip
    assert len(result) == 0
    assert result.columns.tolist() == ["predicted_label", "uncertainty", "a", "b"]
    assert result["predicted_label"].cat.categories.tolist() == ["a", "b", "Unknown"]


# --------------------------------------------------------------------------------------------------
# the "Unknown" threshold


def test_cells_more_uncertain_than_the_threshold_are_unknown():
    reference = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]])
    labels = ["a", "a", "a", "b", "b", "b"]
    query = np.array([[0.1], [10.1], [5.1]])  # the last one is nearer the "b" cells but splits its 4 votes
    result = transfer_labels(reference, labels, query, n_neighbors=4, weights="uniform", unknown_threshold=0.3)
    assert result["uncertainty"].tolist() == pytest.approx([0.25, 0.25, 0.5])
    assert result["predicted_label"].tolist() == ["a", "b", "Unknown"]
    assert result["predicted_label"].cat.categories.tolist() == ["a", "b", "Unknown"]
    # the threshold is strict: uncertainty equal to it keeps the label
    kept = transfer_labels(reference, labels, query, n_neighbors=4, weights="uniform", unknown_threshold=0.5)
    assert "Unknown" not in kept["predicted_label"].tolist()
    assert "Unknown" in kept["predicted_label"].cat.categories
    # without a threshold there is no "Unknown" category
    plain = transfer_labels(reference, labels, query, n_neighbors=4, weights="uniform")
    assert plain["predicted_label"].cat.categories.tolist() == ["a", "b"]


def test_a_reference_unknown_category_stays_one_category():
    result = transfer_labels(np.array([[0.0], [1.0]]), ["Unknown", "a"], np.array([[0.0], [0.5]]), n_neighbors=2,
                             weights="uniform", unknown_threshold=0.4)  # fmt: skip
    assert result["predicted_label"].cat.categories.tolist() == ["Unknown", "a"]
    assert result["predicted_label"].tolist() == ["Unknown", "Unknown"]


# --------------------------------------------------------------------------------------------------
# memory: neighbours only, never a query x reference matrix


def test_memory_grows_with_neighbours_not_with_query_times_reference():
    rng = np.random.default_rng(6)
    reference, query = rng.normal(size=(20_000, 3)), rng.normal(size=(2_000, 3))
    labels = rng.choice(["a", "b"], size=20_000)
    tracemalloc.start()
    try:
        transfer_labels(reference, labels, query)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a dense distance matrix would take 2000 * 20000 * 8 bytes = 320 MB
    assert peak < 20e6


# --------------------------------------------------------------------------------------------------
# errors


REFERENCE, LABELS, QUERY = np.zeros((3, 2)), ["a", "b", "a"], np.zeros((2, 2))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"reference_labels": ["a", "b"]}, ValueError, "reference_labels has 2 labels but reference_latent has 3"),
        ({"reference_labels": np.array([["a"], ["b"], ["a"]])}, ValueError, "reference_labels must be one label"),
        ({"reference_labels": pd.DataFrame({"l": LABELS})}, ValueError, "reference_labels must be one label"),
        ({"reference_labels": [None, np.nan, None]}, ValueError, "reference_labels has no label"),
        ({"reference_latent": np.array([[0.0, np.nan], [0, 0], [0, 0]])}, ValueError,
         "reference_latent has 1 cells with NaN or infinite values"),
        ({"query_latent": np.array([[0.0, np.inf], [0, 0]])}, ValueError, "query_latent has 1 cells with NaN"),
        ({"query_latent": np.zeros((2, 3))}, ValueError,
         "reference_latent has 2 latent dimensions and query_latent 3"),
        ({"query_latent": np.zeros(2)}, ValueError, "query_latent must be a 2-D array"),
        ({"reference_latent": np.zeros((3, 0))}, ValueError, "reference_latent has no latent dimension"),
        ({"query_latent": np.array([["a", "b"]])}, ValueError, "query_latent must hold real numbers"),
        ({"n_neighbors": 0}, ValueError, "n_neighbors must be an integer >= 1, got 0"),
        ({"n_neighbors": 2.0}, ValueError, "n_neighbors must be an integer"),
        ({"n_neighbors": 4}, ValueError, "n_neighbors=4 is more than the 3 labelled reference cells"),
        ({"n_neighbors": 3, "reference_labels": ["a", None, "b"]}, ValueError,
         "n_neighbors=3 is more than the 2 labelled reference cells"),
        ({"weights": "gaussian"}, ValueError, "weights must be one of"),
        ({"unknown_threshold": 1.5}, ValueError, "unknown_threshold must be a finite number in"),
        ({"unknown_threshold": np.nan}, ValueError, "unknown_threshold must be a finite number in"),
        ({"return_probabilities": "yes"}, TypeError, "return_probabilities must be True or False"),
        ({"query_index": ["x"]}, ValueError, "query_index has 1 entries but query_latent has 2 cells"),
        ({"reference_labels": ["a", "uncertainty", "a"]}, ValueError, "label named"),
    ],
)
@pytest.mark.filterwarnings("ignore:.*reference cells have no label:UserWarning")
def test_bad_input_is_refused_with_a_message_naming_it(kwargs, error, match):
    arguments = {"reference_latent": REFERENCE, "reference_labels": LABELS, "query_latent": QUERY, "n_neighbors": 1}
    with pytest.raises(error, match=match):
        transfer_labels(**{**arguments, **kwargs})


def test_pandas_indexes_that_disagree_are_refused():
    query = pd.DataFrame(QUERY, index=["q1", "q2"])
    with pytest.raises(ValueError, match="query_index differs from query_latent's own index"):
        transfer_labels(REFERENCE, LABELS, query, n_neighbors=1, query_index=["q2", "q1"])
    reference = pd.DataFrame(REFERENCE, index=["r1", "r2", "r3"])
    with pytest.raises(ValueError, match=r"reference_labels' index differs .*\.loc\[reference_latent\.index\]"):
        transfer_labels(reference, pd.Series(LABELS, index=["r3", "r2", "r1"]), QUERY, n_neighbors=1)
