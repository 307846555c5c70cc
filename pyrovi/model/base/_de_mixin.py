"""Differential expression and feature correlation for models that decode normalised expression.

The statistics live in :mod:`pyrovi.model.base._differential`; this mixin only draws the posterior
samples from the model and reads the cell groups and raw counts from the AnnData.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ..._checks import check_bool, check_choice, check_int, check_number
from ..._constants import REGISTRY_KEYS
from ..._pyro_lock import serialised_query
from ._differential import (
    Comparison,
    change_function,
    check_test_arguments,
    comparison_from_indices,
    comparisons_from_groups,
    de_statistics,
    de_table,
    estimate_pseudocounts,
    feature_correlation,
    raw_count_statistics,
    robust_inliers,
)
from ._features import feature_positions
from ._minified_data import counts_dropped
from ._queries import check_library_size, check_weights, importance_probabilities

if TYPE_CHECKING:  # the contract with the model class, seen by static checkers only (see _contracts.py)
    from ._contracts import ExpressionHost
    from ._vae_mixin import VAEMixin

    class _Host(ExpressionHost, VAEMixin): ...
else:
    _Host = object

logger = logging.getLogger("pyrovi")


class DEMixin(_Host):
    """Bayesian differential expression (:meth:`differential_expression`) and gene-gene correlation
    of denoised expression (:meth:`get_feature_correlation_matrix`).

    It is mixed in with :class:`VAEMixin` (``get_latent_representation``, ``_batch_codes``) and
    :class:`BaseModelClass` (``adata_manager``, ``_validate_anndata``), and the class provides
    (:class:`~pyrovi.model.base._contracts.ExpressionHost`) ``get_normalized_expression(adata, indices,
    transform_batch, gene_list, library_size, n_samples, batch_size, return_mean, return_numpy)``, as
    :class:`~pyrovi.model.SCVI` does.

    Hooks, defined first in the class: the defaults treat the features as the genes of ``X`` and the draws as
    ``get_normalized_expression``'s one array; a model of other features (TOTALVI: genes and proteins)
    overrides them together.

    - ``_feature_names(manager)``: every feature's name, in the order of the draws and counts;
    - ``_de_labels(manager)``: every feature's name in the DE table (TOTALVI suffixes its proteins);
    - ``_de_counts(manager)``: the raw counts, cells x features;
    - ``_raw_statistics(manager, counts, cells, suffix)``: the ``all_stats`` columns of a group;
    - ``_group_draws(adata, cells, n_samples, transform_batch, gene_list, batch_size, ...)``: a group's draws
      of the denoised expression, ``(n_samples, n_features)``;
    - ``_correlation_draws(adata, indices, transform_batch, size_factor, n_samples, batch_size)``: draws for
      :meth:`get_feature_correlation_matrix`, ``(n_samples, n_cells, n_features)``.
    """

    # ----------------------------------------------------------------------------------------------
    # hooks (listed in the class docstring)

    @staticmethod
    def _feature_names(manager: Any) -> list[str]:
        """Every feature's name, in the order of the draws and counts."""
        return list(manager.get_state(REGISTRY_KEYS.X_KEY)["var_names"])

    def _de_labels(self, manager: Any) -> list[str]:
        """The name of every feature in the DE table."""
        return self._feature_names(manager)

    @staticmethod
    def _de_counts(manager: Any) -> Any:
        """Raw counts of every feature, cells x features (dense or sparse)."""
        return manager.get_arrays()[REGISTRY_KEYS.X_KEY]

    def _raw_statistics(self, manager: Any, counts: Any, cells: np.ndarray, suffix: str) -> dict[str, np.ndarray]:
        """Statistics of the raw counts of every feature over ``cells``."""
        return raw_count_statistics(counts[cells], suffix=suffix)

    def _group_draws(
        self,
        adata: AnnData | None,
        cells: np.ndarray,
        n_samples: int,
        transform_batch: Any,
        gene_list: Sequence[str] | None,
        batch_size: int | None,
        weights: str | None = "uniform",
        importance_weighting_kwargs: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """``n_samples`` draws of ``rho`` of a group: cells picked uniformly with replacement, one ``z`` each.

        With ``weights="importance"`` the draws are resampled by importance weights instead.
        """
        if weights == "importance":
            draws = self.get_normalized_expression(
                adata, indices=cells, transform_batch=transform_batch, gene_list=gene_list, library_size=1,
                n_samples_overall=n_samples, weights="importance", batch_size=batch_size, return_numpy=True,
                **(importance_weighting_kwargs or {}),
            )  # fmt: skip
            return np.asarray(draws, dtype=np.float32)
        # torch's generator, seeded by pyrovi.settings.seed like the guide's draws, keeps a run reproducible.
        # The picks stay unsorted: pairing draw i of both groups must not pair cells by their position in
        # the AnnData, which often follows samples or batches.
        picks = cells[torch.randint(cells.size, (n_samples,)).numpy()]
        draws = self.get_normalized_expression(
            adata,
            indices=picks,
            transform_batch=transform_batch,
            gene_list=gene_list,
            library_size=1,
            n_samples=1,
            batch_size=batch_size,
            return_numpy=True,
        )
        return np.asarray(draws, dtype=np.float32)

    def _correlation_draws(
        self, adata: AnnData | None, indices: Any, transform_batch: Any, size_factor: float, n_samples: int,
        batch_size: int | None,
    ) -> np.ndarray:
        """``(n_samples, n_cells, n_features)`` draws of the denoised expression, for correlations."""
        draws = self.get_normalized_expression(
            adata, indices=indices, transform_batch=transform_batch, library_size=size_factor,
            n_samples=n_samples, batch_size=batch_size, return_mean=False, return_numpy=True,
        )
        return np.asarray(draws)

    # ----------------------------------------------------------------------------------------------
    # queries

    @serialised_query
    def differential_expression(
        self,
        adata: AnnData | None = None,
        groupby: str | None = None,
        group1: str | Sequence[str] | None = None,
        group2: str | None = None,
        idx1: Sequence[int] | Sequence[bool] | np.ndarray | str | None = None,
        idx2: Sequence[int] | Sequence[bool] | np.ndarray | str | None = None,
        mode: Literal["vanilla", "change"] = "vanilla",
        delta: float | None = 0.25,
        batch_size: int | None = None,
        all_stats: bool = True,
        batch_correction: bool = False,
        batchid1: Sequence[str] | None = None,
        batchid2: Sequence[str] | None = None,
        fdr_target: float = 0.05,
        silent: bool = False,
        weights: Literal["uniform", "importance"] | None = "uniform",
        filter_outlier_cells: bool = False,
        importance_weighting_kwargs: dict[str, Any] | None = None,
        *,
        pseudocounts: float | None = None,
        n_samples_overall: int | None = None,
        test_mode: Literal["two", "three"] = "three",
        use_permutation: bool = False,
        m_permutation: int = 10000,
        change_fn: str | Callable | None = None,
        m1_domain_fn: Callable | None = None,
        threshold_counts: float = 0.01,
        cred_interval_lvls: Sequence[float] | None = None,
        n_samples: int | None = None,
        gene_list: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        r"""Bayesian test of differential expression between groups of cells, gene by gene.

        For each group, ``n_samples_overall`` (5000) posterior draws of the normalised expression ``rho``
        (rows sum to 1 over all genes) are taken: cells are picked uniformly with replacement from the
        group, and each pick gets its own draw ``z ~ q(z | x)`` decoded into ``rho`` (with
        ``weights="importance"``, draws are resampled by importance weights instead, see
        :meth:`~pyrovi.model.SCVI.get_normalized_expression`). Draw ``i`` of one group is compared with draw
        ``i`` of the other:

        - ``mode="vanilla"`` (SCVI's default): ``proba_m1 = P(rho1 > rho2)``, ``proba_m2 = 1 - proba_m1``,
          ``bayes_factor = log(proba_m1) - log(proba_m2)``.
        - ``mode="change"`` (TOTALVI's default): ``lfc = log2(rho1 + pseudocounts) - log2(rho2 +
          pseudocounts)``; ``proba_de = max(P(lfc >= delta), P(lfc < -delta))`` (``test_mode="three"``;
          ``"two"``: their sum), ``bayes_factor = log(proba_de) - log(1 - proba_de)``.

        Probabilities are clipped to ``[1e-8, 1 - 1e-8]`` inside the logs. Genes are called DE
        (``is_de_fdr_<fdr_target>``) by the posterior expected FDR rule
        (:func:`~pyrovi.model.base._differential.posterior_expected_fdr_mask`) applied to ``proba_de``,
        or in vanilla mode to ``max(proba_m1, proba_m2)``.

        Memory: the draws of the two groups of a comparison are held at once, ``2 * n_samples_overall *
        n_genes`` float32 values (5000 draws of 20,000 genes: 800 MB). Restrict ``gene_list`` or lower
        ``n_samples_overall`` for large panels. Time: one decoder pass per draw, in minibatches of
        ``batch_size``.

        Parameters
        ----------
        adata
            Data with the model's genes (default: the training data).
        groupby
            ``obs`` column of cell groups, used with ``group1`` and ``group2``.
        group1
            Group(s) to test; each is compared with ``group2`` in turn. ``None``: every group, each
            against the rest of the cells.
        group2
            Reference group; ``None``: the rest of the cells (named ``"Rest"``).
        idx1, idx2
            Instead of ``groupby``: the cells of each group as boolean masks, integer row positions, or a
            query string on ``adata.obs`` (``"cell_type == 'B'"``); ``idx2=None`` takes the rest. Named
            ``"idx1"`` and ``"idx2"`` in the table.
        mode
            ``"vanilla"`` or ``"change"`` (see above).
        delta
            Smallest ``|log2 fold change|`` that counts as DE in change mode; ``None`` estimates it from
            the genes' mean fold changes (a three-component mixture: down, unchanged, up).
        batch_size
            Minibatch size of the decoder passes (default ``pyrovi.settings.batch_size``).
        all_stats
            Add statistics of the raw counts (``raw_mean``, ``non_zeros_proportion``,
            ``raw_normalized_mean`` of each group).
        batch_correction
            Decode the draws under each batch in turn (``batchid1``/``batchid2``, default all batches,
            ``n_samples_overall / n_batches`` draws each) and pair draws decoded under the same batch, so
            that groups made of different batches are compared at equal batch composition and batch
            effects are not reported as DE.
        batchid1, batchid2
            With ``batch_correction``: the batches to decode group 1 and group 2 under (default all).
            Different sets are compared without pairing by batch.
        fdr_target
            Posterior expected FDR of the genes called DE.
        silent
            Do not log a line per comparison.
        weights
            ``"uniform"`` or ``"importance"`` weighting of the posterior draws.
        filter_outlier_cells
            Leave out each group's outliers in the latent space before drawing: the 10% of its cells
            farthest from the group's centre by a robust Mahalanobis distance (minimum covariance
            determinant, concentration steps).
        importance_weighting_kwargs
            Settings of the importance weights (``max_cells``, ``n_mc_samples``, ``truncation``, ...).
        pseudocounts
            Offset added to ``rho`` before the log2 in change mode. ``None`` (SCVI's default): estimated
            from the expression the model gives genes a group does not express (mean count below
            ``threshold_counts``).
        n_samples_overall
            Posterior draws per group (default 5000). ``n_samples`` is pyrovi's older name for it.
        test_mode
            ``"three"`` or ``"two"`` (see above).
        use_permutation, m_permutation
            Compare ``m_permutation`` random pairs of draws (drawn with replacement) instead of draw ``i``
            with draw ``i``.
        change_fn, m1_domain_fn
            Custom effect size ``(rho1, rho2, pseudocounts) -> r`` and DE region ``r -> (up, down)`` masks.
        threshold_counts
            Mean count below which a gene counts as unexpressed in a group (pseudocount estimation).
        cred_interval_lvls
            Levels of credible intervals of the log fold change to add as columns.
        gene_list
            Genes to test (default: all). ``rho`` is still normalised over all genes.

        Returns
        -------
        DataFrame indexed by gene, one block of rows per comparison, each sorted by ``bayes_factor``
        descending. Change mode: ``proba_de``, ``proba_not_de``, ``bayes_factor``, ``scale1``, ``scale2``
        (mean ``rho`` of the draws), ``pseudocounts``, ``delta``, ``lfc_mean``, ``lfc_median``,
        ``lfc_std``, ``lfc_min``, ``lfc_max``; vanilla mode: ``proba_m1``, ``proba_m2``,
        ``bayes_factor``, ``scale1``, ``scale2`` and the ``lfc_*`` summaries. Then, with ``all_stats``,
        ``raw_mean1``, ``raw_mean2`` (mean counts), ``non_zeros_proportion1``, ``non_zeros_proportion2``
        (fraction of cells with a count above 0), ``raw_normalized_mean1``, ``raw_normalized_mean2``
        (mean counts per 10^4 counts of the cell); ``is_de_fdr_<fdr_target>``, ``comparison`` (``"A vs
        B"``), ``group1``, ``group2``.

        Examples
        --------
        >>> de = model.differential_expression(groupby="labels", group1="label_0", group2="label_1")
        >>> de = model.differential_expression(groupby="labels", group1="label_0", mode="change", delta=0.5)
        >>> de.shape[0], de["comparison"].iloc[0]  # one row per gene
        (50, 'label_0 vs Rest')
        >>> top = de[de["is_de_fdr_0.05"]].sort_values("lfc_mean").head()
        """
        return self._differential_expression(
            adata, groupby, group1, group2, idx1, idx2, mode, delta, batch_size, all_stats, batch_correction,
            batchid1, batchid2, fdr_target, silent, weights, filter_outlier_cells, importance_weighting_kwargs,
            pseudocounts=pseudocounts, n_samples_overall=n_samples_overall, test_mode=test_mode,
            use_permutation=use_permutation, m_permutation=m_permutation, change_fn=change_fn,
            m1_domain_fn=m1_domain_fn, threshold_counts=threshold_counts, cred_interval_lvls=cred_interval_lvls,
            n_samples=n_samples, gene_list=gene_list, draw_kwargs={},
        )  # fmt: skip

    def _differential_expression(
        self, adata, groupby, group1, group2, idx1, idx2, mode, delta, batch_size, all_stats, batch_correction,
        batchid1, batchid2, fdr_target, silent, weights, filter_outlier_cells, importance_weighting_kwargs, *,
        pseudocounts, n_samples_overall, test_mode, use_permutation, m_permutation, change_fn, m1_domain_fn,
        threshold_counts, cred_interval_lvls, n_samples, gene_list, draw_kwargs,
    ) -> pd.DataFrame:  # fmt: skip
        """The work of :meth:`differential_expression`; ``draw_kwargs`` go to the model's expression draws."""
        total = _samples_per_group(n_samples_overall, n_samples)
        check_test_arguments(mode, delta, fdr_target)
        if weights not in (None, "uniform", "importance"):
            raise ValueError(f"weights must be 'uniform', 'importance' or None, got {weights!r}.")
        check_number("pseudocounts", pseudocounts, 0.0, allow_none=True)
        for name, flag in (
            ("all_stats", all_stats), ("batch_correction", batch_correction), ("silent", silent),
            ("filter_outlier_cells", filter_outlier_cells), ("use_permutation", use_permutation),
        ):  # fmt: skip
            check_bool(name, flag)
        check_int("m_permutation", m_permutation)
        check_number("threshold_counts", threshold_counts, 0.0)
        check_int("batch_size", batch_size, allow_none=True)
        if importance_weighting_kwargs is not None and not isinstance(importance_weighting_kwargs, dict):
            raise TypeError(
                "importance_weighting_kwargs must be a dict of settings (e.g. {'max_cells': 512}), got "
                f"{type(importance_weighting_kwargs).__name__}."
            )
        importance_weighting_kwargs = dict(importance_weighting_kwargs or {})
        check_weights(weights, importance_weighting_kwargs)
        _check_test_options(test_mode, change_fn, m1_domain_fn, cred_interval_lvls)
        manager = self._validate_anndata(adata)
        comparisons = _comparisons(manager.adata, groupby, group1, group2, idx1, idx2)
        batches = manager.get_state(REGISTRY_KEYS.BATCH_KEY)["categories"]
        plan1, plan2 = _batch_plan(batch_correction, batchid1, batchid2, batches)
        for name, plan in (("batchid1", plan1), ("batchid2", plan2)):  # named before any draw is made
            for batch in plan:
                try:
                    self._batch_codes(manager, batch)
                except ValueError:
                    raise ValueError(
                        f"{name} names {batch!r}, which is not a batch; batches are {[str(b) for b in batches]}."
                    ) from None
        gene_names, gene_positions = self._de_genes(manager, gene_list)
        labels = self._de_labels(manager)
        gene_names = labels if gene_positions is None else [labels[i] for i in gene_positions]
        all_counts = self._de_counts(manager)
        counts = all_counts if gene_positions is None else all_counts[:, gene_positions]
        tables = []
        for comparison in comparisons:
            if not silent:
                logger.info(
                    "differential expression: %s vs %s (%d vs %d cells)",
                    comparison.name1, comparison.name2, comparison.cells1.size, comparison.cells2.size,
                )  # fmt: skip
            cells1, cells2 = comparison.cells1, comparison.cells2
            if filter_outlier_cells:
                cells1, cells2 = (self._without_outliers(adata, cells, batch_size) for cells in (cells1, cells2))
            draws1, batch1 = self._batched_group_draws(
                adata, cells1, total, plan1, gene_list, batch_size, weights, importance_weighting_kwargs, draw_kwargs
            )
            draws2, batch2 = self._batched_group_draws(
                adata, cells2, total, plan2, gene_list, batch_size, weights, importance_weighting_kwargs, draw_kwargs
            )
            draws1, draws2 = _pair_draws(draws1, batch1, draws2, batch2, use_permutation, m_permutation)
            offset = pseudocounts
            if mode == "change" and offset is None:
                unexpressed1 = _column_means(counts[cells1]) < threshold_counts
                unexpressed2 = _column_means(counts[cells2]) < threshold_counts
                offset = estimate_pseudocounts(draws1, draws2, unexpressed1, unexpressed2)
            stats = de_statistics(
                draws1, draws2, mode=mode, delta=delta, pseudocounts=offset, test_mode=test_mode,
                change_fn=change_fn, m1_domain_fn=m1_domain_fn, cred_interval_lvls=cred_interval_lvls,
            )  # fmt: skip
            if all_stats:
                for cells, suffix in ((cells1, "1"), (cells2, "2")):
                    raw = self._raw_statistics(manager, all_counts, cells, suffix)
                    if counts_dropped(manager.adata):  # a minified AnnData: no counts to describe
                        raw = {key: np.full(np.shape(value), np.nan) for key, value in raw.items()}
                    stats.update(raw if gene_positions is None else {k: v[gene_positions] for k, v in raw.items()})
            tables.append(de_table(stats, gene_names, fdr_target, comparison.name1, comparison.name2))
        return pd.concat(tables) if len(tables) > 1 else tables[0]

    def _batched_group_draws(
        self, adata, cells, total, plan, gene_list, batch_size, weights, importance_weighting_kwargs, draw_kwargs
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Draws of a group's expression under each batch of ``plan`` (None: the cells' own), and the batch of each."""
        per_batch = max(2, total // len(plan)) if len(plan) > 1 else total
        draws, labels = [], []
        for batch in plan:
            draws.append(
                self._group_draws(
                    adata, cells, per_batch, batch, gene_list, batch_size,
                    weights=weights, importance_weighting_kwargs=importance_weighting_kwargs, **draw_kwargs,
                )  # fmt: skip
            )
            labels.append(np.full(draws[-1].shape[0], -1 if batch is None else plan.index(batch)))
        return np.concatenate(draws), np.concatenate(labels)

    @torch.inference_mode()
    def _without_outliers(self, adata: AnnData | None, cells: np.ndarray, batch_size: int | None) -> np.ndarray:
        """``cells`` less the 10% farthest from their robust centre in the latent space."""
        latent = self.get_latent_representation(adata, indices=cells, batch_size=batch_size)
        keep = robust_inliers(latent, contamination=0.1)
        if keep is None:
            warnings.warn(
                f"filter_outlier_cells: the latent covariance of a group of {cells.size} cells cannot be "
                "estimated (too few cells); all of its cells are used.",
                UserWarning,
                stacklevel=4,
            )
            return cells
        return cells[keep]

    @serialised_query
    def get_feature_correlation_matrix(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int = 10,
        batch_size: int | None = None,
        rna_size_factor: float = 1000,
        transform_batch: Any | Sequence[Any] | None = None,
        correlation_type: Literal["spearman", "pearson"] = "spearman",
    ) -> pd.DataFrame:
        """Gene-gene correlation of the denoised expression, across cells and posterior draws.

        Draws ``n_samples`` samples of ``rna_size_factor * rho`` for every cell, stacks them into one
        ``(n_samples * n_cells, n_genes)`` matrix and correlates its columns. Because the denoised
        expression lacks the count noise, co-regulated genes stand out more clearly than in raw counts.
        Holds ``n_samples * n_cells * n_genes`` values at once: pass ``indices`` for large data sets.

        Parameters
        ----------
        adata, indices, batch_size
            Cells to use (default: all of the training data).
        n_samples
            Posterior draws per cell.
        rna_size_factor
            Scale of the denoised expression (rows sum to it); it does not change Spearman correlations.
        transform_batch
            Decode as if every cell came from this batch; with a list, the draws under each batch are
            stacked (not averaged). Default: each cell's own batch.
        correlation_type
            ``"spearman"`` (of ranks) or ``"pearson"``.

        Returns
        -------
        DataFrame genes x genes, with the gene names as index and columns.

        Examples
        --------
        >>> corr = model.get_feature_correlation_matrix(n_samples=5, correlation_type="pearson")
        >>> corr.shape, float(corr.loc["gene_0", "gene_0"])
        ((50, 50), 1.0)
        """
        check_int("n_samples", n_samples, expected="a positive integer")
        check_library_size(rna_size_factor, "rna_size_factor", allow_latent=False)
        check_choice("correlation_type", correlation_type, ("spearman", "pearson"))
        manager = self._validate_anndata(adata)
        feature_names, _ = self._de_genes(manager, None)
        batches = transform_batch if isinstance(transform_batch, (list, tuple)) else [transform_batch]
        blocks = [
            self._correlation_draws(adata, indices, batch, rna_size_factor, n_samples, batch_size).reshape(
                -1, len(feature_names)
            )
            for batch in batches
        ]
        corr = feature_correlation(np.concatenate(blocks), correlation_type)
        return pd.DataFrame(corr, index=feature_names, columns=feature_names)

    # ----------------------------------------------------------------------------------------------

    def _importance_probabilities(
        self, adata: AnnData | None, cells: np.ndarray, z: Any, log_pz: Any, batch_size: int | None, **settings: Any
    ) -> np.ndarray:
        """Importance weights of posterior draws of a group (see ``importance_probabilities``)."""
        return importance_probabilities(self, adata, cells, z, log_pz, batch_size, **settings)

    @classmethod
    def _de_genes(cls, manager: Any, gene_list: Sequence[str] | None) -> tuple[list[str], np.ndarray | None]:
        names = cls._feature_names(manager)
        return (names if gene_list is None else list(gene_list)), feature_positions(names, gene_list, "gene_list")


def _check_test_options(test_mode: Any, change_fn: Any, m1_domain_fn: Any, cred_interval_lvls: Any) -> None:
    """The options of the change test, checked before any draw is made."""
    check_choice("test_mode", test_mode, ("two", "three"))
    change_function(change_fn)
    if m1_domain_fn is not None and not callable(m1_domain_fn):
        raise TypeError(f"m1_domain_fn must be a function r -> (up, down) masks or None, got {m1_domain_fn!r:.80}.")
    if cred_interval_lvls is not None:
        if isinstance(cred_interval_lvls, (str, bytes)) or not isinstance(cred_interval_lvls, (Sequence, np.ndarray)):
            raise TypeError(
                f"cred_interval_lvls must be a list of levels in (0, 1), e.g. [0.5, 0.95], got {cred_interval_lvls!r:.80}."
            )
        for level in cred_interval_lvls:
            check_number("each of cred_interval_lvls", level, 0.0, 1.0, low_open=True, high_open=True)


def _comparisons(
    adata: AnnData,
    groupby: str | None,
    group1: Any,
    group2: Any,
    idx1: Any,
    idx2: Any,
) -> list[Comparison]:
    """Resolve the two ways of naming groups (``groupby`` + names, or ``idx1``/``idx2``) to comparisons."""
    if groupby is not None and idx1 is not None:
        raise ValueError("pass either groupby (with group1/group2) or idx1/idx2, not both.")
    if groupby is not None:
        if idx2 is not None:
            raise ValueError("idx2 is only used with idx1; with groupby name the reference group with group2.")
        return comparisons_from_groups(adata.obs, groupby, group1, group2)
    if group1 is not None or group2 is not None:
        raise ValueError("group1/group2 name groups of an obs column: pass groupby too (or use idx1/idx2).")
    if idx1 is None:
        raise ValueError(
            "no groups to compare: pass groupby='<obs column>' (optionally group1/group2) or idx1 (and idx2)."
        )
    idx1, idx2 = (_query_positions(adata, idx) for idx in (idx1, idx2))
    return [comparison_from_indices(idx1, idx2, adata.n_obs)]


def _query_positions(adata: AnnData, idx: Any) -> Any:
    """Row positions of the cells an ``adata.obs`` query string selects (other selections unchanged)."""
    if not isinstance(idx, str):
        return idx
    try:
        selected = adata.obs.query(idx).index
    except Exception as err:  # pandas raises many kinds of errors for a bad expression
        raise ValueError(f"the cell selection {idx!r} is not a valid query of adata.obs: {err}") from None
    return np.flatnonzero(adata.obs_names.isin(selected))


def _samples_per_group(n_samples_overall: int | None, n_samples: int | None) -> int:
    """Draws per group from scvi-tools' ``n_samples_overall`` or pyrovi's older ``n_samples`` (default 5000)."""
    if n_samples_overall is not None and n_samples is not None and n_samples_overall != n_samples:
        raise ValueError(
            f"n_samples={n_samples} and n_samples_overall={n_samples_overall} both set the draws per group; "
            "pass one of them."
        )
    total = n_samples_overall if n_samples_overall is not None else n_samples if n_samples is not None else 5000
    check_int("n_samples_overall" if n_samples is None else "n_samples", total, expected="a positive integer")
    return int(total)


def _batch_plan(
    batch_correction: bool, batchid1: Any, batchid2: Any, batches: Sequence[str]
) -> tuple[list[Any], list[Any]]:
    """The batches each group's draws are decoded under: ``[None]`` (own batches) or a list of categories."""
    if not batch_correction:
        if batchid1 is not None or batchid2 is not None:
            raise ValueError(
                "batchid1/batchid2 choose the batches to decode each group under, which needs "
                "batch_correction=True (without it every cell is decoded under its own batch)."
            )
        return [None], [None]

    def listed(batchid: Any) -> list[Any]:
        if batchid is None:
            return list(batches)
        chosen = [batchid] if isinstance(batchid, (str, int, float)) else list(batchid)
        if not chosen:
            raise ValueError("batchid1/batchid2 is an empty list; name at least one batch.")
        return chosen

    return listed(batchid1), listed(batchid2)


def _pair_draws(
    draws1: np.ndarray, batch1: np.ndarray, draws2: np.ndarray, batch2: np.ndarray, use_permutation: bool,
    m_permutation: int,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Pair the two groups' draws: by batch when both were decoded under the same batches, else by order.

    With ``use_permutation``, ``m_permutation`` random pairs (with replacement) are formed instead, within
    each shared batch.
    """
    same_batches = set(np.unique(batch1)) == set(np.unique(batch2)) and (batch1 >= 0).all()
    if not same_batches and (batch1 >= 0).all() and set(np.unique(batch1)) & set(np.unique(batch2)):
        warnings.warn(
            "batchid1 and batchid2 overlap without being equal: draws are paired without regard to batch, "
            "so batch effects are only partly corrected.",
            UserWarning,
            stacklevel=4,
        )
    groups = sorted(set(np.unique(batch1))) if same_batches else [None]
    out1, out2 = [], []
    for label in groups:
        a = draws1 if label is None else draws1[batch1 == label]
        b = draws2 if label is None else draws2[batch2 == label]
        if use_permutation:
            size = max(1, m_permutation // len(groups))
            a = a[torch.randint(a.shape[0], (size,)).numpy()]
            b = b[torch.randint(b.shape[0], (size,)).numpy()]
        else:
            n = min(a.shape[0], b.shape[0])
            a, b = a[:n], b[:n]
        out1.append(a)
        out2.append(b)
    return np.concatenate(out1), np.concatenate(out2)


def _column_means(counts: Any) -> np.ndarray:
    return np.asarray(counts.mean(axis=0), dtype=np.float64).reshape(-1)
