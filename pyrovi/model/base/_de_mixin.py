"""Differential expression and feature correlation for models that decode normalised expression.

The statistics live in :mod:`pyrovi.model.base._differential`; this mixin only draws the posterior
samples from the model and reads the cell groups and raw counts from the AnnData.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ..._constants import REGISTRY_KEYS
from ._differential import (
    Comparison,
    check_test_arguments,
    comparison_from_indices,
    comparisons_from_groups,
    de_statistics,
    de_table,
    feature_correlation,
    raw_count_statistics,
)
from ._features import feature_positions

logger = logging.getLogger("pyrovi")


class DEMixin:
    """Bayesian differential expression (:meth:`differential_expression`) and gene-gene correlation
    of denoised expression (:meth:`get_feature_correlation_matrix`).

    For a model with ``get_normalized_expression(adata, indices, transform_batch, gene_list,
    library_size, n_samples, batch_size, return_mean, return_numpy)``, as :class:`~pyrovi.model.SCVI`,
    and ``self.adata_manager``/``self._validate_anndata`` from :class:`BaseModelClass`.
    """

    def differential_expression(
        self,
        adata: AnnData | None = None,
        groupby: str | None = None,
        group1: str | Sequence[str] | None = None,
        group2: str | None = None,
        idx1: Sequence[int] | Sequence[bool] | np.ndarray | None = None,
        idx2: Sequence[int] | Sequence[bool] | np.ndarray | None = None,
        mode: Literal["vanilla", "change"] = "change",
        delta: float = 0.25,
        fdr_target: float = 0.05,
        batch_correction: bool = False,
        n_samples: int = 5000,
        gene_list: Sequence[str] | None = None,
        batch_size: int | None = None,
        silent: bool = False,
    ) -> pd.DataFrame:
        r"""Bayesian test of differential expression between groups of cells, gene by gene.

        For each group, ``n_samples`` posterior draws of the normalised expression ``rho`` (rows sum to
        1 over all genes) are taken: cells are picked uniformly with replacement from the group, and
        each pick gets its own draw ``z ~ q(z | x)`` decoded into ``rho``. The draws thus sample the
        group's expression, averaged over its cells and over the posterior. Draw ``i`` of one group is
        compared with draw ``i`` of the other:

        - ``mode="change"``: ``lfc = log2(rho1 + 1e-8) - log2(rho2 + 1e-8)``; ``proba_de = P(|lfc| >=
          delta)``, ``bayes_factor = log(proba_de) - log(1 - proba_de)``.
        - ``mode="vanilla"``: ``proba_m1 = P(rho1 > rho2)``, ``proba_m2 = 1 - proba_m1``,
          ``bayes_factor = log(proba_m1) - log(proba_m2)``.

        Probabilities are clipped to ``[1e-8, 1 - 1e-8]`` inside the logs. Genes are called DE
        (``is_de_fdr_<fdr_target>``) by the posterior expected FDR rule
        (:func:`~pyrovi.model.base._differential.posterior_expected_fdr_mask`) applied to ``proba_de``,
        or in vanilla mode to ``max(proba_m1, proba_m2)``.

        Memory: the draws of the two groups of a comparison are held at once, ``2 * n_samples *
        n_genes`` float32 values (5000 draws of 20,000 genes: 800 MB). Restrict ``gene_list`` or lower
        ``n_samples`` for large panels; the statistics themselves work on blocks of 1024 genes. Time: one
        decoder pass per draw, in minibatches of ``batch_size``.

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
            Instead of ``groupby``: the cells of each group as boolean masks or integer row positions;
            ``idx2=None`` takes the rest. Named ``"idx1"`` and ``"idx2"`` in the table.
        mode
            ``"change"`` or ``"vanilla"`` (see above).
        delta
            Smallest ``|log2 fold change|`` that counts as DE in change mode.
        fdr_target
            Posterior expected FDR of the genes called DE.
        batch_correction
            Decode every draw under each of the model's batches and average, so that groups made of
            different batches are compared at equal batch composition and batch effects are not reported
            as DE.
        n_samples
            Posterior draws per group.
        gene_list
            Genes to test (default: all). ``rho`` is still normalised over all genes.
        batch_size
            Minibatch size of the decoder passes (default ``pyrovi.settings.batch_size``).
        silent
            Do not log a line per comparison.

        Returns
        -------
        DataFrame indexed by gene, one block of rows per comparison, each sorted by ``bayes_factor``
        descending, with columns ``proba_de``, ``proba_not_de`` (or ``proba_m1``, ``proba_m2``),
        ``bayes_factor``, ``lfc_mean``, ``lfc_median``, ``lfc_std``, ``lfc_min``, ``lfc_max``,
        ``scale1``, ``scale2`` (mean ``rho`` of the draws), ``raw_mean1``, ``raw_mean2`` (mean counts),
        ``non_zeros_proportion1``, ``non_zeros_proportion2`` (fraction of cells with a count above 0),
        ``raw_normalized_mean1``, ``raw_normalized_mean2`` (mean counts per 10^4 counts of the cell),
        ``is_de_fdr_<fdr_target>``, ``comparison`` (``"A vs B"``), ``group1``, ``group2``.

        Examples
        --------
        >>> de = model.differential_expression(groupby="cell_type", group1="B", group2="T")  # doctest: +SKIP
        >>> de[de["is_de_fdr_0.05"]].sort_values("lfc_mean").head()  # doctest: +SKIP
        >>> markers = model.differential_expression(groupby="cell_type", mode="vanilla")  # doctest: +SKIP
        """
        _check_positive_int(n_samples, "n_samples")
        check_test_arguments(mode, delta, fdr_target)
        manager = self._validate_anndata(adata)
        comparisons = _comparisons(manager.adata, groupby, group1, group2, idx1, idx2)
        transform_batch = manager.get_state(REGISTRY_KEYS.BATCH_KEY)["categories"] if batch_correction else None
        gene_names, gene_positions = self._de_genes(manager, gene_list)
        counts = self._de_counts(manager)
        if gene_positions is not None:
            counts = counts[:, gene_positions]
        tables = []
        for comparison in comparisons:
            if not silent:
                logger.info(
                    "differential expression: %s vs %s (%d vs %d cells)",
                    comparison.name1, comparison.name2, comparison.cells1.size, comparison.cells2.size,
                )  # fmt: skip
            draws1, draws2 = (
                self._group_draws(adata, cells, n_samples, transform_batch, gene_list, batch_size)
                for cells in (comparison.cells1, comparison.cells2)
            )
            stats = de_statistics(draws1, draws2, mode=mode, delta=delta)
            stats.update(raw_count_statistics(counts[comparison.cells1], suffix="1"))
            stats.update(raw_count_statistics(counts[comparison.cells2], suffix="2"))
            tables.append(de_table(stats, gene_names, fdr_target, comparison.name1, comparison.name2))
        return pd.concat(tables) if len(tables) > 1 else tables[0]

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
        >>> corr = model.get_feature_correlation_matrix(n_samples=5, correlation_type="pearson")  # doctest: +SKIP
        >>> corr.loc["CD3D", "CD3E"]  # doctest: +SKIP
        """
        _check_positive_int(n_samples, "n_samples")
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

    def _group_draws(
        self,
        adata: AnnData | None,
        cells: np.ndarray,
        n_samples: int,
        transform_batch: list[str] | None,
        gene_list: Sequence[str] | None,
        batch_size: int | None,
    ) -> np.ndarray:
        """``n_samples`` draws of ``rho``: cells picked uniformly with replacement, one ``z`` draw each."""
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

    # Hooks a model with other features (e.g. TOTALVI's proteins) overrides: the feature names, their raw
    # counts, and posterior draws of their denoised expression.

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

    @staticmethod
    def _de_counts(manager: Any) -> Any:
        """Raw counts of every feature, cells x features (dense or sparse)."""
        return manager.get_arrays()[REGISTRY_KEYS.X_KEY]

    @staticmethod
    def _feature_names(manager: Any) -> list[str]:
        return list(manager.get_state(REGISTRY_KEYS.X_KEY)["var_names"])

    @classmethod
    def _de_genes(cls, manager: Any, gene_list: Sequence[str] | None) -> tuple[list[str], np.ndarray | None]:
        names = cls._feature_names(manager)
        return (names if gene_list is None else list(gene_list)), feature_positions(names, gene_list, "gene_list")


def _check_positive_int(value: Any, name: str) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


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
    return [comparison_from_indices(idx1, idx2, adata.n_obs)]
