"""Train pyrovi's SCVI and scvi-tools' SCVI on the same data in one run and compare them.

Both tools get the same data, the same train/validation split, the same architecture (n_latent 10,
n_hidden 128, one layer, batch norm, dropout 0.1), the same optimiser (Adam, lr 1e-3, eps 0.01, weight
decay 1e-6), the same KL warm-up and the same number of epochs. Every configuration runs in a fresh
subprocess so that its peak RSS is its own, ``--repeats`` times (default 3) with the two tools alternating,
and each figure is the median over the repeats: on a shared machine single runs of the same
configuration differ by up to 20%. Repeat ``r`` initialises and trains both tools with seed ``seed + r``
(data and split stay those of ``--seed``), so the held-out ELBO's median is taken over initialisations
rather than repeating one. Printed: a table, then one JSON line.

Figures (per configuration):

- ``cells_per_s``: training cells per second of a training epoch (validation excluded), from the median
  epoch after the first (the first includes one-off start-up costs of either library);
- ``s_per_epoch``: that median epoch's seconds;
- ``peak_rss_mb``: peak resident memory of the process (setup, training, queries);
- ``latent_s``: ``get_latent_representation()`` on all cells (median of nine calls);
- ``elbo_val``: held-out ELBO per cell (higher is better) from each tool's ``get_elbo`` on the
  validation cells (mean of five calls: each is a one-draw estimate). A few epochs in, this figure
  varies across initialisations by several percent, so a handful of repeats cannot resolve a 0.5%
  difference between the tools: ``elbo_same_init.py`` measures that gap over many seeds and from
  shared initial weights;
- ``import_s``: ``import pyrovi`` / ``import scvi`` in a fresh interpreter (median of three).

scvi-tools is never a dependency of pyrovi. scvi-tools 1.5.1 declares Python >= 3.12; on 3.11 install
its dependencies, then the package itself without them::

    pip install docrep joblib ml-collections mudata "numba>=0.60" rich "scanpy[skmisc]>=1.10" \\
        scikit-learn "sparse>=0.14" tensorboard torchmetrics xarray
    pip install --no-deps --ignore-requires-python scvi-tools==1.5.1

Usage::

    python benchmarks/compare_scvi_tools.py                     # 5k x 2k simulated, nb+zinb, batch 128+1024
    python benchmarks/compare_scvi_tools.py --n-cells 50000     # bigger
    python benchmarks/compare_scvi_tools.py --data pbmc         # bundled real PBMC counts
    python benchmarks/compare_scvi_tools.py --tools pyrovi      # without scvi-tools
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the helpers next to this script

from _rss import peak_rss_mb  # noqa: E402


#: the architecture and optimiser both tools get (each tool's SCVI and plan_kwargs take these names)
ARCHITECTURE = {"n_latent": 10, "n_hidden": 128, "n_layers": 1}
PLAN = {"lr": 1e-3, "eps": 0.01, "weight_decay": 1e-6}


def held_out_elbo(model, val_idx) -> float:
    """Held-out ELBO per cell of either tool's model: the mean of five ``get_elbo`` calls.

    Each call is a one-draw Monte Carlo estimate: early in training (posteriors still wide) single calls
    on 500 cells differ by about 10 nats/cell.
    """
    return statistics.mean(float(model.get_elbo(indices=val_idx, batch_size=1024)) for _ in range(5))


def _data(args: argparse.Namespace):
    if args.data == "pbmc":
        import pyrovi

        return pyrovi.datasets.pbmc68k_reduced()
    from _simulate import simulate_scvi_counts

    return simulate_scvi_counts(args.n_cells, args.n_genes, seed=args.seed)


def _split(n_cells: int, seed: int) -> tuple[list[int], list[int]]:
    import numpy as np

    order = np.random.default_rng(seed).permutation(n_cells)
    n_train = int(0.9 * n_cells)
    return order[:n_train], order[n_train:]


def _epoch_timer():
    """A Lightning callback timing the training part of each epoch (validation excluded)."""
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        def __init__(self):
            self.seconds: list[float] = []
            self._start = None

        def on_train_epoch_start(self, trainer, pl_module):
            self._start = time.perf_counter()

        def _stop(self):
            if self._start is not None:
                self.seconds.append(time.perf_counter() - self._start)
                self._start = None

        def on_validation_start(self, trainer, pl_module):
            if trainer.training:
                self._stop()

        def on_train_epoch_end(self, trainer, pl_module):
            self._stop()

    return EpochTimer()


def _worker(args: argparse.Namespace) -> dict:
    """One tool, likelihood and batch size: train, time, query; return the figures."""
    import torch

    torch.manual_seed(args.train_seed)
    adata = _data(args)
    train_idx, val_idx = _split(adata.n_obs, args.seed)
    timer = _epoch_timer()
    common = {**ARCHITECTURE, "gene_likelihood": args.likelihood}
    plan = dict(PLAN)  # a copy: neither tool may change the shared settings
    if args.tool == "pyrovi":
        import pyrovi

        pyrovi.settings.seed = args.train_seed  # initialisation, shuffling and draws
        pyrovi.model.SCVI.setup_anndata(adata)
        model = pyrovi.model.SCVI(adata, **common)
        model.train(
            max_epochs=args.epochs, batch_size=args.batch_size, accelerator="cpu", progress_bar=False,
            plan_kwargs=plan, datasplitter_kwargs={"train_idx": train_idx, "val_idx": val_idx},
            callbacks=[timer],
        )
    else:
        import scvi

        scvi.settings.seed = args.train_seed
        scvi.model.SCVI.setup_anndata(adata)
        model = scvi.model.SCVI(adata, **common)
        model.train(
            max_epochs=args.epochs, batch_size=args.batch_size, accelerator="cpu",
            enable_progress_bar=False, plan_kwargs=plan,
            datasplitter_kwargs={"external_indexing": [train_idx, val_idx]}, callbacks=[timer],
        )
    latent_times = []
    for _ in range(9):  # a 20-50 ms call: the median of nine (the first also pays one-off allocation costs)
        start = time.perf_counter()
        model.get_latent_representation(batch_size=1024)
        latent_times.append(time.perf_counter() - start)
    latent_s = statistics.median(latent_times)
    elbo_val = held_out_elbo(model, val_idx)
    s_per_epoch = statistics.median(timer.seconds[1:] or timer.seconds)
    return {
        "tool": args.tool,
        "likelihood": args.likelihood,
        "batch_size": args.batch_size,
        "cells_per_s": len(train_idx) / s_per_epoch,
        "s_per_epoch": s_per_epoch,
        "peak_rss_mb": peak_rss_mb(),
        "latent_s": latent_s,
        "elbo_val": elbo_val,
    }


def _import_seconds(module: str, repeats: int = 3) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    times = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        for _ in range(repeats)
    ]
    return statistics.median(times)


def _run_config(args: argparse.Namespace, tool: str, likelihood: str, batch_size: int, repeat: int) -> dict:
    command = [
        sys.executable, __file__, "--worker", "--tool", tool, "--likelihood", likelihood,
        "--batch-size", str(batch_size), "--epochs", str(args.epochs), "--data", args.data,
        "--n-cells", str(args.n_cells), "--n-genes", str(args.n_genes), "--seed", str(args.seed),
        "--train-seed", str(args.seed + repeat),
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{tool} {likelihood} {batch_size} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median_run(runs: list[dict]) -> dict:
    """Median of each figure over the repeated runs of one tool and configuration."""
    out = dict(runs[0])
    for key in ("cells_per_s", "s_per_epoch", "peak_rss_mb", "latent_s", "elbo_val"):
        out[key] = statistics.median(r[key] for r in runs)
    out["repeats"] = len(runs)
    return out


def _collect_runs(args: argparse.Namespace) -> dict:
    """Run every configuration ``args.repeats`` times, alternating the tools within each configuration.

    Alternating (pyrovi, scvi-tools, pyrovi, ...) spreads slow phases of a shared machine over both
    tools instead of charging them to whichever happened to run then.
    """
    runs: dict = {}
    for likelihood in args.likelihoods:
        for batch_size in args.batch_sizes:
            for repeat in range(args.repeats):
                for tool in args.tools:
                    runs.setdefault((tool, likelihood, batch_size), []).append(
                        _run_config(args, tool, likelihood, batch_size, repeat)
                    )
    return runs


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("simulated", "pbmc"), default="simulated")
    parser.add_argument("--n-cells", type=int, default=5_000)
    parser.add_argument("--n-genes", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--likelihoods", nargs="+", default=["nb", "zinb"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 1024])
    parser.add_argument("--tools", nargs="+", default=["pyrovi", "scvi-tools"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool and configuration (medians)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tool", help=argparse.SUPPRESS)
    parser.add_argument("--likelihood", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--train-seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return

    imports = {"pyrovi": _import_seconds("pyrovi")}
    if "scvi-tools" in args.tools:
        imports["scvi-tools"] = _import_seconds("scvi")
    runs = _collect_runs(args)
    rows = [
        _median_run(runs[(tool, likelihood, batch_size)])
        for likelihood in args.likelihoods
        for batch_size in args.batch_sizes
        for tool in args.tools
    ]
    header = f"{'tool':<11}{'lik':<6}{'batch':>6}{'cells/s':>10}{'s/epoch':>9}{'RSS MB':>8}{'latent s':>10}{'ELBO val':>11}"
    print(f"data: {args.data} {'' if args.data == 'pbmc' else f'{args.n_cells} x {args.n_genes}'}, "
          f"{args.epochs} epochs, {os.cpu_count()} cores, medians of {args.repeats} interleaved runs")
    print(header)
    for r in rows:
        print(f"{r['tool']:<11}{r['likelihood']:<6}{r['batch_size']:>6}{r['cells_per_s']:>10.0f}"
              f"{r['s_per_epoch']:>9.3f}{r['peak_rss_mb']:>8.0f}{r['latent_s']:>10.3f}{r['elbo_val']:>11.2f}")
    ratios = []
    if "scvi-tools" in args.tools and "pyrovi" in args.tools:
        print("\npyrovi / scvi-tools")
        print(f"{'lik':<6}{'batch':>6}{'speed':>8}{'RSS':>7}{'latent':>8}{'ELBO gap %':>12}")
        for likelihood in args.likelihoods:
            for batch_size in args.batch_sizes:
                p, s = (next(r for r in rows if r["tool"] == t and r["likelihood"] == likelihood
                             and r["batch_size"] == batch_size) for t in ("pyrovi", "scvi-tools"))
                ratio = {
                    "likelihood": likelihood,
                    "batch_size": batch_size,
                    "speed": _ratio(p["cells_per_s"], s["cells_per_s"]),
                    "rss": _ratio(p["peak_rss_mb"], s["peak_rss_mb"]),
                    "latent_speed": _ratio(s["latent_s"], p["latent_s"]),
                    # positive: pyrovi's held-out ELBO is worse (lower) by this percentage
                    "elbo_gap_pct": 100.0 * (s["elbo_val"] - p["elbo_val"]) / abs(s["elbo_val"]),
                }
                ratios.append(ratio)
                print(f"{likelihood:<6}{batch_size:>6}{ratio['speed']:>8.2f}{ratio['rss']:>7.2f}"
                      f"{ratio['latent_speed']:>8.2f}{ratio['elbo_gap_pct']:>12.2f}")
        print(f"import: pyrovi {imports['pyrovi']:.2f} s, scvi {imports['scvi-tools']:.2f} s, "
              f"ratio {_ratio(imports['pyrovi'], imports['scvi-tools']):.2f}")
    print(json.dumps({"data": args.data, "n_cells": args.n_cells, "n_genes": args.n_genes,
                      "epochs": args.epochs, "import_s": imports, "runs": rows, "ratios": ratios}))


if __name__ == "__main__":
    main()
