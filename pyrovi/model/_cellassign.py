"""CellAssign: assign cells to known types from a marker table, with the type marginalised exactly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from pyro.infer import TraceEnum_ELBO

from .._checks import check_bool, check_choice, check_int
from .._constants import REGISTRY_KEYS
from .._pyro_lock import serialised_query
from ..data import CategoricalJointObsField, CategoricalObsField, LayerField, NumericalJointObsField, NumericalObsField
from ..data.fields._lookup import check_key_list, did_you_mean
from ..module import CellAssignModule
from ..module._cellassign import check_cellassign_priors
from ..train import ExpectationMaximization, ExpectationStep
from .base import BaseModelClass
from .base._posterior_sampling import parse_summary
from .base._queries import check_library_size

OTHER = "other"


class _RepeatedMarkerError(ValueError, AssertionError):
    """A gene or type named twice in the marker table. A ``ValueError``; also an ``AssertionError``, which is
    what scvi-tools raises there, so code that catches either works."""


def _marker_table(cell_type_markers: pd.DataFrame | dict) -> pd.DataFrame:
    """Validate a genes x types 0/1 table (a DataFrame, or the dict a saved model stores)."""
    if isinstance(cell_type_markers, dict):
        cell_type_markers = pd.DataFrame(
            cell_type_markers["values"], index=cell_type_markers["genes"], columns=cell_type_markers["types"]
        )
    if not isinstance(cell_type_markers, pd.DataFrame):
        raise TypeError("cell_type_markers must be a pandas DataFrame of 0/1, genes (index) x cell types (columns).")
    if cell_type_markers.shape[0] == 0 or cell_type_markers.shape[1] == 0:
        raise ValueError(
            f"cell_type_markers is empty (shape {cell_type_markers.shape}); it needs marker genes as rows and "
            "cell types as columns, with 1 where a gene marks a type."
        )
    values = cell_type_markers.to_numpy()
    bad = ~np.isin(values, (0, 1))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        value = values[row, col]
        value = value.item() if isinstance(value, np.generic) else value  # 0.5, not np.float64(0.5)
        raise ValueError(
            f"cell_type_markers must hold only 0 and 1 (1: the gene marks the type), but has {int(bad.sum())} "
            f"other value(s); the first is {value!r} for gene {str(cell_type_markers.index[row])!r}, "
            f"type {str(cell_type_markers.columns[col])!r}. Binarise the table, e.g. (markers > 0).astype(int), "
            "and fill missing values with 0."
        )
    for axis, names in (("gene", cell_type_markers.index), ("type", cell_type_markers.columns)):
        if names.has_duplicates:
            repeated = sorted(map(str, names[names.duplicated()].unique()))
            raise _RepeatedMarkerError(
                f"cell_type_markers names some {axis}s more than once: {repeated}. Give each {axis} one "
                f"{'row' if axis == 'gene' else 'column'}."
            )
    empty = [t for t, n in zip(cell_type_markers.columns, values.sum(0)) if n == 0 and str(t).lower() != OTHER]
    if empty:
        raise ValueError(
            f"Cell types without any marker: {empty}. Give each type at least one marker; only a column "
            f"named '{OTHER}' may be empty (cells matching no type)."
        )
    return cell_type_markers.astype(int)


def _baseline_log_mean(normalised: np.ndarray) -> np.ndarray:
    """Initial intercepts: each marker's log mean over the cells in its lower half of expression.

    The mean over all cells would include the over-expression of the type the gene marks; when that
    type is common the baseline starts too high and the fit can settle with types swapped. The lower
    half of the cells mostly does not express the marker, whatever the type proportions.
    """
    ordered = np.sort(normalised, axis=0)
    lower = ordered[: max(1, ordered.shape[0] // 2)]
    return np.log(lower.mean(0) + 1e-2)


class CellAssign(BaseModelClass):
    """CellAssign (Zhang et al. 2019): probabilistic assignment of cells to types given marker genes.

    The counts of the marker genes follow a negative binomial whose log mean rises by at least
    ``min_delta`` in the types a gene marks; the type of each cell is a discrete latent variable summed
    out exactly (``TraceEnum_ELBO``), so training maximises the marginal likelihood of the data (with MAP
    estimates of the type proportions and over-expressions). See :class:`~pyrovi.module.CellAssignModule`.

    Objectives, side by side:

    - ``"marginal"`` (default): gradient ascent on the exact marginal likelihood ``sum_n log sum_c
      pi_c p(x_n | c)``. No entropy term is added (the scvi-tools port adds one, and is reported to
      collapse all cells into one type on simulated data).
    - ``"em"``: CellAssign's EM: an E-step computes every training cell's responsibilities, which are
      held fixed through an M-step of many optimiser steps on the expected complete-data log likelihood
      (at least ``steps_per_m_step`` of them, in whole epochs; :class:`~pyrovi.train.ExpectationMaximization`).
      Both objectives have the same fixed points; within an M-step EM ignores how the responsibilities
      move with the parameters, so their paths differ.

    Parameters
    ----------
    adata
        AnnData set up with :meth:`setup_anndata`, holding the marker genes (any order, other genes ignored).
    cell_type_markers
        Genes x types DataFrame of 0/1. A column named ``"other"`` may be all zero.
    min_delta
        Least log fold change of a marker in its types.
    dirichlet_concentration
        Dirichlet prior of the type proportions (1: uniform).
    objective
        ``"marginal"`` or ``"em"``.

    Examples
    --------
    >>> adata = pyrovi.datasets.synthetic_cellassign()
    >>> CellAssign.setup_anndata(adata, size_factor_key="size_factor")
    >>> model = CellAssign(adata, adata.varm["cell_type_markers"])
    >>> model.train(max_epochs=5, progress_bar=False)
    >>> model.predict(soft=False)[:3]
    cell_0    type_2
    cell_1    type_1
    cell_2    type_0
    Name: cell_type, dtype: object
    """

    _QUERY_MAPPING_REFUSAL = (
        "it has no encoder to map new cells through (each cell's type is computed from its own counts) and its "
        "design matrix is not laid out per category as the surgery needs. Fit CellAssign on the query itself, "
        "with the same marker table: CellAssign.setup_anndata(query, ...); CellAssign(query, cell_type_markers)."
    )

    def __init__(
        self,
        adata: AnnData,
        cell_type_markers: pd.DataFrame | dict,
        min_delta: float = 2.0,
        dirichlet_concentration: float = 1.0,
        objective: Literal["marginal", "em"] = "marginal",
    ):
        check_choice("objective", objective, ("marginal", "em"))
        check_cellassign_priors(min_delta, dirichlet_concentration)
        super().__init__(adata)
        markers = _marker_table(cell_type_markers)
        var_names = pd.Index(self.adata_manager.get_state(REGISTRY_KEYS.X_KEY)["var_names"])
        gene_index = var_names.get_indexer(markers.index)
        missing = list(markers.index[gene_index < 0])
        if missing:
            raise ValueError(
                f"{len(missing)} marker genes are not in the AnnData: {missing[:10]}"
                + (" ..." if len(missing) > 10 else "")
                + f".{did_you_mean(str(missing[0]), var_names)} Use gene names from adata.var_names (same "
                "spelling and case), or drop those rows from cell_type_markers."
            )
        self.cell_type_markers = markers
        self._record_init_params(locals())
        self.init_params_["cell_type_markers"] = {
            "genes": [str(g) for g in markers.index],
            "types": [str(t) for t in markers.columns],
            "values": markers.to_numpy().tolist(),
        }
        self.objective = objective
        arrays = self.adata_manager.get_arrays()
        counts = arrays[REGISTRY_KEYS.X_KEY][:, gene_index]
        counts = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
        size_factor = arrays[REGISTRY_KEYS.SIZE_FACTOR_KEY].reshape(-1, 1)
        stats = self.summary_stats
        cat_state = self.adata_manager.get_state(REGISTRY_KEYS.CAT_COVS_KEY)
        self.module = CellAssignModule(
            markers.to_numpy(),
            gene_index,
            n_batch=stats["n_batch"],
            n_cats_per_cov=(cat_state or {}).get("n_cats_per_key"),
            n_continuous_cov=stats.get("n_extra_continuous_covs", 0),
            min_delta=min_delta,
            dirichlet_concentration=dirichlet_concentration,
            count_range=(0.0, float(np.quantile(counts, 0.99)) if counts.size else 1.0),
            log_mean_init=_baseline_log_mean(counts / size_factor),
        )

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        size_factor_key: str,
        batch_key: str | None = None,
        layer: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
    ) -> None:
        """Register an AnnData for CellAssign: raw counts and a positive size factor per cell.

        Parameters
        ----------
        size_factor_key
            ``obs`` column of size factors (e.g. total counts over their mean); required, as in CellAssign.
        batch_key, layer, categorical_covariate_keys, continuous_covariate_keys
            Batch, counts layer and covariates of the design matrix.

        Examples
        --------
        >>> adata.obs["size_factor"] = adata.X.sum(1).A1 / adata.X.sum(1).mean()
        >>> CellAssign.setup_anndata(adata, size_factor_key="size_factor")
        """
        cls._register(
            adata,
            {
                "size_factor_key": size_factor_key,
                "batch_key": batch_key,
                "layer": layer,
                "categorical_covariate_keys": check_key_list(categorical_covariate_keys, "categorical_covariate_keys") or None,
                "continuous_covariate_keys": check_key_list(continuous_covariate_keys, "continuous_covariate_keys") or None,
            },
        )

    @classmethod
    def _anndata_fields(
        cls,
        size_factor_key: str,
        batch_key: str | None = None,
        layer: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
    ) -> list:
        if size_factor_key is None:
            raise ValueError("CellAssign needs size factors: pass size_factor_key='...' (an obs column).")
        return [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            NumericalObsField(REGISTRY_KEYS.SIZE_FACTOR_KEY, size_factor_key, positive=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key, "n_batch"),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, continuous_covariate_keys),
        ]

    def train(
        self,
        max_epochs: int = 400,
        lr: float = 3e-3,
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        train_size: float | None = None,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        batch_size: int = 1024,
        datasplitter_kwargs: dict[str, Any] | None = None,
        plan_kwargs: dict[str, Any] | None = None,
        early_stopping: bool = True,
        early_stopping_patience: int = 15,
        early_stopping_warmup_epochs: int = 0,
        early_stopping_min_delta: float = 0.0,
        steps_per_m_step: int = 10,
        **kwargs: Any,
    ) -> None:
        """Fit by maximising the marginal likelihood (or by EM), with CellAssign's defaults.

        Larger minibatches (1024), learning rate 3e-3 with weight decay 1e-10, early stopping on the
        validation loss (patience 15), no KL warm-up (there is no continuous local latent). Other arguments
        as :meth:`BaseModelClass.train <pyrovi.model.base.BaseModelClass.train>`; ``plan_kwargs`` win over
        these defaults.

        Parameters
        ----------
        lr
            Learning rate of Adam.
        early_stopping, early_stopping_patience, early_stopping_warmup_epochs, early_stopping_min_delta
            Stop when ``elbo_validation`` has not improved by more than ``early_stopping_min_delta`` for
            ``early_stopping_patience`` epochs, watching from epoch ``early_stopping_warmup_epochs`` on.
        steps_per_m_step
            With ``objective="em"``: least number of optimiser steps in one M-step (it runs on to the end
            of the epoch). With the default minibatch size and fewer than 1024 training cells an epoch is
            one step, so the default 10 gives 20 EM cycles in 200 epochs (the original CellAssign's
            ``max_iter_em``). Ignored by ``"marginal"``.

        Examples
        --------
        >>> model.train(max_epochs=5, enable_progress_bar=False)
        >>> model.train(max_epochs=5, early_stopping=False, enable_progress_bar=False)
        """
        check_int("steps_per_m_step", steps_per_m_step)  # also when unused ("marginal"): a wrong value is a slip
        if plan_kwargs is not None and not isinstance(plan_kwargs, dict):
            raise TypeError(f"plan_kwargs must be a dict (e.g. {{'lr': 1e-3}}) or None, got {type(plan_kwargs).__name__}.")
        callbacks = kwargs.get("callbacks")
        if callbacks is not None and not isinstance(callbacks, (list, tuple)):
            raise TypeError(
                f"callbacks must be a list of Lightning callbacks (e.g. [MyCallback()]), got {type(callbacks).__name__}."
            )
        if self.objective == "marginal":
            loss = TraceEnum_ELBO(max_plate_nesting=1)
        else:
            loss = ExpectationMaximization(steps_per_m_step=steps_per_m_step)
        plan = {"loss": loss, "lr": lr, "weight_decay": 1e-10, "n_epochs_kl_warmup": None, **(plan_kwargs or {})}
        if isinstance(plan["loss"], ExpectationMaximization):
            # the E-steps run from a callback at epoch starts (the training plan stays generic)
            kwargs["callbacks"] = [*(callbacks or []), ExpectationStep()]
        super().train(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            train_size=train_size,
            validation_size=validation_size,
            shuffle_set_split=shuffle_set_split,
            batch_size=batch_size,
            datasplitter_kwargs=datasplitter_kwargs,
            early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience,
            early_stopping_warmup_epochs=early_stopping_warmup_epochs,
            early_stopping_min_delta=early_stopping_min_delta,
            plan_kwargs=plan,
            **kwargs,
        )

    @serialised_query
    @torch.inference_mode()
    def predict(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        soft: bool = True,
        batch_size: int | None = None,
    ) -> pd.DataFrame | pd.Series:
        """Posterior type probabilities of each cell (``soft``), or the most probable type.

        The posterior ``p(c_n | x_n)`` is exact: the enumerated model evaluated at the fitted (MAP)
        proportions and over-expressions.

        Returns
        -------
        DataFrame cells x types of probabilities, or with ``soft=False`` a Series of type names (MAP).

        Examples
        --------
        >>> probabilities = model.predict()
        >>> probabilities.shape
        (200, 4)
        >>> adata.obs["cellassign"] = model.predict(soft=False)
        """
        check_bool("soft", soft)
        self.module.eval()
        loader = self._make_data_loader(adata, indices, batch_size)
        chunks = []
        for batch in loader:
            args, kwargs = self._fn_args(batch)
            chunks.append(self.module.type_log_posterior(*args, **kwargs).exp())
        probabilities = torch.cat(chunks).cpu().numpy()
        cells = self._validate_anndata(adata).adata.obs_names[loader.indices]
        table = pd.DataFrame(probabilities, index=cells, columns=self.cell_type_markers.columns)
        return table if soft else table.idxmax(axis=1).rename("cell_type")

    @serialised_query
    @torch.inference_mode()
    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        transform_batch: Any | None = None,
        gene_list: Sequence[str] | None = None,
        library_size: float = 1,
        batch_size: int | None = None,
        return_numpy: bool | None = None,
        silent: bool = True,
    ) -> pd.DataFrame | np.ndarray:
        """Expected expression of the marker genes of each cell at a common size factor.

        For each cell, the negative binomial mean of each marker at size factor ``library_size`` under
        each type, ``exp(design @ beta + rho * delta)``, averaged over the cell's exact type posterior
        ``p(c | x)``. With ``transform_batch`` the design row is that of the given batch (the type
        posterior still uses the cell's own batch).

        Parameters
        ----------
        adata, indices, batch_size
            Cells (default: all training data).
        transform_batch
            Batch category whose design row is used (default: each cell's own).
        gene_list
            Marker genes to return (default: all markers, in the marker table's order).
        library_size
            Size factor of the returned expression.
        return_numpy
            Return an array instead of a DataFrame (cells x markers).
        silent
            Accepted for scvi-tools' signature (no progress bar is shown).

        Examples
        --------
        >>> expression = model.get_normalized_expression(transform_batch="batch_1")
        """
        from pyro import poutine

        check_library_size(library_size, allow_latent=False)
        if return_numpy is not None:
            check_bool("return_numpy", return_numpy)
        check_bool("silent", silent)
        if isinstance(gene_list, str):
            raise TypeError(f"gene_list must be a list of gene names, e.g. [{gene_list!r}], got the string {gene_list!r}.")
        manager = self._validate_anndata(adata)
        markers = [str(g) for g in self.cell_type_markers.index]
        positions = None if gene_list is None else np.array(
            [markers.index(str(g)) if str(g) in markers else -1 for g in gene_list]
        )
        if positions is not None and (positions < 0).any():
            missing = [g for g, i in zip(gene_list, positions) if i < 0]
            raise ValueError(f"gene_list holds genes that are not markers of this model: {missing[:10]}.")
        code = None
        if transform_batch is not None:
            categories = [str(c) for c in manager.get_state(REGISTRY_KEYS.BATCH_KEY)["categories"]]
            if str(transform_batch) not in categories:
                raise ValueError(f"transform_batch={transform_batch!r} is not a batch; batches are {categories}.")
            code = categories.index(str(transform_batch))
        self.module.eval()
        loader = self._make_data_loader(adata, indices, batch_size)
        out = []
        for batch in loader:
            args, kwargs = self._fn_args(batch)
            posterior = self.module.type_log_posterior(*args, **kwargs).exp()  # (n_cells, n_types)
            decode = {k: v for k, v in kwargs.items() if k not in ("n_obs", "kl_weight")}
            decode["size_factor"] = torch.full_like(kwargs["size_factor"], float(library_size))
            if code is not None and decode.get("batch_index") is not None:
                decode["batch_index"] = torch.full_like(decode["batch_index"], code)
            guide_trace = poutine.trace(self.module.guide).get_trace(*args, **decode)
            enumerated = poutine.enum(poutine.replay(self.module.model, trace=guide_trace), first_available_dim=-2)
            trace = poutine.trace(enumerated).get_trace(*args, **decode)
            fn = trace.nodes["x"]["fn"]
            while hasattr(fn, "base_dist"):
                fn = fn.base_dist
            means = fn.mean  # (n_types, n_cells, n_markers)
            out.append((posterior.T.unsqueeze(-1) * means).sum(0))  # weighted by p(c | x)
        values = torch.cat(out).cpu().numpy()
        if positions is not None:
            values = values[:, positions]
        if return_numpy:
            return values
        cells = manager.adata.obs_names[loader.indices]
        columns = markers if positions is None else [markers[i] for i in positions]
        return pd.DataFrame(values, index=cells, columns=columns)

    @serialised_query
    @torch.inference_mode()
    def sample_posterior(
        self,
        num_samples: int = 1000,
        return_sites: Sequence[str] | None = None,
        summary: Sequence[str] = ("mean", "std", "q05", "q50", "q95"),
        return_samples: bool = False,
    ) -> dict[str, Any]:
        """Draws of the global latents ``"type_proportions"`` and ``"log_delta"`` from their guide.

        The guide is a MAP point mass, so every draw is the estimate. Cell types are enumerated, not
        sampled: :meth:`predict` gives their exact posterior.

        Returns
        -------
        ``{site: (num_samples, *shape)}`` with ``return_samples``, else ``{site: {stat: array}}`` with
        stats among ``"mean"``, ``"std"`` and quantiles ``"qNN"``.

        Examples
        --------
        >>> posterior = model.sample_posterior(num_samples=10, return_sites=["type_proportions"])
        >>> posterior["type_proportions"]["mean"].shape
        (4,)
        """
        check_int("num_samples", num_samples)
        check_bool("return_samples", return_samples)
        stats = parse_summary(summary)
        if isinstance(return_sites, str):
            return_sites = [return_sites]
        sites = list(return_sites) if return_sites is not None else list(self.module.global_sites)
        if "cell_type" in sites:
            raise ValueError("cell_type is enumerated, not sampled: use predict() for its exact posterior.")
        unknown = [site for site in sites if site not in self.module.global_sites]
        if unknown:
            raise ValueError(f"Unknown sites {unknown}; CellAssign's latent sites are {list(self.module.global_sites)}.")
        draws = [self.module.global_guide() for _ in range(num_samples)]
        samples = {site: torch.stack([d[site] for d in draws]).cpu().numpy() for site in sites}
        if return_samples:
            return samples
        out = {}
        for site, values in samples.items():
            out[site] = {
                stat: values.mean(0) if stat == "mean" else values.std(0) if stat == "std" else np.quantile(values, level, axis=0)
                for stat, level in stats.items()
            }
        return out
