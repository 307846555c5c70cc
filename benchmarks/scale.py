"""One training epoch of SCVI on many cells, in memory or backed (out of core): seconds and peak RSS.

The counts are simulated chunk by chunk (sparse CSR, about 13% non-zero at 2,000 genes) and, with
``--backed``, written to an .h5ad file and read back with ``backed="r"`` so that the matrix stays on disk.

Usage::

    python benchmarks/scale.py --n-cells 1000000            # the 1M x 2k scale test, in memory
    python benchmarks/scale.py --n-cells 1000000 --backed   # the same, reading minibatches from disk

With ``--backed`` the matrix is written to a temporary .h5ad and a fresh process trains on it, so the
reported peak RSS is that of setup and training alone (not of the simulation).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the helpers next to this script

from _rss import peak_rss_mb  # noqa: E402


def _train_one_epoch(adata, batch_size: int) -> dict:
    import pyrovi

    start = time.perf_counter()
    pyrovi.model.SCVI.setup_anndata(adata)
    model = pyrovi.model.SCVI(adata, gene_likelihood="nb")
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    model.train(max_epochs=1, batch_size=batch_size, accelerator="cpu", progress_bar=False)
    train_s = time.perf_counter() - start
    return {
        "setup_s": setup_s, "epoch_s": train_s, "cells_per_s": len(model.train_indices) / train_s,
        "elbo_validation": float(model.history["elbo_validation"].iloc[-1, 0]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=1_000_000)
    parser.add_argument("--n-genes", type=int, default=2_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--backed", action="store_true")
    parser.add_argument("--train-file", help=argparse.SUPPRESS)  # the backed run's training process
    args = parser.parse_args(argv)

    import anndata as ad

    if args.train_file:
        adata = ad.read_h5ad(args.train_file, backed="r")
        figures = _train_one_epoch(adata, args.batch_size)
        print(json.dumps({**figures, "peak_rss_mb": peak_rss_mb()}))
        return

    from _simulate import simulate_scvi_counts

    start = time.perf_counter()
    adata = simulate_scvi_counts(args.n_cells, args.n_genes)
    nnz = adata.X.nnz
    figures = {"n_cells": args.n_cells, "n_genes": args.n_genes, "nnz": nnz, "backed": args.backed,
               "simulate_s": time.perf_counter() - start}
    if not args.backed:
        figures["peak_rss_mb_before_setup"] = peak_rss_mb()
        figures.update(_train_one_epoch(adata, args.batch_size))
        figures["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(figures))
        return
    with tempfile.TemporaryDirectory() as tmp:
        # the matrix is written here; a fresh process trains on it, so its peak RSS is the training's own
        path = os.path.join(tmp, "counts.h5ad")
        adata.write_h5ad(path)
        del adata
        out = subprocess.run(
            [sys.executable, __file__, "--train-file", path, "--batch-size", str(args.batch_size)],
            capture_output=True, text=True, check=True,
        )
        figures.update(json.loads(out.stdout.strip().splitlines()[-1]))
        figures["file_mb"] = os.path.getsize(path) / 2**20 if os.path.exists(path) else None
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
