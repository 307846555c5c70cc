"""Held-out ELBO of pyrovi and scvi-tools after the same epochs, over many seeds and from the same start.

A few epochs into training the held-out ELBO of either tool depends mostly on its random initial
weights: on 5,000 x 2,000 simulated counts after 5 epochs at batch 1024 (25 optimiser steps) its
standard deviation across seeds is about 4-6% of its value, ten times the 0.5% that the comparison
target allows. One run per tool, as in ``compare_scvi_tools.py``, cannot tell a 0.5% difference from
that lottery. This script measures the gap in two ways, at each seed:

- **same start** (paired): scvi-tools builds its model (its initialisation at that seed), the initial
  weights are copied into pyrovi's network (same architecture, parameter for parameter), and both
  train. What remains of the gap is what the tools do differently in training (objective, gradients,
  optimiser, data order, random draws), which is what the target is about;
- **own start**: pyrovi also trains from its own initialisation at that seed; the mean of these gaps
  shows whether the two initialisations differ on average (their per-tensor distributions are the
  same: torch's defaults for the layers, standard normal log-dispersions).

Data and the train/validation split are fixed (``--data-seed``); seed ``k`` of ``--seeds`` seeds the
initialisation and the training randomness of every model trained at it. The held-out ELBO per cell is
the mean of five ``get_elbo`` calls (each a one-draw estimate). "gap %" is positive where pyrovi's
held-out ELBO is lower (worse); the table gives the mean gap over seeds +- its standard error, and
its range. Prints a table and one JSON line.

Usage::

    python benchmarks/elbo_same_init.py                          # nb+zinb, batch 128+1024, 5 epochs, 12 seeds
    python benchmarks/elbo_same_init.py --batch-sizes 1024 --seeds 24 --epochs 8

Needs scvi-tools (see ``compare_scvi_tools.py`` for the install command).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the helpers next to this script

from compare_scvi_tools import ARCHITECTURE, PLAN, _split, held_out_elbo  # noqa: E402

#: scvi-tools 1.5.1 parameter names -> pyrovi's, by prefix (scvi-tools' unused heads have no counterpart)
_NAMES = {
    "px_r": "log_theta",
    "z_encoder.encoder.fc_layers.Layer 0.": "z_encoder.encoder.layers.0.",
    "z_encoder.mean_encoder.": "z_encoder.loc.",
    "z_encoder.var_encoder.": "z_encoder.log_var.",
    "decoder.px_decoder.fc_layers.Layer 0.": "decoder.px_decoder.layers.0.",
    "decoder.px_scale_decoder.0.": "decoder.rho_logits.",
    "decoder.px_dropout_decoder.": "decoder.zi_logits.",
}


def _scvi_state_for_pyrovi(scvi_state: dict, pyrovi_state: dict) -> dict:
    """scvi-tools' state dict renamed to pyrovi's keys; every pyrovi entry must be matched, shape for shape."""
    renamed = {}
    for key, value in scvi_state.items():
        for old, new in _NAMES.items():
            if key.startswith(old) and new + key[len(old):] in pyrovi_state:
                renamed[new + key[len(old):]] = value.clone()
    missing = sorted(set(pyrovi_state) - set(renamed))
    if missing:
        raise RuntimeError(f"no scvi-tools counterpart for pyrovi's {missing}: has scvi-tools' layout changed?")
    for key, value in renamed.items():
        if value.shape != pyrovi_state[key].shape:
            raise RuntimeError(f"{key}: scvi-tools {tuple(value.shape)} vs pyrovi {tuple(pyrovi_state[key].shape)}")
    return renamed


def _one_seed(adata, train_idx, val_idx, likelihood: str, batch_size: int, epochs: int, seed: int) -> dict:
    """Train scvi-tools, pyrovi from scvi-tools' start and pyrovi from its own start; held-out ELBO of each."""
    import pyrovi
    import scvi

    common = {**ARCHITECTURE, "gene_likelihood": likelihood}
    plan = dict(PLAN)  # a copy: neither tool may change the shared settings

    scvi_data = adata.copy()
    scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(scvi_data)
    reference = scvi.model.SCVI(scvi_data, **common)
    start = {key: value.clone() for key, value in reference.module.state_dict().items()}
    reference.train(max_epochs=epochs, batch_size=batch_size, accelerator="cpu", enable_progress_bar=False,
                    plan_kwargs=plan, datasplitter_kwargs={"external_indexing": [train_idx, val_idx]})

    out = {"seed": seed, "scvi_tools": held_out_elbo(reference, val_idx)}
    for name, shared_start in (("pyrovi_same_start", True), ("pyrovi_own_start", False)):
        pyrovi.settings.seed = seed
        pyrovi.model.SCVI.setup_anndata(adata)
        model = pyrovi.model.SCVI(adata, **common)
        if shared_start:
            model.module.load_state_dict(_scvi_state_for_pyrovi(start, model.module.state_dict()))
        model.train(max_epochs=epochs, batch_size=batch_size, accelerator="cpu", progress_bar=False,
                    plan_kwargs=plan, datasplitter_kwargs={"train_idx": train_idx, "val_idx": val_idx})
        out[name] = held_out_elbo(model, val_idx)
    return out


def _gap_pct(pyrovi_elbo: float, scvi_elbo: float) -> float:
    return 100.0 * (scvi_elbo - pyrovi_elbo) / abs(scvi_elbo)


def _summary(runs: list[dict]) -> dict:
    """Mean over seeds of each gap, with its standard error and range."""
    n = len(runs)

    def stats(name: str) -> dict:
        gaps = [_gap_pct(r[name], r["scvi_tools"]) for r in runs]
        se = statistics.stdev(gaps) / n**0.5 if n > 1 else float("nan")
        return {"gap_pct": statistics.mean(gaps), "gap_se_pct": se, "gap_range_pct": [min(gaps), max(gaps)]}

    ref = [r["scvi_tools"] for r in runs]
    return {
        "n_seeds": n,
        "same_start": stats("pyrovi_same_start"),
        "own_start": stats("pyrovi_own_start"),
        "scvi_tools_mean": statistics.mean(ref),
        "scvi_tools_sd_pct": 100.0 * statistics.stdev(ref) / abs(statistics.mean(ref)) if n > 1 else float("nan"),
        "pyrovi_own_start_mean": statistics.mean(r["pyrovi_own_start"] for r in runs),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=5_000)
    parser.add_argument("--n-genes", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--likelihoods", nargs="+", default=["nb", "zinb"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 1024])
    parser.add_argument("--seeds", type=int, default=12, help="training seeds 0, 1, ..., seeds - 1")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the simulated data and the split")
    args = parser.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore")
    from _simulate import simulate_scvi_counts

    adata = simulate_scvi_counts(args.n_cells, args.n_genes, seed=args.data_seed)
    train_idx, val_idx = _split(adata.n_obs, args.data_seed)
    results = []
    for likelihood in args.likelihoods:
        for batch_size in args.batch_sizes:
            runs = []
            for seed in range(args.seeds):
                runs.append(_one_seed(adata, train_idx, val_idx, likelihood, batch_size, args.epochs, seed))
                print(f"{likelihood} {batch_size} seed {seed}: {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
            results.append({"likelihood": likelihood, "batch_size": batch_size, **_summary(runs), "runs": runs})

    print(f"{args.n_cells} x {args.n_genes} simulated, {args.epochs} epochs, {args.seeds} seeds, "
          f"{os.cpu_count()} cores; gap % > 0: pyrovi's held-out ELBO is lower (worse)")
    print(f"{'lik':<6}{'batch':>6}{'scvi ELBO':>11}{'sd %':>6}{'same start gap %':>26}{'own start gap %':>26}")
    for r in results:
        cells = []
        for key in ("same_start", "own_start"):
            g = r[key]
            low, high = g["gap_range_pct"]
            cells.append(f"{g['gap_pct']:>7.2f} +- {g['gap_se_pct']:.2f} ({low:.2f}..{high:.2f})")
        print(f"{r['likelihood']:<6}{r['batch_size']:>6}{r['scvi_tools_mean']:>11.1f}{r['scvi_tools_sd_pct']:>6.1f}"
              f"{cells[0]:>26}{cells[1]:>26}")
    print(json.dumps({"n_cells": args.n_cells, "n_genes": args.n_genes, "epochs": args.epochs,
                      "seeds": args.seeds, "results": results}))


if __name__ == "__main__":
    main()
