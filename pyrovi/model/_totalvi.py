"""TOTALVI: joint RNA and surface-protein (CITE-seq) model (Gayoso et al. 2021) as a Pyro model/guide pair."""

from __future__ import annotations

import warnings
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .._checks import check_bool, check_int, check_number
from .._constants import REGISTRY_KEYS
from .._pyro_lock import serialised_query
from ..data import (
    AnnDataManager,
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    MuDataCategoricalJointObsField,
    MuDataCategoricalObsField,
    MuDataLayerField,
    MuDataNumericalJointObsField,
    MuDataNumericalObsField,
    MuDataProteinLayerField,
    NumericalJointObsField,
    NumericalObsField,
    ObsmField,
)
from ..data.fields._lookup import check_key_list
from ..data.fields._mudata import is_mudata
from ..module import TOTALVAE
from ..module.base import GlobalGuide
from ..module.nn import GuideFamily
from ..module.priors import LatentPrior
from ._library import library_log_prior
from ._protein_background import protein_background_prior, protein_batch_mask
from .base import BaseModelClass, DEMixin, VAEMixin
from .base._differential import raw_count_statistics
from .base._features import feature_positions
from .base._minified_data import minified_fields
from .base._queries import cell_names, check_library_size, latent_library_size, likelihood_mean, selected_cells

#: Options of the shared differential expression that TOTALVI's takes through **kwargs, with their defaults.
_DE_DEFAULTS = {
    "n_samples_overall": None, "test_mode": "three", "use_permutation": False, "m_permutation": 10000,
    "change_fn": None, "m1_domain_fn": None, "threshold_counts": 0.01, "cred_interval_lvls": None, "n_samples": None,
}  # fmt: skip
_DE_OPTIONS = {*_DE_DEFAULTS, "weights", "filter_outlier_cells"}


class TOTALVI(DEMixin, VAEMixin, BaseModelClass):
    """total Variational Inference: one latent space for a cell's RNA and surface proteins.

    Proteins are a mixture of a background (ambient antibody) and a foreground component per cell and
    protein; see :class:`~pyrovi.module.TOTALVAE` for the maths. Proteins that are all zero in a batch
    are treated as missing there: their likelihood terms are masked.

    Parameters
    ----------
    adata
        AnnData set up with :meth:`setup_anndata` (or the AnnData returned by :meth:`setup_mudata`).
    n_latent, n_hidden, n_layers_encoder, n_layers_decoder, dropout_rate_encoder, dropout_rate_decoder
        Network sizes (totalVI's defaults: 20, 256, 2, 1, 0.2, 0.2).
    gene_dispersion, protein_dispersion
        ``"gene"``/``"gene-batch"``/``"gene-label"`` and ``"protein"``/``"protein-batch"``/``"protein-label"``.
    gene_likelihood
        ``"nb"`` or ``"zinb"``.
    latent_distribution
        ``"normal"`` or ``"ln"`` (logistic normal: each cell's latent is ``n_latent`` proportions).
    use_observed_lib_size
        Observed RNA library size (otherwise latent).
    empirical_protein_background_prior
        Initialise the background prior from a two-component mixture fit to each protein's log counts
        per batch (otherwise location 0, scale 0.5). ``None`` (default) means True: the fit is per protein,
        across a batch's cells, so it is reliable with few proteins too (scvi-tools fits each cell across its
        proteins, and so uses it only with more than 10 proteins).
    override_missing_proteins
        Take a protein that is zero in every cell of a batch as measured there (zeros are data) instead of
        missing from that batch's panel (masked).
    prior, global_guide
        Prior of ``z`` (a :class:`~pyrovi.priors.LatentPrior`) and guide of global sites.
    objective
        ``"elbo"`` (default) or ``"scvi-tools"``; see :class:`~pyrovi.module.TOTALVAE`.
    guide
        Family of the amortized guide of each cell's latent: ``"normal"`` (mean field, scvi-tools' guide),
        ``"lowrank"`` (a Gaussian with a low-rank plus diagonal covariance) or ``"flow"`` (a normalising
        flow conditioned on the encoder of the joint counts). See "Guide families" in the SCVI docs; the
        richer families estimate the KL term of ``z`` by Monte Carlo.
    guide_kwargs
        Options of the guide family (``{"rank": 2}`` for ``"lowrank"``; ``n_flows``, ``hidden_dims``,
        ``n_moment_samples`` for ``"flow"``), see :class:`~pyrovi.module.VAE`.
    **module_kwargs
        Further arguments of :class:`~pyrovi.module.TOTALVAE`: ``encode_covariates`` (default True),
        ``use_batch_norm``, ``use_layer_norm`` (``"encoder"``, ``"decoder"``, ``"both"``, ``"none"``),
        ``extra_encoder_kwargs`` (e.g. ``{"var_activation": "softplus"}``), ``extra_decoder_kwargs``
        (``{"activation_function_bg": "exp"}``), ``log_variational``.

    Examples
    --------
    >>> adata = pyrovi.datasets.synthetic_citeseq(n_cells=200, n_genes=50, n_proteins=8)
    >>> TOTALVI.setup_anndata(adata, protein_expression_obsm_key="protein_expression", batch_key="batch")
    >>> model = TOTALVI(adata)
    >>> model.train(max_epochs=2, enable_progress_bar=False)
    >>> rna, protein = model.get_normalized_expression()
    >>> rna.shape, protein.shape
    ((200, 50), (200, 8))
    """

    _observed_sites = ("x", "y")
    _reconstruction_error_sites = (("reconst_loss_gene", "x"), ("reconst_loss_protein", "y"))  # scvi-tools' keys
    # where minify_adata stores the latent posterior (scvi-tools' names); the protein counts are kept, as there
    _LATENT_QZM_KEY = "totalvi_latent_qzm"
    _LATENT_QZV_KEY = "totalvi_latent_qzv"

    def __init__(
        self,
        adata: AnnData,
        n_latent: int = 20,
        n_hidden: int = 256,
        n_layers_encoder: int = 2,
        n_layers_decoder: int = 1,
        dropout_rate_encoder: float = 0.2,
        dropout_rate_decoder: float = 0.2,
        gene_dispersion: Literal["gene", "gene-batch", "gene-label"] = "gene",
        protein_dispersion: Literal["protein", "protein-batch", "protein-label"] = "protein",
        gene_likelihood: Literal["nb", "zinb"] = "nb",
        latent_distribution: Literal["normal", "ln"] = "normal",
        use_observed_lib_size: bool = True,
        empirical_protein_background_prior: bool | None = None,
        override_missing_proteins: bool = False,
        prior: LatentPrior | None = None,
        global_guide: GlobalGuide = "normal",
        objective: Literal["elbo", "scvi-tools"] = "elbo",
        guide: GuideFamily = "normal",
        guide_kwargs: dict[str, Any] | None = None,
        **module_kwargs: Any,
    ):
        super().__init__(adata)
        self._record_init_params(locals())
        check_bool("override_missing_proteins", override_missing_proteins)
        if empirical_protein_background_prior is not None:
            check_bool("empirical_protein_background_prior", empirical_protein_background_prior)
        stats = self.summary_stats
        arrays = self.adata_manager.get_arrays()
        proteins, batch = arrays[REGISTRY_KEYS.PROTEIN_EXP_KEY], arrays[REGISTRY_KEYS.BATCH_KEY]
        n_batch = stats["n_batch"]
        mask = protein_batch_mask(proteins, batch, n_batch)
        if override_missing_proteins:
            mask = np.ones_like(mask)
        if empirical_protein_background_prior is None:
            empirical_protein_background_prior = True
        background_mean = background_scale = None
        if empirical_protein_background_prior:
            background_mean, background_scale = protein_background_prior(proteins, batch, n_batch, mask)
        # registered size factors are the observed library, whatever use_observed_lib_size says (scvi-tools)
        use_size_factor_key = self.adata_manager.setup_args.get("size_factor_key") is not None
        library_log_means = library_log_vars = None
        if not (use_observed_lib_size or use_size_factor_key):
            library_log_means, library_log_vars = library_log_prior(self.adata_manager)
        cat_state = self.adata_manager.get_state(REGISTRY_KEYS.CAT_COVS_KEY)
        self.module = TOTALVAE(
            n_input_genes=stats["n_vars"],
            n_input_proteins=stats[f"n_{REGISTRY_KEYS.PROTEIN_EXP_KEY}"],
            n_batch=n_batch,
            n_labels=stats["n_labels"],
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers_encoder=n_layers_encoder,
            n_layers_decoder=n_layers_decoder,
            n_continuous_cov=stats.get("n_extra_continuous_covs", 0),
            n_cats_per_cov=(cat_state or {}).get("n_cats_per_key"),
            dropout_rate_encoder=dropout_rate_encoder,
            dropout_rate_decoder=dropout_rate_decoder,
            gene_dispersion=gene_dispersion,
            protein_dispersion=protein_dispersion,
            gene_likelihood=gene_likelihood,
            latent_distribution=latent_distribution,
            use_observed_lib_size=use_observed_lib_size,
            use_size_factor_key=use_size_factor_key,
            library_log_means=library_log_means,
            library_log_vars=library_log_vars,
            protein_background_prior_mean=background_mean,
            protein_background_prior_scale=background_scale,
            protein_batch_mask=mask,
            prior=prior,
            global_guide=global_guide,
            objective=objective,
            guide=guide,
            guide_kwargs=guide_kwargs,
            **module_kwargs,
        )

    # ----------------------------------------------------------------------------------------------
    # setup

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        protein_expression_obsm_key: str,
        protein_names_uns_key: str | None = None,
        batch_key: str | None = None,
        layer: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
    ) -> None:
        """Register an AnnData of RNA counts (``X`` or a layer) and protein counts (an ``obsm`` matrix).

        Parameters
        ----------
        adata
            Raw RNA counts; protein counts in ``adata.obsm[protein_expression_obsm_key]`` (a DataFrame,
            whose columns name the proteins, or an array).
        protein_names_uns_key
            ``adata.uns`` key of the protein names when the obsm matrix is an array.
        batch_key, layer, size_factor_key, categorical_covariate_keys, continuous_covariate_keys
            As for :meth:`~pyrovi.model.SCVI.setup_anndata`.

        Examples
        --------
        >>> TOTALVI.setup_anndata(adata, "protein_expression", batch_key="batch")
        """
        cls._register(
            adata,
            {
                "protein_expression_obsm_key": protein_expression_obsm_key,
                "protein_names_uns_key": protein_names_uns_key,
                "batch_key": batch_key,
                "layer": layer,
                "size_factor_key": size_factor_key,
                "categorical_covariate_keys": check_key_list(categorical_covariate_keys, "categorical_covariate_keys") or None,
                "continuous_covariate_keys": check_key_list(continuous_covariate_keys, "continuous_covariate_keys") or None,
            },
        )

    @classmethod
    def setup_mudata(
        cls,
        mdata: Any,
        rna_layer: str | None = None,
        protein_layer: str | None = None,
        batch_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
        modalities: dict[str, str] | None = None,
    ) -> None:
        """Set up a MuData of RNA and protein modalities for :class:`TOTALVI`; then ``TOTALVI(mdata)``.

        The registry and an identifier are stored in ``mdata.uns`` (the only changes made to the MuData): the RNA counts are read
        from one modality, the protein counts (named by that modality's ``var_names``) from another, and each
        obs column from the modality ``modalities`` names for it. Every query then takes the MuData (or
        another MuData with the same modalities) as ``adata``. Needs ``pip install 'pyrovi[mudata]'``.

        Parameters
        ----------
        mdata
            A ``mudata.MuData`` whose RNA and protein modalities hold the same cells.
        rna_layer, protein_layer
            Layers of the modalities holding raw counts (default ``X``).
        batch_key, size_factor_key, categorical_covariate_keys, continuous_covariate_keys
            Columns of the ``obs`` of the modality named for them in ``modalities``, or of the MuData's own
            ``obs`` when it names none (a column found only in the RNA modality's ``obs`` is read there).
        modalities
            Which modality holds each piece, under the argument's name: ``{"rna_layer": "rna",
            "protein_layer": "prot", "batch_key": "rna", "size_factor_key": "rna", ...}``.
            ``rna_layer`` and ``protein_layer`` default to ``"rna"`` and ``"prot"``. The short form
            ``{"rna": ..., "protein": ...}`` of earlier pyrovi versions is accepted too.

        Examples
        --------
        >>> TOTALVI.setup_mudata(  # batch_key is a column of the MuData's own obs here
        ...     mdata, batch_key="batch",
        ...     modalities={"rna_layer": "rna", "protein_layer": "protein_expression"},
        ... )
        >>> model = TOTALVI(mdata)
        >>> model.summary_stats["n_batch"]
        2
        """
        if not is_mudata(mdata):
            raise TypeError(
                f"setup_mudata takes a mudata.MuData, got {type(mdata).__name__}. For an AnnData with the proteins "
                "in obsm use TOTALVI.setup_anndata(adata, protein_expression_obsm_key=...)."
            )
        setup_args = {
            "rna_layer": rna_layer,
            "protein_layer": protein_layer,
            "batch_key": batch_key,
            "size_factor_key": size_factor_key,
            "categorical_covariate_keys": check_key_list(categorical_covariate_keys, "categorical_covariate_keys") or None,
            "continuous_covariate_keys": check_key_list(continuous_covariate_keys, "continuous_covariate_keys") or None,
        }
        setup_args["modalities"] = _resolve_modalities(mdata, modalities, setup_args)
        cls._register(mdata, setup_args)

    @classmethod
    def _manager(cls, setup_args: dict[str, Any], adata: Any = None) -> AnnDataManager:
        if "modalities" not in setup_args:
            return super()._manager(setup_args, adata)
        fields = _mudata_fields(**setup_args) + minified_fields(cls, adata)  # refuses a minified MuData
        return AnnDataManager(fields, setup_args, cls.__name__)

    @classmethod
    def _anndata_fields(
        cls,
        protein_expression_obsm_key: str,
        protein_names_uns_key: str | None = None,
        batch_key: str | None = None,
        layer: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
    ) -> list:
        return [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            ObsmField(REGISTRY_KEYS.PROTEIN_EXP_KEY, protein_expression_obsm_key, protein_names_uns_key, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key, "n_batch"),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, None, "n_labels"),
            NumericalObsField(REGISTRY_KEYS.SIZE_FACTOR_KEY, size_factor_key, positive=True),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, continuous_covariate_keys),
        ]

    # ----------------------------------------------------------------------------------------------
    # queries

    def train(
        self,
        max_epochs: int | None = None,
        lr: float = 4e-3,
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        train_size: float | None = None,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        batch_size: int = 256,
        early_stopping: bool = True,
        check_val_every_n_epoch: int | None = None,
        reduce_lr_on_plateau: bool = True,
        n_steps_kl_warmup: int | None = None,
        n_epochs_kl_warmup: int | None = None,
        adversarial_classifier: bool | None = None,
        datasplitter_kwargs: dict[str, Any] | None = None,
        plan_kwargs: dict[str, Any] | None = None,
        external_indexing: list[np.ndarray] | None = None,
        **kwargs: Any,
    ) -> None:
        """Fit the model, with totalVI's defaults (those of scvi-tools' ``TOTALVI.train``).

        Minibatches of 256 cells, learning rate 4e-3 reduced on a plateau of ``elbo_validation``, early
        stopping on it, and a KL warm-up over ``floor(0.75 * n_cells)`` optimiser steps. Other arguments as
        :meth:`BaseModelClass.train <pyrovi.model.base.BaseModelClass.train>`.

        Parameters
        ----------
        lr
            Learning rate of Adam.
        batch_size
            Minibatch size.
        early_stopping
            Stop when ``elbo_validation`` stops improving (``early_stopping_patience`` epochs, default 45).
        check_val_every_n_epoch
            Validate every this many epochs (pyrovi validates every epoch by default).
        reduce_lr_on_plateau
            Multiply the learning rate by ``lr_factor`` (0.6) when ``elbo_validation`` has not improved for
            ``lr_patience`` (30) epochs.
        n_steps_kl_warmup, n_epochs_kl_warmup
            Length of the KL warm-up; without either, ``floor(0.75 * n_cells)`` steps.
        adversarial_classifier
            scvi-tools' adversarial batch classifier on the latent space. pyrovi's TOTALVI has none: ``True``
            warns and trains without it (proteins missing from a batch's panel are masked out of the
            likelihood and the encoder instead); ``None`` and ``False`` train as usual.
        datasplitter_kwargs, plan_kwargs
            Further arguments of the data splitter and the training plan; ``plan_kwargs`` win over the
            defaults above (e.g. ``plan_kwargs={"lr": 1e-3}``).
        external_indexing
            ``[train_indices, validation_indices, test_indices]`` (row positions; the last two may be empty):
            a split to use instead of a random one.
        **kwargs
            Further arguments of :meth:`BaseModelClass.train <pyrovi.model.base.BaseModelClass.train>` and the
            :class:`~pyrovi.train.Trainer`.

        Examples
        --------
        >>> model.train(max_epochs=2, enable_progress_bar=False)
        >>> model.train(max_epochs=2, plan_kwargs={"lr": 1e-3}, early_stopping=False, enable_progress_bar=False)
        """
        if adversarial_classifier is not None:
            check_bool("adversarial_classifier", adversarial_classifier)  # 'no' would read as True
        if adversarial_classifier:
            warnings.warn(
                "adversarial_classifier=True: pyrovi's TOTALVI has no adversarial batch classifier, so training "
                "goes on without one (the latent space is not pushed to mix batches by a classifier). Proteins "
                "missing from a batch's panel are masked out of the likelihood and the encoder instead. Pass "
                "adversarial_classifier=False (or leave it out) to silence this warning.",
                UserWarning,
                stacklevel=2,
            )
        plan = dict(plan_kwargs or {})
        plan.setdefault("lr", lr)
        plan.setdefault("reduce_lr_on_plateau", reduce_lr_on_plateau)
        plan.setdefault("n_epochs_kl_warmup", n_epochs_kl_warmup)
        plan.setdefault("n_steps_kl_warmup", n_steps_kl_warmup)
        if plan["n_steps_kl_warmup"] is None and plan["n_epochs_kl_warmup"] is None:
            plan["n_steps_kl_warmup"] = int(0.75 * self.summary_stats["n_cells"])
        splitter = dict(datasplitter_kwargs or {})
        if external_indexing is not None:
            splitter.update(_external_split(external_indexing))
        super().train(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            train_size=train_size,
            validation_size=validation_size,
            shuffle_set_split=shuffle_set_split,
            batch_size=batch_size,
            early_stopping=early_stopping,
            check_val_every_n_epoch=check_val_every_n_epoch,
            datasplitter_kwargs=splitter,
            plan_kwargs=plan,
            **kwargs,
        )

    @property
    def protein_names(self) -> list[str]:
        """Names of the proteins, in the model's order."""
        return list(self.adata_manager.get_state(REGISTRY_KEYS.PROTEIN_EXP_KEY)["column_names"])

    def _protein_indices(self, protein_list: Sequence[str] | None) -> np.ndarray | None:
        return feature_positions(self.protein_names, protein_list, "protein_list")

    @serialised_query
    @torch.inference_mode()
    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples_overall: int | None = None,
        transform_batch: Any | Sequence[Any] | None = None,
        gene_list: Sequence[str] | None = None,
        protein_list: Sequence[str] | None = None,
        library_size: float | Literal["latent"] = 1,
        n_samples: int = 1,
        sample_protein_mixing: bool = False,
        scale_protein: bool = False,
        include_protein_background: bool = False,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool | None = None,
        silent: bool = True,
    ) -> tuple[pd.DataFrame, pd.DataFrame] | tuple[np.ndarray, np.ndarray]:
        """Denoised RNA (``library_size * rho``) and protein expression under the posterior.

        The protein value is the foreground rate weighted by its probability, ``(1 - pi) * alpha * beta``;
        with ``include_protein_background`` the background ``pi * beta`` is added; with
        ``sample_protein_mixing`` the background/foreground indicator is sampled instead of weighted.

        Parameters
        ----------
        adata, indices, batch_size
            Cells (default: all training data).
        n_samples_overall
            Pick this many cells uniformly with replacement from ``indices`` (one row each) instead of
            returning every cell once.
        transform_batch
            Decode under this batch (a list averages over batches). ``z`` and the library keep their draws
            from the cell's own data and batch; everything batch-dependent is derived under the target
            batch: the decoders (``rho``, ``alpha``, ``pi``) and the protein background ``log beta``,
            drawn again from ``q(log beta | z, target batch)``, as scvi-tools recomputes it. For a
            protein missing from the target batch's panel the result is an extrapolation: no count of
            that batch informed its background.
        gene_list, protein_list
            Features to return (default: all).
        library_size
            RNA rows sum to this over all genes; ``"latent"``: the mean counts ``library * rho``.
        n_samples
            Posterior draws, averaged when ``return_mean``; otherwise arrays ``(n_samples, n_cells, ...)``.
        sample_protein_mixing
            Draw the background indicator ``~ Bernoulli(pi)`` for each draw instead of weighting by
            ``pi``: a draw's protein value is then ``alpha * beta`` (foreground) or ``0`` (``beta`` with
            ``include_protein_background``).
        scale_protein
            Scale each cell's protein values to sum to 1 (over all proteins, before ``protein_list``).
        include_protein_background
            Add the background term ``pi * beta`` to the protein value.
        return_mean
            Average over the ``n_samples`` draws.
        return_numpy
            Return arrays instead of DataFrames (default: DataFrames, except for the per-draw arrays).
        silent
            Accepted for scvi-tools' signature (no progress bar is shown).

        Returns
        -------
        ``(rna, protein)``: DataFrames cells x genes and cells x proteins (or arrays).

        Examples
        --------
        >>> rna, protein = model.get_normalized_expression(n_samples=10, transform_batch="batch_0")
        >>> rna.shape, protein.shape
        ((200, 50), (200, 8))
        """
        check_library_size(library_size)
        check_int("n_samples", n_samples)
        check_int("n_samples_overall", n_samples_overall, allow_none=True)
        _check_flags(
            sample_protein_mixing=sample_protein_mixing, scale_protein=scale_protein,
            include_protein_background=include_protein_background, return_mean=return_mean,
            return_numpy=return_numpy, silent=silent,
        )  # fmt: skip
        if n_samples_overall is not None:
            cells = selected_cells(self._validate_anndata(adata).adata.n_obs, indices)
            indices = cells[torch.randint(cells.size, (n_samples_overall,)).numpy()]

        def read(trace):
            if library_size == "latent":
                rho = likelihood_mean(trace.nodes["x"]["fn"])
            else:
                rho = trace.nodes["rho"]["value"] * library_size
            pi = torch.sigmoid(trace.nodes["protein_background_logits"]["value"])
            if sample_protein_mixing:
                pi = torch.bernoulli(pi)
            protein = (1 - pi) * trace.nodes["protein_foreground_rate"]["value"]
            if include_protein_background:
                protein = protein + pi * trace.nodes["protein_background_rate"]["value"]
            if scale_protein:
                protein = protein / protein.sum(-1, keepdim=True).clamp_min(1e-12)
            return rho, protein

        rna, protein = self._decode_draws(adata, indices, n_samples, batch_size, transform_batch, read)
        gene_idx, protein_idx = self._gene_indices(gene_list), self._protein_indices(protein_list)
        if gene_idx is not None:
            rna = rna[..., gene_idx]
        if protein_idx is not None:
            protein = protein[..., protein_idx]
        if not return_mean and n_samples > 1:
            if return_numpy is False:
                warnings.warn(
                    "return_numpy=False cannot hold (n_samples, n_cells, n_features) draws: returning arrays.",
                    UserWarning,
                    stacklevel=2,
                )
            return rna, protein
        rna, protein = rna.mean(0), protein.mean(0)
        if return_numpy:
            return rna, protein
        manager = self._validate_anndata(adata)
        cells = cell_names(manager.adata, indices)
        genes = np.asarray(manager.get_state(REGISTRY_KEYS.X_KEY)["var_names"])
        proteins = np.asarray(self.protein_names)
        return (
            pd.DataFrame(rna, index=cells, columns=genes if gene_idx is None else genes[gene_idx]),
            pd.DataFrame(protein, index=cells, columns=proteins if protein_idx is None else proteins[protein_idx]),
        )

    @serialised_query
    @torch.inference_mode()
    def get_latent_library_size(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """RNA library size of each cell: observed total counts (or size factor), or its latent posterior.

        With a latent library (``use_observed_lib_size=False``), ``give_mean`` returns the posterior mean
        of the log-normal, ``exp(loc + scale^2 / 2)``, otherwise one draw. With an observed library both
        return it (scvi-tools returns its encoder's unused library posterior there).

        Returns
        -------
        Array of shape ``(n_cells, 1)``.

        Examples
        --------
        >>> model.get_latent_library_size(indices=[0, 1, 2]).shape
        (3, 1)
        """
        return latent_library_size(self, adata, indices, give_mean, batch_size, None, None)

    @serialised_query
    def get_protein_foreground_probability(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        transform_batch: Any | Sequence[Any] | None = None,
        protein_list: Sequence[str] | None = None,
        n_samples: int = 1,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool | None = None,
        silent: bool = True,
        given_counts: bool = True,
    ) -> pd.DataFrame | np.ndarray:
        """Probability that each protein count of each cell comes from the foreground.

        With ``given_counts`` (default) this is the posterior responsibility of the foreground given the
        observed count ``y`` and ``z``: ``(1 - pi) NB(y; alpha beta) / [(1 - pi) NB(y; alpha beta) +
        pi NB(y; beta)]``, averaged over draws of ``z`` and ``beta``. With ``given_counts=False`` it is
        ``1 - pi`` (scvi-tools' quantity: the probability before seeing the count).

        For a protein missing from a cell's batch (``protein_batch_mask`` False: no count was measured)
        the ``given_counts`` value is ``1 - pi``, not NaN. That is the exact posterior given the measured
        data, since an unmeasured count marginalises out of the responsibility, and it is totalVI's
        imputation across antibody panels; the placeholder zero in the count matrix is never used. Mask
        these entries yourself (e.g. with ``model.module.protein_batch_mask``) where only measured
        entries should count.

        Parameters
        ----------
        adata, indices, batch_size
            Cells (default: all training data).
        transform_batch
            Decode under this batch (a list averages over batches), as in :meth:`get_normalized_expression`.
        protein_list
            Proteins to return (default: all).
        n_samples
            Posterior draws of ``z`` and ``beta`` averaged over.
        return_mean
            Average over the draws; otherwise, with ``n_samples > 1``, an array ``(n_samples, n_cells,
            n_proteins)``.
        silent
            Accepted for scvi-tools' signature (no progress bar is shown).
        given_counts
            Condition on the observed count (otherwise ``1 - pi``).
        return_numpy
            Return an array instead of a DataFrame.

        Returns
        -------
        Cells x proteins probabilities in ``[0, 1]``.

        Examples
        --------
        >>> fg = model.get_protein_foreground_probability()
        >>> fg.shape
        (200, 8)
        """
        check_int("n_samples", n_samples)
        _check_flags(return_mean=return_mean, return_numpy=return_numpy, silent=silent, given_counts=given_counts)

        def read(trace):
            logits = trace.nodes["protein_background_logits"]["value"]
            if not given_counts:
                return (torch.sigmoid(-logits),)
            masked = trace.nodes["y"]["fn"].base_dist  # strip .to_event
            mixture = masked.base_dist  # strip .mask
            y = trace.nodes["y"]["value"]
            component_log_prob = mixture.component_distribution.log_prob(y.unsqueeze(-1))
            joint = component_log_prob + torch.log_softmax(mixture.mixture_distribution.logits, -1)
            # unmeasured entries hold placeholder zeros, not counts: there the posterior is the prior 1 - pi
            measured = torch.as_tensor(masked._mask, device=logits.device).expand_as(logits)
            return (torch.where(measured, torch.softmax(joint, -1)[..., 1], torch.sigmoid(-logits)),)

        (probability,) = self._decode_draws(adata, indices, n_samples, batch_size, transform_batch, read)
        if not return_mean and n_samples > 1:
            idx = self._protein_indices(protein_list)
            return probability if idx is None else probability[..., idx]
        return self._protein_table(probability.mean(0), adata, indices, protein_list, return_numpy)

    @serialised_query
    def get_protein_background_mean(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int = 1,
        protein_list: Sequence[str] | None = None,
        batch_size: int | None = None,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        """Posterior mean of the protein background rate ``beta`` of each cell and protein.

        Examples
        --------
        >>> background = model.get_protein_background_mean(n_samples=20)
        >>> background.shape
        (200, 8)
        """
        check_int("n_samples", n_samples)
        check_bool("return_numpy", return_numpy)
        (beta,) = self._decode_draws(
            adata, indices, n_samples, batch_size, None, lambda t: (t.nodes["protein_background_rate"]["value"],)
        )
        return self._protein_table(beta.mean(0), adata, indices, protein_list, return_numpy)

    def _protein_table(self, values, adata, indices, protein_list, return_numpy):
        idx = self._protein_indices(protein_list)
        if idx is not None:
            values = values[..., idx]
        if return_numpy:
            return values
        manager = self._validate_anndata(adata)
        cells = cell_names(manager.adata, indices)
        names = np.asarray(self.protein_names)
        return pd.DataFrame(values, index=cells, columns=names if idx is None else names[idx])

    @serialised_query
    @torch.inference_mode()
    def posterior_predictive_sample(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int = 1,
        batch_size: int | None = None,
        gene_list: Sequence[str] | None = None,
        protein_list: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Replicate RNA and protein counts from the posterior predictive.

        The ``k``-th RNA and protein replicates of a cell share the same posterior draw of ``z``, the
        library and the protein background, so they are a joint replicate. Replicates of proteins
        missing from a cell's batch are draws from the model (imputations), as no count was measured
        there.

        Returns
        -------
        ``{"rna": ..., "protein": ...}`` (scvi-tools' keys), each ``(n_cells, n_features)`` for one sample
        and ``(n_cells, n_features, n_samples)`` otherwise.

        Examples
        --------
        >>> replicates = model.posterior_predictive_sample(n_samples=5)
        >>> replicates["rna"].shape, replicates["protein"].shape
        ((200, 50, 5), (200, 8, 5))
        """
        # one pass for both sites: a cell's RNA and protein replicates share each posterior draw
        rna, protein = self._predictive_sites(
            adata,
            indices,
            n_samples,
            batch_size,
            {"x": self._gene_indices(gene_list), "y": self._protein_indices(protein_list)},
        )
        return {"rna": rna, "protein": protein}

    @serialised_query
    def differential_expression(
        self,
        adata: AnnData | None = None,
        groupby: str | None = None,
        group1: str | Sequence[str] | None = None,
        group2: str | None = None,
        idx1: Sequence[int] | Sequence[bool] | np.ndarray | str | None = None,
        idx2: Sequence[int] | Sequence[bool] | np.ndarray | str | None = None,
        mode: Literal["vanilla", "change"] = "change",
        delta: float | None = 0.25,
        batch_size: int | None = None,
        all_stats: bool = True,
        batch_correction: bool = False,
        batchid1: Sequence[str] | None = None,
        batchid2: Sequence[str] | None = None,
        fdr_target: float = 0.05,
        silent: bool = False,
        protein_prior_count: float = 0.1,
        scale_protein: bool = False,
        sample_protein_mixing: bool = False,
        include_protein_background: bool = False,
        use_field: Sequence[str] | None = None,
        pseudocounts: float | None = 1e-5,
        **kwargs: Any,
    ) -> pd.DataFrame:
        """Bayesian differential expression of genes and proteins between groups of cells.

        As :meth:`pyrovi.model.SCVI.differential_expression` (same arguments, statistics and columns) on
        the joint draws of the normalised RNA and the denoised protein expression; proteins are rows
        named ``"<protein>_protein"``. The default mode is ``"change"`` with ``pseudocounts=1e-5``, as in
        scvi-tools' totalVI.

        Parameters
        ----------
        protein_prior_count
            Added to the protein draws before fold changes are taken.
        scale_protein, sample_protein_mixing, include_protein_background
            How the protein draws are made (see :meth:`get_normalized_expression`).
        use_field
            ``["rna", "protein"]`` (default), or one of them to test only genes or only proteins.
        pseudocounts
            Offset added to the normalised expression before the log2 in change mode (``None``:
            estimated from unexpressed features).
        **kwargs
            Further options of :meth:`pyrovi.model.SCVI.differential_expression` (``n_samples_overall``,
            ``test_mode``, ``cred_interval_lvls``, ``use_permutation``, ``filter_outlier_cells``, ...).

        Examples
        --------
        >>> de = model.differential_expression(groupby="labels", group1="label_0")
        >>> "protein_0_protein" in de.index and "gene_0" in de.index  # genes and proteins in one table
        True
        """
        check_number("protein_prior_count", protein_prior_count, 0.0)
        _check_flags(
            scale_protein=scale_protein, sample_protein_mixing=sample_protein_mixing,
            include_protein_background=include_protein_background,
        )  # fmt: skip
        if isinstance(use_field, str):
            raise TypeError(f"use_field must be a list, e.g. [{use_field!r}], got the string {use_field!r}.")
        fields = ["rna", "protein"] if use_field is None else list(use_field)
        unknown = sorted(set(fields) - {"rna", "protein"})
        if unknown or not fields:
            raise ValueError(f"use_field takes 'rna' and/or 'protein', got {use_field!r}.")
        gene_list = kwargs.pop("gene_list", None)
        if gene_list is None and fields != ["rna", "protein"]:
            gene_list = (self._feature_names(self.adata_manager)[: self.summary_stats["n_vars"]] if "rna" in fields else []) + (
                self.protein_names if "protein" in fields else []
            )
        draw_kwargs = {
            "protein_prior_count": protein_prior_count,
            "scale_protein": scale_protein,
            "sample_protein_mixing": sample_protein_mixing,
            "include_protein_background": include_protein_background,
        }
        if kwargs.get("weights", "uniform") not in (None, "uniform"):
            raise ValueError("TOTALVI draws uniformly over cells (as scvi-tools' totalVI); weights='importance' is SCVI's.")
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in _DE_OPTIONS}
        if kwargs:
            raise TypeError(f"differential_expression() got unexpected keyword arguments {sorted(kwargs)}.")
        return self._differential_expression(
            adata, groupby, group1, group2, idx1, idx2, mode, delta, batch_size, all_stats, batch_correction,
            batchid1, batchid2, fdr_target, silent, options.pop("weights", "uniform"),
            options.pop("filter_outlier_cells", False), None,
            pseudocounts=pseudocounts, gene_list=gene_list, draw_kwargs=draw_kwargs,
            **{**_DE_DEFAULTS, **options},
        )  # fmt: skip

    # ----------------------------------------------------------------------------------------------
    # differential expression and correlations over genes and proteins (DEMixin hooks)

    @staticmethod
    def _feature_names(manager: Any) -> list[str]:
        genes = manager.get_state(REGISTRY_KEYS.X_KEY)["var_names"]
        return list(genes) + list(manager.get_state(REGISTRY_KEYS.PROTEIN_EXP_KEY)["column_names"])

    @staticmethod
    def _de_counts(manager: Any) -> np.ndarray:
        arrays = manager.get_arrays()
        rna, protein = arrays[REGISTRY_KEYS.X_KEY], arrays[REGISTRY_KEYS.PROTEIN_EXP_KEY]
        rna = rna.toarray() if hasattr(rna, "toarray") else np.asarray(rna)
        protein = protein.toarray() if hasattr(protein, "toarray") else np.asarray(protein)
        return np.concatenate([rna, protein], axis=1)

    def _group_draws(
        self, adata, cells, n_samples, transform_batch, gene_list, batch_size, weights="uniform",
        importance_weighting_kwargs=None, protein_prior_count: float = 0.1, scale_protein: bool = False,
        sample_protein_mixing: bool = False, include_protein_background: bool = False,
    ) -> np.ndarray:  # fmt: skip
        picks = cells[torch.randint(cells.size, (n_samples,)).numpy()]
        rna, protein = self.get_normalized_expression(
            adata, indices=picks, transform_batch=transform_batch, n_samples=1, batch_size=batch_size,
            return_numpy=True, scale_protein=scale_protein, sample_protein_mixing=sample_protein_mixing,
            include_protein_background=include_protein_background,
        )  # fmt: skip
        draws = np.concatenate([rna, protein + protein_prior_count], axis=1).astype(np.float32)
        _, positions = self._de_genes(self._validate_anndata(adata), gene_list)
        return draws if positions is None else draws[:, positions]

    def _de_labels(self, manager: Any) -> list[str]:
        genes = list(manager.get_state(REGISTRY_KEYS.X_KEY)["var_names"])
        return genes + [f"{name}_protein" for name in self.protein_names]

    def _raw_statistics(self, manager: Any, counts: Any, cells: np.ndarray, suffix: str) -> dict[str, np.ndarray]:
        # genes as SCVI (per 10^4 RNA counts of the cell); proteins have no normalised mean (NaN), as scvi-tools
        n_genes = self.summary_stats["n_vars"]
        rna = raw_count_statistics(counts[cells, :n_genes], suffix=suffix)
        protein = raw_count_statistics(counts[cells, n_genes:], suffix=suffix)
        protein[f"raw_normalized_mean{suffix}"] = np.full(counts.shape[1] - n_genes, np.nan)
        return {key: np.concatenate([rna[key], protein[key]]) for key in rna}

    def _correlation_draws(self, adata, indices, transform_batch, size_factor, n_samples, batch_size) -> np.ndarray:
        rna, protein = self.get_normalized_expression(
            adata, indices=indices, transform_batch=transform_batch, library_size=size_factor,
            n_samples=n_samples, batch_size=batch_size, return_mean=False, return_numpy=True,
        )
        if n_samples == 1:
            rna, protein = rna[None], protein[None]
        return np.concatenate([rna, protein], axis=-1)


_MUDATA_OBS_ARGS = ("batch_key", "size_factor_key", "categorical_covariate_keys", "continuous_covariate_keys")


def _resolve_modalities(mdata: Any, modalities: dict[str, str] | None, setup_args: dict[str, Any]) -> dict[str, Any]:
    """The modality of each setup argument (None: the MuData's obs), checked against ``mdata.mod``."""
    given = dict(modalities or {})
    legacy = {"rna": "rna_layer", "protein": "protein_layer"}
    for old, new in legacy.items():
        if old in given:
            given.setdefault(new, given.pop(old))
    known = {"rna_layer", "protein_layer", *_MUDATA_OBS_ARGS}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(
            f"modalities has unknown key(s) {unknown}; its keys are setup_mudata's argument names: {sorted(known)}."
        )
    resolved: dict[str, Any] = {"rna_layer": given.get("rna_layer", "rna"), "protein_layer": given.get("protein_layer", "prot")}
    if resolved["rna_layer"] == resolved["protein_layer"]:
        raise ValueError(
            f"modalities names the modality {resolved['rna_layer']!r} for both the RNA and the proteins; give each "
            "its own, e.g. modalities={'rna_layer': 'rna', 'protein_layer': 'prot'}."
        )
    for name in _MUDATA_OBS_ARGS:
        mod = given.get(name)
        keys = setup_args[name]
        if mod is None and keys is not None:
            # not named: the MuData's own obs, or the RNA modality's when only it has the column(s)
            columns = [keys] if isinstance(keys, str) else list(keys)
            rna = mdata.mod.get(resolved["rna_layer"]) if resolved["rna_layer"] in mdata.mod else None
            if rna is not None and any(c not in mdata.obs.columns for c in columns) and all(
                c in rna.obs.columns for c in columns
            ):
                mod = resolved["rna_layer"]
        resolved[name] = mod
    missing = sorted({m for m in resolved.values() if m is not None and m not in mdata.mod})
    if missing:
        raise ValueError(
            f"The MuData has no modality {missing} (named in modalities); its modalities are {list(mdata.mod)}. "
            "Pass e.g. modalities={'rna_layer': 'rna', 'protein_layer': 'prot', 'batch_key': 'rna'} with your names."
        )
    return resolved


def _mudata_fields(
    modalities: dict[str, Any],
    rna_layer: str | None = None,
    protein_layer: str | None = None,
    batch_key: str | None = None,
    size_factor_key: str | None = None,
    categorical_covariate_keys: Sequence[str] | None = None,
    continuous_covariate_keys: Sequence[str] | None = None,
) -> list:
    """TOTALVI's fields on a MuData: the same registry keys as its AnnData fields, read from the modalities."""
    batch = MuDataCategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key, mod_key=modalities["batch_key"])
    return [
        MuDataLayerField(REGISTRY_KEYS.X_KEY, rna_layer, mod_key=modalities["rna_layer"], is_count_data=True),
        MuDataProteinLayerField(
            REGISTRY_KEYS.PROTEIN_EXP_KEY, protein_layer, mod_key=modalities["protein_layer"], batch_field=batch
        ),
        batch,
        MuDataCategoricalObsField(REGISTRY_KEYS.LABELS_KEY, None),
        MuDataNumericalObsField(
            REGISTRY_KEYS.SIZE_FACTOR_KEY, size_factor_key, mod_key=modalities["size_factor_key"], positive=True
        ),
        MuDataCategoricalJointObsField(
            REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys, mod_key=modalities["categorical_covariate_keys"]
        ),
        MuDataNumericalJointObsField(
            REGISTRY_KEYS.CONT_COVS_KEY, continuous_covariate_keys, mod_key=modalities["continuous_covariate_keys"]
        ),
    ]


def _external_split(external_indexing: Sequence[Any]) -> dict[str, Any]:
    """``[train, validation, test]`` row positions as the data splitter's explicit split."""
    if not isinstance(external_indexing, (list, tuple)) or not 1 <= len(external_indexing) <= 3:
        raise ValueError(
            "external_indexing must be a list [train_indices, validation_indices, test_indices] of row positions "
            "(validation and test may be empty or left out)."
        )
    names = ("train_idx", "val_idx", "test_idx")
    return {name: np.asarray(idx) for name, idx in zip(names, external_indexing) if idx is not None}


def _check_flags(**flags: Any) -> None:
    """Each flag is True or False (``return_numpy`` may also be None, its default)."""
    for name, flag in flags.items():
        if not (name == "return_numpy" and flag is None):
            check_bool(name, flag)
