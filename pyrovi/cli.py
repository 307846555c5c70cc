"""The ``pyrovi`` command line: ``pyrovi quickstart`` trains SCVI on bundled PBMC data."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# --help prints it as plain text: no markup
_DESCRIPTION = "pyrovi: scvi-tools' models as Pyro model/guide pairs. 'pyrovi quickstart' trains SCVI on bundled PBMC data."

def _pca_2d(z):
    """First two principal components of the latent space (numpy only, no extra dependency)."""
    import numpy as np

    centred = z - z.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def _plot_latent(z, labels, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'pyrovi[plot]'); skipping the latent plot.")
        return False
    import numpy as np

    xy = _pca_2d(z)
    fig, ax = plt.subplots(figsize=(7, 5.5), dpi=120)
    for i, label in enumerate(sorted(set(labels))):
        mask = np.asarray(labels) == label
        ax.scatter(xy[mask, 0], xy[mask, 1], s=8, label=f"{label} ({mask.sum()})", color=plt.cm.tab10(i % 10))
    ax.set_xlabel("latent PC 1")
    ax.set_ylabel("latent PC 2")
    ax.set_title(f"SCVI latent space of {len(labels)} PBMCs\n(posterior means, first two PCs)", fontsize=10)
    ax.legend(fontsize=7, markerscale=2, frameon=False, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return True


def _check_out(out: Path, overwrite: bool = False) -> None:
    """``--out`` is a new or empty directory (any directory with ``overwrite``), or a path where one can be
    made: checked before minutes of training."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a directory; pass a directory (it is created if needed).")
    if out.is_dir() and not overwrite and any(out.iterdir()):
        raise FileExistsError(f"--out {out} already exists and is not empty; pass --overwrite to write into it "
                              "(replacing an earlier quickstart's output) or another --out.")  # fmt: skip
    for ancestor in out.absolute().parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise FileExistsError(f"--out {out} lies below {ancestor}, which is a file, not a directory.")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise PermissionError(f"--out {out}: cannot create it, {ancestor} is not writable.")
            break
    for name in ("scvi_pbmc", "latent_pbmc.png"):
        target = out / name
        if os.path.lexists(target) and (name == "scvi_pbmc") != target.is_dir():
            kind = "a directory" if target.is_dir() else "a file"
            raise FileExistsError(f"--out {out} already holds {target.name} as {kind}; the quickstart writes there. "
                                  "Move it away or pass another --out.")  # fmt: skip


def quickstart(out: Path, max_epochs: int, seed: int, overwrite: bool = False) -> dict:
    """Train SCVI on the bundled 700-cell PBMC data, save it, and plot its latent space.

    ``out`` must be a new or empty directory unless ``overwrite`` is set.
    """
    import pyrovi

    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f"--max-epochs must be a positive integer, got {max_epochs!r}.")
    _check_out(out, overwrite)
    pyrovi.settings.seed = seed
    adata = pyrovi.datasets.pbmc68k_reduced()
    print(f"Data: {adata.n_obs} PBMCs x {adata.n_vars} genes (bundled, raw counts).")
    pyrovi.model.SCVI.setup_anndata(adata)
    model = pyrovi.model.SCVI(adata, n_latent=10, gene_likelihood="zinb")
    start = time.perf_counter()
    model.train(max_epochs=max_epochs, accelerator="auto")
    seconds = time.perf_counter() - start
    elbo_val = float(model.history["elbo_validation"].iloc[-1, 0])
    print(f"Trained {max_epochs} epochs in {seconds:.1f} s on {model.device}.")
    print(f"Final validation loss (negative ELBO per cell): {elbo_val:.2f}")
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "scvi_pbmc"
    model.save(model_dir, overwrite=True)
    print(f"Saved the model to {model_dir}/ (safetensors + JSON).")
    z = model.get_latent_representation()
    png = out / "latent_pbmc.png"
    if _plot_latent(z, adata.obs["cell_type"].astype(str).tolist(), png):
        print(f"Wrote the latent space, coloured by cell type, to {png}.")
    return {"seconds": seconds, "elbo_validation": elbo_val}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyrovi`` console command.

    Examples
    --------
    >>> from pyrovi.cli import main
    >>> main(["quickstart", "--max-epochs", "0"])  # a user's mistake: one line on stderr, status 2
    2
    """
    from . import __version__

    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="pyrovi", description=_DESCRIPTION, formatter_class=formatter)
    parser.add_argument("--version", action="version", version=f"pyrovi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, title="commands")
    summary = "train SCVI on bundled PBMC data, save it and plot its latent space"
    qs = sub.add_parser("quickstart", help=summary, description=f"Quickstart: {summary}.", formatter_class=formatter)
    qs.add_argument("--out", type=Path, default=Path("quickstart_output"),
                    help="output directory (new or empty, unless --overwrite)")  # fmt: skip
    qs.add_argument("--max-epochs", type=int, default=400, help="training epochs (a positive integer)")
    qs.add_argument("--seed", type=int, default=0, help="random seed (a non-negative integer)")
    qs.add_argument("--overwrite", action="store_true",
                    help="write into an existing, non-empty --out, replacing an earlier quickstart's output")  # fmt: skip
    args = parser.parse_args(argv)
    from ._errors import ModelFileError

    try:
        if args.command == "quickstart":
            quickstart(args.out, args.max_epochs, args.seed, args.overwrite)
    except (ValueError, TypeError, OSError, ModelFileError) as err:
        # a user's mistake (an argument, a path): one line, no traceback; other exceptions are bugs and keep theirs
        print(f"pyrovi {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pyrovi {args.command}: interrupted.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
