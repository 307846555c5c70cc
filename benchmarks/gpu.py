"""Training throughput of pyrovi's SCVI on the GPU present (cells per second), data held on the device.

Runs unchanged on any CUDA machine; exits with a message (status 0) where there is no GPU.
``--accelerator cpu`` runs the same measurement on the CPU, with the data "on the device" there (the test
suite runs it so that the script keeps working on machines without a GPU).

Usage::

    python benchmarks/gpu.py                       # 50k x 2k simulated counts, nb and zinb, batch 128 and 1024
    python benchmarks/gpu.py --n-cells 200000 --epochs 3
    python benchmarks/gpu.py --accelerator cpu --n-cells 2000 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=50_000)
    parser.add_argument("--n-genes", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--likelihoods", nargs="+", default=["nb", "zinb"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 1024])
    parser.add_argument("--accelerator", choices=("gpu", "cpu"), default="gpu")
    args = parser.parse_args(argv)

    import torch

    if args.accelerator == "gpu" and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA GPU is visible to torch here; nothing to measure "
              "(--accelerator cpu runs the same measurement on the CPU).")
        return 0
    device = torch.cuda.get_device_name(0) if args.accelerator == "gpu" else f"CPU, {os.cpu_count()} cores"
    import pyrovi

    sys.path.insert(0, HERE)
    from _simulate import simulate_scvi_counts
    from compare_scvi_tools import ARCHITECTURE, _epoch_timer

    adata = simulate_scvi_counts(args.n_cells, args.n_genes)
    pyrovi.model.SCVI.setup_anndata(adata)
    rows = []
    for likelihood in args.likelihoods:
        for batch_size in args.batch_sizes:
            timer = _epoch_timer()
            model = pyrovi.model.SCVI(adata, **ARCHITECTURE, gene_likelihood=likelihood)
            model.train(max_epochs=args.epochs, batch_size=batch_size, accelerator=args.accelerator, devices=1,
                        progress_bar=False, load_data_on_device=True, callbacks=[timer])
            s_per_epoch = statistics.median(timer.seconds[1:] or timer.seconds)
            model.get_latent_representation(batch_size=4096)  # the first call pays one-off costs
            start = time.perf_counter()
            model.get_latent_representation(batch_size=4096)
            rows.append({"likelihood": likelihood, "batch_size": batch_size,
                         "cells_per_s": len(model.train_indices) / s_per_epoch, "s_per_epoch": s_per_epoch,
                         "latent_s": time.perf_counter() - start,
                         "elbo_validation": float(model.history["elbo_validation"].iloc[-1, 0])})
    print(f"{device}; {args.n_cells} x {args.n_genes}, {args.epochs} epochs")
    for r in rows:
        print(f"{r['likelihood']:<6}{r['batch_size']:>6}{r['cells_per_s']:>12.0f} cells/s{r['s_per_epoch']:>9.3f} s/epoch"
              f"{r['latent_s']:>9.3f} s latent (all cells)")
    print(json.dumps({"device": device, "n_cells": args.n_cells, "n_genes": args.n_genes, "runs": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
