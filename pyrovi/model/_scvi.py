"""SCVI: single-cell variational inference (Lopez et al. 2018) with a Pyro model/guide pair."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyro.distributions as dist
import torch
from anndata import AnnData

from .._checks import check_bool, check_int
from .._constants import REGISTRY_KEYS
from .._pyro_lock import serialised_query
from ..data import (
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
    NumericalObsField,
)
from ..data.fields._lookup import check_key_list
from ..dataloaders._ann_dataloader import resolve_indices
from ..module import VAE, GeneLikelihood
from ..module.nn import GuideFamily, var_activation_name
from ..module.base import GlobalGuide, trace_pair
from ..module.priors import LatentPrior
from ._library import library_log_prior
from .base import BaseModelClass, DEMixin, VAEMixin
from .base._queries import (
    cell_names,
    selected_cells,
    likelihood_mean,
    check_library_size,
    check_weights,
    latent_draw,
    latent_library_size,
)


class SCVI(DEMixin, VAEMixin, BaseModelClass):
    """single-cell Variational Inference: a deep generative model of UMI counts.

    Each cell has a low-dimensional latent state ``z ~ N(0, I)``; a decoder maps it, with the cell's
    batch and covariates, to normalised expression ``rho`` (a softmax over genes); counts follow a
    (zero-inflated) negative binomial with mean ``library * rho``. The amortized guide encodes a cell's
    counts into ``q(z | x)``. See :class:`~pyrovi.module.VAE` for the model's maths.

    Parameters
    ----------
    adata
        AnnData set up with :meth:`setup_anndata`.
    n_hidden, n_latent, n_layers, dropout_rate
        Network sizes (scVI's defaults: 128, 10, 1, 0.1).
    dispersion
        ``"gene"``, ``"gene-batch"``, ``"gene-label"`` or ``"gene-cell"``.
    gene_likelihood
        ``"zinb"``, ``"nb"``, ``"poisson"``, ``"normal"`` (continuous data such as log-normalised
        expression: the only choice that accepts data that are not raw counts), or a callable
        ``(mu, theta, zi_logits) -> distribution`` over a cell's genes (batch shape ``(n_cells, n_genes)``).
    use_observed_lib_size
        Library size observed (total counts or the registered size factor) rather than latent.
    latent_distribution
        ``"normal"`` (default) or ``"ln"``: logistic normal, each cell's latent is a vector of ``n_latent``
        proportions (on the simplex); see :class:`~pyrovi.module.VAE`.
    prior
        Prior of the latent ``z``: any :class:`~pyrovi.priors.LatentPrior`, e.g.
        ``MixtureOfGaussians(10)``; default ``StandardNormal()``.
    dispersion_prior
        Prior of the inverse dispersion (e.g. ``dist.LogNormal(2.0, 1.0)``): ``theta`` becomes a global
        latent variable with a guide, returned by :meth:`sample_posterior` as ``"dispersion"``.
    global_guide
        Guide of global latent sites: ``"normal"``, ``"delta"`` or a callable ``model -> guide``.
    guide
        Family of the amortized guide of each cell's latent: ``"normal"`` (mean field, scvi-tools' guide),
        ``"lowrank"`` (a Gaussian with a low-rank plus diagonal covariance) or ``"flow"`` (a normalising
        flow conditioned on the encoder). See "Guide families" in the SCVI docs; the richer families
        estimate the KL term by Monte Carlo.
    guide_kwargs
        Options of the guide family (``{"rank": 2}`` for ``"lowrank"``; ``n_flows``, ``hidden_dims``,
        ``n_moment_samples`` for ``"flow"``), see :class:`~pyrovi.module.VAE`.
    **module_kwargs
        Further arguments of :class:`~pyrovi.module.VAE`: ``encode_covariates``,
        ``deeply_inject_covariates``, ``batch_representation`` (``"one-hot"`` or ``"embedding"``) with
        ``batch_embedding_kwargs`` (e.g. ``{"embedding_dim": 10}``), ``use_batch_norm``, ``use_layer_norm``,
        ``var_activation`` (``"exp"``, ``"softplus"``, ``torch.nn.Softplus()``...), ``log_variational``,
        ``extra_encoder_kwargs``, ``extra_decoder_kwargs``.

    Examples
    --------
    >>> import pyrovi
    >>> adata = pyrovi.datasets.synthetic_iid()
    >>> pyrovi.model.SCVI.setup_anndata(adata, batch_key="batch")
    >>> model = pyrovi.model.SCVI(adata, n_latent=5)
    >>> model.train(max_epochs=2, progress_bar=False)
    >>> model.get_latent_representation().shape
    (400, 5)
    """

    _module_cls = VAE
    # where minify_adata stores the latent posterior (scvi-tools' names)
    _LATENT_QZM_KEY = "scvi_latent_qzm"
    _LATENT_QZV_KEY = "scvi_latent_qzv"

    def __init__(
        self,
        adata: AnnData,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        dispersion: Literal["gene", "gene-batch", "gene-label", "gene-cell"] = "gene",
        gene_likelihood: GeneLikelihood = "zinb",
        use_observed_lib_size: bool = True,
        latent_distribution: Literal["normal", "ln"] = "normal",
        prior: LatentPrior | None = None,
        dispersion_prior: dist.Distribution | None = None,
        global_guide: GlobalGuide = "normal",
        guide: GuideFamily = "normal",
        guide_kwargs: dict[str, Any] | None = None,
        **module_kwargs: Any,
    ):
        super().__init__(adata)
        _check_module_kwargs(type(self).__name__, self._module_cls, module_kwargs)
        if "var_activation" in module_kwargs:
            # a known activation is stored by name, so that it survives save and load
            module_kwargs["var_activation"] = var_activation_name(module_kwargs["var_activation"])
        self._record_init_params(locals())
        self._check_data(gene_likelihood, module_kwargs.get("log_variational", True))
        stats = self.summary_stats
        cat_state = self.adata_manager.get_state(REGISTRY_KEYS.CAT_COVS_KEY)
        # registered size factors are the observed library, whatever use_observed_lib_size says (scvi-tools)
        use_size_factor_key = self.adata_manager.setup_args.get("size_factor_key") is not None
        library_log_means = library_log_vars = None
        if not (use_observed_lib_size or use_size_factor_key):
            library_log_means, library_log_vars = library_log_prior(self.adata_manager)
        self.module = self._module_cls(
            n_input=stats["n_vars"],
            n_batch=stats["n_batch"],
            n_labels=self._module_n_labels(),
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers=n_layers,
            n_continuous_cov=stats.get("n_extra_continuous_covs", 0),
            n_cats_per_cov=(cat_state or {}).get("n_cats_per_key"),
            dropout_rate=dropout_rate,
            dispersion=dispersion,
            gene_likelihood=gene_likelihood,
            use_observed_lib_size=use_observed_lib_size,
            use_size_factor_key=use_size_factor_key,
            latent_distribution=latent_distribution,
            library_log_means=library_log_means,
            library_log_vars=library_log_vars,
            prior=prior,
            dispersion_prior=dispersion_prior,
            global_guide=global_guide,
            guide=guide,
            guide_kwargs=guide_kwargs,
            **self._extra_module_kwargs(),
            **module_kwargs,
        )

    def _extra_module_kwargs(self) -> dict[str, Any]:
        """Module arguments a subclass derives from the registered data (SCANVI: its label proportions)."""
        return {}

    def _module_n_labels(self) -> int:
        """The module's number of labels: every registered one (SCANVI leaves out its "unlabeled" category)."""
        return self.summary_stats["n_labels"]

    def _check_data(self, gene_likelihood: GeneLikelihood, log_variational: bool) -> None:
        """Count likelihoods need raw counts: refuse data registered as continuous, naming the first value.

        Continuous data must also suit the encoders' ``log1p``: values below -1 have no logarithm.
        """
        state = self.adata_manager.get_state(REGISTRY_KEYS.X_KEY) or {}
        if state.get("is_count_data", True):
            return
        if gene_likelihood == "normal" and log_variational:
            x = self.adata_manager.get_array(REGISTRY_KEYS.X_KEY)
            low = float(x.min()) if x.shape[0] else 0.0
            if low <= -1:
                raise ValueError(
                    f"The registered data have values down to {low:.3g}, but the encoders read log(1 + x), which "
                    "needs x > -1. Pass log_variational=False to encode the values as they are, or register "
                    "non-negative data (e.g. log-normalised expression rather than scaled values)."
                )
        if callable(gene_likelihood) or gene_likelihood == "normal":
            return
        try:  # the count check again, for its message naming the first value that is not a count
            LayerField(REGISTRY_KEYS.X_KEY, state.get("layer"), is_count_data=True).register(self.adata)
        except ValueError as err:
            problem = str(err)
        else:  # pragma: no cover - the registered data were found not to be counts
            problem = "The registered data are not raw counts."
        raise ValueError(
            f"gene_likelihood={gene_likelihood!r} models raw counts, but {problem} Set up the raw counts "
            "(e.g. SCVI.setup_anndata(adata, layer='counts')), or model continuous values with "
            "gene_likelihood='normal'."
        )

    @serialised_query
    @torch.inference_mode()
    def get_batch_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """The learned embedding of each cell's batch (models with ``batch_representation="embedding"``).

        Parameters
        ----------
        adata, indices, batch_size
            Cells to use (default: all training data).

        Returns
        -------
        Array ``(n_cells, embedding_dim)``: row ``i`` is the vector of cell ``i``'s batch. A ``KeyError``
        when the model has no batch embedding (``batch_representation="one-hot"``).

        Examples
        --------
        >>> model = SCVI(adata, batch_representation="embedding", batch_embedding_kwargs={"embedding_dim": 8})
        >>> model.get_batch_representation().shape
        (200, 8)
        """
        check_int("batch_size", batch_size, allow_none=True)
        key = REGISTRY_KEYS.BATCH_KEY
        self.module.get_embedding(key)  # a KeyError without an embedding, before reading any data
        manager = self._validate_anndata(adata)
        codes = manager.get_array(key)
        n_obs = manager.adata.n_obs
        codes = np.zeros(n_obs, dtype=np.int64) if codes is None else np.asarray(codes).reshape(-1)
        if indices is not None:
            codes = codes[resolve_indices(indices, n_obs)]
        return self.module.compute_embedding(key, torch.as_tensor(codes, dtype=torch.long)).cpu().numpy()

    # ----------------------------------------------------------------------------------------------
    # setup

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
    ) -> None:
        """Register an AnnData for SCVI: validate it and record how to read it in ``adata.uns``.

        Parameters
        ----------
        adata
            Raw UMI counts in ``X`` or in ``layers[layer]`` (not normalised or log-transformed).
        layer
            Layer holding the counts (default ``X``).
        batch_key
            ``obs`` column of batches to correct for (default: one batch).
        labels_key
            ``obs`` column of labels (used by ``dispersion="gene-label"``).
        size_factor_key
            ``obs`` column of positive size factors used in place of the observed library size.
        categorical_covariate_keys, continuous_covariate_keys
            Further ``obs`` columns injected into the decoder.

        Examples
        --------
        >>> adata.layers["counts"] = adata.X.copy()
        >>> SCVI.setup_anndata(adata, layer="counts", batch_key="batch")
        """
        setup_args = {
            "layer": layer,
            "batch_key": batch_key,
            "labels_key": labels_key,
            "size_factor_key": size_factor_key,
            "categorical_covariate_keys": check_key_list(categorical_covariate_keys, "categorical_covariate_keys") or None,
            "continuous_covariate_keys": check_key_list(continuous_covariate_keys, "continuous_covariate_keys") or None,
        }
        cls._register(adata, setup_args)

    @classmethod
    def _anndata_fields(
        cls,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
    ) -> list:
        return [
            # counts, or continuous values recorded as such (gene_likelihood="normal" only; checked by the model)
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data="infer"),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key, "n_batch"),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key, "n_labels"),
            NumericalObsField(REGISTRY_KEYS.SIZE_FACTOR_KEY, size_factor_key, positive=True),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, continuous_covariate_keys),
        ]

    # ----------------------------------------------------------------------------------------------
    # queries specific to scVI's generative model

    @serialised_query
    @torch.inference_mode()
    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        transform_batch: Any | Sequence[Any] | None = None,
        gene_list: Sequence[str] | None = None,
        library_size: float | Literal["latent"] = 1,
        n_samples: int = 1,
        n_samples_overall: int | None = None,
        weights: Literal["uniform", "importance"] | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool | None = None,
        silent: bool = True,
        dataloader: Iterable[dict[str, torch.Tensor]] | None = None,
        data_loader_kwargs: dict[str, Any] | None = None,
        **importance_weighting_kwargs: Any,
    ) -> pd.DataFrame | np.ndarray:
        """Denoised expression ``library_size * rho`` of each cell, under the posterior of ``z``.

        Parameters
        ----------
        adata, indices, batch_size
            Cells to use (default: all training data).
        transform_batch
            Decode as if every cell came from this batch (a category of ``batch_key``; for a numeric
            batch column its value, e.g. ``1``); a list averages over those batches. Default: each
            cell's own batch.
        gene_list
            Genes to return (default: all).
        library_size
            Scale of the expression: rows sum to it over all genes (1: proportions; 1e4: counts per
            10k). ``"latent"`` returns the model's mean counts ``library * rho`` instead.
        n_samples
            Draws of ``z ~ q(z | x)``; averaged when ``return_mean``.
        n_samples_overall
            Instead of one row per cell: this many draws of the group's expression, an array
            ``(n_samples_overall, n_genes)``. Each row is the decoded draw of a cell; with ``weights=None``
            or ``"uniform"`` the cells are picked uniformly with replacement, with ``"importance"`` the
            draws are resampled by importance weights (below).
        weights
            ``None``/``"uniform"``, or ``"importance"``: weight each draw ``z`` by how well it explains
            the group, the ratio of the mixture of the cells' exact posteriors to the mixture of their
            approximate ones, ``p(z) mean_a[p(x_a | z) / p(x_a)] / mean_a q(z | x_a)`` over (up to
            ``max_cells``) anchor cells ``a`` of the group, with ``p(x_a)`` from
            :meth:`get_marginal_ll`. Used with ``n_samples_overall`` only.
        return_mean
            Average over draws; otherwise, with ``n_samples > 1``, return an array
            ``(n_samples, n_cells, n_genes)``.
        return_numpy
            Return an array rather than a DataFrame (cells x genes). Default: a DataFrame, except for
            ``n_samples_overall`` and for the per-draw array above.
        silent
            Accepted for scvi-tools' signature (no progress bar is shown).
        dataloader
            Minibatches to decode instead of ``adata`` (an array is returned).
        data_loader_kwargs
            Options of the model's loader (``shuffle``).
        **importance_weighting_kwargs
            Settings of the importance weights: ``max_cells`` (1024: anchors), ``n_mc_samples`` (500:
            draws of each anchor's marginal likelihood), ``n_mc_samples_per_pass``, ``truncation``
            (False: cap each weight at ``sqrt(K)`` times the mean of the ``K`` weights).

        Returns
        -------
        DataFrame (cells x genes), or an array as described above.

        Examples
        --------
        >>> rho = model.get_normalized_expression(library_size=1e4)
        >>> rho.shape
        (200, 50)
        >>> cells = np.flatnonzero(adata.obs["labels"] == "label_0")
        >>> draws = model.get_normalized_expression(indices=cells, n_samples_overall=100, weights="importance")
        """
        check_weights(weights, importance_weighting_kwargs)
        check_library_size(library_size)
        check_int("n_samples", n_samples)
        check_bool("return_mean", return_mean)
        if return_numpy is not None:
            check_bool("return_numpy", return_numpy)
        check_bool("silent", silent)
        gene_idx = self._gene_indices(gene_list)
        importance = weights == "importance" and n_samples_overall is not None

        def read(model_trace) -> tuple[torch.Tensor, ...]:
            if library_size == "latent":
                values = likelihood_mean(model_trace.nodes["x"]["fn"])
            else:
                values = model_trace.nodes["rho"]["value"] * library_size
            values = values if gene_idx is None else values[..., gene_idx]
            return (values, *latent_draw(model_trace)) if importance else (values,)

        if n_samples_overall is not None:
            check_int("n_samples_overall", n_samples_overall)
            if dataloader is not None:
                raise ValueError("n_samples_overall draws from cells of adata; it cannot be used with a dataloader.")
            if n_samples != 1:
                raise ValueError("n_samples_overall sets the number of draws itself; leave n_samples at 1.")
            cells = selected_cells(self._validate_anndata(adata).adata.n_obs, indices)
            if not importance:
                picks = cells[torch.randint(cells.size, (n_samples_overall,)).numpy()]
                (values,) = self._decode_draws(adata, picks, 1, batch_size, transform_batch, read)
                return values[0]
            # the pool: n_samples_overall // n_cells + 1 draws of every cell (one row each), then resampled
            pool = np.tile(cells, n_samples_overall // cells.size + 1)
            values, z, log_pz = self._decode_draws(adata, pool, 1, batch_size, transform_batch, read)
            probabilities = self._importance_probabilities(
                adata, cells, z.reshape(-1, z.shape[-1]), log_pz.reshape(-1), batch_size, **importance_weighting_kwargs
            )
            picks = torch.multinomial(torch.as_tensor(probabilities), n_samples_overall, replacement=True).numpy()
            return values.reshape(-1, values.shape[-1])[picks]

        (values,) = self._decode_draws(
            adata, indices, n_samples, batch_size, transform_batch, read,
            dataloader=dataloader, data_loader_kwargs=data_loader_kwargs,
        )  # fmt: skip
        if not return_mean and n_samples > 1:
            if return_numpy is False:
                warnings.warn(
                    "return_numpy=False cannot hold (n_samples, n_cells, n_genes) draws: returning an array.",
                    UserWarning,
                    stacklevel=2,
                )
            return values
        values = values.mean(0)
        if return_numpy or dataloader is not None:
            return values
        manager = self._validate_anndata(adata)
        var_names = np.asarray(manager.get_state(REGISTRY_KEYS.X_KEY)["var_names"])
        columns = var_names if gene_idx is None else var_names[gene_idx]
        return pd.DataFrame(values, index=cell_names(manager.adata, indices), columns=columns)

    @serialised_query
    @torch.inference_mode()
    def get_latent_library_size(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
        dataloader: Iterable[dict[str, torch.Tensor]] | None = None,
        **data_loader_kwargs: Any,
    ) -> np.ndarray:
        """Library size of each cell: observed total counts (or size factor), or its latent posterior.

        With a latent library, ``give_mean`` returns the posterior mean of the log-normal
        ``exp(loc + scale^2 / 2)``, otherwise one draw. With an observed library both return it (scvi-tools
        raises for ``give_mean=True`` there).

        Parameters
        ----------
        adata, indices, batch_size
            Cells to use (default: all training data).
        give_mean
            Posterior mean rather than one draw (latent library only).
        dataloader, **data_loader_kwargs
            As for :meth:`get_latent_representation`.

        Returns
        -------
        Array of shape ``(n_cells, 1)``.

        Examples
        --------
        >>> model.get_latent_library_size().shape
        (200, 1)
        """
        return latent_library_size(self, adata, indices, give_mean, batch_size, dataloader, data_loader_kwargs)

    @serialised_query
    @torch.inference_mode()
    def get_likelihood_parameters(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int = 1,
        give_mean: bool = False,
        batch_size: int | None = None,
        dataloader: Iterable[dict[str, torch.Tensor]] | None = None,
        **data_loader_kwargs: Any,
    ) -> dict[str, np.ndarray]:
        """Parameters of the count likelihood for each cell and gene, under draws of ``z ~ q``.

        Parameters
        ----------
        adata, indices, batch_size
            Cells to use (default: all training data).
        n_samples
            Posterior draws.
        give_mean
            Average over the draws.
        dataloader, **data_loader_kwargs
            As for :meth:`get_latent_representation`.

        Returns
        -------
        dict with ``"mean"`` (the likelihood's mean, ``library * rho``), ``"dispersions"`` (inverse
        dispersion ``theta``; absent for Poisson) and ``"dropout"`` (zero-inflation probability; ZINB only).
        Each is ``(n_cells, n_genes)``, averaged over draws when ``give_mean`` or ``n_samples == 1``, else
        ``(n_samples, n_cells, n_genes)``.

        Examples
        --------
        >>> params = model.get_likelihood_parameters()
        >>> params["mean"].shape
        (200, 50)
        """
        check_int("n_samples", n_samples)
        check_bool("give_mean", give_mean)
        self.module.eval()
        chunks: dict[str, list[torch.Tensor]] = {}
        for batch in self._query_batches(adata, indices, batch_size, dataloader, data_loader_kwargs):
            args, kwargs = self._fn_args(batch)
            draws: dict[str, list[torch.Tensor]] = {}
            for _ in range(n_samples):
                model_trace, _ = trace_pair(self.module.model, self.module.guide, args, kwargs)
                for key, value in self._likelihood_parameters(model_trace).items():
                    draws.setdefault(key, []).append(value.expand(args[0].shape))
            for key, values in draws.items():
                chunks.setdefault(key, []).append(torch.stack(values))
        out = {key: torch.cat(values, dim=1).cpu().numpy() for key, values in chunks.items()}
        if give_mean or n_samples == 1:
            out = {key: value.mean(0) for key, value in out.items()}
        return out

    @staticmethod
    def _likelihood_parameters(model_trace) -> dict[str, torch.Tensor]:
        fn = model_trace.nodes["x"]["fn"].base_dist  # strip .to_event(1)
        params: dict[str, torch.Tensor] = {}
        if hasattr(fn, "gate"):  # zero-inflated negative binomial
            params["dropout"] = fn.gate
            fn = fn.base_dist
        if hasattr(fn, "total_count"):
            params["dispersions"] = fn.total_count
        params["mean"] = fn.mean
        return params


def _check_module_kwargs(model: str, module_cls: type, module_kwargs: dict[str, Any]) -> None:
    """Every extra argument is one of the module's, else a ``TypeError`` naming the closest (``n_hiden``)."""
    import difflib
    import inspect

    parameters: dict[str, inspect.Parameter] = {}
    for klass in module_cls.__mro__:  # a module passing **kwargs to its base takes the base's arguments too
        if "__init__" not in vars(klass):
            continue
        own = inspect.signature(klass.__init__).parameters
        parameters.update({k: p for k, p in own.items() if p.kind is not inspect.Parameter.VAR_KEYWORD})
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values()):
            break
    else:
        return  # the module takes any keyword itself
    for name in module_kwargs:
        if name not in parameters:
            close = difflib.get_close_matches(name, list(parameters), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"{model}() got an unexpected keyword argument {name!r}.{hint} See help({model}) for its arguments."
            )
