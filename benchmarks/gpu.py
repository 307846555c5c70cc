"""Training throughput of pyrovi's SCVI on the GPU present (cells per second), data held on the device.

Runs unchanged on any CUDA machine; exits with a message (status 0) where there is no GPU.

Usage::

    python benchmarks/gpu.py                       # 50k x 2k simulated counts, nb and zinb, batch 128 and 1024
    python benchmarks/gpu.py --n-cells 200000 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=50_000)
    parser.add_argument("--n-genes", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--likelihoods", nargs="+", default=["nb", "zinb"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 1024])
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA GPU is visible to torch here; nothing to measure.")
        return 0
    import pyrovi

    sys.path.insert(0, HERE)
    from _simulate import simulate_scvi_counts
    from compare_scvi_tools import _epoch_timer

    adata = simulate_scvi_counts(args.n_cells, args.n_genes)
    pyrovi.model.SCVI.setup_anndata(adata)
    rows = []
    for likelihood in args.likelihoods:
        for batch_size in args.batch_sizes:
            timer = _epoch_timer()
            model = pyrovi.model.SCVI(adata, n_latent=10, n_hidden=128, gene_likelihood=likelihood)
            model.train(max_epochs=args.epochs, batch_size=batch_size, accelerator="gpu", devices=1,
                        progress_bar=False, load_data_on_device=True, callbacks=[timer])
            s_per_epoch = statistics.median(timer.seconds[1:] or timer.seconds)
            rows.append({"likelihood": likelihood, "batch_size": batch_size,
                         "cells_per_s": len(model.train_indices) / s_per_epoch, "s_per_epoch": s_per_epoch,
                         "elbo_validation": float(model.history["elbo_validation"].iloc[-1, 0])})
    print(f"GPU: {torch.cuda.get_device_name(0)}; {args.n_cells} x {args.n_genes}, {args.epochs} epochs")
    for r in rows:
        print(f"{r['likelihood']:<6}{r['batch_size']:>6}{r['cells_per_s']:>12.0f} cells/s{r['s_per_epoch']:>9.3f} s/epoch")
    print(json.dumps({"gpu": torch.cuda.get_device_name(0), "runs": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
