"""One training epoch of SCVI on many cells, in memory or backed (out of core): seconds and peak RSS.

The counts are simulated chunk by chunk (sparse CSR, about 13% non-zero at 2,000 genes) and, with
``--backed``, written to an .h5ad file and read back with ``backed="r"`` so that the matrix stays on disk.

Usage::

    python benchmarks/scale.py --n-cells 1000000            # the 1M x 2k scale test, in memory
    python benchmarks/scale.py --n-cells 1000000 --backed   # the same, reading minibatches from disk
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=1_000_000)
    parser.add_argument("--n-genes", type=int, default=2_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--backed", action="store_true")
    args = parser.parse_args(argv)

    import anndata as ad

    import pyrovi

    sys.path.insert(0, HERE)
    from _simulate import simulate_scvi_counts

    start = time.perf_counter()
    adata = simulate_scvi_counts(args.n_cells, args.n_genes)
    nnz = adata.X.nnz
    simulate_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        if args.backed:
            path = os.path.join(tmp, "counts.h5ad")
            adata.write_h5ad(path)
            del adata
            adata = ad.read_h5ad(path, backed="r")
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        pyrovi.model.SCVI.setup_anndata(adata)
        model = pyrovi.model.SCVI(adata, gene_likelihood="nb")
        setup_s = time.perf_counter() - start
        start = time.perf_counter()
        model.train(max_epochs=1, batch_size=args.batch_size, accelerator="cpu", progress_bar=False)
        train_s = time.perf_counter() - start
        figures = {
            "n_cells": args.n_cells, "n_genes": args.n_genes, "nnz": nnz, "backed": args.backed,
            "simulate_s": simulate_s, "setup_s": setup_s, "epoch_s": train_s,
            "cells_per_s": len(model.train_indices) / train_s,
            "peak_rss_mb_before_setup": rss_before,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "elbo_validation": float(model.history["elbo_validation"].iloc[-1, 0]),
        }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
