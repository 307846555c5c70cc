"""Regenerate the README's figures: ``python docs/figures.py`` (about two minutes on two cores).

Fits SCVI with a negative binomial and with a Poisson likelihood to the bundled PBMC counts and runs a
posterior predictive check of both.
"""

from pathlib import Path

import pyrovi
import pyrovi.criticism
from pyrovi.criticism import plots

OUT = Path(__file__).resolve().parent / "images"


def main() -> None:
    pyrovi.settings.seed = 0
    pyrovi.settings.progress_bar = False
    adata = pyrovi.datasets.pbmc68k_reduced()
    pyrovi.model.SCVI.setup_anndata(adata)
    models = {}
    for name, likelihood in (("NB", "nb"), ("Poisson", "poisson")):
        model = pyrovi.model.SCVI(adata, gene_likelihood=likelihood)
        model.train(max_epochs=200)
        models[name] = model
    ppc = pyrovi.criticism.PosteriorPredictiveCheck(adata, models, n_samples=30)
    print(ppc.summary().to_string())
    OUT.mkdir(exist_ok=True)
    plots.plot_calibration(ppc).savefig(OUT / "ppc_calibration_pbmc.png", dpi=110, bbox_inches="tight")
    plots.plot_rootogram(ppc).savefig(OUT / "ppc_rootogram_pbmc.png", dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
