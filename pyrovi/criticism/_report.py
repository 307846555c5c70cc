"""A posterior predictive check written to disk: metrics as JSON and CSV, plots as PNG."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import __version__
from .._checks import check_bool
from ._data import check_modality, check_models, name_models
from ._ppc import PosteriorPredictiveCheck, check_ppc_arguments
from ._progress import progress

# Per-gene tables can be long: they go to CSV files, the model-level tables into metrics.json.
_JSON_TABLES = ("summary", "calibration", "log_predictive_density", "mean_variance_error")


def _csv_tables(feature_dim: str) -> tuple[str, ...]:
    return (f"cv_{feature_dim}", f"zero_fraction_{feature_dim}", "mean_variance")


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain JSON values: numpy scalars to Python, NaN to null."""
    rows = []
    for row in table.to_dict(orient="records"):
        clean = {}
        for key, value in row.items():
            if isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            clean[str(key)] = value
        rows.append(clean)
    return rows


def _output_directory(out_dir: Any) -> Path:
    """``out_dir`` as a Path to a directory that exists or can be made (no file in its place or on its way)."""
    if isinstance(out_dir, bytes) or not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a directory path (str or pathlib.Path), got {out_dir!r:.80}.")
    out = Path(out_dir)
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "is" if path == out else f"lies under {str(path)!r}, which is"
                raise NotADirectoryError(
                    f"out_dir {str(out)!r} {where} an existing file, not a directory; pass a directory path "
                    "(created if missing) for the report's files."
                )
            break
    return out


def _data_and_models(adata: Any, models: Any, model_or_models: Any) -> tuple[AnnData | None, Any]:
    """``(adata, models)`` from the documented order, the keyword of before, or the order of before (warned)."""
    if model_or_models is not None:
        if models is not None:
            raise TypeError("report got both models and model_or_models; pass models only.")
        warnings.warn("report(model_or_models=...) is now report(adata, models, out_dir).", FutureWarning, stacklevel=3)
        models = model_or_models
    if adata is not None and not isinstance(adata, AnnData):
        # report(models, adata, out_dir), the order of earlier releases: the data now come first, as in
        # PosteriorPredictiveCheck(adata, models)
        warnings.warn(
            "report(models, adata, out_dir) is deprecated; pass the data first, as to PosteriorPredictiveCheck: "
            "report(adata, models, out_dir) (adata may be None for the first model's training data).",
            FutureWarning,
            stacklevel=3,
        )
        adata, models = models, adata
    if models is None:
        raise TypeError("report needs models: a fitted model, a list of models or a dict {name: model}.")
    if adata is not None and not isinstance(adata, AnnData):
        raise TypeError(f"adata must be an AnnData or None, got {type(adata).__name__}.")
    return adata, models


def report(
    adata: AnnData | None,
    models: Any = None,
    out_dir: str | Path | None = None,
    n_samples: int = 30,
    indices: Sequence[int] | np.ndarray | None = None,
    layer: str | None = None,
    held_out: bool = True,
    batch_size: int | None = None,
    plots: bool = True,
    modality: str = "rna",
    *,
    model_or_models: Any = None,
) -> dict[str, Any]:
    """Run a posterior predictive check and write its metrics and plots to a directory.

    Written files (no pickle anywhere):

    - ``metrics.json``: the run's settings and the model-level tables (``summary``, ``calibration``,
      ``log_predictive_density``, ``mean_variance_error``) as lists of records, NaN as ``null``;
    - ``cv_genes.csv``, ``zero_fraction_genes.csv``, ``mean_variance.csv``: the per-gene tables;
    - with ``plots``: ``cv_genes.png``, ``zero_fraction_genes.png``, ``calibration.png``,
      ``mean_variance.png`` and ``rootogram.png`` (all genes pooled). Needs ``pip install 'pyrovi[plot]'``.

    With ``modality="protein"`` the per-feature files are ``cv_proteins.*`` and
    ``zero_fraction_proteins.*``, and ``metrics.json`` counts ``n_proteins``.

    The arguments come in the order of :class:`~pyrovi.criticism.PosteriorPredictiveCheck`, data first.
    The order of earlier releases, ``report(models, adata, out_dir)``, still works and warns.

    Parameters
    ----------
    adata
        The observed data, or None for the first model's training data.
    models
        A fitted model, a list of models (named by class) or a dict ``{name: model}``.
    out_dir
        Directory to write to (created if missing; files in it are overwritten).
    n_samples, indices, layer, held_out, batch_size, modality
        As in :class:`~pyrovi.criticism.PosteriorPredictiveCheck`.
    plots
        Also write the PNG plots.
    model_or_models
        The former name of ``models`` (deprecated).

    Returns
    -------
    ``{"ppc": the PosteriorPredictiveCheck, "metrics": the content of metrics.json,
    "files": {name: Path}}``.

    Examples
    --------
    >>> out = pyrovi.criticism.report(adata, {"NB": nb_model, "Poisson": poisson_model}, "ppc_report/", n_samples=5)
    >>> sorted(out["metrics"]["summary"][0])[:3]
    ['calibration_error', 'cv_cell_mae', 'cv_gene_mae']
    """
    adata, models = _data_and_models(adata, models, model_or_models)
    # every argument is checked before the (possibly long) check rather than after it
    check_bool("plots", plots)
    check_ppc_arguments(n_samples, held_out, batch_size, layer)
    out = _output_directory(out_dir)
    if plots:
        from .plots import require_matplotlib

        require_matplotlib()
    models = name_models(models)
    if not models:
        raise ValueError("models is empty; pass a fitted model, a list of models or a dict {name: model}.")
    models = check_models(models, check_modality(modality))
    if adata is None:
        adata = next(iter(models.values())).adata
    out.mkdir(parents=True, exist_ok=True)
    ppc = PosteriorPredictiveCheck(
        adata, models, n_samples=n_samples, indices=indices, layer=layer, held_out=held_out, batch_size=batch_size,
        modality=modality,
    )
    with progress(total=2 + (5 if plots else 0), desc="Report", unit="step") as bar:
        ppc.draw()
        bar.update()
        ppc.summary()
        bar.update()
        metrics, files = _write_report(ppc, out, plots, bar)
    return {"ppc": ppc, "metrics": metrics, "files": files}


def _write_report(
    ppc: PosteriorPredictiveCheck, out: Path, plots: bool, bar: Any
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Write metrics.json, the CSV tables and (with ``plots``) the PNG plots; one ``bar`` step per plot."""
    metrics: dict[str, Any] = {
        "pyrovi_version": __version__,
        "n_samples": ppc.n_samples,
        "modality": ppc.modality,
        f"n_{ppc.feature_dim}": len(ppc.feature_names),
        "models": {name: type(model).__name__ for name, model in ppc.models.items()},
        "n_cells": [{"model": m, "split": s, "n_cells": len(ppc.cells[(m, s)])} for m, s in ppc.keys],
    }
    metrics.update({name: _records(ppc.metrics[name]) for name in _JSON_TABLES})
    files: dict[str, Path] = {"metrics": out / "metrics.json"}
    files["metrics"].write_text(json.dumps(metrics, indent=2, allow_nan=False))
    for name in _csv_tables(ppc.feature_dim):
        files[name] = out / f"{name}.csv"
        ppc.metrics[name].to_csv(files[name], index=False)

    if plots:
        from . import plots as ppc_plots
        from .plots import require_matplotlib

        pyplot = require_matplotlib()
        features = ppc.feature_dim
        figures = {
            f"cv_{features}_plot": (ppc_plots.plot_cv(ppc), f"cv_{features}.png"),
            f"zero_fraction_{features}_plot": (ppc_plots.plot_zero_fraction(ppc), f"zero_fraction_{features}.png"),
            "calibration_plot": (ppc_plots.plot_calibration(ppc), "calibration.png"),
            "mean_variance_plot": (ppc_plots.plot_mean_variance(ppc), "mean_variance.png"),
            "rootogram_plot": (ppc_plots.plot_rootogram(ppc), "rootogram.png"),
        }
        for name, (figure, filename) in figures.items():
            files[name] = out / filename
            figure.savefig(files[name], dpi=100)
            pyplot.close(figure)  # written to disk: a report leaves no figures open in the caller's pyplot
            bar.update()
    return metrics, files
