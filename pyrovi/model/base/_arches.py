"""Query mapping (scArches): a reference model extended to a query's new batches, its own weights frozen.

:meth:`ArchesMixin.load_query_data` builds the reference's model class, with its hyperparameters, on the
query data set up with the reference's registry (new batch and covariate categories appended), copies the
reference's weights in (:func:`~pyrovi.module.base.graft_reference`) and freezes them
(:func:`~pyrovi.module.base.freeze_for_query`): training the query then learns the new categories' weights
only, unless the ``freeze_*`` flags release more. The reference model is never changed.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ..._checks import check_bool
from ..._constants import REGISTRY_KEYS
from ...module.base import QueryFreezing, freeze_for_query, graft_reference
from ._query_genes import pad_query_genes
from ._save_load import resolve_device

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

#: cells of the query data lent to a saved reference so that its module can be rebuilt (see _reference_model)
_SHADOW_CELLS = 64


class ArchesMixin:
    """``prepare_query_anndata`` and ``load_query_data``: mapping query data onto a trained reference."""

    #: Why a model class cannot be mapped (None: it can). The surgery extends an encoder-decoder's
    #: category-indexed weights; a model without that structure sets this and refuses clearly.
    _QUERY_MAPPING_REFUSAL: str | None = None

    @classmethod
    def prepare_query_anndata(
        cls,
        adata: AnnData,
        reference_model: str | os.PathLike | Self,
        return_reference_var_names: bool = False,
        inplace: bool = True,
    ) -> AnnData | pd.Index | None:
        """Give the query the reference model's genes, in its order: missing genes become zero counts.

        Genes of the query that the reference does not have are dropped. A warning says how many genes were
        padded; a query holding fewer than half of the reference's genes is refused (a ``ValueError``), since its
        cells would be encoded mostly from padding.

        Parameters
        ----------
        adata
            Query data (raw counts), not yet set up.
        reference_model
            The reference model, or the directory it was saved to.
        return_reference_var_names
            Only return the reference's genes (a ``pandas.Index``); ``adata`` is left alone.
        inplace
            Change ``adata`` itself (default, as scvi-tools); otherwise return a new AnnData and leave ``adata``
            as it is. A backed AnnData needs ``inplace=False`` when its genes must change.

        Returns
        -------
        None (in place), the prepared AnnData (``inplace=False``), or the reference's genes.

        Examples
        --------
        >>> query = adata[:20, 5:].copy()  # five of the reference's genes missing
        >>> with warnings.catch_warnings(record=True) as caught:  # five genes are padded: a warning says so
        ...     out = SCVI.prepare_query_anndata(query, model, inplace=False)
        >>> bool((out.var_names == adata.var_names).all()), float(out[:, :5].X.sum())
        (True, 0.0)
        """
        check_bool("return_reference_var_names", return_reference_var_names)
        check_bool("inplace", inplace)
        _refuse_unmappable(cls)
        features = _reference_features(_reference_registry(cls, reference_model))
        if None not in features:
            raise TypeError(
                f"The reference {cls.__name__} was set up with a MuData: use {cls.__name__}.prepare_query_mudata."
            )
        if return_reference_var_names:
            return features[None]
        if not isinstance(adata, AnnData):
            raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
        return pad_query_genes(adata, features[None], inplace)

    @classmethod
    def prepare_query_mudata(
        cls,
        mdata: Any,
        reference_model: str | os.PathLike | Self,
        return_reference_var_names: bool = False,
        inplace: bool = True,
    ) -> Any:
        """:meth:`prepare_query_anndata` for a MuData: each modality the reference reads gets its features, in order.

        Parameters
        ----------
        mdata
            Query MuData with the reference's modalities.
        reference_model
            The reference model (set up with a MuData), or the directory it was saved to.
        return_reference_var_names
            Only return the reference's features, a ``pandas.Index`` per modality.
        inplace
            Change ``mdata``'s modalities in place (default); otherwise return a new MuData.

        Returns
        -------
        None (in place), the prepared MuData, or the reference's features per modality.

        Examples
        --------
        >>> TOTALVI.setup_mudata(mdata, modalities={"rna_layer": "rna", "protein_layer": "protein_expression"})
        >>> reference = TOTALVI(mdata)
        >>> names = TOTALVI.prepare_query_mudata(None, reference, return_reference_var_names=True)
        >>> sorted(names)
        ['protein_expression', 'rna']
        """
        check_bool("return_reference_var_names", return_reference_var_names)
        check_bool("inplace", inplace)
        _refuse_unmappable(cls)
        features = _reference_features(_reference_registry(cls, reference_model))
        if None in features:
            raise TypeError(
                f"The reference {cls.__name__} was set up with an AnnData: use {cls.__name__}.prepare_query_anndata."
            )
        if return_reference_var_names:
            return dict(features)
        if not _is_mudata(mdata):
            raise TypeError(f"mdata must be a MuData, got {type(mdata).__name__}.")
        missing = sorted(set(features) - set(mdata.mod))
        if missing:
            raise ValueError(
                f"The query MuData lacks the reference's modalities {missing} (it has {sorted(mdata.mod)}); name its "
                "modalities as the reference's were."
            )
        out = mdata if inplace else mdata.copy()
        for mod, names in features.items():
            pad_query_genes(out.mod[mod], names, inplace=True)
        out.update()
        return None if inplace else out

    @classmethod
    def load_query_data(
        cls,
        adata: AnnData | None = None,
        reference_model: str | os.PathLike | Self | None = None,
        registry: dict | None = None,
        inplace_subset_query_vars: bool = False,
        accelerator: str = "auto",
        device: int | str = "auto",
        unfrozen: bool = False,
        freeze_dropout: bool = False,
        freeze_expression: bool = True,
        freeze_decoder_first_layer: bool = True,
        freeze_batchnorm_encoder: bool = True,
        freeze_batchnorm_decoder: bool = False,
        freeze_classifier: bool = True,
        transfer_batch: bool = True,
        datamodule: Any = None,
    ) -> Self:
        """A model for the query data, starting from a trained reference (scArches' architecture surgery).

        The query is set up with the reference's registry: its categories keep their codes and new batches (and
        new categories of categorical covariates) are appended. The new model has the reference's
        hyperparameters and weights, plus fresh weights for the new categories (new one-hot columns of every
        layer that reads covariates, new embedding rows, per-batch parameters). Only those train, plus what
        the ``freeze_*`` flags release; everything else stays bitwise the reference's, and the reference model
        is unchanged. Train the returned model briefly (its ``train`` uses ``weight_decay=0`` unless told
        otherwise, so that frozen entries stay exactly as they were), then query it like any model.

        Parameters
        ----------
        adata
            Query data with the reference's genes (see :meth:`prepare_query_anndata`) and the obs columns the
            reference was set up with. Its registry is written to ``adata.uns``.
        reference_model
            The trained reference model (of this class), or the directory it was saved to.
        registry
            Not supported: pyrovi sets up the query from ``adata``.
        inplace_subset_query_vars
            Subset and reorder the query's genes to the reference's in place first (all must be present).
        accelerator, device
            Where to put the query model (as in :meth:`load`).
        unfrozen
            Train every weight (the other ``freeze_*`` flags are ignored).
        freeze_dropout
            Switch dropout off while the query trains.
        freeze_expression
            Keep the encoders' first layer fixed (``False``: its weights on the genes train too).
        freeze_decoder_first_layer
            Keep the decoders' first layer fixed.
        freeze_batchnorm_encoder, freeze_batchnorm_decoder
            Keep batch normalisation (scale, shift and running statistics) fixed in the encoders or decoders.
        freeze_classifier
            Keep a classifier fixed (models with one, such as scANVI).
        transfer_batch
            Allow batches the reference has not seen (``False``: they are an error).
        datamodule
            Not supported (pyrovi trains from AnnData).

        Returns
        -------
        The query model (not trained).

        Examples
        --------
        >>> query = pyrovi.datasets.synthetic_iid(n_cells=60, n_genes=50, n_batches=1, seed=3)
        >>> query.obs["batch"] = "new_batch"
        >>> query_model = SCVI.load_query_data(query, model)
        >>> query_model.summary_stats["n_batch"]
        3
        >>> query_model.train(max_epochs=2, enable_progress_bar=False)
        >>> query_model.get_latent_representation().shape
        (60, 10)
        """
        for name, flag in (("inplace_subset_query_vars", inplace_subset_query_vars), ("transfer_batch", transfer_batch)):
            check_bool(name, flag)
        freezing = QueryFreezing(
            unfrozen=unfrozen, freeze_dropout=freeze_dropout, freeze_expression=freeze_expression,
            freeze_decoder_first_layer=freeze_decoder_first_layer, freeze_batchnorm_encoder=freeze_batchnorm_encoder,
            freeze_batchnorm_decoder=freeze_batchnorm_decoder, freeze_classifier=freeze_classifier,
        )  # fmt: skip
        _refuse_unmappable(cls)
        if reference_model is None:
            raise ValueError(f"reference_model is required: a trained {cls.__name__}, or the directory it was saved to.")
        if registry is not None or datamodule is not None:
            raise ValueError(
                "load_query_data sets the query up from its AnnData; registry= and datamodule= are not supported. "
                "Pass the query data as adata."
            )
        if adata is None:
            raise ValueError("adata is required: the query data, with the reference's genes and obs columns.")
        if not isinstance(adata, AnnData) and not _is_mudata(adata):
            raise TypeError(
                f"adata must be an AnnData (or MuData) for {cls.__name__}.load_query_data, got {type(adata).__name__}."
            )
        target = resolve_device(accelerator, device)
        reference_registry = _reference_registry(cls, reference_model)
        for mod, names in _reference_features(reference_registry).items():
            data = adata if mod is None else _modality(adata, mod)
            if inplace_subset_query_vars:
                _subset_genes(data, names)
            _check_query_genes(cls.__name__, data, names, mod)
        manager = cls._manager(reference_registry["setup_args"])
        manager.register_fields(adata, source_registry=reference_registry, extend_categories=True)
        if not transfer_batch:
            _refuse_new_batches(reference_registry, manager.registry)
        reference = _reference_model(cls, reference_model, adata)
        if not reference.is_trained:
            warnings.warn(
                f"The reference {cls.__name__} is not trained: the query is mapped onto untrained weights.",
                UserWarning,
                stacklevel=2,
            )
        query = cls(adata, **copy.deepcopy(reference.init_params_))
        new_entries = graft_reference(reference.module, query.module)
        freeze_for_query(query.module, new_entries, freezing)
        query.module.to(target)
        query.module.eval()
        query._query_freezing = freezing
        query._query_new_entries = new_entries  # saved with the model, so that a loaded query trains alike
        return query


def _refuse_unmappable(cls: type) -> None:
    if cls._QUERY_MAPPING_REFUSAL is not None:
        raise NotImplementedError(f"{cls.__name__} does not support query mapping: {cls._QUERY_MAPPING_REFUSAL}")


def _reference_registry(cls: type, reference: Any) -> dict[str, Any]:
    """The reference's setup (registry), from a model or a saved directory, checked to be of ``cls``."""
    if isinstance(reference, (str, os.PathLike)):
        registry = cls.load_registry(reference)
    elif hasattr(reference, "adata_manager") and hasattr(reference, "module"):
        registry = reference.adata_manager.registry
    else:
        raise TypeError(
            f"reference_model must be a trained {cls.__name__} or the directory it was saved to, got "
            f"{type(reference).__name__}."
        )
    if registry.get("model_name") != cls.__name__:
        raise TypeError(
            f"The reference is a {registry.get('model_name')}, not a {cls.__name__}: call "
            f"{registry.get('model_name')}.load_query_data (or prepare_query_anndata) instead."
        )
    return registry


def _reference_features(registry: dict[str, Any]) -> dict[str | None, pd.Index]:
    """The features the reference reads, per modality (``None``: the AnnData's own genes)."""
    features: dict[str | None, pd.Index] = {}
    for key, state in registry["field_states"].items():
        names = state.get("var_names") if key == REGISTRY_KEYS.X_KEY else state.get("column_names")
        mod = state.get("mod_key")
        if names is not None and (mod is not None or key == REGISTRY_KEYS.X_KEY):
            features[mod] = pd.Index([str(n) for n in names])
    return features


def _is_mudata(data: Any) -> bool:
    return type(data).__name__ == "MuData"


def _modality(mdata: Any, mod: str) -> AnnData:
    if not _is_mudata(mdata) or mod not in mdata.mod:
        where = f"the modalities {sorted(mdata.mod)}" if _is_mudata(mdata) else "an AnnData"
        raise ValueError(
            f"The reference reads the modality {mod!r} of a MuData, but the query is {where}. Pass a MuData with the "
            "reference's modalities (see prepare_query_mudata)."
        )
    return mdata.mod[mod]


def _reference_model(cls: type, reference: Any, query: AnnData) -> Any:
    """The reference as a model object. A saved reference is loaded onto a few query cells relabelled with the
    reference's first categories: only its architecture and weights are needed, not its training data."""
    if not isinstance(reference, (str, os.PathLike)):
        return reference
    shadow = query[: min(query.n_obs, _SHADOW_CELLS)]
    shadow = shadow.to_memory() if getattr(shadow, "isbacked", False) else shadow.copy()
    for state in cls.load_registry(reference)["field_states"].values():
        keys = state.get("obs_keys") or ([state["obs_key"]] if state.get("obs_key") else [])
        categories = state.get("categories")
        mod = state.get("mod_key")
        tables = [shadow.obs] + ([shadow.mod[mod].obs] if mod is not None and _is_mudata(shadow) else [])
        for key in keys:
            known = categories.get(key) if isinstance(categories, dict) else categories
            for obs in tables:
                if known and key in obs:
                    obs[key] = pd.Categorical([known[0]] * len(obs), categories=known)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the saved split names cells beyond these few
        return cls.load(reference, adata=shadow, accelerator="cpu")


def _check_query_genes(name: str, adata: AnnData, genes: pd.Index, mod: str | None = None) -> None:
    present = pd.Index(adata.var_names.astype(str))
    missing = genes.difference(present, sort=False)
    if len(missing):
        where, prepare = ("", "prepare_query_anndata(adata") if mod is None else (
            f" in its modality {mod!r}", "prepare_query_mudata(mdata")
        raise ValueError(
            f"The query lacks {len(missing)} of the reference model's {len(genes)} features{where} "
            f"({list(missing[:5])}{' ...' if len(missing) > 5 else ''}). Call {name}.{prepare}, reference_model) "
            "first: it pads missing features with zeros and puts them in the reference's order."
        )


def _subset_genes(adata: AnnData, genes: pd.Index) -> None:
    if adata.is_view or adata.isbacked:
        raise ValueError(
            "inplace_subset_query_vars=True changes the query's genes in place, which a view or a backed AnnData "
            "cannot do; pass a copy in memory (adata.to_memory() or adata[mask].copy())."
        )
    present = pd.Index(adata.var_names.astype(str))
    order = present.get_indexer(genes)
    if (order < 0).any():
        return  # reported, with the fix, by _check_query_genes
    adata._inplace_subset_var(order)  # noqa: SLF001 - anndata's in-place subset, as scvi-tools uses it


def _refuse_new_batches(reference_registry: dict[str, Any], query_registry: dict[str, Any]) -> None:
    old = reference_registry["field_states"].get(REGISTRY_KEYS.BATCH_KEY, {}).get("categories") or []
    new = query_registry["field_states"].get(REGISTRY_KEYS.BATCH_KEY, {}).get("categories") or []
    unseen = [c for c in new if c not in old]
    if unseen:
        raise ValueError(
            f"transfer_batch=False, but the query has batches the reference has not seen: {unseen[:5]}. Pass "
            "transfer_batch=True to learn weights for them, or map their cells to known batches."
        )


def query_weight_decay(model: Any, plan_kwargs: dict[str, Any]) -> dict[str, Any]:
    """A query model trains without weight decay unless told otherwise: decay would shrink its frozen entries."""
    if getattr(model, "_query_freezing", None) is None:
        return plan_kwargs
    decay = plan_kwargs.get("weight_decay", 0.0)
    if isinstance(decay, (int, float, np.floating)) and decay > 0:
        warnings.warn(
            f"weight_decay={decay} on a query model also shrinks the reference's frozen weights in the tensors that "
            "train in part (layers reading new batches). Leave weight_decay out (0) to keep them exactly.",
            UserWarning,
            stacklevel=3,
        )
    return {**plan_kwargs, "weight_decay": decay}
