"""SCANVI: semi-supervised cell typing (Xu et al. 2021), the label of unlabelled cells enumerated exactly."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyro.distributions as dist
import torch
from anndata import AnnData
from pyro.infer import TraceEnum_ELBO

from .._checks import check_bool, check_choice, check_int
from .._constants import REGISTRY_KEYS
from .._pyro_lock import serialised_query
from ..data import LabelsWithUnlabeledObsField, UnseenCategoryError
from ..data.fields._lookup import check_key_list
from ..dataloaders import SemiSupervisedDataSplitter
from ..dataloaders._ann_dataloader import resolve_indices
from ..module import SCANVAE, GeneLikelihood
from ..module.base import GlobalGuide
from ..module.priors import LatentPrior
from ._scvi import SCVI
from .base._base_model import max_epochs_heuristic
from .base._minified_data import adata_minify_type
from .base._queries import cell_names

LabelPrior = Literal["labelled", "uniform", "learned"]


class SCANVI(SCVI):
    """single-cell ANnotation using Variational Inference: scVI with a cell-type label, partly observed.

    Labelled cells observe their type; for the others the type is a discrete latent variable, summed out
    exactly (``TraceEnum_ELBO``). The amortized classifier :math:`q(y \\mid z)` then predicts the type of
    any cell. See :class:`~pyrovi.module.SCANVAE` for the model's maths.

    Parameters
    ----------
    adata
        AnnData set up with :meth:`setup_anndata`.
    n_hidden, n_latent, n_layers, dropout_rate, dispersion, gene_likelihood, use_observed_lib_size
        As :class:`SCVI`.
    linear_classifier
        A linear classifier on :math:`z` instead of a one-hidden-layer network.
    label_prior
        The label proportions :math:`\\pi`: ``"labelled"`` (the labelled cells' proportions, default),
        ``"uniform"`` (scvi-tools' choice), or ``"learned"`` (a point estimate, from the labelled
        proportions).
    prior
        Prior of :math:`u` (default standard Normal), any :class:`~pyrovi.priors.LatentPrior`.
    dispersion_prior, global_guide
        As :class:`SCVI`.
    **model_kwargs
        Further arguments of :class:`~pyrovi.module.SCANVAE` (``classifier_parameters``,
        ``classification_ratio``) and :class:`~pyrovi.module.VAE` (``encode_covariates``, ...).

    Examples
    --------
    >>> adata = pyrovi.datasets.synthetic_iid(n_cells=200, n_genes=50)
    >>> adata.obs["cell_type"] = adata.obs["labels"].astype(str)
    >>> adata.obs.loc[adata.obs_names[::2], "cell_type"] = "Unknown"
    >>> SCANVI.setup_anndata(adata, labels_key="cell_type", unlabeled_category="Unknown", batch_key="batch")
    >>> model = SCANVI(adata, n_latent=5)
    >>> model.train(max_epochs=2, enable_progress_bar=False)
    >>> model.predict()[:3].tolist()  # doctest: +SKIP
    ['label_0', 'label_2', 'label_1']
    >>> model.predict(soft=True).shape
    (200, 3)
    """

    _module_cls = SCANVAE
    _data_splitter_cls = SemiSupervisedDataSplitter
    # where minify_adata stores the latent posterior (scvi-tools' names)
    _LATENT_QZM_KEY = "scanvi_latent_qzm"
    _LATENT_QZV_KEY = "scanvi_latent_qzv"

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
        linear_classifier: bool = False,
        label_prior: LabelPrior = "labelled",
        prior: LatentPrior | None = None,
        dispersion_prior: dist.Distribution | None = None,
        global_guide: GlobalGuide = "normal",
        **model_kwargs: Any,
    ):
        check_choice("label_prior", label_prior, ("labelled", "uniform", "learned"))
        check_bool("linear_classifier", linear_classifier)
        self._label_prior = label_prior  # read by _extra_module_kwargs while SCVI builds the module
        super().__init__(
            adata, n_hidden=n_hidden, n_latent=n_latent, n_layers=n_layers, dropout_rate=dropout_rate,
            dispersion=dispersion, gene_likelihood=gene_likelihood, use_observed_lib_size=use_observed_lib_size,
            prior=prior, dispersion_prior=dispersion_prior, global_guide=global_guide,
            linear_classifier=linear_classifier, **model_kwargs,
        )  # fmt: skip
        self._record_init_params(locals())
        self.was_pretrained = False
        codes = self._label_codes()
        #: the labelled and unlabelled cells of the model's data (scvi-tools' attribute names)
        self._labeled_indices = np.flatnonzero(codes < len(self.labels_))
        self._unlabeled_indices = np.flatnonzero(codes >= len(self.labels_))

    # ----------------------------------------------------------------------------------------------
    # setup

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        labels_key: str,
        unlabeled_category: str | int | float,
        layer: str | None = None,
        batch_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
    ) -> None:
        """Register an AnnData for SCANVI: counts as for :class:`SCVI`, and a labels column with unlabelled cells.

        Parameters
        ----------
        adata
            Raw UMI counts in ``X`` or ``layers[layer]``.
        labels_key
            ``obs`` column of cell types; cells holding ``unlabeled_category`` are unlabelled.
        unlabeled_category
            The value marking unlabelled cells (e.g. ``"Unknown"``).
        layer, batch_key, size_factor_key, categorical_covariate_keys, continuous_covariate_keys
            As :meth:`SCVI.setup_anndata`.

        Examples
        --------
        >>> adata.obs["cell_type"] = adata.obs["labels"].astype(str)
        >>> SCANVI.setup_anndata(adata, labels_key="cell_type", unlabeled_category="Unknown", batch_key="batch")
        """
        if unlabeled_category is None or isinstance(unlabeled_category, (bool, list, tuple, dict)):
            raise TypeError(
                f"unlabeled_category must be the value marking unlabelled cells (e.g. 'Unknown'), got "
                f"{unlabeled_category!r}."
            )
        setup_args = {
            "labels_key": labels_key,
            "unlabeled_category": str(unlabeled_category),
            "layer": layer,
            "batch_key": batch_key,
            "size_factor_key": size_factor_key,
            "categorical_covariate_keys": check_key_list(categorical_covariate_keys, "categorical_covariate_keys") or None,
            "continuous_covariate_keys": check_key_list(continuous_covariate_keys, "continuous_covariate_keys") or None,
        }
        cls._register(adata, setup_args)

    @classmethod
    def _anndata_fields(cls, labels_key: str | None = None, unlabeled_category: str = "Unknown", **scvi_args: Any) -> list:
        fields = super()._anndata_fields(labels_key=labels_key, **scvi_args)
        labels = LabelsWithUnlabeledObsField(REGISTRY_KEYS.LABELS_KEY, labels_key, unlabeled_category)
        return [labels if field.registry_key == REGISTRY_KEYS.LABELS_KEY else field for field in fields]

    def _module_n_labels(self) -> int:
        if not self.labels_:
            state = self.adata_manager.get_state(REGISTRY_KEYS.LABELS_KEY)
            raise ValueError(
                f"No cell is labelled: every cell of adata.obs[{state['obs_key']!r}] is {state['unlabeled_category']!r}"
                f"{'' if state['obs_key'] else ' (labels_key is None)'}, so SCANVI has no cell type to learn. "
                "Label some cells with their type, or train an SCVI model instead."
            )
        return len(self.labels_)

    def _n_labels_shown(self) -> int:
        return len(self.labels_)

    @property
    def unlabeled_category_(self) -> str:
        """The value marking unlabelled cells.

        Examples
        --------
        >>> scanvi_model.unlabeled_category_
        'Unknown'
        """
        return self.adata_manager.get_state(REGISTRY_KEYS.LABELS_KEY)["unlabeled_category"]

    @property
    def labels_(self) -> list[str]:
        """The cell types, in their code order (the unlabelled category left out).

        Examples
        --------
        >>> scanvi_model.labels_
        ['label_0', 'label_1', 'label_2']
        """
        state = self.adata_manager.get_state(REGISTRY_KEYS.LABELS_KEY)
        return [c for c in state["categories"] if c != state["unlabeled_category"]]

    def _label_codes(self, adata: AnnData | None = None) -> np.ndarray:
        manager = self._validate_anndata(adata) if adata is not None else self.adata_manager
        return np.asarray(manager.get_array(REGISTRY_KEYS.LABELS_KEY)).reshape(-1)

    def _extra_module_kwargs(self) -> dict[str, Any]:
        """The label proportions the module starts from: the labelled cells' (plus one per type), or uniform."""
        if self._label_prior == "uniform":
            return {}
        counts = np.bincount(self._label_codes(), minlength=len(self.labels_) + 1)[: len(self.labels_)]
        return {"label_proportions": (counts + 1.0).tolist(), "learn_label_proportions": self._label_prior == "learned"}

    # ----------------------------------------------------------------------------------------------
    # from a trained SCVI

    @classmethod
    def from_scvi_model(
        cls,
        scvi_model: SCVI,
        unlabeled_category: str,
        labels_key: str | None = None,
        adata: AnnData | None = None,
        **scanvi_kwargs: Any,
    ) -> SCANVI:
        """A SCANVI starting from a trained SCVI's weights (its encoder, decoder and dispersion).

        Parameters
        ----------
        scvi_model
            A trained :class:`SCVI`.
        unlabeled_category
            The value marking unlabelled cells in the labels column.
        labels_key
            ``obs`` column of cell types; default the one the SCVI model was set up with.
        adata
            Data to set up for SCANVI (default the SCVI model's own), with the SCVI model's setup.
        **scanvi_kwargs
            Further SCANVI arguments (``linear_classifier``, ``label_prior``, ...); the SCVI model's own
            hyperparameters are kept (an argument repeating one is ignored with a warning).

        Examples
        --------
        >>> scanvi = SCANVI.from_scvi_model(model, "Unknown", labels_key="labels")
        >>> scanvi.was_pretrained
        True
        """
        if not isinstance(scvi_model, SCVI) or isinstance(scvi_model, SCANVI):
            raise TypeError(f"scvi_model must be a trained pyrovi SCVI, got {type(scvi_model).__name__}.")
        if not scvi_model.is_trained:
            warnings.warn(
                "The SCVI model is not trained: SCANVI starts from untrained weights. Train it first "
                "(scvi_model.train()) to start from a fitted encoder and decoder.",
                UserWarning,
                stacklevel=2,
            )
        if adata_minify_type(scvi_model.adata if adata is None else adata) == "latent_posterior_parameters":
            raise ValueError(
                "The data are minified (their counts were dropped), but SCANVI trains on counts: pass the full "
                "data as adata=..., or minify with minified_data_type='latent_posterior_parameters_with_counts'."
            )
        setup = dict(scvi_model.adata_manager.setup_args)
        labels_key = labels_key if labels_key is not None else setup.get("labels_key")
        if labels_key is None:
            raise ValueError(
                "labels_key is needed: the SCVI model was set up without a labels column. Pass the obs column of "
                "cell types, e.g. SCANVI.from_scvi_model(model, 'Unknown', labels_key='cell_type')."
            )
        if adata is None:
            adata = scvi_model.adata
        else:
            scvi_model.transfer_fields(adata)  # the data must fit the SCVI model
        params = dict(scvi_model.init_params_)
        for name in list(scanvi_kwargs):
            if name in params:
                warnings.warn(
                    f"Ignoring {name}={scanvi_kwargs.pop(name)!r}: the SCVI model was built with {name}="
                    f"{params[name]!r}, which SCANVI keeps so that the weights fit.",
                    UserWarning,
                    stacklevel=2,
                )
        if params.get("latent_distribution", "normal") != "normal":
            raise ValueError("SCANVI needs a Gaussian latent: the SCVI model has latent_distribution='ln'.")
        params.pop("latent_distribution", None)
        setup.pop("labels_key", None)
        cls.setup_anndata(adata, labels_key=labels_key, unlabeled_category=unlabeled_category, **setup)
        model = cls(adata, **params, **scanvi_kwargs)
        _load_matching(model.module, scvi_model.module.state_dict())
        model.was_pretrained = True
        return model

    # ----------------------------------------------------------------------------------------------
    # training

    def train(
        self,
        max_epochs: int | None = None,
        n_samples_per_label: float | None = None,
        check_val_every_n_epoch: int | None = None,
        train_size: float | None = None,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        batch_size: int = 128,
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        datasplitter_kwargs: dict[str, Any] | None = None,
        plan_kwargs: dict[str, Any] | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        """Fit SCANVI by SVI with the label enumerated (``TraceEnum_ELBO``).

        Parameters
        ----------
        max_epochs
            Default as :meth:`SCVI.train`, and when started from an SCVI model (:meth:`from_scvi_model`)
            between 2 and 10 (a third of it), as scvi-tools.
        n_samples_per_label
            Balance the classification term across cell types: each type's labelled training cells then
            weigh as much in it as any other type's (scvi-tools draws this many labelled cells of each type
            per epoch for its classification loss; the weights give the same balance in expectation).
            ``None``: every labelled cell weighs the same.
        check_val_every_n_epoch
            Validation frequency (``validation_accuracy`` and ``elbo_validation`` in the history).
        train_size, validation_size, shuffle_set_split, batch_size, accelerator, devices, datasplitter_kwargs
            As :meth:`SCVI.train`; labelled cells are split across the sets in proportion.
        plan_kwargs
            Training-plan arguments (``lr``, ...); ``loss`` defaults to ``TraceEnum_ELBO(max_plate_nesting=1)``.
            ``elbo_train`` in the history is the optimised objective (with the KL warm-up and the classification
            term); ``elbo_validation`` is the ELBO itself. ``log_train_terms=True`` also logs the training ELBO's
            parts (``reconstruction_loss_train``, ``kl_local_train``) at the cost of a second pass.
        **trainer_kwargs
            Lightning ``Trainer`` arguments.

        Examples
        --------
        >>> scanvi_model.train(max_epochs=2, n_samples_per_label=20, enable_progress_bar=False)
        >>> "elbo_validation" in scanvi_model.history
        True
        """
        if n_samples_per_label is not None:
            check_int("n_samples_per_label", n_samples_per_label, minimum=1)
        if max_epochs is None and self.was_pretrained:
            max_epochs = int(min(10, max(2, round(max_epochs_heuristic(self.summary_stats["n_cells"]) / 3.0))))
        self._set_classification_weights(n_samples_per_label)
        plan_kwargs = {"loss": TraceEnum_ELBO(max_plate_nesting=1), **(plan_kwargs or {})}
        if check_val_every_n_epoch is not None:
            trainer_kwargs["check_val_every_n_epoch"] = check_val_every_n_epoch
        splitter = dict(datasplitter_kwargs or {})
        if n_samples_per_label is not None:
            splitter.setdefault("n_samples_per_label", n_samples_per_label)
        super().train(
            max_epochs=max_epochs, train_size=train_size, validation_size=validation_size,
            shuffle_set_split=shuffle_set_split, batch_size=batch_size, accelerator=accelerator, devices=devices,
            datasplitter_kwargs=splitter, plan_kwargs=plan_kwargs, **trainer_kwargs,
        )  # fmt: skip

    def _set_classification_weights(self, n_samples_per_label: int | None) -> None:
        """Per-type weights of the classification term, so that it is alpha times a mean over labelled cells.

        Without ``n_samples_per_label`` the mean is over all labelled cells (weight ``N / N_labelled`` each, ``N``
        cells in all, since the ELBO is per cell). With it, as if ``min(m, N_k)`` cells of type ``k`` were drawn
        (scvi-tools' sampling): a cell of type ``k`` weighs ``N min(m, N_k) / (N_k sum_j min(m, N_j))``. Computed
        from all registered cells; the stratified split keeps their proportions.
        """
        codes = self._label_codes()
        n_types = len(self.labels_)
        counts = np.bincount(codes[codes < n_types], minlength=n_types).astype(np.float64)
        drawn = counts if n_samples_per_label is None else np.minimum(counts, n_samples_per_label)
        weights = np.zeros(n_types)
        present = counts > 0
        if present.any():
            weights[present] = len(codes) * drawn[present] / (counts[present] * drawn.sum())
        buffer = self.module.classification_weights
        buffer.copy_(torch.as_tensor(weights, dtype=buffer.dtype, device=buffer.device))

    # ----------------------------------------------------------------------------------------------
    # prediction

    @serialised_query
    @torch.inference_mode()
    def predict(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        soft: bool = False,
        batch_size: int | None = None,
        use_posterior_mean: bool = True,
    ) -> np.ndarray | pd.DataFrame:
        """Each cell's type: the most probable under :math:`q(y \\mid z)`, or all the probabilities.

        Parameters
        ----------
        adata
            Data to predict (default the model's). Its labels column is not read: it may hold types the model
            does not know (another annotation of a query).
        indices
            Cells to predict (default all).
        soft
            Return the probabilities of every type (a DataFrame, one column per type) instead of the labels.
        batch_size
            Minibatch size for the computation.
        use_posterior_mean
            Classify the mean of :math:`q(z \\mid x)` (default) rather than a draw.

        Returns
        -------
        An array of type names, or with ``soft`` a DataFrame of probabilities indexed by cell.

        Examples
        --------
        >>> scanvi_model.predict(soft=True).columns.tolist()
        ['label_0', 'label_1', 'label_2']
        """
        check_bool("soft", soft)
        check_bool("use_posterior_mean", use_posterior_mean)
        adata = self.adata if adata is None else adata
        names = adata  # cell names come from the data as given
        try:
            self._validate_anndata(adata)
        except UnseenCategoryError:
            # predict reads no label: types the model does not know (a query's own annotation) need not block it
            stripped = _without_labels_column(adata, self.adata_manager.get_state(REGISTRY_KEYS.LABELS_KEY)["obs_key"])
            if stripped is None:
                raise
            adata = stripped
            self._validate_anndata(adata)  # any other unseen category is still refused
        indices = resolve_indices(indices, adata.n_obs)
        self.module.eval()
        probs = []
        for batch in self._make_data_loader(adata, indices=indices, batch_size=batch_size, guide_only=True):
            args, kwargs = self._fn_args(batch)
            x = args[0]
            logits = self.module.classify(
                x, self.module._batch_codes(kwargs.get("batch_index"), x), kwargs.get("cat_covs", ()),
                kwargs.get("cont_covs"), use_posterior_mean=use_posterior_mean,
                latent_qzm=kwargs.get("latent_qzm"), latent_qzv=kwargs.get("latent_qzv"),
            )  # fmt: skip
            probs.append(torch.softmax(logits, -1).cpu().numpy())
        probs = np.concatenate(probs) if probs else np.zeros((0, len(self.labels_)))
        if soft:
            return pd.DataFrame(probs, columns=self.labels_, index=cell_names(names, indices))
        return np.asarray(self.labels_, dtype=object)[probs.argmax(-1)] if len(probs) else np.array([], dtype=object)


def _without_labels_column(adata: AnnData, labels_key: str | None) -> AnnData | None:
    """``adata`` read as if it had no labels column (its cells then unlabelled), the user's object left as is;
    None when there is no such column to leave out, or for backed data (not rebuilt in memory)."""
    if labels_key is None or labels_key not in adata.obs.columns or adata.isbacked:
        return None
    return AnnData(
        X=adata.X, obs=adata.obs.drop(columns=[labels_key]), var=adata.var, layers=dict(adata.layers.items()),
        obsm=dict(adata.obsm.items()), uns=dict(adata.uns),
    )  # fmt: skip


def _load_matching(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy the tensors of ``state`` whose name and shape ``module`` shares; warn about any left out."""
    own = module.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(fitting))
    if skipped:
        warnings.warn(
            f"{len(skipped)} tensors of the SCVI model do not fit SCANVI's and start afresh: {skipped[:5]}.",
            UserWarning,
            stacklevel=3,
        )
    module.load_state_dict(fitting, strict=False)
