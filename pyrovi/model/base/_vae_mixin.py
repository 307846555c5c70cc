"""Posterior queries shared by every model whose module has a per-cell latent site ``z``.

They read the guide and model through Pyro's effect handlers rather than a module-specific API:
a query traces the guide on a minibatch, replays the model on the guide's draws, and reads sites.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from anndata import AnnData
from pyro import poutine
from pyro.infer import Predictive

from ..._constants import REGISTRY_KEYS
from ...module.base import per_cell_elbo_terms, per_cell_log_likelihood, per_cell_log_weights, trace_pair
from ._features import feature_positions


class VAEMixin:
    """Latent representation, ELBO, marginal likelihood and posterior predictive sampling.

    Sign conventions follow scvi-tools: :meth:`get_elbo` and :meth:`get_marginal_ll` return
    log-densities per cell (higher is better); :meth:`get_reconstruction_error` and the training
    history's ``elbo_*`` return losses, their negatives (lower is better).
    """

    #: the latent site returned by get_latent_representation
    _latent_site = "z"
    #: the observed sites replicated by posterior_predictive_sample
    _observed_sites: tuple[str, ...] = ("x",)
    #: get_reconstruction_error's keys and the observed site of each (None: all observed sites together)
    _reconstruction_error_sites: tuple[tuple[str, str | None], ...] = (("reconstruction_loss", None),)

    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        mc_samples: int = 5000,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Posterior of the latent ``z`` of each cell: its mean, or one draw.

        Parameters
        ----------
        adata
            Data with the model's genes (default: the training data).
        indices
            Cells to use (default: all).
        give_mean
            Return the posterior mean (otherwise one sample of ``q(z | x)``).
        mc_samples
            Draws averaged for the mean when the posterior has no closed-form mean.
        batch_size
            Minibatch size (default ``pyrovi.settings.encode_batch_size``, 1024: only the encoder runs).

        Returns
        -------
        Array of shape ``(n_cells, n_latent)``.

        Examples
        --------
        >>> z = model.get_latent_representation()  # doctest: +SKIP
        >>> adata.obsm["X_pyrovi"] = z  # doctest: +SKIP
        """
        self.module.eval()
        out = []
        for batch in self._make_data_loader(adata, indices, batch_size, guide_only=True):
            args, kwargs = self._fn_args(batch)
            fn = poutine.trace(self.module.guide).get_trace(*args, **kwargs).nodes[self._latent_site]["fn"]
            if not give_mean:
                out.append(fn.sample())
                continue
            try:
                out.append(fn.mean)
            except NotImplementedError:
                out.append(fn.sample((mc_samples,)).mean(0))
        return torch.cat(out).cpu().numpy()

    @torch.inference_mode()
    def get_elbo(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
    ) -> float | np.ndarray:
        """Evidence lower bound per cell, ``E_q[log p(x | z)] - KL(q(z | x) || p(z))``. Higher is better.

        The KL term is analytic where torch knows it, so the estimate has the variance of a single
        draw of the reconstruction term only. This is the negative of the ``elbo_*`` loss in ``history``.

        Parameters
        ----------
        adata, indices, batch_size
            Cells to evaluate (default: all training data).
        return_mean
            Average over cells (otherwise one value per cell).

        Examples
        --------
        >>> model.get_elbo(indices=model.validation_indices)  # doctest: +SKIP
        -312.4
        """
        values = self._per_cell(adata, indices, batch_size, lambda mt, gt: per_cell_elbo_terms(mt, gt)["elbo"])
        return float(values.mean()) if return_mean else values

    @torch.inference_mode()
    def get_reconstruction_error(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
    ) -> dict[str, float | np.ndarray]:
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
        return_mean
            Average over cells (otherwise one value per cell).

        Examples
        --------
        >>> model.get_reconstruction_error()["reconstruction_loss"]  # doctest: +SKIP
        1310.2
        """
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

        values = -self._per_cell(adata, indices, batch_size, log_likelihoods)
        return {key: float(values[:, i].mean()) if return_mean else values[:, i] for i, key in enumerate(keys)}

    @torch.inference_mode()
    def get_marginal_ll(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_mc_samples: int = 1000,
        batch_size: int | None = None,
        return_mean: bool = True,
    ) -> float | np.ndarray:
        """Importance-sampling estimate of ``log p(x)`` per cell, with the guide as proposal.

        ``log p(x) ≈ logsumexp_k [log p(x, z_k) - log q(z_k | x)] - log K`` with ``z_k ~ q(z | x)``.
        By Jensen's inequality its expectation lies between the ELBO and ``log p(x)``, so it is at
        least :meth:`get_elbo` up to Monte Carlo noise and tightens as ``n_mc_samples`` grows.

        Examples
        --------
        >>> model.get_marginal_ll(n_mc_samples=200)  # doctest: +SKIP
        """
        if n_mc_samples < 1:
            raise ValueError(f"n_mc_samples must be at least 1, got {n_mc_samples}.")

        def log_px(batch_args: tuple, batch_kwargs: dict) -> torch.Tensor:
            weights = torch.stack(
                [
                    per_cell_log_weights(*trace_pair(self.module.model, self.module.guide, batch_args, batch_kwargs))
                    for _ in range(n_mc_samples)
                ]
            )
            return torch.logsumexp(weights, 0) - math.log(n_mc_samples)

        values = self._per_cell_from_args(adata, indices, batch_size, log_px)
        return float(values.mean()) if return_mean else values

    @torch.inference_mode()
    def posterior_predictive_sample(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int = 1,
        gene_list: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Replicate counts from the posterior predictive ``p(x_rep | x)``.

        Built on :class:`pyro.infer.Predictive` over ``poutine.uncondition(model)``: each replicate draws
        the latents from the guide given the cell's data, then new counts from the likelihood.

        Parameters
        ----------
        adata, indices, batch_size
            Cells to replicate (default: all training data).
        n_samples
            Replicates per cell.
        gene_list
            Genes to return (default: all).

        Returns
        -------
        Array of shape ``(n_cells, n_genes)`` for one sample, ``(n_cells, n_genes, n_samples)`` otherwise.

        Examples
        --------
        >>> x_rep = model.posterior_predictive_sample(n_samples=5)  # doctest: +SKIP
        """
        return self._predictive_site(
            adata, indices, n_samples, batch_size, self._observed_sites[0], self._gene_indices(gene_list)
        )

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
    ) -> list[np.ndarray]:
        """Replicates of several observed sites from one :class:`~pyro.infer.Predictive` pass.

        ``sites`` maps each site to the feature positions to keep (``None``: all). Every replicate of
        every site comes from the same posterior draw of the latents, so replicates of different
        modalities of a cell stay jointly distributed. Returns one array ``(n_cells, n_features[,
        n_samples])`` per site, in the order of ``sites``.
        """
        names = list(sites)
        predictive = Predictive(
            poutine.uncondition(self.module.model),
            guide=self.module.guide,
            num_samples=n_samples,
            return_sites=names,
        )
        self.module.eval()
        out: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        with torch.inference_mode():
            for batch in self._make_data_loader(adata, indices, batch_size):
                args, kwargs = self._fn_args(batch)
                samples = predictive(*args, **kwargs)
                for name in names:
                    values = samples[name]  # (n_samples, n_cells, n_features)
                    if sites[name] is not None:
                        values = values[..., sites[name]]
                    out[name].append(values.permute(1, 2, 0))
        results = [torch.cat(out[name]).cpu().numpy() for name in names]
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
    ) -> list[np.ndarray]:
        """Apply ``read(model_trace) -> tuple of tensors`` to ``n_samples`` posterior draws per minibatch.

        Each draw traces the guide on the cells' own data, then replays the model on it. With
        ``transform_batch`` (a batch category, or a list of them whose results are averaged) the model
        decodes as if every cell came from that batch. Guide sites that the module lists in
        ``transform_batch_guide_sites`` (latents whose guide is a function of the batch, e.g. totalVI's
        protein background ``q(log beta | z, batch)``) are drawn again under the target batch, given the
        same draws of every other site; all other latents keep the draw from the cell's own data.
        Returns one array ``(n_samples, n_cells, ...)`` per tensor that ``read`` returns.
        """
        manager = self._validate_anndata(adata)
        listed = transform_batch if isinstance(transform_batch, (list, tuple)) else [transform_batch]
        codes = [None if b is None else self._batch_code_of(manager, b) for b in listed]
        redrawn = frozenset(getattr(self.module, "transform_batch_guide_sites", ()))
        self.module.eval()
        chunks: list[list[torch.Tensor]] = []
        with torch.inference_mode():
            for batch in self._make_data_loader(adata, indices, batch_size):
                args, kwargs = self._fn_args(batch)
                draws = []
                for _ in range(n_samples):
                    guide_trace = poutine.trace(self.module.guide).get_trace(*args, **kwargs)
                    per_batch = []
                    for code in codes:
                        decode_kwargs = dict(kwargs)
                        if code is not None:
                            decode_kwargs["batch_index"] = torch.full_like(kwargs["batch_index"], code)
                        decode_trace = guide_trace
                        if code is not None and redrawn:
                            decode_trace = self._redraw_under_batch(guide_trace, redrawn, args, decode_kwargs)
                        replayed = poutine.replay(self.module.model, trace=decode_trace)
                        per_batch.append(read(poutine.trace(replayed).get_trace(*args, **decode_kwargs)))
                    draws.append([torch.stack(t).mean(0) for t in zip(*per_batch)])
                chunks.append([torch.stack(t) for t in zip(*draws)])
        return [torch.cat(parts, dim=1).cpu().numpy() for parts in zip(*chunks)]

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

    def _per_cell_from_args(self, adata, indices, batch_size, fn) -> np.ndarray:
        self.module.eval()
        out = []
        for batch in self._make_data_loader(adata, indices, batch_size):
            args, kwargs = self._fn_args(batch)
            out.append(fn(args, kwargs))
        return torch.cat(out).cpu().numpy()

    def _per_cell(self, adata, indices, batch_size, reduce) -> np.ndarray:
        return self._per_cell_from_args(
            adata,
            indices,
            batch_size,
            lambda args, kwargs: reduce(*trace_pair(self.module.model, self.module.guide, args, kwargs)),
        )
