"""The empirical prior of a latent library size, shared by the models with a latent library."""

from __future__ import annotations

import numpy as np

from .._constants import REGISTRY_KEYS


def library_log_prior(manager) -> tuple[np.ndarray, np.ndarray]:
    """Per-batch mean and variance of log library sizes: the prior of a latent library."""
    arrays = manager.get_arrays()
    x, batch = arrays[REGISTRY_KEYS.X_KEY], arrays[REGISTRY_KEYS.BATCH_KEY]
    totals = np.asarray(x.sum(axis=1)).reshape(-1)
    n_batch = manager.summary_stats["n_batch"]
    means, variances = np.zeros(n_batch, np.float32), np.ones(n_batch, np.float32)
    for b in range(n_batch):
        log_totals = np.log(totals[(batch == b) & (totals > 0)])
        if log_totals.size:
            means[b] = log_totals.mean()
            variances[b] = max(log_totals.var(), 1e-4) if log_totals.size > 1 else 1.0
    return means, variances
