"""SCANVI side by side: label prediction and its calibration, pyrovi vs scvi-tools 1.5.1 (issue 21).

Both libraries run scvi-tools' recommended workflow, identically (same data, same hidden labels, same
epochs, same seeds; only the models differ):

1. an SCVI model (n_latent 10, otherwise each tool's default architecture) is trained for ``--epochs``
   (Adam, lr 1e-3, eps 0.01, weight decay 1e-6, batch 128), without labels;
2. ``SCANVI.from_scvi_model(scvi_model, unlabeled_category="Unknown", labels_key=...)`` is trained for
   ``--scanvi-epochs`` (default: scvi-tools' default for a pretrained model, ``min(10, max(2, round(h / 3)))``
   with ``h`` its epoch heuristic for the number of cells, computed here and passed to both tools) with
   ``n_samples_per_label=100`` (scvi-tools' tutorials);
3. ``predict()`` and ``predict(soft=True)``; the probabilities of both tools go through the same code,
   :func:`pyrovi.criticism.calibration_summary` (accuracy, ECE and MCE with 15 uniform bins, Brier score,
   negative log-likelihood).

Two experiments:

(a) **hidden labels**: half of each label's cells (seeded by ``--data-seed`` plus the training seed, so every
    seed hides another half, the same for both tools) are set to "Unknown"; SCANVI is trained on all cells
    and scored on the hidden half: accuracy and calibration.
(b) **query mapping**: the reference donor is fully labelled; SCVI then SCANVI are trained on it; the query
    donor, all "Unknown", is mapped with ``prepare_query_anndata`` and ``SCANVI.load_query_data`` (default
    freeze flags) and trained for ``--query-epochs`` with ``plan_kwargs={"weight_decay": 0.0}`` (scvi-tools'
    scArches tutorial); ``predict()`` on the query: accuracy, and the calibration of its probabilities.

Data. By default the bundled PBMC counts (700 cells x 765 genes, ``pyrovi.datasets.pbmc68k_reduced``, labels
``cell_type`` and ``louvain``; one SCANVI per label column, from the same SCVI model). (a) uses the 700
cells as they are. (b) needs two donors: the cells are split into a reference and a query half with a
simulated donor effect on the query, exactly as ``query_mapping.py`` does (``--donor-effect-sd``,
``--data-seed``). On real multi-donor data, ``--data PATH --donor-key KEY --label-key KEY [KEY ...]
--reference-donor X``: (a) uses the cells of every donor kept (``batch_key`` the donor column), (b) trains
on donor ``X`` and maps the others (or ``--query-donors``); ``X`` (or ``--layer``) must hold raw counts of
already selected genes.

Each (tool, seed, experiment) runs in its own process (``--threads`` torch threads, default 1), on the same
data written once to a temporary .h5ad; ``--jobs`` processes at a time (default 1; with 2, the two tools of
a seed run together). Printed: per seed and label each tool's figures and the difference (pyrovi minus
scvi-tools), their means, the training seconds, then one JSON line. ``--plot PATH`` saves the reliability
diagrams of both tools on (a), the hidden cells of all seeds pooled, one panel per label column.
``--pyrovi-kwargs JSON`` passes further arguments to pyrovi's ``from_scvi_model`` (e.g.
``'{"label_prior": "uniform"}'``) and ``--pyrovi-plan-kwargs JSON`` plan arguments of its SCANVI training, to
study a gap; the defaults are the library's. scvi-tools is imported only
inside its worker (install: see ``compare_scvi_tools.py``).

Usage::

    python benchmarks/scanvi.py                           # bundled PBMC, seeds 0 1 2
    python benchmarks/scanvi.py --plot reliability.png --jobs 2
    python benchmarks/scanvi.py --data atlas.h5ad --donor-key donor --label-key cell_type --reference-donor D1
    python benchmarks/scanvi.py --tools pyrovi --pyrovi-kwargs '{"label_prior": "uniform"}'
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the helpers next to this script

from query_mapping import DONOR, QUERY_PLAN, REFERENCE_PLAN, build_donors  # noqa: E402

UNKNOWN = "Unknown"
#: scvi-tools' tutorials
N_SAMPLES_PER_LABEL = 100
#: calibration_summary's figures reported per experiment
CALIBRATION = ("accuracy", "ece", "mce", "brier", "nll", "confidence")


def default_scanvi_epochs(n_cells: int) -> int:
    """scvi-tools' (and pyrovi's) default SCANVI epochs after ``from_scvi_model``, for ``n_cells`` cells."""
    heuristic = min(round((20_000 / n_cells) * 400), 400)
    return int(min(10, max(2, round(heuristic / 3.0))))


def hide_labels(labels, rng):
    """Boolean mask of the hidden cells: half of each label's cells, the odd one at random."""
    import numpy as np

    labels = np.asarray(labels, dtype=object)
    hidden = np.zeros(len(labels), dtype=bool)
    for label in dict.fromkeys(labels):
        cells = rng.permutation(np.flatnonzero(labels == label))
        n_hidden = len(cells) // 2 + (rng.random() < 0.5 if len(cells) % 2 else 0)
        hidden[cells[:n_hidden]] = True
    return hidden


def build_data(args: argparse.Namespace):
    """The data of (a) and of (b), each with the columns the workers read; and a note on where they came from."""
    import anndata
    import numpy as np

    donors, donor_key, note = build_donors(args)
    if args.data == "pbmc":
        import pyrovi

        hidden_data, batch_key = pyrovi.datasets.pbmc68k_reduced(), None
        hidden_data.obs = hidden_data.obs[args.label_key]
    else:
        hidden_data = anndata.read_h5ad(args.data)
        if args.layer:
            hidden_data.X = hidden_data.layers[args.layer]
        hidden_data = hidden_data[hidden_data.obs_names.isin(donors.obs_names)].copy()
        hidden_data.obs = hidden_data.obs[[donor_key, *args.label_key]]
        hidden_data.obs[donor_key] = hidden_data.obs[donor_key].astype(str)
        batch_key = donor_key
    for seed in args.seeds:
        rng = np.random.default_rng([args.data_seed, seed])
        hidden_data.obs[f"_hidden_{seed}"] = hide_labels(hidden_data.obs[args.label_key[0]], rng)
    return hidden_data, batch_key, donors, donor_key, note


def _labels_column(adata, key: str, hidden) -> str:
    """An obs column holding ``key``'s labels, "Unknown" where ``hidden``; its name."""
    import numpy as np

    column = f"_y_{key}"
    adata.obs[column] = np.where(hidden, UNKNOWN, adata.obs[key].astype(str).to_numpy())
    adata.obs[column] = adata.obs[column].astype("category")
    return column


def _summary(probabilities, truth) -> dict:
    import pandas as pd

    from pyrovi.criticism import calibration_summary

    probabilities = pd.DataFrame(probabilities.to_numpy(), columns=[str(c) for c in probabilities.columns])
    summary = calibration_summary(probabilities, [str(t) for t in truth])
    return {name: float(summary[name]) for name in CALIBRATION}


def _worker(args: argparse.Namespace) -> dict:
    """One tool, seed and experiment: SCVI, then SCANVI from it per label column, predictions; the figures."""
    import anndata
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.tool == "pyrovi":
        import pyrovi

        pyrovi.settings.seed = args.seed
        scvi_cls, scanvi_cls = pyrovi.model.SCVI, pyrovi.model.SCANVI
        extra = json.loads(args.pyrovi_kwargs or "{}")
        scanvi_plan = json.loads(args.pyrovi_plan_kwargs or "{}")
    else:
        import scvi

        scvi.settings.seed = args.seed
        scvi_cls, scanvi_cls = scvi.model.SCVI, scvi.model.SCANVI
        extra, scanvi_plan = {}, {}
    train = {"batch_size": 128, "accelerator": "cpu", "enable_progress_bar": False}
    adata = anndata.read_h5ad(args.h5ad)
    batch_key = args.batch_key or None
    out: dict = {"tool": args.tool, "seed": args.seed, "experiment": args.experiment, "figures": {},
                 "scanvi_s": {}, "query_s": {}}  # fmt: skip
    if args.experiment == "hidden":
        hidden = adata.obs[f"_hidden_{args.seed}"].to_numpy(dtype=bool)
        reference, query = adata, None
    else:
        is_ref = adata.obs["_is_reference"].to_numpy(dtype=bool)
        reference, query = adata[is_ref].copy(), adata[~is_ref].copy()
        hidden = np.zeros(reference.n_obs, dtype=bool)
    columns = {key: _labels_column(reference, key, hidden) for key in args.label_key}

    scvi_cls.setup_anndata(reference, batch_key=batch_key)
    scvi_model = scvi_cls(reference, n_latent=10)
    start = time.perf_counter()
    scvi_model.train(max_epochs=args.epochs, plan_kwargs=dict(REFERENCE_PLAN), **train)
    out["scvi_s"] = time.perf_counter() - start

    for key, column in columns.items():
        model = scanvi_cls.from_scvi_model(scvi_model, UNKNOWN, labels_key=column, **extra)
        start = time.perf_counter()
        model.train(max_epochs=args.scanvi_epochs, n_samples_per_label=N_SAMPLES_PER_LABEL,
                    **({"plan_kwargs": scanvi_plan} if scanvi_plan else {}), **train)
        out["scanvi_s"][key] = time.perf_counter() - start
        if query is None:
            cells = np.flatnonzero(hidden)
            predicted = np.asarray(model.predict(indices=cells)).astype(str)
            probabilities = model.predict(indices=cells, soft=True)
            truth = reference.obs[key].astype(str).to_numpy()[cells]
            if args.probabilities_dir:
                frame = probabilities.copy()
                frame.columns = [str(c) for c in frame.columns]
                frame.index = reference.obs_names[cells]
                frame["_truth"] = truth
                frame.to_csv(os.path.join(args.probabilities_dir, f"{args.tool}_{args.seed}_{key}.csv"))
        else:
            query_data = query.copy()
            query_data.obs[column] = UNKNOWN
            scanvi_cls.prepare_query_anndata(query_data, model)
            query_model = scanvi_cls.load_query_data(query_data, model)
            start = time.perf_counter()
            query_model.train(max_epochs=args.query_epochs, plan_kwargs=dict(QUERY_PLAN), **train)
            out["query_s"][key] = time.perf_counter() - start
            predicted = np.asarray(query_model.predict()).astype(str)
            probabilities = query_model.predict(soft=True)
            truth = query.obs[key].astype(str).to_numpy()
        figures = _summary(probabilities, truth)
        figures["predict_accuracy"] = float((predicted == truth).mean())  # predict() itself, as users call it
        out["figures"][key] = figures
    out["n_scored"] = int(hidden.sum()) if query is None else int(query.n_obs)
    out["n_train"] = int(reference.n_obs)
    return out


def _run(args: argparse.Namespace, h5ad: str, batch_key: str | None, tool: str, seed: int, experiment: str,
         scanvi_epochs: int, probabilities_dir: str) -> dict:  # fmt: skip
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--tool", tool, "--seed", str(seed),
               "--experiment", experiment, "--h5ad", h5ad, "--batch-key", batch_key or "",
               "--epochs", str(args.epochs), "--scanvi-epochs", str(scanvi_epochs),
               "--query-epochs", str(args.query_epochs), "--threads", str(args.threads),
               "--probabilities-dir", probabilities_dir, "--label-key", *args.label_key,
               *(["--pyrovi-kwargs", args.pyrovi_kwargs] if args.pyrovi_kwargs else []),
               *(["--pyrovi-plan-kwargs", args.pyrovi_plan_kwargs] if args.pyrovi_plan_kwargs else [])]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{tool} seed {seed} ({experiment}) failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result), file=sys.stderr, flush=True)  # progress of a long run
    return result


def _plot(path: str, tools: list[str], label_keys: list[str], seeds: list[int], probabilities_dir: str) -> None:
    """Reliability diagrams of every tool on (a), the hidden cells of all seeds pooled, one panel per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from pyrovi.criticism.plots import plot_reliability

    figure, axes = plt.subplots(1, len(label_keys), figsize=(5 * len(label_keys), 4.5), squeeze=False)
    for ax, key in zip(axes[0], label_keys):
        for tool in tools:
            frames = [pd.read_csv(os.path.join(probabilities_dir, f"{tool}_{seed}_{key}.csv"), index_col=0)
                      for seed in seeds]  # fmt: skip
            pooled = pd.concat(frames, ignore_index=True).fillna(0.0)
            truth = pooled.pop("_truth").astype(str)
            plot_reliability(pooled, truth.to_numpy(), label=tool, ax=ax)
        ax.set_title(f"SCANVI, hidden {key} labels (seeds {' '.join(map(str, seeds))} pooled)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _table(runs: list[dict], tools: list[str], seeds: list[int], experiment: str, key: str, figure: str) -> dict:
    """Print a figure per seed (accuracy and ECE; the others as means only) and return its means per tool."""
    by = {(r["tool"], r["seed"]): r for r in runs if r["experiment"] == experiment}
    both = "pyrovi" in tools and "scvi-tools" in tools
    means = {}
    for seed in [*(seeds if figure in ("accuracy", "ece") else []), "mean"]:
        values = {t: (statistics.mean(by[(t, s)]["figures"][key][figure] for s in seeds) if seed == "mean"
                      else by[(t, seed)]["figures"][key][figure]) for t in tools}  # fmt: skip
        line = f"  {seed!s:<6}{key:<12}{figure:<10}" + "".join(f"{values[t]:>12.3f}" for t in tools)
        if both:
            line += f"{values['pyrovi'] - values['scvi-tools']:>+9.3f}"
        print(line)
        if seed == "mean":
            means = values
    return means


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="pbmc", help="'pbmc' (bundled, two simulated donors for (b)) or an .h5ad path")
    parser.add_argument("--donor-key", default=DONOR, help="obs column naming the donors (with --data PATH)")
    parser.add_argument("--reference-donor", help="the donor the reference of (b) is trained on (with --data PATH)")
    parser.add_argument("--query-donors", nargs="+", help="query donors of (b) (default: every other donor)")
    parser.add_argument("--label-key", nargs="+", default=None,
                        help="obs columns of labels, one SCANVI each (default for pbmc: cell_type louvain)")
    parser.add_argument("--layer", help="layer holding the raw counts (default: X)")
    parser.add_argument("--donor-effect-sd", type=float, default=0.4, help="log-sd of the simulated gene factors")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the donor split, effect and hidden labels")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds")
    parser.add_argument("--epochs", type=int, default=200, help="SCVI training epochs")
    parser.add_argument("--scanvi-epochs", type=int, default=None,
                        help="SCANVI epochs after from_scvi_model (default: scvi-tools' default for the cells)")
    parser.add_argument("--query-epochs", type=int, default=100, help="query training epochs of (b)")
    parser.add_argument("--experiments", nargs="+", choices=["hidden", "query"], default=["hidden", "query"])
    parser.add_argument("--pyrovi-kwargs", help="JSON of further arguments of pyrovi's from_scvi_model")
    parser.add_argument("--pyrovi-plan-kwargs", help="JSON of plan_kwargs of pyrovi's SCANVI training (not the query's)")
    parser.add_argument("--plot", help="PNG path of the reliability diagrams of (a)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--tools", nargs="+", default=["pyrovi", "scvi-tools"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tool", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--experiment", help=argparse.SUPPRESS)
    parser.add_argument("--h5ad", help=argparse.SUPPRESS)
    parser.add_argument("--batch-key", help=argparse.SUPPRESS)
    parser.add_argument("--probabilities-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.label_key is None:
        args.label_key = ["cell_type", "louvain"] if args.data == "pbmc" else ["cell_type"]
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    if args.data != "pbmc" and args.reference_donor is None:
        parser.error("--data PATH needs --reference-donor (and --donor-key, --label-key)")
    if args.plot and "hidden" not in args.experiments:
        parser.error("--plot draws experiment (a): keep 'hidden' in --experiments")

    hidden_data, batch_key, donors, donor_key, note = build_data(args)
    n_ref = int(donors.obs["_is_reference"].sum())
    epochs = {"hidden": args.scanvi_epochs or default_scanvi_epochs(hidden_data.n_obs),
              "query": args.scanvi_epochs or default_scanvi_epochs(n_ref)}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"hidden": (os.path.join(tmp, "hidden.h5ad"), batch_key),
                 "query": (os.path.join(tmp, "donors.h5ad"), donor_key)}
        hidden_data.write_h5ad(files["hidden"][0])
        donors.write_h5ad(files["query"][0])
        # alternating tools, so that slow phases of a shared machine hit both
        jobs = [(tool, seed, experiment) for experiment in args.experiments for seed in args.seeds
                for tool in args.tools]  # fmt: skip
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            runs = list(pool.map(lambda job: _run(args, *files[job[2]], *job, epochs[job[2]], tmp), jobs))
        if args.plot:
            _plot(args.plot, args.tools, args.label_key, args.seeds, tmp)

    print(f"data: {note}")
    print(f"(a) {hidden_data.n_obs} cells x {hidden_data.n_vars} genes, half of each {args.label_key[0]} label hidden "
          f"(batch_key {batch_key}); (b) {n_ref} reference and {donors.n_obs - n_ref} query cells")
    print(f"SCVI n_latent 10, default architecture, {args.epochs} epochs; SCANVI from_scvi_model, "
          f"{epochs['hidden']} (a) / {epochs['query']} (b) epochs, n_samples_per_label {N_SAMPLES_PER_LABEL}; "
          f"query {args.query_epochs} epochs; batch 128; {os.cpu_count()} cores, {args.jobs} run(s) at a time"
          + (f"; pyrovi {args.pyrovi_kwargs}" if args.pyrovi_kwargs else "")
          + (f"; pyrovi SCANVI plan_kwargs {args.pyrovi_plan_kwargs}" if args.pyrovi_plan_kwargs else ""))
    summary: dict = {}
    header = f"  {'seed':<6}{'label':<12}{'figure':<10}" + "".join(f"{t:>12}" for t in args.tools)
    header += f"{'diff':>9}" if "pyrovi" in args.tools and "scvi-tools" in args.tools else ""
    titles = {"hidden": "(a) hidden half of the labels", "query": "(b) query donor after load_query_data"}
    for experiment in args.experiments:
        print(f"\n{titles[experiment]}\n{header}")
        summary[experiment] = {}
        for key in args.label_key:
            summary[experiment][key] = {figure: _table(runs, args.tools, args.seeds, experiment, key, figure)
                                        for figure in ("accuracy", "ece", "mce", "brier", "nll")}  # fmt: skip
    print("\ntraining seconds (mean over seeds): SCVI + SCANVI (+ query), first label column")
    times: dict = {}
    for experiment in args.experiments:
        for tool in args.tools:
            mine = [r for r in runs if r["tool"] == tool and r["experiment"] == experiment]
            key = args.label_key[0]
            times.setdefault(experiment, {})[tool] = {
                "scvi_s": statistics.mean(r["scvi_s"] for r in mine),
                "scanvi_s": statistics.mean(r["scanvi_s"][key] for r in mine),
                "query_s": statistics.mean(r["query_s"][key] for r in mine) if experiment == "query" else 0.0,
            }
            t = times[experiment][tool]
            print(f"  {experiment:<7}{tool:<11}{t['scvi_s']:>7.1f} + {t['scanvi_s']:>5.1f}"
                  + (f" + {t['query_s']:>5.1f}" if experiment == "query" else "") + " s")
    print(json.dumps({"data": note, "epochs": args.epochs, "scanvi_epochs": epochs, "query_epochs": args.query_epochs,
                      "seeds": args.seeds, "pyrovi_kwargs": args.pyrovi_kwargs,
                      "pyrovi_plan_kwargs": args.pyrovi_plan_kwargs, "mean": summary, "train_s": times,
                      "runs": runs}))  # fmt: skip


if __name__ == "__main__":
    main()
