"""Query mapping side by side: kNN label transfer after ``load_query_data``, pyrovi vs scvi-tools 1.5.1.

The procedure of issue 20's check, run identically with both libraries (same data, same reference/query
split, same epochs, same seeds; only the models differ):

1. an SCVI reference (n_latent 10, otherwise each tool's default architecture, or scvi-tools' scArches
   tutorial architecture with ``--arches-params``) is trained on the reference donor, ``batch_key`` the
   donor column (Adam, lr 1e-3, eps 0.01, weight decay 1e-6, batch 128, ``--epochs``);
2. the query donor is mapped with ``prepare_query_anndata`` and ``load_query_data`` (default freeze flags)
   and trained for ``--query-epochs`` with ``plan_kwargs={"weight_decay": 0.0}`` (scvi-tools' tutorial);
3. reference latents (reference model) and query latents (query model), posterior means, are compared by
   the same kNN code for both tools, :func:`pyrovi.model.transfer_labels` (k = 15, inverse-distance
   weights): each query cell takes its neighbours' label, and the accuracy is the share of query cells
   whose transferred label equals their own.

Data. By default the bundled PBMC counts (700 cells x 765 genes, ``pyrovi.datasets.pbmc68k_reduced``,
labels ``cell_type`` and ``louvain``), which come from ONE donor. Two "donors" are therefore made: the
cells are split at random into a reference and a query half, stratified by the first label, and the query
half gets a simulated donor effect, a multiplicative factor per gene drawn log-normal (log-sd
``--donor-effect-sd``, default 0.4) applied to its counts so that they stay integer: binomial thinning
where a factor is below 1, plus Poisson(``(factor - 1) * count``) where it is above 1. The split and the
donor effect depend on ``--data-seed`` only, so every training seed sees the same two donors.
``cell_type`` is noisy (many "Dendritic" cells are monocytes); ``louvain`` (clusters of these same cells)
is the cleaner label, so both accuracies are printed.

On real multi-donor data, ``--data PATH --donor-key KEY --label-key KEY [KEY ...] --reference-donor X``
trains the reference on donor ``X`` and maps every other donor (or ``--query-donors``) as the query, with no
simulated effect; ``X`` (or ``--layer``) must hold raw counts, and the genes should already be selected
(e.g. 1,000-4,000 highly variable genes).

Each (tool, seed) runs in its own process (``--threads`` torch threads, default 1), on the same data written
once to a temporary .h5ad; runs are sequential. Printed: per seed and label the two accuracies and their difference (pyrovi minus
scvi-tools), their means, the training seconds of both tools, then one JSON line. scvi-tools is imported
only inside its worker (install: see ``compare_scvi_tools.py``).

Usage::

    python benchmarks/query_mapping.py                      # bundled PBMC, seeds 0 1 2
    python benchmarks/query_mapping.py --arches-params      # scvi-tools' scArches tutorial architecture
    python benchmarks/query_mapping.py --data atlas.h5ad --donor-key donor --label-key cell_type \\
        --reference-donor D1
    python benchmarks/query_mapping.py --tools pyrovi       # without scvi-tools
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

#: the reference's optimiser, for both tools (each tool's plan_kwargs take these names)
REFERENCE_PLAN = {"lr": 1e-3, "eps": 0.01, "weight_decay": 1e-6}
#: scvi-tools' scArches tutorial: the query trains without weight decay
QUERY_PLAN = {"weight_decay": 0.0}
#: scvi-tools' scArches tutorial architecture (``--arches-params``)
ARCHES_PARAMS = {"use_layer_norm": "both", "use_batch_norm": "none", "encode_covariates": True,
                 "dropout_rate": 0.2, "n_layers": 2}
DONOR = "donor"


def simulate_donor_effect(counts, sd: float, rng):
    """Integer counts of a second donor: each gene's counts scaled by a log-normal factor, kept integer.

    A factor ``f <= 1`` thins each count binomially (``Binomial(count, f)``); ``f > 1`` adds
    ``Poisson((f - 1) * count)``. Either way the expected count is ``f * count``.
    """
    import numpy as np
    import scipy.sparse as sp

    dense = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    dense = np.rint(dense).astype(np.int64)
    factor = np.exp(rng.normal(0.0, sd, size=dense.shape[1]))
    thin = np.minimum(factor, 1.0)
    extra = np.maximum(factor - 1.0, 0.0)
    out = rng.binomial(dense, np.broadcast_to(thin, dense.shape)) + rng.poisson(dense * extra)
    return sp.csr_matrix(out.astype(np.float32)), factor


def _stratified_halves(labels, rng):
    """Boolean mask of the reference half: half of each label's cells (the odd one at random)."""
    import numpy as np

    labels = np.asarray(labels, dtype=object)
    reference = np.zeros(len(labels), dtype=bool)
    for label in dict.fromkeys(labels):
        cells = rng.permutation(np.flatnonzero(labels == label))
        n_ref = len(cells) // 2 + (rng.random() < 0.5 if len(cells) % 2 else 0)
        reference[cells[:n_ref]] = True
    return reference


def build_donors(args: argparse.Namespace):
    """The data with a donor column: the bundled PBMC split into two simulated donors, or the file given."""
    import anndata
    import numpy as np

    if args.data == "pbmc":
        import pyrovi

        adata = pyrovi.datasets.pbmc68k_reduced()
        rng = np.random.default_rng(args.data_seed)
        is_ref = _stratified_halves(adata.obs[args.label_key[0]], rng)
        reference, query = adata[is_ref].copy(), adata[~is_ref].copy()
        query.X, factor = simulate_donor_effect(query.X, args.donor_effect_sd, rng)
        reference.obs[DONOR], query.obs[DONOR] = "reference", "query"
        note = (f"bundled PBMC (one donor) split at random into halves stratified by {args.label_key[0]} "
                f"(data seed {args.data_seed}); the query half has a simulated donor effect, per-gene factors "
                f"log-normal sd {args.donor_effect_sd} (range {factor.min():.2f}-{factor.max():.2f}), counts "
                "binomially thinned / Poisson-augmented")
        adata = anndata.concat([reference, query], index_unique=None)
        donor_key, reference_donor = DONOR, "reference"
    else:
        adata = anndata.read_h5ad(args.data)
        if args.layer:
            adata.X = adata.layers[args.layer]
        donor_key, reference_donor = args.donor_key, args.reference_donor
        donors = adata.obs[donor_key].astype(str)
        keep = (donors == reference_donor) | (donors.isin(args.query_donors) if args.query_donors
                                              else donors != reference_donor)
        adata = adata[keep.to_numpy()].copy()
        note = f"{args.data}: reference donor {reference_donor!r}, query the other donors of {donor_key!r}"
    adata.obs[donor_key] = adata.obs[donor_key].astype(str)
    adata.obs["_is_reference"] = (adata.obs[donor_key] == str(reference_donor)).to_numpy()
    keep_obs = [donor_key, "_is_reference", *args.label_key]
    adata.obs = adata.obs[keep_obs]
    return adata, donor_key, note


def _accuracy(reference_latent, reference_labels, query_latent, query_labels, n_neighbors: int) -> float:
    import numpy as np

    from pyrovi.model import transfer_labels

    predicted = transfer_labels(reference_latent, reference_labels, query_latent, n_neighbors=n_neighbors)
    truth = np.asarray(query_labels, dtype=object)
    labelled = ~np.asarray([t is None or (isinstance(t, float) and t != t) for t in truth])
    hits = np.asarray(predicted["predicted_label"].astype(object)) == truth
    return float(hits[labelled].mean())


def _latent_before_training(model):
    """The query's latent from the grafted reference weights, before query training.

    scvi-tools refuses queries of a model not yet trained; both tools' models mark that with ``is_trained_``.
    """
    trained = model.is_trained_
    model.is_trained_ = True
    try:
        return model.get_latent_representation()
    finally:
        model.is_trained_ = trained


def _worker(args: argparse.Namespace) -> dict:
    """One tool and seed: train the reference, map and train the query, transfer labels; the figures."""
    import anndata
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    adata = anndata.read_h5ad(args.h5ad)
    is_ref = adata.obs["_is_reference"].to_numpy(dtype=bool)
    reference, query = adata[is_ref].copy(), adata[~is_ref].copy()
    torch.manual_seed(args.seed)
    if args.tool == "pyrovi":
        import pyrovi

        pyrovi.settings.seed = args.seed
        model_cls = pyrovi.model.SCVI
    else:
        import scvi

        scvi.settings.seed = args.seed
        model_cls = scvi.model.SCVI
    architecture = {"n_latent": 10, **(ARCHES_PARAMS if args.arches_params else {})}
    train = {"batch_size": 128, "accelerator": "cpu", "enable_progress_bar": False}

    model_cls.setup_anndata(reference, batch_key=args.donor_key)
    ref_model = model_cls(reference, **architecture)
    start = time.perf_counter()
    ref_model.train(max_epochs=args.epochs, plan_kwargs=dict(REFERENCE_PLAN), **train)
    reference_s = time.perf_counter() - start

    model_cls.prepare_query_anndata(query, ref_model)
    query_model = model_cls.load_query_data(query, ref_model)
    untrained_latent = _latent_before_training(query_model)
    start = time.perf_counter()
    query_model.train(max_epochs=args.query_epochs, plan_kwargs=dict(QUERY_PLAN), **train)
    query_s = time.perf_counter() - start

    reference_latent = ref_model.get_latent_representation()
    query_latent = query_model.get_latent_representation()
    # how far query training moved the query cells, in units of the reference latent's spread
    shift = float(np.linalg.norm(query_latent - untrained_latent, axis=1).mean()
                  / np.linalg.norm(reference_latent - reference_latent.mean(0), axis=1).mean())
    accuracy = {key: _accuracy(reference_latent, reference.obs[key], query_latent, query.obs[key].astype(object),
                               args.n_neighbors)
                for key in args.label_key}  # fmt: skip
    return {"tool": args.tool, "seed": args.seed, "accuracy": accuracy, "reference_s": reference_s,
            "query_s": query_s, "query_shift": shift, "n_reference": int(reference.n_obs), "n_query": int(query.n_obs)}


def _run(args: argparse.Namespace, h5ad: str, donor_key: str, tool: str, seed: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--tool", tool, "--seed", str(seed),
               "--h5ad", h5ad, "--donor-key", donor_key, "--epochs", str(args.epochs),
               "--query-epochs", str(args.query_epochs), "--n-neighbors", str(args.n_neighbors),
               "--threads", str(args.threads), "--label-key", *args.label_key,
               *(["--arches-params"] if args.arches_params else [])]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{tool} seed {seed} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="pbmc", help="'pbmc' (bundled, two simulated donors) or an .h5ad path")
    parser.add_argument("--donor-key", default=DONOR, help="obs column naming the donors (with --data PATH)")
    parser.add_argument("--reference-donor", help="the donor the reference is trained on (with --data PATH)")
    parser.add_argument("--query-donors", nargs="+", help="query donors (default: every other donor)")
    parser.add_argument("--label-key", nargs="+", default=None,
                        help="obs columns of labels to transfer (default for pbmc: cell_type louvain)")
    parser.add_argument("--layer", help="layer holding the raw counts (default: X)")
    parser.add_argument("--donor-effect-sd", type=float, default=0.4, help="log-sd of the simulated gene factors")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the split and the donor effect")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds")
    parser.add_argument("--epochs", type=int, default=200, help="reference training epochs")
    parser.add_argument("--query-epochs", type=int, default=200, help="query training epochs")
    parser.add_argument("--n-neighbors", type=int, default=15)
    parser.add_argument("--arches-params", action="store_true",
                        help="scvi-tools' scArches tutorial architecture: " + json.dumps(ARCHES_PARAMS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (runs are sequential)")
    parser.add_argument("--tools", nargs="+", default=["pyrovi", "scvi-tools"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tool", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--h5ad", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.label_key is None:
        args.label_key = ["cell_type", "louvain"] if args.data == "pbmc" else ["cell_type"]
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    if args.data != "pbmc" and args.reference_donor is None:
        parser.error("--data PATH needs --reference-donor (and --donor-key, --label-key)")

    adata, donor_key, note = build_donors(args)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        h5ad = os.path.join(tmp, "donors.h5ad")
        adata.write_h5ad(h5ad)
        for seed in args.seeds:
            for tool in args.tools:  # alternating, so slow phases of a shared machine hit both tools
                runs.append(_run(args, h5ad, donor_key, tool, seed))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)  # progress of a long run

    n_ref, n_query = runs[0]["n_reference"], runs[0]["n_query"]
    print(f"data: {note}")
    print(f"{n_ref} reference and {n_query} query cells x {adata.n_vars} genes; SCVI n_latent 10, "
          f"{'scArches tutorial architecture' if args.arches_params else 'default architecture'}; "
          f"{args.epochs} reference + {args.query_epochs} query epochs, batch 128; kNN k={args.n_neighbors}; "
          f"{os.cpu_count()} cores")
    both = "pyrovi" in args.tools and "scvi-tools" in args.tools
    by = {(r["tool"], r["seed"]): r for r in runs}
    summary: dict = {}
    print(f"\n{'seed':<6}{'label':<12}" + "".join(f"{t:>12}" for t in args.tools) + (f"{'diff':>9}" if both else ""))
    for key in args.label_key:
        for seed in [*args.seeds, "mean"]:
            values = {t: (statistics.mean(by[(t, s)]["accuracy"][key] for s in args.seeds) if seed == "mean"
                          else by[(t, seed)]["accuracy"][key]) for t in args.tools}  # fmt: skip
            line = f"{seed!s:<6}{key:<12}" + "".join(f"{values[t]:>12.3f}" for t in args.tools)
            if both:
                line += f"{values['pyrovi'] - values['scvi-tools']:>+9.3f}"
            print(line)
            if seed == "mean":
                summary[key] = values
    print("\ntraining seconds (mean over seeds): reference + query")
    times = {t: {part: statistics.mean(by[(t, s)][part] for s in args.seeds) for part in ("reference_s", "query_s")}
             for t in args.tools}  # fmt: skip
    for t in args.tools:
        print(f"  {t:<11}{times[t]['reference_s']:>7.1f} + {times[t]['query_s']:>6.1f} s")
    print("query cells moved by query training (mean distance / mean reference spread): "
          + ", ".join(f"{t} {statistics.mean(by[(t, s)]['query_shift'] for s in args.seeds):.3f}" for t in args.tools))
    print(json.dumps({"data": note, "epochs": args.epochs, "query_epochs": args.query_epochs,
                      "arches_params": args.arches_params, "seeds": args.seeds, "mean_accuracy": summary,
                      "train_s": times, "runs": runs}))


if __name__ == "__main__":
    main()
