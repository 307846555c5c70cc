"""k-nearest-neighbour metrics for embeddings, used by the training tests."""

import numpy as np
from scipy.spatial import cKDTree


def _neighbours(x: np.ndarray, k: int) -> np.ndarray:
    _, idx = cKDTree(x).query(x, k=k + 1)
    return idx[:, 1:]  # drop the point itself


def knn_accuracy(x: np.ndarray, labels: np.ndarray, k: int = 15) -> float:
    """Leave-one-out majority-vote accuracy of ``labels`` among each point's ``k`` neighbours."""
    labels = np.asarray(labels)
    codes, inverse = np.unique(labels, return_inverse=True)
    votes = inverse[_neighbours(x, k)]
    predicted = np.array([np.bincount(row, minlength=len(codes)).argmax() for row in votes])
    return float((predicted == inverse).mean())


def same_batch_fraction(x: np.ndarray, batches: np.ndarray, k: int = 15) -> float:
    """Mean fraction of a point's ``k`` neighbours from its own batch (1/n_batch when perfectly mixed)."""
    batches = np.asarray(batches)
    return float((batches[_neighbours(x, k)] == batches[:, None]).mean())


def pca(x: np.ndarray, n_components: int) -> np.ndarray:
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:n_components].T
