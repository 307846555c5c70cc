"""PosteriorPredictiveCheck: replicate data from fitted models and compare it with the observed counts."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from .._checks import check_bool, check_int
from ._data import (
    FEATURE_DIMS,
    HELD_OUT,
    IN_SAMPLE,
    check_modality,
    check_models,
    held_out_cells,
    measured_proteins,
    model_genes,
    protein_arrays,
    read_counts,
    read_proteins,
    resolve_cells,
    resolve_layer,
    shared_features,
)
from ._likelihood import per_cell_log_predictive_density
from ._metrics import (
    check_levels,
    coefficient_of_variation,
    pit_coverage,
    pit_interval,
    posterior_predictive_pvalue,
    quiet_nanmean,
    zero_fraction,
)
from ._progress import progress
from ._rng import replaying, rng_state

logger = logging.getLogger("pyrovi")

Dim = Literal["genes", "proteins", "cells"]
Key = tuple[str, str]

#: nominal levels of calibration() by default
DEFAULT_LEVELS = (0.5, 0.8, 0.9, 0.95)
# Replicates above this many bytes in all get a warning suggesting a subsample of cells.
_MEMORY_WARNING_BYTES = 2 * 1024**3


class PosteriorPredictiveCheck:
    """Posterior predictive checks of one or several fitted models on the same counts.

    For each model, ``n_samples`` replicate count matrices are drawn from the posterior predictive
    ``p(x_rep | x)`` (:meth:`~pyrovi.model.base.VAEMixin.posterior_predictive_sample`: ``z ~ q(z | x)``,
    then new counts from the likelihood) and compared with the observed counts through summary
    statistics (coefficient of variation, fraction of zeros, mean-variance relation), the calibration
    of predictive intervals, the log predictive density and posterior predictive p-values.

    Two splits of cells are checked:

    - ``"in-sample"``: the cells given by ``indices`` (default: all cells of ``adata``).
    - ``"held-out"``: when ``held_out=True`` and a model holds non-empty ``validation_indices`` (and
      ``adata`` is its training data), its validation cells. Neither the encoder nor the decoder was
      trained on them: the encoder maps their counts to ``q(z | x)`` without having fitted them, so
      discrepancies there are not hidden by overfitting. (The replicates still condition on each cell's
      own counts through ``q(z | x)``, as any posterior predictive check does.)

    Every metric returns a tidy DataFrame with columns ``model`` and ``split`` and stores it in
    :attr:`metrics`.

    A check compares one modality. ``modality="rna"`` (the default) checks the genes of any model
    (for TOTALVI, its RNA). ``modality="protein"`` checks the proteins of models of RNA and proteins
    (TOTALVI): the features are then proteins wherever this documentation says genes (tables have a
    ``protein`` column, per-feature metrics are named ``cv_proteins``, ``zero_fraction_proteins``,
    ...). A protein missing from the panel of a checked cell's batch has no observed count there, so
    only proteins measured in the batches of all checked cells are compared (the others are named in
    a warning; check them on the cells of the batches that measured them, with ``indices``).

    Parameters
    ----------
    adata
        The observed data, with the models' genes (any order, extra genes ignored).
    models
        ``{name: fitted model}``; the models must share their genes.
    n_samples
        Replicates per model and cell. The calibration metric is exact in expectation for any number
        (see :meth:`calibration`), but with few replicates PIT intervals are wide, which blurs
        miscalibration towards nominal, and p-values have a resolution of ``1 / n_samples``. 30 is a
        good default; memory is ``n_cells * n_genes * n_samples * 4`` bytes per model and split, so
        pass ``indices`` to check a subsample of cells of a large data set.
    indices
        Row positions (or a boolean mask) of the in-sample cells; default all cells.
    layer
        Layer of ``adata`` holding the observed counts (``None``: the layer the models were set up
        with, ``adata.X`` when they used none). RNA only: proteins are read as the models were set up.
    held_out
        Also check each model's validation cells.
    batch_size
        Minibatch size of the models' queries (default ``pyrovi.settings.batch_size``).
    modality
        ``"rna"`` or ``"protein"``: which counts to check (see above).

    Attributes
    ----------
    keys
        The ``(model, split)`` pairs checked, in order.
    observed
        ``{(model, split): counts (n_cells, n_genes) float32}``; in-sample arrays are shared.
    replicates
        ``{(model, split): replicates (n_cells, n_genes, n_samples) float32}``.
    cells
        ``{(model, split): row positions of the cells in adata}``.
    feature_dim
        ``"genes"`` or ``"proteins"``: the name of the feature axis.
    feature_names
        The genes (or proteins), in the order of the arrays' feature axis (the first model's registered
        order). ``gene_names`` is the same index.
    metrics
        ``{name: DataFrame}`` of every metric computed so far.

    Examples
    --------
    >>> import pyrovi.criticism
    >>> ppc = pyrovi.criticism.PosteriorPredictiveCheck(
    ...     adata, {"NB": nb_model, "Poisson": poisson_model}, n_samples=30)
    >>> cv = ppc.coefficient_of_variation(dim="genes")
    >>> cv.columns.tolist()
    ['model', 'split', 'gene', 'observed', 'replicated', 'abs_error']
    >>> coverage = ppc.calibration()
    >>> summary = ppc.summary()
    >>> summary[["model", "split"]].values.tolist()
    [['NB', 'in-sample'], ['NB', 'held-out'], ['Poisson', 'in-sample'], ['Poisson', 'held-out']]
    >>> proteins = pyrovi.criticism.PosteriorPredictiveCheck(
    ...     citeseq, {"totalVI": totalvi}, n_samples=5, modality="protein")
    """

    def __init__(
        self,
        adata: AnnData,
        models: Mapping[str, Any],
        n_samples: int = 30,
        indices: Sequence[int] | np.ndarray | None = None,
        layer: str | None = None,
        held_out: bool = True,
        batch_size: int | None = None,
        modality: Literal["rna", "protein"] = "rna",
    ):
        if not isinstance(adata, AnnData):
            raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
        check_ppc_arguments(n_samples, held_out, batch_size, layer)
        self.adata = adata
        self.modality = check_modality(modality)
        self.feature_dim = FEATURE_DIMS[self.modality]
        self.models = check_models(models, self.modality)
        self.n_samples = int(n_samples)
        self.batch_size = batch_size
        if self.modality == "protein" and layer is not None:
            raise ValueError(
                f"layer={layer!r} names RNA counts, but modality='protein' checks the proteins the models were set "
                "up with; leave layer=None."
            )
        self.layer = resolve_layer(self.models, layer) if self.modality == "rna" else None
        features = shared_features(self.models, self.modality)
        for name, model in self.models.items():
            if not getattr(model, "is_trained", True):
                logger.warning("Model %r is not trained; its posterior predictive is the initial network's.", name)

        in_sample = resolve_cells(indices, adata.n_obs)
        plan: list[tuple[Key, np.ndarray]] = []
        for name, model in self.models.items():
            plan.append(((name, IN_SAMPLE), in_sample))
            held = held_out_cells(model, adata) if held_out else None
            if held is not None:
                plan.append(((name, HELD_OUT), held))
        # each model's protein counts and batch codes, read once for every split
        proteins = {n: protein_arrays(m, adata) for n, m in self.models.items()} if self.modality == "protein" else {}
        if self.modality == "protein":
            features = self._measured_everywhere(features, plan, {n: codes for n, (_, codes) in proteins.items()})
        self.feature_names = pd.Index(features, name=self._feature)
        self.gene_names = self.feature_names
        self._warn_memory(plan)

        self.keys: list[Key] = [key for key, _ in plan]
        self.cells: dict[Key, np.ndarray] = dict(plan)
        self.observed: dict[Key, np.ndarray] = {}
        self.metrics: dict[str, pd.DataFrame] = {}
        # Randomised-PIT intervals per (model, split), computed once, reused for every level.
        self._pit: dict[Key, tuple[np.ndarray, np.ndarray]] = {}
        # Replicates are drawn by draw(), on first use, from the random state of this moment: the same
        # draws as at construction, and building a check costs no posterior sampling.
        self._features = features
        self._rng_state = rng_state()
        self._replicates: dict[Key, np.ndarray] | None = None

        if self.modality == "rna":
            shared_observed = read_counts(adata, self.layer, features, in_sample)
        for (name, split), cells in plan:
            model = self.models[name]
            if self.modality == "protein":  # read as each model was set up (their protein keys may differ)
                self.observed[(name, split)] = read_proteins(model, proteins[name][0], features, cells)
            else:
                self.observed[(name, split)] = (
                    shared_observed if split == IN_SAMPLE else read_counts(adata, self.layer, features, cells)
                )

    # ----------------------------------------------------------------------------------------------
    # replicates

    def draw(self) -> PosteriorPredictiveCheck:
        """Draw the replicates of every model and split; once (later calls return at once). Returns the check.

        Every metric calls it on first use, so calling it yourself only chooses when the sampling time is
        spent. A progress bar counts the (model, split) pairs drawn (``pyrovi.settings.progress_bar = False``
        hides it). The draws are those of the random state at construction (``pyrovi.settings.seed`` set before
        building the check fixes them), whatever ran in between.

        Examples
        --------
        >>> ppc.draw().replicates[("NB", "in-sample")].shape  # cells x genes x draws
        (200, 50, 5)
        """
        if self._replicates is None:
            replicates = {}
            with replaying(self._rng_state), progress(len(self.keys), "Posterior predictive draws", "split") as bar:
                for key in self.keys:
                    bar.set_postfix_str(_label(key), refresh=False)
                    replicates[key] = self._replicate(self.models[key[0]], self.cells[key], self._features)
                    bar.update()
            self._replicates = replicates
        return self

    @property
    def replicates(self) -> dict[Key, np.ndarray]:
        """``{(model, split): replicates (n_cells, n_genes, n_samples) float32}``, drawn on first use (:meth:`draw`)."""
        self.draw()
        return self._replicates

    # ----------------------------------------------------------------------------------------------
    # summary statistics

    def coefficient_of_variation(self, dim: Dim | None = None) -> pd.DataFrame:
        """Observed vs replicated coefficient of variation (std / mean) per gene or per cell.

        The replicated CV is the CV of each replicate matrix, averaged over replicates (the posterior
        predictive mean of the statistic, not the CV of pooled replicates, which would add the
        between-draw spread). Genes or cells with a zero mean have no CV (NaN) and are left out of
        the error. The mean absolute error per model and split is stored in
        ``metrics["cv_<dim>_error"]``.

        Parameters
        ----------
        dim
            ``"genes"`` (``"proteins"``; the default): CV across cells of each gene; ``"cells"``: CV
            across genes of each cell.

        Returns
        -------
        DataFrame with columns ``model``, ``split``, ``gene`` (or ``cell``), ``observed``,
        ``replicated``, ``abs_error``; stored in ``metrics["cv_<dim>"]``.

        Examples
        --------
        >>> cv = ppc.coefficient_of_variation("genes")
        >>> cv.shape  # 50 genes for each model and split
        (200, 6)
        """
        dim = self._dim(dim)
        return self._statistic(coefficient_of_variation, f"cv_{dim}", dim)

    def zero_fraction(self, dim: Dim | None = None) -> pd.DataFrame:
        """Observed vs replicated fraction of zero counts per gene or per cell.

        The fraction of entries equal to zero (not of non-zero entries), averaged over replicates. The
        mean absolute error per model and split is stored in ``metrics["zero_fraction_<dim>_error"]``.

        Parameters
        ----------
        dim
            ``"genes"`` (``"proteins"``; the default): across cells of each gene; ``"cells"``: across
            genes of each cell.

        Returns
        -------
        DataFrame with columns ``model``, ``split``, ``gene`` (or ``cell``), ``observed``,
        ``replicated``, ``abs_error``; stored in ``metrics["zero_fraction_<dim>"]``.

        Examples
        --------
        >>> zeros = ppc.zero_fraction("cells")
        >>> zeros.columns.tolist()
        ['model', 'split', 'cell', 'observed', 'replicated', 'abs_error']
        """
        dim = self._dim(dim)
        return self._statistic(zero_fraction, f"zero_fraction_{dim}", dim)

    def mean_variance(self) -> pd.DataFrame:
        """Per gene, the observed and replicated mean and variance across cells.

        Variances are population variances (``ddof=0``); replicated values are averaged over
        replicates. An underdispersed model (e.g. Poisson on overdispersed counts) shows replicated
        variances below the observed ones; ``metrics["mean_variance_error"]`` holds the mean absolute
        log ratio of replicated to observed variance (``variance_log_mae``) and its mean
        (``variance_log_ratio``, negative for too little variance).

        Returns
        -------
        DataFrame with columns ``model``, ``split``, ``gene``, ``observed_mean``, ``observed_variance``,
        ``replicated_mean``, ``replicated_variance``; stored in ``metrics["mean_variance"]``.

        Examples
        --------
        >>> moments = ppc.mean_variance()
        >>> moments.columns.tolist()
        ['model', 'split', 'gene', 'observed_mean', 'observed_variance', 'replicated_mean', 'replicated_variance']
        """
        frames, errors = [], []
        for key in self.keys:
            observed, replicates = self.observed[key], self.replicates[key]
            frame = pd.DataFrame(
                {
                    self._feature: self.feature_names,
                    "observed_mean": observed.mean(0, dtype=np.float64),
                    "observed_variance": observed.var(0, dtype=np.float64),
                    "replicated_mean": replicates.mean(0, dtype=np.float64).mean(-1),
                    "replicated_variance": replicates.var(0, dtype=np.float64).mean(-1),
                }
            )
            frames.append(_with_key(frame, key))
            valid = (frame["observed_variance"] > 0) & (frame["replicated_variance"] > 0)
            log_ratio = np.log(frame.loc[valid, "replicated_variance"] / frame.loc[valid, "observed_variance"])
            errors.append(
                {
                    "model": key[0],
                    "split": key[1],
                    "variance_log_mae": float(np.abs(log_ratio).mean()) if valid.any() else np.nan,
                    "variance_log_ratio": float(log_ratio.mean()) if valid.any() else np.nan,
                    f"n_{self.feature_dim}": int(valid.sum()),
                }
            )
        return self._store("mean_variance", pd.concat(frames, ignore_index=True), pd.DataFrame(errors))

    # ----------------------------------------------------------------------------------------------
    # calibration, predictive density, p-values

    def calibration(self, levels: Sequence[float] = DEFAULT_LEVELS) -> pd.DataFrame:
        """Empirical coverage of central posterior predictive intervals, per model, split and level.

        For each cell-gene entry, the observed count is ranked among its ``S`` replicates with the
        randomised probability integral transform of :func:`~pyrovi.criticism.pit_interval`:
        ``u = (r< + V (r= + 1)) / (S + 1)``, with ``r<`` replicates below the count, ``r=`` equal to it
        and ``V ~ U(0, 1)``. The entry is covered at level ``a`` when ``|u - 0.5| <= a / 2`` (inside
        the central ``a`` interval of the predictive distribution). The randomisation is integrated out
        exactly (:func:`~pyrovi.criticism.pit_coverage`), so the result needs no seed.

        Why this construction: with discrete counts many replicates tie with the observation, and with
        few replicates empirical quantiles are coarse, so "inside the [q_(1-a)/2, q_(1+a)/2] interval of
        the replicates" over-covers badly. The randomised rank above is exactly uniform whenever the
        observation and its replicates are exchangeable, whatever ``S`` and however many ties, so a
        well-specified model's coverage is nominal in expectation. Coverage above nominal means the
        predictive distribution is too wide (overdispersed model), below nominal too narrow (e.g. a
        Poisson model of overdispersed counts). In-sample coverage of a good model tends to sit a little
        above nominal, because the posterior has seen the counts it predicts.

        Parameters
        ----------
        levels
            Nominal levels in (0, 1).

        Returns
        -------
        DataFrame with columns ``model``, ``split``, ``level``, ``coverage``, ``error``
        (``coverage - level``); stored in ``metrics["calibration"]``.

        Examples
        --------
        >>> coverage = ppc.calibration(levels=(0.5, 0.9))
        >>> coverage.columns.tolist(), coverage["level"].unique().tolist()
        (['model', 'split', 'level', 'coverage', 'error'], [0.5, 0.9])
        """
        return self._store("calibration", self._calibration_table(levels))

    def log_predictive_density(self, n_samples: int | None = None) -> pd.DataFrame:
        """Mean per cell of the log posterior predictive density of the observed counts (higher is better).

        For each cell, ``log p(x_n | x) ≈ log (1/S) sum_s prod_g p(x_ng | z_s)`` with ``z_s ~ q(z | x_n)``:
        the exact likelihood of the model's observed site, averaged over ``S`` posterior draws in
        probability space (log-mean-exp). With finite ``S`` the estimate is biased low by Jensen's
        inequality, equally for every model. On the held-out split it is the held-out log predictive
        density. It is computed on the counts the models were set up with (their registered layer);
        for proteins, on each cell's measured proteins (the model's protein likelihood).
        Per-cell values are stored in ``metrics["log_predictive_density_cells"]``.

        Parameters
        ----------
        n_samples
            Posterior draws ``S`` (default: the check's ``n_samples``).

        Returns
        -------
        DataFrame with columns ``model``, ``split``, ``n_cells``, ``n_samples``,
        ``log_predictive_density`` (mean per cell) and ``standard_error`` (of that mean over cells);
        stored in ``metrics["log_predictive_density"]``.

        Examples
        --------
        >>> density = ppc.log_predictive_density(n_samples=10)
        >>> density.columns.tolist()
        ['model', 'split', ..., 'log_predictive_density', 'standard_error']
        """
        check_int("n_samples", n_samples, allow_none=True)
        n_draws = self.n_samples if n_samples is None else int(n_samples)
        # the replicates are drawn first, so a seed gives the same densities whichever metric comes first
        self.draw()
        rows, cells = [], []
        for key in self.keys:
            per_cell = per_cell_log_predictive_density(
                self.models[key[0]], self.adata, self.cells[key], n_draws, self.batch_size, site=self._site
            )
            rows.append(
                {
                    "model": key[0],
                    "split": key[1],
                    "n_cells": per_cell.size,
                    "n_samples": n_draws,
                    "log_predictive_density": float(per_cell.mean()),
                    "standard_error": float(per_cell.std(ddof=1) / np.sqrt(per_cell.size))
                    if per_cell.size > 1
                    else np.nan,
                }
            )
            cells.append(
                _with_key(
                    pd.DataFrame({"cell": self._cell_names(key), "log_predictive_density": per_cell}), key
                )
            )
        self.metrics["log_predictive_density_cells"] = pd.concat(cells, ignore_index=True)
        return self._store("log_predictive_density", pd.DataFrame(rows))

    def ppp_value(
        self,
        statistic: Callable[[np.ndarray], float | np.ndarray],
        name: str | None = None,
        mid_p: bool = False,
    ) -> pd.DataFrame:
        """Posterior predictive p-value ``P(T(x_rep) >= T(x_obs))`` of a statistic, per model and split.

        ``T`` is applied to the observed ``(cells, genes)`` count matrix and to each replicate matrix.
        It may return a scalar, or a vector (one p-value per entry: per gene when its length is the
        number of genes, per cell when it is the number of cells). p-values near 0 or 1 flag a
        feature of the data the model does not reproduce.

        Parameters
        ----------
        statistic
            ``T``: a function of a float32 count matrix.
        name
            Name of the statistic (default: the function's ``__name__``).
        mid_p
            Count ties ``T(x_rep) = T(x_obs)`` with weight 1/2 (useful for discrete statistics).

        Returns
        -------
        DataFrame with columns ``model``, ``split``, ``statistic``, then ``gene``, ``cell`` or
        ``index`` for a vector statistic, ``observed``, ``replicated_mean``, ``ppp_value``; stored in
        ``metrics["ppp_<name>"]``.

        Examples
        --------
        >>> import numpy as np
        >>> pvalues = ppc.ppp_value(lambda x: (x == 0).mean(), name="zero_fraction")
        >>> pvalues.columns.tolist()
        ['model', 'split', 'statistic', 'observed', 'replicated_mean', 'ppp_value']
        >>> per_gene = ppc.ppp_value(lambda x: x.max(0), name="max_per_gene")
        """
        if not callable(statistic):
            raise TypeError(f"statistic must be callable, got {type(statistic).__name__}.")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string or None, got {name!r:.80}.")
        check_bool("mid_p", mid_p)
        name = name or getattr(statistic, "__name__", "statistic")
        if name == "<lambda>":
            name = "statistic"
        frames = []
        for key in self.keys:
            observed, replicates = self.observed[key], self.replicates[key]
            t_obs = _statistic_values(name, statistic(observed))
            t_rep = np.stack(
                [_statistic_values(name, statistic(replicates[..., s])) for s in range(replicates.shape[-1])],
                axis=-1,
            )
            if t_obs.ndim > 1 or t_rep.shape[:-1] != t_obs.shape:
                raise ValueError(
                    f"statistic {name!r} must return a scalar or a 1-d array of a fixed length; it returned "
                    f"shape {t_obs.shape} on the observed counts and {t_rep.shape[:-1]} on a replicate."
                )
            frame = pd.DataFrame(
                {
                    "observed": np.atleast_1d(t_obs),
                    "replicated_mean": np.atleast_1d(t_rep.mean(-1)),
                    "ppp_value": np.atleast_1d(posterior_predictive_pvalue(t_obs, t_rep, mid_p=mid_p)),
                }
            )
            if t_obs.ndim == 1:
                column, labels = self._entry_labels(key, t_obs.size)
                frame.insert(0, column, labels)
            frame.insert(0, "statistic", name)
            frames.append(_with_key(frame, key))
        return self._store(f"ppp_{name}", pd.concat(frames, ignore_index=True))

    # ----------------------------------------------------------------------------------------------
    # summary

    def summary(self) -> pd.DataFrame:
        """One row per model and split: the errors of every metric, and the log predictive density.

        Metrics not computed yet are computed with their defaults (CV and zero fraction per gene and
        per cell, mean-variance, calibration at the default levels, log predictive density); those
        already computed are reused as they are.

        Returns
        -------
        DataFrame with columns ``model``, ``split``, ``n_cells``, ``cv_gene_mae``, ``cv_cell_mae``,
        ``zero_fraction_gene_mae``, ``zero_fraction_cell_mae``, ``variance_log_mae``,
        ``calibration_error`` (mean over levels of ``|coverage - level|``) and
        ``log_predictive_density`` (``cv_protein_mae``, ``zero_fraction_protein_mae`` when checking
        proteins). Lower errors and a higher log predictive density are better.
        Stored in ``metrics["summary"]``.

        Examples
        --------
        >>> table = ppc.summary().set_index(["model", "split"])
        >>> table.index.tolist()
        [('NB', 'in-sample'), ('NB', 'held-out'), ('Poisson', 'in-sample'), ('Poisson', 'held-out')]
        """
        features, feature = self.feature_dim, self._feature
        for metric, compute in (
            (f"cv_{features}", lambda: self.coefficient_of_variation(features)),
            ("cv_cells", lambda: self.coefficient_of_variation("cells")),
            (f"zero_fraction_{features}", lambda: self.zero_fraction(features)),
            ("zero_fraction_cells", lambda: self.zero_fraction("cells")),
            ("mean_variance", self.mean_variance),
            ("calibration", self.calibration),
            ("log_predictive_density", self.log_predictive_density),
        ):
            if metric not in self.metrics:
                compute()
        out = pd.DataFrame(
            {"model": [k[0] for k in self.keys], "split": [k[1] for k in self.keys],
             "n_cells": [len(self.cells[k]) for k in self.keys]}  # fmt: skip
        )
        merges = (
            (f"cv_{features}_error", {"mae": f"cv_{feature}_mae"}),
            ("cv_cells_error", {"mae": "cv_cell_mae"}),
            (f"zero_fraction_{features}_error", {"mae": f"zero_fraction_{feature}_mae"}),
            ("zero_fraction_cells_error", {"mae": "zero_fraction_cell_mae"}),
            ("mean_variance_error", {"variance_log_mae": "variance_log_mae"}),
        )
        for metric, columns in merges:
            table = self.metrics[metric][["model", "split", *columns]].rename(columns=columns)
            out = out.merge(table, on=["model", "split"], how="left")
        calibration = (
            self.metrics["calibration"]
            .assign(calibration_error=lambda d: d["error"].abs())
            .groupby(["model", "split"], sort=False, as_index=False)["calibration_error"]
            .mean()
        )
        out = out.merge(calibration, on=["model", "split"], how="left")
        lpd = self.metrics["log_predictive_density"][["model", "split", "log_predictive_density"]]
        out = out.merge(lpd, on=["model", "split"], how="left")
        self.metrics["summary"] = out
        return out

    # ----------------------------------------------------------------------------------------------
    # helpers

    def __repr__(self) -> str:
        sets = ", ".join(f"{m} {s} ({len(self.cells[(m, s)])} cells)" for m, s in self.keys)
        return (
            f"PosteriorPredictiveCheck({len(self.models)} model(s), {len(self.feature_names)} {self.feature_dim}, "
            f"{self.n_samples} samples: {sets}; metrics: {sorted(self.metrics)})"
        )

    @property
    def _feature(self) -> str:
        """Singular name of a feature: the column of per-feature tables."""
        return self.feature_dim[:-1]

    @property
    def _site(self) -> str | None:
        """The observed site of the checked counts (``None``: the model's first, its RNA)."""
        return "y" if self.modality == "protein" else None

    def _dim(self, dim: str | None) -> str:
        """``dim`` checked against this check's axes; ``None`` is the feature axis."""
        if dim is None or dim == self.feature_dim:
            return self.feature_dim
        if dim == "cells":
            return dim
        raise ValueError(f"dim must be {self.feature_dim!r} or 'cells' for this check of {self.modality}, got {dim!r}.")

    def _measured_everywhere(
        self, proteins: list[str], plan: list[tuple[Key, np.ndarray]], codes: dict[str, np.ndarray]
    ) -> list[str]:
        """The proteins measured in the batches of all checked cells, for every model; warn about the rest.

        ``codes``: each model's batch codes of all cells.
        """
        keep = np.ones(len(proteins), dtype=bool)
        for (name, _), cells in plan:
            keep &= measured_proteins(self.models[name], codes[name], proteins, cells)
        if not keep.any():
            raise ValueError(
                "No protein is measured in the batches of all the checked cells (each batch's panel lacks some); "
                "check the cells of one batch at a time with indices=."
            )
        if not keep.all():
            dropped = [p for p, k in zip(proteins, keep) if not k]
            warnings.warn(
                f"{len(dropped)} of {len(proteins)} proteins are missing from the panel of some checked cells' "
                f"batch and are left out of the check: {dropped[:10]}. Check them on the cells of the batches "
                "that measured them (indices=).",
                UserWarning,
                stacklevel=3,
            )
        return [p for p, k in zip(proteins, keep) if k]

    def _replicate(self, model: Any, cells: np.ndarray, features: list[str]) -> np.ndarray:
        kwargs = {"indices": cells, "n_samples": self.n_samples, "batch_size": self.batch_size}
        if self.modality == "protein":  # no RNA replicates: an empty gene list
            replicates = model.posterior_predictive_sample(self.adata, gene_list=[], protein_list=features, **kwargs)
            replicates = replicates["protein"]
        else:
            # Ask for genes by name only when this model's order differs from the reference.
            gene_list = None if model_genes(model) == features else features
            if hasattr(model, "protein_names"):  # a model of RNA and proteins: no protein replicates
                kwargs["protein_list"] = []
            replicates = model.posterior_predictive_sample(self.adata, gene_list=gene_list, **kwargs)
            if isinstance(replicates, dict):  # a model of RNA and proteins: {"rna": ..., "protein": ...}
                replicates = replicates["rna"]
        if replicates.ndim == 2:  # one sample comes back without the samples axis
            replicates = replicates[..., None]
        return np.asarray(replicates, dtype=np.float32)

    def _warn_memory(self, plan: list[tuple[Key, np.ndarray]]) -> None:
        n_bytes = sum(len(cells) for _, cells in plan) * len(self.feature_names) * self.n_samples * 4
        if n_bytes > _MEMORY_WARNING_BYTES:
            logger.warning(
                "The replicates will take %.1f GiB; pass indices= to check a subsample of cells, or fewer "
                "n_samples.",
                n_bytes / 1024**3,
            )

    def _cell_names(self, key: Key) -> pd.Index:
        return pd.Index(self.adata.obs_names[self.cells[key]], name="cell")

    def _entry_labels(self, key: Key, size: int) -> tuple[str, Any]:
        """Column name and labels of a vector statistic with ``size`` entries."""
        if size == len(self.feature_names):
            return self._feature, self.feature_names
        if size == len(self.cells[key]):
            return "cell", self._cell_names(key)
        return "index", np.arange(size)

    def _statistic(self, fn: Callable[..., np.ndarray], metric: str, dim: Dim) -> pd.DataFrame:
        """Observed vs replicated ``fn`` per gene or cell, and its mean absolute error per model and split."""
        axis = 0 if dim == self.feature_dim else 1  # reduce over cells for a per-gene statistic
        column = self._feature if dim == self.feature_dim else "cell"
        frames, errors = [], []
        for key in self.keys:
            observed = fn(self.observed[key], axis=axis)
            replicated = quiet_nanmean(fn(self.replicates[key], axis=axis), axis=-1)
            labels = self.feature_names if dim == self.feature_dim else self._cell_names(key)
            frame = pd.DataFrame(
                {column: labels, "observed": observed, "replicated": replicated,
                 "abs_error": np.abs(replicated - observed)}  # fmt: skip
            )
            frames.append(_with_key(frame, key))
            errors.append(
                {"model": key[0], "split": key[1], "mae": quiet_nanmean(frame["abs_error"].to_numpy()),
                 f"n_{dim}": int(frame["abs_error"].notna().sum())}  # fmt: skip
            )
        return self._store(metric, pd.concat(frames, ignore_index=True), pd.DataFrame(errors))

    def _pit_bounds(self, key: Key) -> tuple[np.ndarray, np.ndarray]:
        if key not in self._pit:
            lower, upper = pit_interval(self.observed[key], self.replicates[key])
            self._pit[key] = (lower.astype(np.float32), upper.astype(np.float32))
        return self._pit[key]

    def _calibration_table(self, levels: Sequence[float]) -> pd.DataFrame:
        levels = check_levels([levels] if isinstance(levels, (int, float, np.number)) else levels)
        rows = []
        for key in self.keys:
            lower, upper = self._pit_bounds(key)
            for level in levels:
                coverage = pit_coverage(lower, upper, level)
                rows.append({"model": key[0], "split": key[1], "level": level, "coverage": coverage,
                             "error": coverage - level})  # fmt: skip
        return pd.DataFrame(rows)

    def _store(self, metric: str, table: pd.DataFrame, errors: pd.DataFrame | None = None) -> pd.DataFrame:
        self.metrics[metric] = table
        if errors is not None:
            self.metrics[f"{metric}_error"] = errors
        return table


def _label(key: Key) -> str:
    model, split = key
    return model if split == IN_SAMPLE else f"{model} ({split})"


def check_ppc_arguments(n_samples: Any, held_out: Any, batch_size: Any, layer: Any) -> None:
    """The arguments of a posterior predictive check, checked before any replicate is drawn.

    Examples
    --------
    >>> check_ppc_arguments(30, "no", None, None)
    Traceback (most recent call last):
    ...
    TypeError: held_out must be True or False, got 'no' (str).
    """
    check_int("n_samples", n_samples)
    check_bool("held_out", held_out)
    check_int("batch_size", batch_size, allow_none=True)
    if layer is not None and not isinstance(layer, str):
        raise TypeError(f"layer must be the name of a layer (a string) or None, got {layer!r:.80}.")


def _statistic_values(name: str, value: Any) -> np.ndarray:
    """What a ppp_value statistic returned, as float64: numbers only (a scalar or an array of them)."""
    try:
        array = np.asarray(value)
    except Exception:  # noqa: BLE001 - ragged sequences
        array = np.asarray([None], dtype=object)
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"statistic {name!r} must return numbers (a scalar or a 1-d array of them), it returned "
            f"{value!r:.60} ({type(value).__name__}); e.g. lambda x: (x == 0).mean()."
        )
    return array.astype(np.float64)


def _with_key(frame: pd.DataFrame, key: Key) -> pd.DataFrame:
    """Prefix ``model`` and ``split`` columns: every table is long ("tidy") over models and splits."""
    frame.insert(0, "split", key[1])
    frame.insert(0, "model", key[0])
    return frame
