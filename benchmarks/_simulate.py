"""Counts from the scVI generative process, for benchmarks: sparse CSR, sizes chosen by the caller."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp


def simulate_scvi_counts(
    n_cells: int = 5_000,
    n_genes: int = 2_000,
    n_latent: int = 10,
    n_batches: int = 1,
    mean_library: float = 1_500.0,
    chunk: int = 50_000,
    seed: int = 0,
) -> ad.AnnData:
    """Negative binomial counts with a low-dimensional latent structure, built chunk by chunk.

    ``z ~ N(0, I)``, ``rho = softmax(W z + b)``, ``library ~ LogNormal(log mean_library, 0.3)``,
    ``x ~ NB(mean = library * rho, inverse dispersion theta_g)`` with ``theta_g ~ LogNormal(1, 0.5)``.
    Gene base rates are Zipf-like, so most entries are zero (about 10% non-zero at the defaults), as in
    real droplet data. Only one dense chunk of ``chunk`` cells exists at a time, so a million cells
    need memory proportional to the stored values, not to cells x genes.

    Examples
    --------
    >>> adata = simulate_scvi_counts(1_000, 500)
    >>> adata.X.format, adata.shape
    ('csr', (1000, 500))
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.6, size=(n_latent, n_genes))
    b = np.log(1.0 / np.arange(1, n_genes + 1) ** 1.1)  # Zipf-like base expression
    rng.shuffle(b)
    theta = rng.lognormal(1.0, 0.5, size=n_genes)
    batch_shift = rng.normal(0.0, 0.3, size=(n_batches, n_genes))
    batches = rng.integers(0, n_batches, size=n_cells)
    blocks = []
    for start in range(0, n_cells, chunk):
        stop = min(start + chunk, n_cells)
        z = rng.normal(size=(stop - start, n_latent))
        logits = z @ w + b + batch_shift[batches[start:stop]]
        logits -= logits.max(1, keepdims=True)
        rho = np.exp(logits)
        rho /= rho.sum(1, keepdims=True)
        library = rng.lognormal(np.log(mean_library), 0.3, size=(stop - start, 1))
        mu = library * rho
        counts = rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float32)
        blocks.append(sp.csr_matrix(counts))
    adata = ad.AnnData(sp.vstack(blocks, format="csr"))
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    adata.var_names = [f"gene{j}" for j in range(n_genes)]
    adata.obs["batch"] = [f"batch{k}" for k in batches]
    adata.obs["batch"] = adata.obs["batch"].astype("category")
    return adata
