"""Empirical initial values of totalVI's protein background prior, from two-component Gaussian mixtures.

totalVI models a protein's log background count in batch ``b`` as ``N(c[b, t], d[b, t]**2)`` with ``c`` and
``d`` learnable. Started from zero, the model can confuse background and foreground; started from the lower
mode of the data's log counts, it begins with the background where the data put it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: Smallest standard deviation of a mixture component: log1p of integer counts is discrete, and without a
#: floor a component can collapse onto a single value (e.g. all the zeros), its likelihood going to infinity.
_SD_FLOOR = 0.05
#: Batches with fewer cells than this give too noisy a fit; they borrow the other batches' values.
_MIN_CELLS = 10


def _as_dense(counts) -> np.ndarray:
    if sp.issparse(counts):
        counts = counts.toarray()
    return np.asarray(counts, dtype=np.float64)


def _check_batches(batch_codes, n_cells: int, n_batch: int) -> np.ndarray:
    codes = np.asarray(batch_codes).ravel()
    if codes.shape[0] != n_cells:
        raise ValueError(f"batch_codes has {codes.shape[0]} entries for {n_cells} cells.")
    if not np.issubdtype(codes.dtype, np.integer):
        if not np.array_equal(codes, np.round(codes)):
            raise ValueError("batch_codes must be integer codes.")
        codes = codes.astype(np.int64)
    if codes.size and (codes.min() < 0 or codes.max() >= n_batch):
        raise ValueError(f"batch_codes must lie in [0, {n_batch}).")
    return codes


def protein_batch_mask(protein_counts, batch_codes, n_batch: int) -> np.ndarray:
    """Which proteins were measured in which batch: True where a protein has any non-zero count there.

    A protein that is zero in every cell of a batch is taken as missing from that batch's panel (its zeros
    are not measurements), so totalVI drops its likelihood terms there.

    Parameters
    ----------
    protein_counts
        ``(n_cells, n_proteins)`` counts: array, sparse matrix or DataFrame.
    batch_codes
        ``(n_cells,)`` integer batch codes in ``[0, n_batch)``.
    n_batch
        Number of batches (rows of the result; a batch without cells gets a row of False).

    Returns
    -------
    Bool array of shape ``(n_batch, n_proteins)``.

    Examples
    --------
    >>> import numpy as np
    >>> counts = np.array([[0, 3], [0, 1], [2, 0], [5, 0]])
    >>> protein_batch_mask(counts, np.array([0, 0, 1, 1]), n_batch=2)
    array([[False,  True],
           [ True, False]])
    """
    counts = protein_counts if sp.issparse(protein_counts) else np.asarray(protein_counts)
    nonzero = sp.csr_matrix(counts != 0)
    codes = _check_batches(batch_codes, nonzero.shape[0], n_batch)
    # a batch-indicator matrix times the non-zero pattern counts each protein's non-zero cells per batch
    indicator = sp.csr_matrix((np.ones(codes.size), (codes, np.arange(codes.size))), shape=(n_batch, codes.size))
    return np.asarray((indicator @ nonzero.astype(np.float64)).toarray() > 0)


def _fit_two_gaussians(
    x: np.ndarray, weights: np.ndarray | None = None, n_iter: int = 100, sd_floor: float = _SD_FLOOR
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit a two-component 1-D Gaussian mixture to every column of ``x`` at once by EM.

    Parameters
    ----------
    x
        ``(n_obs, n_series)``: each column is a separate 1-D sample.
    weights
        Optional ``(n_obs, n_series)`` non-negative observation weights (0 leaves an observation out of that
        column's fit). A column whose weights are all zero is fit with unit weights.
    n_iter
        Maximum number of EM iterations; stops early once no mean moves by more than 1e-6.
    sd_floor
        Lower bound on the component standard deviations, applied at every M step.

    Returns
    -------
    ``(mixing weights, means, sds)``, each ``(n_series, 2)``, components sorted by increasing mean.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(1, 1, 700), rng.normal(5, 0.5, 300)])[:, None]
    >>> pi, mu, sd = _fit_two_gaussians(x)
    >>> np.round(mu, 1)
    array([[1. , 4.9]])
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64).reshape(x.shape)
    w = np.where(w.sum(axis=0, keepdims=True) > 0, w, 1.0)
    total = w.sum(axis=0)

    # Start at mean -+ sd: deterministic, and distinct whenever the column varies (a symmetric start, both
    # means equal, would stay symmetric under EM forever); the floor separates them for constant columns.
    centre = (w * x).sum(axis=0) / total
    spread = np.sqrt((w * (x - centre) ** 2).sum(axis=0) / total)
    spread = np.maximum(spread, sd_floor)
    means = np.stack([centre - spread, centre + spread], axis=-1)
    sds = np.stack([spread, spread], axis=-1)
    mix = np.full_like(means, 0.5)

    for _ in range(n_iter):
        # E step in log space: responsibilities r[n, t, k] of component k for observation n of column t
        # (the -log(sqrt(2 pi)) constant cancels in the normalisation).
        log_p = np.log(mix) - np.log(sds) - 0.5 * ((x[..., None] - means) / sds) ** 2
        log_p -= log_p.max(axis=-1, keepdims=True)
        r = np.exp(log_p)
        r /= r.sum(axis=-1, keepdims=True)
        r *= w[..., None]
        # M step; a tiny pseudo-count keeps an emptied component finite rather than NaN.
        n_k = r.sum(axis=0) + 1e-10
        new_means = (r * x[..., None]).sum(axis=0) / n_k
        variances = (r * (x[..., None] - new_means) ** 2).sum(axis=0) / n_k
        sds = np.sqrt(np.maximum(variances, sd_floor**2))
        mix = np.maximum(n_k / n_k.sum(axis=-1, keepdims=True), 1e-10)
        converged = np.abs(new_means - means).max(initial=0.0) < 1e-6
        means = new_means
        if converged:
            break

    order = np.argsort(means, axis=-1)
    return tuple(np.take_along_axis(a, order, axis=-1) for a in (mix, means, sds))


def protein_background_prior(
    protein_counts,
    batch_codes,
    n_batch: int,
    protein_mask: np.ndarray | None = None,
    n_iter: int = 100,
    *,
    min_cells: int = _MIN_CELLS,
    sd_floor: float = _SD_FLOOR,
) -> tuple[np.ndarray, np.ndarray]:
    """Initial location and scale of totalVI's protein background prior, per batch and protein.

    For every batch ``b`` and protein ``t``, a two-component Gaussian mixture is fit by EM to
    ``log(y + 1)`` of the batch's cells (all proteins of a batch at once); the component with the lower
    mean is the background: its mean and standard deviation (at least ``sd_floor``) are returned.

    Entries that cannot be fit borrow from elsewhere:

    - a protein missing from a batch (``protein_mask[b, t]`` False: all zero there), or any protein of a batch
      with fewer than ``min_cells`` cells, gets the average of that protein's mean and sd over the batches
      where it was fit;
    - a protein fit in no batch gets one pooled fit over all cells of the batches where it was measured (over
      all cells if it was measured nowhere).

    Parameters
    ----------
    protein_counts
        ``(n_cells, n_proteins)`` raw protein counts: array, sparse matrix or DataFrame.
    batch_codes
        ``(n_cells,)`` integer batch codes in ``[0, n_batch)``.
    n_batch
        Number of batches.
    protein_mask
        ``(n_batch, n_proteins)`` bool, False where a protein is missing from a batch; by default
        :func:`protein_batch_mask` of the counts.
    n_iter
        Maximum number of EM iterations.
    min_cells
        Batches with fewer cells borrow their values from the other batches.
    sd_floor
        Lower bound on the returned scales (and on the mixture's sds during EM).

    Returns
    -------
    ``(mean, scale)``: float32 arrays of shape ``(n_batch, n_proteins)``, on the log scale.

    Notes
    -----
    scvi-tools (``_get_totalvi_protein_priors``) fits its mixtures differently: per *cell*, across that
    cell's proteins, for 100 random cells of each batch, and averages them into a single value per batch
    that is shared by all proteins. Fitting per protein across cells, as here, gives each protein its own
    background level, which matters when proteins' backgrounds differ (they differ ~ e-fold in real panels).

    Examples
    --------
    >>> from pyrovi.datasets import synthetic_citeseq
    >>> adata = synthetic_citeseq(n_cells=400, n_proteins=10, seed=0)
    >>> counts = adata.obsm["protein_expression"].to_numpy()
    >>> mean, scale = protein_background_prior(counts, adata.obs["batch"].cat.codes.to_numpy(), n_batch=2)
    >>> mean.shape, scale.dtype
    ((2, 10), dtype('float32'))
    """
    counts = _as_dense(protein_counts)
    if counts.ndim != 2:
        raise ValueError(f"protein_counts must be 2-D (cells x proteins), got shape {counts.shape}.")
    if counts.size and counts.min() < 0:
        raise ValueError("protein_counts must be non-negative.")
    codes = _check_batches(batch_codes, counts.shape[0], n_batch)
    n_proteins = counts.shape[1]
    if protein_mask is None:
        mask = protein_batch_mask(counts, codes, n_batch)
    else:
        mask = np.asarray(protein_mask, dtype=bool)
        if mask.shape != (n_batch, n_proteins):
            raise ValueError(f"protein_mask must have shape {(n_batch, n_proteins)}, got {mask.shape}.")

    log_counts = np.log1p(counts)
    means = np.zeros((n_batch, n_proteins))
    scales = np.full((n_batch, n_proteins), sd_floor)
    fitted = np.zeros((n_batch, n_proteins), dtype=bool)
    for b in range(n_batch):
        in_batch = codes == b
        if in_batch.sum() < min_cells or not mask[b].any():
            continue
        _, mu, sd = _fit_two_gaussians(log_counts[in_batch], n_iter=n_iter, sd_floor=sd_floor)
        means[b], scales[b] = mu[:, 0], sd[:, 0]
        fitted[b] = mask[b]

    n_fitted = fitted.sum(axis=0)
    borrowed_mean = (means * fitted).sum(axis=0) / np.maximum(n_fitted, 1)
    borrowed_scale = (scales * fitted).sum(axis=0) / np.maximum(n_fitted, 1)
    unfit = n_fitted == 0
    if unfit.any() and counts.shape[0]:
        # pooled fit over the cells whose batch measured the protein (all-zero weights fall back to all cells)
        _, mu, sd = _fit_two_gaussians(
            log_counts[:, unfit], weights=mask[codes][:, unfit], n_iter=n_iter, sd_floor=sd_floor
        )
        borrowed_mean[unfit], borrowed_scale[unfit] = mu[:, 0], sd[:, 0]
    means = np.where(fitted, means, borrowed_mean)
    scales = np.where(fitted, scales, borrowed_scale)
    return means.astype(np.float32), np.maximum(scales, sd_floor).astype(np.float32)
