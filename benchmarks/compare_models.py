"""Which modelling choices raise held-out log-likelihood: likelihood x guide family x objective (issue 22).

For each seed, every combination of ``--likelihoods`` (default nb, zinb, poisson), ``--guides`` (normal =
mean field, lowrank, flow) and ``--objectives`` (elbo; iwelbo with ``--num-particles`` K = 8) is fitted as an
SCVI model (n_latent 10, otherwise the library's defaults) on the same cells with the same split
(``train_size`` 0.8, set by ``pyrovi.settings.seed = seed`` before each fit, so every model holds out the same
cells), then all of them are ranked by :func:`pyrovi.criticism.compare` on the held-out cells
(``--n-particles`` importance draws per cell), once with the guide as proposal and once with the guide refined
for each cell (``proposal="refined"``: fewer cells with unreliable weights).

Printed per seed: the compare table (elpd, se, elpd_diff, dse = the SE of the paired per-cell differences to
the best model, share of cells with Pareto k > 0.7) and each model's training seconds per epoch. Then a summary
over seeds, each model against the baseline ``nb/normal/elbo``: its gain in nats per held-out cell (positive:
better than the baseline) in every seed with ``z`` = gain / paired SE, the mean gain, the number of seeds where
the gain exceeds two paired SEs in either direction, and its cost per epoch as a ratio to the baseline's (a
ratio within one seed is robust to a busy machine; the seconds are not). Last, one JSON line with everything.

Data. By default the bundled PBMC counts (700 cells x 765 genes, ``pyrovi.datasets.pbmc68k_reduced``). On
other data, ``--data PATH`` (an .h5ad whose ``X``, or ``--layer``, holds raw counts of already selected genes;
``--batch-key`` for several batches), or ``--data sim:2000x8000``: negative binomial counts of that shape
from the scVI generative process (``_simulate.py``; most entries zero, as a full transcriptome).

Usage::

    python benchmarks/compare_models.py                                  # bundled PBMC, seeds 0 1 2
    python benchmarks/compare_models.py --seeds 0 --epochs 50            # a quick look
    python benchmarks/compare_models.py --seeds 1 --json s1.json         # one process per seed, then
    python benchmarks/compare_models.py --summarise s0.json s1.json s2.json
    python benchmarks/compare_models.py --data atlas.h5ad --layer counts --likelihoods nb poisson \\
        --guides normal flow --objectives elbo
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

BASELINE = ("nb", "normal", "elbo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="pbmc",
                        help="'pbmc' (bundled), 'sim:CELLSxGENES' (NB counts from benchmarks/_simulate.py) or an .h5ad")
    parser.add_argument("--layer", default=None, help="layer of --data holding raw counts (default X)")
    parser.add_argument("--batch-key", default=None)
    parser.add_argument("--likelihoods", nargs="+", default=["nb", "zinb", "poisson"])
    parser.add_argument("--guides", nargs="+", default=["normal", "lowrank", "flow"])
    parser.add_argument("--objectives", nargs="+", default=["elbo", "iwelbo"])
    parser.add_argument("--num-particles", type=int, default=8, help="K of the iwelbo objective")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--train-size", type=float, default=0.8)
    parser.add_argument("--n-latent", type=int, default=10)
    parser.add_argument("--n-particles", type=int, default=100, help="importance draws per held-out cell")
    parser.add_argument("--proposals", nargs="+", default=["guide", "refined"],
                        help="importance-sampling proposals of compare: the guide, and the guide refined per cell")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--summarise", nargs="+", default=None, metavar="JSON",
                        help="print the tables and summary of earlier runs' --json files (e.g. one per seed) and exit")
    return parser.parse_args(argv)


def load_data(args: argparse.Namespace):
    import anndata

    import pyrovi

    if args.data == "pbmc":
        return pyrovi.datasets.pbmc68k_reduced()
    if args.data.startswith("sim:"):
        import os
        import sys

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from _simulate import simulate_scvi_counts

        n_cells, n_genes = (int(n) for n in args.data[4:].split("x"))
        return simulate_scvi_counts(n_cells, n_genes, seed=0)
    adata = anndata.read_h5ad(args.data)
    if args.layer:
        adata.X = adata.layers[args.layer]
    return adata


def fit(adata, args: argparse.Namespace, seed: int, likelihood: str, guide: str, objective: str):
    """One SCVI fit; the model and its training seconds per epoch."""
    import pyrovi

    pyrovi.settings.seed = seed
    model = pyrovi.model.SCVI(adata, n_latent=args.n_latent, gene_likelihood=likelihood, guide=guide)
    plan = {"objective": objective, "num_particles": args.num_particles} if objective != "elbo" else {}
    start = time.perf_counter()
    model.train(max_epochs=args.epochs, train_size=args.train_size, plan_kwargs=plan, enable_progress_bar=False)
    return model, (time.perf_counter() - start) / args.epochs


def name_of(config: tuple[str, str, str]) -> str:
    return "/".join(config)


def run_seed(adata, args: argparse.Namespace, seed: int) -> list[dict]:
    """All configurations of one seed, compared on their shared held-out cells under each proposal."""
    configs = list(itertools.product(args.likelihoods, args.guides, args.objectives))
    models, seconds = {}, {}
    for config in configs:
        models[name_of(config)], seconds[name_of(config)] = fit(adata, args, seed, *config)
    return [ranked(models, seconds, args, seed, proposal) for proposal in args.proposals]


def ranked(models: dict, seconds: dict, args: argparse.Namespace, seed: int, proposal: str) -> dict:
    """``compare``'s table of ``models`` under ``proposal`` and each model's gain over the baseline."""
    import warnings

    import numpy as np

    import pyrovi

    pyrovi.settings.seed = seed
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table, pointwise = pyrovi.criticism.compare(models, n_particles=args.n_particles, pointwise=True,
                                                    proposal=proposal)
    elapsed = time.perf_counter() - start
    for warning in caught:
        print(f"  warning ({proposal} proposal): {warning.message}")
    elpd_i = pointwise["elpd_i"]
    base = name_of(BASELINE) if name_of(BASELINE) in elpd_i else elpd_i.columns[0]
    gains = {}
    for name in elpd_i.columns:
        diff = (elpd_i[name] - elpd_i[base]).to_numpy()
        se = float(np.sqrt(len(diff) * diff.var()))
        gains[name] = {"gain_per_cell": float(diff.mean()), "z": float(diff.sum() / se) if se > 0 else 0.0}
    return {"seed": seed, "proposal": proposal, "baseline": base, "table": table.reset_index().to_dict("records"),
            "seconds_per_epoch": seconds, "gains": gains, "n_cells": int(table["n_cells"].iloc[0]),
            "compare_s": elapsed}


def print_seed(result: dict) -> None:
    print(f"\nseed {result['seed']}, {result['proposal']} proposal: {result['n_cells']} held-out cells "
          f"(compare took {result['compare_s']:.0f} s)")
    print(f"{'model':24s} {'elpd':>10s} {'se':>7s} {'diff':>8s} {'dse':>6s} {'k>0.7':>6s} {'s/epoch':>8s}")
    for row in result["table"]:
        print(f"{row['model']:24s} {row['elpd']:10.1f} {row['se']:7.1f} {row['elpd_diff']:8.1f} {row['dse']:6.1f} "
              f"{row['p_khat_bad']:6.2f} {result['seconds_per_epoch'][row['model']]:8.3f}")


def print_summary(results: list[dict]) -> None:
    for proposal in dict.fromkeys(r["proposal"] for r in results):
        print_proposal_summary([r for r in results if r["proposal"] == proposal])


def print_proposal_summary(results: list[dict]) -> None:
    import numpy as np

    base = results[0]["baseline"]
    print(f"\n{results[0]['proposal']} proposal, against {base}: gain in nats per held-out cell (z = gain / paired SE), cost per epoch as a ratio")
    names = [row["model"] for row in sorted(results[0]["table"], key=lambda row: row["model"])]
    header = " ".join(f"{'seed ' + str(r['seed']):>15s}" for r in results)
    print(f"{'model':24s} {header} {'mean':>7s} {'|z|>2':>6s} {'cost':>6s} {'k>0.7':>6s}")
    for name in names:
        gains = [r["gains"][name] for r in results]
        cells = " ".join(f"{g['gain_per_cell']:+7.3f} ({g['z']:+5.1f})" for g in gains)
        beyond = sum(abs(g["z"]) > 2 for g in gains)
        cost = np.mean([r["seconds_per_epoch"][name] / r["seconds_per_epoch"][base] for r in results])
        bad = np.mean([row["p_khat_bad"] for r in results for row in r["table"] if row["model"] == name])
        mean = np.mean([g["gain_per_cell"] for g in gains])
        print(f"{name:24s} {cells} {mean:+7.3f} {beyond:>4d}/{len(results)} {cost:6.2f} {bad:6.2f}")


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.summarise:
        results = []
        for path in args.summarise:
            with open(path) as handle:
                results.extend(json.load(handle))
        for result in results:
            print_seed(result)
        print_summary(results)
        return results
    import torch

    import pyrovi
    import pyrovi.criticism  # imported before hours of fitting, not after

    torch.set_num_threads(args.threads)
    adata = load_data(args)
    if args.batch_key:
        pyrovi.model.SCVI.setup_anndata(adata, batch_key=args.batch_key)
    else:
        pyrovi.model.SCVI.setup_anndata(adata)
    print(f"{adata.n_obs} cells x {adata.n_vars} genes; {args.epochs} epochs; train_size {args.train_size}; "
          f"iwelbo K={args.num_particles}; compare with {args.n_particles} draws per cell; "
          f"torch {torch.__version__}, pyrovi {pyrovi.__version__}, {torch.get_num_threads()} thread(s)")
    results = []
    for seed in args.seeds:
        for result in run_seed(adata, args, seed):
            results.append(result)
            print_seed(result)
    print_summary(results)
    print(json.dumps(results))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle)
    return results


if __name__ == "__main__":
    main()
