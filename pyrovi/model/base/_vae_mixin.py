"""Posterior queries shared by every model whose module has a per-cell latent site ``z``.

They read the guide and model through Pyro's effect handlers rather than a module-specific API:
a query traces the guide on a minibatch, replays the model on the guide's draws, and reads sites.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from anndata import AnnData
from pyro import poutine
from pyro.distributions import TransformedDistribution

from ..._checks import check_bool, check_int
from ..._constants import REGISTRY_KEYS
from ..._pyro_lock import serialised_query
from ...module.base import per_cell_elbo_terms, per_cell_log_likelihood, trace_pair
from ._features import feature_positions
from ._importance import log_importance_weights
from ._minified_mixin import MinifiedModeMixin, refuse_if_minified

if TYPE_CHECKING:  # the contract with the model class, seen by static checkers only (see _contracts.py)
    from ._contracts import QueryHost as _Host
else:
    _Host = object

#: A minibatch as loaders yield it: tensors keyed by registry keys (``"X"``, ``"batch"``, ...).
Minibatch = dict[str, torch.Tensor]
#: Keyword arguments of the model's own loader that a query forwards (``data_loader_kwargs``).
_LOADER_KWARGS = ("shuffle",)


def _unwrap(fn: Any) -> tuple[Any, bool]:
    """The innermost base distribution of ``fn`` and whether a transform sits on the way.

    ``Normal(loc, scale).to_event(1)`` gives the Normal; a logistic-normal latent (a Normal pushed through
    a softmax, possibly inside ``Independent``) gives the Normal and ``True``.
    """
    transformed = False
    while hasattr(fn, "base_dist"):
        transformed = transformed or isinstance(fn, TransformedDistribution)
        fn = fn.base_dist
    return fn, transformed


def _as_scalar(values: np.ndarray) -> np.float64:
    """The mean of per-cell values as a 0-d numpy float (``.ndim == 0``; a ``float`` subclass)."""
    return np.float64(np.mean(values, dtype=np.float64))


class VAEMixin(MinifiedModeMixin, _Host):
    """Latent representation, ELBO, marginal likelihood and posterior predictive sampling.

    Sign conventions follow scvi-tools: :meth:`get_elbo` and :meth:`get_marginal_ll` return
    log-densities per cell (higher is better); :meth:`get_reconstruction_error` and the training
    history's ``elbo_*`` return losses, their negatives (lower is better).

    The class it is mixed into provides (:class:`~pyrovi.model.base._contracts.QueryHost`, as
    :class:`BaseModelClass` does): ``module``, ``_make_data_loader`` and ``_fn_args`` (the minibatches of a
    query and the model's arguments of one), ``adata_manager`` and ``_validate_anndata(adata)`` (the setup
    that reads a query's AnnData). A model adapts the queries through the class attributes below (which
    latent site, which observed sites).

    Examples
    --------
    >>> isinstance(model, VAEMixin)  # an SCVI
    True
    >>> model.get_latent_representation().shape, model.posterior_predictive_sample(n_samples=2).shape
    ((200, 10), (200, 50, 2))
    """

    #: the latent site returned by get_latent_representation
    _latent_site = "z"
    #: the observed sites replicated by posterior_predictive_sample
    _observed_sites: tuple[str, ...] = ("x",)
    #: get_reconstruction_error's keys and the observed site of each (None: all observed sites together)
    _reconstruction_error_sites: tuple[tuple[str, str | None], ...] = (("reconstruction_loss", None),)

    # ----------------------------------------------------------------------------------------------
    # minibatches of a query

    def _query_batches(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
        dataloader: Iterable[Minibatch] | None = None,
        data_loader_kwargs: dict[str, Any] | None = None,
        guide_only: bool = False,
    ) -> Iterable[Minibatch]:
        """The minibatches a query runs over: the given ``dataloader``, or the model's loader of ``adata``.

        ``dataloader`` is any iterable of dicts of tensors keyed by registry keys (what
        ``model._make_data_loader`` yields); ``adata`` and ``dataloader`` exclude each other.
        """
        if dataloader is not None:
            if adata is not None:
                raise ValueError(
                    "Pass either adata or dataloader, not both: a dataloader already says which cells to use."
                )
            return _checked_batches(dataloader)
        extra = dict(data_loader_kwargs or {})
        if "shuffle" in extra:
            check_bool("shuffle", extra["shuffle"])
        unknown = sorted(set(extra) - set(_LOADER_KWARGS))
        if unknown:
            raise TypeError(
                f"data_loader_kwargs {unknown} are not options of pyrovi's loader; it takes {list(_LOADER_KWARGS)} "
                "(batch_size and indices are arguments of the query itself)."
            )
        return self._make_data_loader(adata, indices, batch_size, guide_only=guide_only, **extra)

    def _batch_codes(self, manager: Any, transform_batch: Any) -> list[int | None]:
        """Codes of the batches named by ``transform_batch`` (``None``, a category, or a list of them).

        A category matches by its name (``"batch_1"``) or, for a numeric batch column, by value (``1`` finds
        the category ``"1.0"``); ``None`` keeps each cell's own batch.
        """
        if transform_batch is None or isinstance(transform_batch, (str, numbers.Number)):
            listed = [transform_batch]
        else:
            listed = list(transform_batch)
            if not listed:
                raise ValueError("transform_batch is an empty list; name at least one batch, or pass None.")
        if all(category is None for category in listed):
            return [None] * len(listed)  # each cell's own batch; the model may have no batch field at all
        categories = [str(c) for c in manager.get_state(REGISTRY_KEYS.BATCH_KEY)["categories"]]
        codes: list[int | None] = []
        for category in listed:
            if category is None:
                codes.append(None)
            elif str(category) in categories:
                codes.append(categories.index(str(category)))
            else:
                codes.append(_numeric_category(category, categories))
        return codes

    # ----------------------------------------------------------------------------------------------
    # the latent space

    @serialised_query
    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        mc_samples: int = 5000,
        batch_size: int | None = None,
        return_dist: bool = False,
        dataloader: Iterable[Minibatch] | None = None,
        **data_loader_kwargs: Any,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Posterior of the latent ``z`` of each cell: its mean, one draw, or its parameters.

        Parameters
        ----------
        adata
            Data with the model's genes (default: the training data).
        indices
            Cells to use (default: all).
        give_mean
            Return the posterior mean (otherwise one draw of ``q(z | x)``). For a latent without a
            closed-form mean (``latent_distribution="ln"``: the softmax of a Gaussian) the mean is the
            average of ``mc_samples`` draws.
        mc_samples
            Draws averaged for the mean when the posterior has no closed-form mean.
        batch_size
            Minibatch size (default ``pyrovi.settings.encode_batch_size``, 1024: only the encoder runs).
        return_dist
            Return the mean and variance of the Gaussian posterior instead, ``(qz_mean, qz_var)`` (for a
            logistic-normal latent: of the Gaussian before the softmax). ``give_mean`` is then ignored.
        dataloader
            Minibatches to encode instead of ``adata`` (dicts of tensors keyed by registry keys, as the
            model's ``_make_data_loader`` yields them).
        **data_loader_kwargs
            Options of the model's loader (``shuffle``).

        Returns
        -------
        Array of shape ``(n_cells, n_latent)``, or with ``return_dist`` a pair of them (mean, variance).

        Examples
        --------
        >>> z = model.get_latent_representation()
        >>> adata.obsm["X_pyrovi"] = z
        >>> qz_mean, qz_var = model.get_latent_representation(return_dist=True)
        >>> z.shape, qz_var.shape
        ((200, 10), (200, 10))
        """
        check_bool("give_mean", give_mean)
        check_bool("return_dist", return_dist)
        check_int("mc_samples", mc_samples)
        self.module.eval()
        softmax_latent = getattr(self.module, "latent_distribution", "normal") == "ln"
        means, variances, out = [], [], []
        for batch in self._query_batches(adata, indices, batch_size, dataloader, data_loader_kwargs, guide_only=True):
            args, kwargs = self._fn_args(batch)
            fn = poutine.trace(self.module.guide).get_trace(*args, **kwargs).nodes[self._latent_site]["fn"]
            base, transformed = _unwrap(fn)
            if return_dist:
                means.append(base.loc)
                variances.append(base.scale.square())
                continue
            # a logistic-normal latent is either a transformed site or a Gaussian site the module softmaxes
            to_latent = (lambda z: torch.softmax(z, -1)) if softmax_latent and not transformed else (lambda z: z)
            if not give_mean:
                out.append(to_latent(fn.sample()))
            elif transformed or softmax_latent:
                out.append(to_latent(fn.sample((mc_samples,))).mean(0))
            else:
                out.append(fn.mean)
        if return_dist:
            return torch.cat(means).cpu().numpy(), torch.cat(variances).cpu().numpy()
        return torch.cat(out).cpu().numpy()

    # ----------------------------------------------------------------------------------------------
    # fit of the data

    @serialised_query
    @torch.inference_mode()
    def get_elbo(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        dataloader: Iterable[Minibatch] | None = None,
        return_mean: bool = True,
        data_loader_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> np.float64 | np.ndarray:
        """Evidence lower bound per cell, ``E_q[log p(x | z)] - KL(q(z | x) || p(z))``. Higher is better.

        The KL term is analytic where torch knows it, so the estimate has the variance of a single
        draw of the reconstruction term only. This is the negative of the ``elbo_*`` loss in ``history``.

        Parameters
        ----------
        adata, indices, batch_size
            Cells to evaluate (default: all training data).
        dataloader
            Minibatches to evaluate instead of ``adata`` (see :meth:`get_latent_representation`).
        return_mean
            Average over cells (otherwise one value per cell).
        data_loader_kwargs
            Options of the model's loader (``shuffle``).
        **kwargs
            Accepted for scvi-tools' signature (arguments of its module's forward pass); pyrovi's
            modules take none, so any given is an error.

        Returns
        -------
        With ``return_mean``, a 0-d ``numpy.float64`` (a Python ``float`` too); otherwise an array
        ``(n_cells,)``.

        Examples
        --------
        >>> elbo = model.get_elbo(indices=model.validation_indices)  # nats per cell, higher is better
        >>> bool(elbo < 0)
        True
        """
        _no_module_kwargs(kwargs, "get_elbo")
        if dataloader is None:
            refuse_if_minified(self, adata, "get_elbo")
        check_bool("return_mean", return_mean)
        batches = self._query_batches(adata, indices, batch_size, dataloader, data_loader_kwargs)
        values = self._per_cell(batches, lambda mt, gt: per_cell_elbo_terms(mt, gt)["elbo"])
        return _as_scalar(values) if return_mean else values

    @serialised_query
    @torch.inference_mode()
    def get_reconstruction_error(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        dataloader: Iterable[Minibatch] | None = None,
        return_mean: bool = True,
        data_loader_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, np.float64 | np.ndarray]:
        """Reconstruction loss per cell, ``-E_q[log p(x | z)]`` (one posterior draw; lower is better).

        The negative expected log-likelihood of a cell's counts under its posterior, without the KL
        term of the ELBO. Returned as ``{"reconstruction_loss": value}``: scvi-tools' key, and the value
        scvi-tools 1.5 returns (a positive loss, although its docstring says "higher is better"). Models
        of several modalities return one loss per modality under scvi-tools' keys (TOTALVI:
        ``reconst_loss_gene`` and ``reconst_loss_protein``, the latter over each cell's measured
        proteins).

        Parameters
        ----------
        adata, indices, batch_size
            Cells to evaluate (default: all training data).
        dataloader
            Minibatches to evaluate instead of ``adata``.
        return_mean
            Average over cells (a 0-d ``numpy.float64``); otherwise one value per cell.
        data_loader_kwargs, **kwargs
            As for :meth:`get_elbo`.

        Examples
        --------
        >>> error = model.get_reconstruction_error()["reconstruction_loss"]  # -log p(x | z) per cell
        >>> bool(error > 0)
        True
        """
        _no_module_kwargs(kwargs, "get_reconstruction_error")
        if dataloader is None:
            refuse_if_minified(self, adata, "get_reconstruction_error")
        check_bool("return_mean", return_mean)
        keys, sites = zip(*self._reconstruction_error_sites)

        def log_likelihoods(model_trace: poutine.Trace, guide_trace: poutine.Trace) -> torch.Tensor:
            # one draw per minibatch serves every key, so the losses of several modalities are joint
            terms = [
                per_cell_elbo_terms(model_trace, guide_trace)["reconstruction"]
                if site is None
                else per_cell_log_likelihood(model_trace, site)
                for site in sites
            ]
            return torch.stack(terms, -1)

        batches = self._query_batches(adata, indices, batch_size, dataloader, data_loader_kwargs)
        values = -self._per_cell(batches, log_likelihoods)
        return {key: _as_scalar(values[:, i]) if return_mean else values[:, i] for i, key in enumerate(keys)}

    @serialised_query
    @torch.inference_mode()
    def get_marginal_ll(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_mc_samples: int = 1000,
        batch_size: int | None = None,
        return_mean: bool = True,
        dataloader: Iterable[Minibatch] | None = None,
        data_loader_kwargs: dict[str, Any] | None = None,
        n_mc_samples_per_pass: int = 1,
        **kwargs: Any,
    ) -> np.float64 | np.ndarray:
        """Importance-sampling estimate of ``log p(x)`` per cell, with the guide as proposal.

        ``log p(x) ≈ logsumexp_k [log p(x, z_k) - log q(z_k | x)] - log K`` with ``z_k ~ q(z | x)``.
        By Jensen's inequality its expectation lies between the ELBO and ``log p(x)``, so it is at
        least :meth:`get_elbo` up to Monte Carlo noise and tightens as ``n_mc_samples`` grows.

        Parameters
        ----------
        adata, indices, batch_size, dataloader, data_loader_kwargs
            Cells to evaluate, as for :meth:`get_elbo`.
        n_mc_samples
            Draws ``K`` per cell.
        return_mean
            Average over cells (a 0-d ``numpy.float64``); otherwise one value per cell.
        n_mc_samples_per_pass
            Draws traced at once (each minibatch's cells repeated this many times): more is faster,
            memory grows with ``batch_size * n_mc_samples_per_pass * n_genes``.
        **kwargs
            As for :meth:`get_elbo`.

        Examples
        --------
        >>> log_px = model.get_marginal_ll(n_mc_samples=20)  # importance sampled, per cell
        >>> bool(log_px >= model.get_elbo() - 1)  # the ELBO bounds it from below, up to Monte Carlo noise
        True
        """
        _no_module_kwargs(kwargs, "get_marginal_ll")
        if dataloader is None:
            refuse_if_minified(self, adata, "get_marginal_ll")
        check_bool("return_mean", return_mean)
        check_int("n_mc_samples", n_mc_samples)
        check_int("n_mc_samples_per_pass", n_mc_samples_per_pass)

        weights = log_importance_weights(
            self, adata, indices, n_mc_samples, batch_size, dataloader, data_loader_kwargs, n_mc_samples_per_pass
        )
        values = (torch.logsumexp(weights, 0) - math.log(n_mc_samples)).cpu().numpy()
        return _as_scalar(values) if return_mean else values

    # ----------------------------------------------------------------------------------------------
    # replicated data

    @serialised_query
    @torch.inference_mode()
    def posterior_predictive_sample(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        transform_batch: Any | Sequence[Any] | None = None,
        n_samples: int = 1,
        gene_list: Sequence[str] | None = None,
        batch_size: int | None = None,
        dataloader: Iterable[Minibatch] | None = None,
        silent: bool = True,
        **data_loader_kwargs: Any,
    ) -> np.ndarray:
        """Replicate counts from the posterior predictive ``p(x_rep | x)``.

        Each replicate draws the latents from the guide given the cell's data, then new counts from the
        likelihood (the model with its observations released, ``poutine.uncondition``).

        Parameters
        ----------
        adata, indices, batch_size
            Cells to replicate (default: all training data).
        transform_batch
            Draw the counts as if every cell came from this batch (the latents still come from the
            cell's own data); with a list, the replicates under each batch are averaged (no longer
            integers). Default: each cell's own batch.
        n_samples
            Replicates per cell.
        gene_list
            Genes to return (default: all).
        dataloader
            Minibatches to replicate instead of ``adata``.
        silent
            Accepted for scvi-tools' signature (no progress bar is shown).
        **data_loader_kwargs
            Options of the model's loader (``shuffle``).

        Returns
        -------
        Dense array of shape ``(n_cells, n_genes)`` for one sample, ``(n_cells, n_genes, n_samples)``
        otherwise (scvi-tools returns the same values as a ``sparse.GCXS`` array; pyrovi does not depend
        on the ``sparse`` package).

        Examples
        --------
        >>> x_rep = model.posterior_predictive_sample(n_samples=5)
        >>> x_rep.shape
        (200, 50, 5)
        """
        check_bool("silent", silent)
        (result,) = self._predictive_sites(
            adata, indices, n_samples, batch_size, {self._observed_sites[0]: self._gene_indices(gene_list)},
            transform_batch=transform_batch, dataloader=dataloader, data_loader_kwargs=data_loader_kwargs,
        )  # fmt: skip
        return result

    def _predictive_site(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        n_samples: int,
        batch_size: int | None,
        site: str,
        feature_idx: np.ndarray | None,
    ) -> np.ndarray:
        """Posterior predictive replicates of one observed site, ``(n_cells, n_features[, n_samples])``."""
        (result,) = self._predictive_sites(adata, indices, n_samples, batch_size, {site: feature_idx})
        return result

    def _predictive_sites(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        n_samples: int,
        batch_size: int | None,
        sites: dict[str, np.ndarray | None],
        transform_batch: Any = None,
        dataloader: Iterable[Minibatch] | None = None,
        data_loader_kwargs: dict[str, Any] | None = None,
    ) -> list[np.ndarray]:
        """Replicates of several observed sites from the same posterior draws.

        ``sites`` maps each site to the feature positions to keep (``None``: all). Every replicate of
        every site comes from the same posterior draw of the latents, so replicates of different
        modalities of a cell stay jointly distributed. Returns one array ``(n_cells, n_features[,
        n_samples])`` per site, in the order of ``sites``.
        """
        check_int("n_samples", n_samples)
        names = list(sites)

        def read(trace: poutine.Trace) -> tuple[torch.Tensor, ...]:
            out = []
            for name in names:
                values = trace.nodes[name]["value"]
                out.append(values if sites[name] is None else values[..., sites[name]])
            return tuple(out)

        results = self._decode_draws(
            adata, indices, n_samples, batch_size, transform_batch, read,
            model=poutine.uncondition(self.module.model), dataloader=dataloader,
            data_loader_kwargs=data_loader_kwargs,
        )  # fmt: skip
        # (n_samples, n_cells, n_features) -> (n_cells, n_features, n_samples)
        results = [np.moveaxis(r, 0, -1) for r in results]
        return [r[..., 0] if n_samples == 1 else r for r in results]

    # ----------------------------------------------------------------------------------------------

    def _gene_indices(self, gene_list: Sequence[str] | None) -> np.ndarray | None:
        var_names = self.adata_manager.get_state(REGISTRY_KEYS.X_KEY)["var_names"]
        return feature_positions(var_names, gene_list, "gene_list")

    def _decode_draws(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        n_samples: int,
        batch_size: int | None,
        transform_batch: Any,
        read: Callable[[Any], tuple[torch.Tensor, ...]],
        model: Callable | None = None,
        dataloader: Iterable[Minibatch] | None = None,
        data_loader_kwargs: dict[str, Any] | None = None,
        guide_draws: list | None = None,
    ) -> list[np.ndarray]:
        """Apply ``read(model_trace) -> tuple of tensors`` to ``n_samples`` posterior draws per minibatch.

        Each draw traces the guide on the cells' own data, then replays the model (``model``, default
        the module's) on it. With ``transform_batch`` (a batch category, or a list of them whose results
        are averaged) the model decodes as if every cell came from that batch. Guide sites that the
        module lists in ``transform_batch_guide_sites`` (latents whose guide is a function of the batch,
        e.g. totalVI's protein background ``q(log beta | z, batch)``) are drawn again under the target
        batch, given the same draws of every other site; all other latents keep the draw from the
        cell's own data. Returns one array ``(n_samples, n_cells, ...)`` per tensor that ``read``
        returns. ``guide_draws``, when a list, receives each draw's guide trace (per minibatch, a list
        of ``n_samples`` traces).
        """
        check_int("n_samples", n_samples)
        manager = self._validate_anndata(adata) if dataloader is None else self.adata_manager
        codes = self._batch_codes(manager, transform_batch)
        model = self.module.model if model is None else model
        redrawn = frozenset(getattr(self.module, "transform_batch_guide_sites", ()))
        self.module.eval()
        chunks: list[list[torch.Tensor]] = []
        with torch.inference_mode():
            for batch in self._query_batches(adata, indices, batch_size, dataloader, data_loader_kwargs):
                args, kwargs = self._fn_args(batch)
                draws = []
                traces = []
                for _ in range(n_samples):
                    guide_trace = poutine.trace(self.module.guide).get_trace(*args, **kwargs)
                    traces.append(guide_trace)
                    per_batch = []
                    for code in codes:
                        decode_kwargs = dict(kwargs)
                        if code is not None:
                            decode_kwargs["batch_index"] = self._target_batch_index(kwargs, args, code)
                        decode_trace = guide_trace
                        if code is not None and redrawn:
                            decode_trace = self._redraw_under_batch(guide_trace, redrawn, args, decode_kwargs)
                        replayed = poutine.replay(model, trace=decode_trace)
                        per_batch.append(read(poutine.trace(replayed).get_trace(*args, **decode_kwargs)))
                    draws.append([torch.stack(t).float().mean(0) if len(t) > 1 else t[0] for t in zip(*per_batch)])
                if guide_draws is not None:
                    guide_draws.append(traces)
                chunks.append([torch.stack(t) for t in zip(*draws)])
        if not chunks:
            raise ValueError("The query selects no cells; pass at least one cell (indices) or a non-empty dataloader.")
        return [torch.cat(parts, dim=1).cpu().numpy() for parts in zip(*chunks)]

    @staticmethod
    def _target_batch_index(kwargs: dict, args: tuple, code: int) -> torch.Tensor:
        batch_index = kwargs.get("batch_index")
        if batch_index is None:  # a model set up without batches has one batch, code 0
            x = args[0]
            return torch.full((x.shape[0], 1), code, dtype=torch.long, device=x.device)
        return torch.full_like(batch_index, code)

    def _redraw_under_batch(
        self, guide_trace: poutine.Trace, redrawn: frozenset[str], args: tuple, decode_kwargs: dict
    ) -> poutine.Trace:
        """The guide's trace under ``decode_kwargs``' batch, keeping ``guide_trace``'s draws except ``redrawn``.

        The guide runs again with the target batch, replaying every sample site of ``guide_trace`` but
        the ``redrawn`` ones, which are sampled afresh from their batch-dependent guide given the kept
        draws (so ``z`` and the library still come from the cell's own data, as in scvi-tools).
        """
        kept = poutine.Trace()
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and name not in redrawn:
                kept.add_node(name, **site)
        return poutine.trace(poutine.replay(self.module.guide, trace=kept)).get_trace(*args, **decode_kwargs)

    def _per_cell_from_args(self, batches: Iterable[Minibatch], fn: Callable[[tuple, dict], torch.Tensor]) -> np.ndarray:
        self.module.eval()
        out = []
        for batch in batches:
            args, kwargs = self._fn_args(batch)
            out.append(fn(args, kwargs))
        if not out:
            raise ValueError("The query selects no cells; pass at least one cell (indices) or a non-empty dataloader.")
        return torch.cat(out).cpu().numpy()

    def _per_cell(self, batches: Iterable[Minibatch], reduce: Callable) -> np.ndarray:
        return self._per_cell_from_args(
            batches,
            lambda args, kwargs: reduce(*trace_pair(self.module.model, self.module.guide, args, kwargs)),
        )


def _numeric_category(category: Any, categories: list[str]) -> int:
    """The code of a numeric ``category`` among category names that parse as numbers (``1`` -> ``"1.0"``)."""
    if isinstance(category, numbers.Number) and not isinstance(category, bool):
        for code, name in enumerate(categories):
            try:
                if float(name) == float(category):
                    return code
            except ValueError:
                continue
    raise ValueError(f"transform_batch={category!r} is not a batch; batches are {categories}.")


def _no_module_kwargs(kwargs: dict[str, Any], query: str) -> None:
    if kwargs:
        raise TypeError(
            f"{query}() got unexpected keyword arguments {sorted(kwargs)}: scvi-tools passes these to its "
            "module's forward pass, and pyrovi's modules take no extra arguments there."
        )


def _checked_batches(dataloader: Any) -> Iterable[Minibatch]:
    """The minibatches of a user's ``dataloader``, each checked to be a dict of tensors keyed by registry keys.

    A wrong object (a list of numbers, a string, an AnnData) is a clear ``TypeError`` naming what a
    minibatch must be, not an ``AttributeError`` from deep inside a query.
    """
    if isinstance(dataloader, (str, bytes, Mapping, AnnData)) or not isinstance(dataloader, Iterable):
        raise TypeError(
            f"dataloader must be an iterable of minibatches (dicts of tensors keyed by registry keys, as "
            f"model._make_data_loader(adata) yields them), got {type(dataloader).__name__}. To query an AnnData, "
            "pass it as adata=."
        )
    return _checked_iteration(dataloader)


def _checked_iteration(dataloader: Iterable[Any]) -> Iterable[Minibatch]:
    for position, batch in enumerate(dataloader):
        if not isinstance(batch, Mapping) or not all(
            isinstance(key, str) and (value is None or isinstance(value, torch.Tensor)) for key, value in batch.items()
        ):
            raise TypeError(
                f"dataloader's minibatch {position} is {type(batch).__name__} {batch!r:.60}; each minibatch must be "
                "a dict of tensors keyed by registry keys (e.g. {'X': counts, 'batch': codes}), as "
                "model._make_data_loader(adata) yields them."
            )
        if REGISTRY_KEYS.X_KEY not in batch:
            raise TypeError(
                f"dataloader's minibatch {position} has keys {sorted(batch)} but no {REGISTRY_KEYS.X_KEY!r} (the "
                "counts); pass minibatches as model._make_data_loader(adata) yields them."
            )
        yield {key: value for key, value in batch.items() if value is not None}
