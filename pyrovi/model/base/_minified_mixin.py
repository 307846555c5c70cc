"""Minified models: answer queries from stored latent posteriors, without the counts.

``model.minify_adata()`` replaces the model's AnnData by a minified copy (see ``_minified_data.py``);
its minibatches then carry the stored posterior, which the module's guide reads instead of running the
encoder (``pyrovi/module/base/_minified.py``). Queries that only need draws of the latents (the latent
representation, normalized expression, posterior predictive samples, differential expression,
feature correlations) therefore work unchanged; those that score the observed counts refuse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from anndata import AnnData

from ..._checks import check_choice
from ..._constants import REGISTRY_KEYS
from ._minified_data import (
    LATENT_POSTERIOR,
    LATENT_POSTERIOR_WITH_COUNTS,
    MINIFIED_TYPES,
    adata_minify_type,
    counts_dropped,
    minified_copy,
    minified_fields,
    minified_keys,
    with_minified_states,
)

if TYPE_CHECKING:  # the contract with the model class, seen by static checkers only (see _contracts.py)
    from ._contracts import QueryHost as _Host
else:
    _Host = object


class MinifiedModeMixin(_Host):
    """``minify_adata`` and ``minified_data_type``: a model that answers from its stored latent posterior.

    The class it is mixed into provides ``adata``, ``adata_manager``, ``module``, ``is_trained``,
    ``get_latent_representation(return_dist=True)`` and the class method ``_manager(setup_args, adata)``
    (as :class:`BaseModelClass` with :class:`VAEMixin` does).

    Examples
    --------
    >>> model.minified_data_type is None
    True
    >>> model.minify_adata()
    >>> model.minified_data_type
    'latent_posterior_parameters'
    >>> model.adata.X.nnz, model.get_latent_representation().shape
    (0, (200, 10))
    """

    #: ``adata.obsm`` keys of the stored posterior mean and variance, ``adata.obs`` column of the library
    _LATENT_QZM_KEY: str | None = None
    _LATENT_QZV_KEY: str | None = None
    _OBSERVED_LIB_SIZE_KEY = "observed_lib_size"

    @property
    def minified_data_type(self) -> str | None:
        """How the model's AnnData is minified: ``"latent_posterior_parameters"``, ``..._with_counts`` or None.

        Examples
        --------
        >>> model.minified_data_type is None
        True
        """
        manager = getattr(self, "adata_manager", None)
        if manager is None or REGISTRY_KEYS.LATENT_QZM_KEY not in {f.registry_key for f in manager.fields}:
            return None
        return adata_minify_type(manager.adata)

    def minify_adata(
        self,
        minified_data_type: str = LATENT_POSTERIOR,
        use_latent_qzm_key: str = "X_latent_qzm",
        use_latent_qzv_key: str = "X_latent_qzv",
    ) -> None:
        """Replace the model's AnnData by a minified copy: the latent posterior and library sizes, no counts.

        The copy keeps the annotations (``obs``, ``var``, ``obsm``, ``uns``...) and stores each cell's
        posterior mean and variance of the latent in ``obsm`` (``"scvi_latent_qzm"``/``"scvi_latent_qzv"``
        for SCVI, ``"totalvi_..."`` for TOTALVI) and its observed library size in ``obs["observed_lib_size"]``,
        with the type in ``uns["_scvi_adata_minify_type"]``, as scvi-tools does. Queries then draw the latent
        from the stored posterior instead of encoding counts. The AnnData the model had is not modified.

        Parameters
        ----------
        minified_data_type
            ``"latent_posterior_parameters"``: ``X`` and every layer become empty sparse matrices of the same
            shape and ``raw`` is dropped. ``"latent_posterior_parameters_with_counts"``: the counts are kept
            (so queries that score them still work) beside the stored posterior.
        use_latent_qzm_key, use_latent_qzv_key
            ``adata.obsm`` entries holding the posterior mean and variance, as
            ``get_latent_representation(return_dist=True)`` returns them. When both are absent they are
            computed.

        Examples
        --------
        >>> qzm, qzv = model.get_latent_representation(return_dist=True)
        >>> model.adata.obsm["X_latent_qzm"], model.adata.obsm["X_latent_qzv"] = qzm, qzv
        >>> model.minify_adata()
        >>> np.array_equal(model.get_latent_representation(), qzm)
        True
        """
        check_choice("minified_data_type", minified_data_type, MINIFIED_TYPES)
        name = type(self).__name__
        if not isinstance(self.adata, AnnData):
            raise ValueError(
                f"minify_adata minifies an AnnData; this {name} was set up on a {type(self.adata).__name__}, "
                "which pyrovi cannot minify yet."
            )
        if not self.is_trained:
            raise ValueError(
                f"This {name} is not trained: its latent posterior says nothing yet. Call model.train() first."
            )
        if not getattr(self.module, "use_observed_lib_size", True):
            raise ValueError(
                f"minify_adata needs a model with an observed library size; this {name} has a latent library "
                "(use_observed_lib_size=False), whose posterior needs the counts."
            )
        current = self.minified_data_type
        if current == LATENT_POSTERIOR and minified_data_type == LATENT_POSTERIOR_WITH_COUNTS:
            raise ValueError(
                "The model's AnnData is minified without its counts already, so they cannot be kept. Load the "
                f"model with the full data ({name}.load(dir_path, adata=full_adata)) and minify that."
            )
        qzm, qzv = self._stored_or_computed_posterior(use_latent_qzm_key, use_latent_qzv_key)
        manager = self.adata_manager
        if current is None:
            library = np.asarray(manager.get_array(REGISTRY_KEYS.X_KEY).sum(axis=1)).reshape(-1)
        else:
            library = np.asarray(manager.get_array(REGISTRY_KEYS.OBSERVED_LIB_SIZE)).reshape(-1)
        mini = minified_copy(self.adata, library, minified_data_type, minified_keys(type(self)), qzm, qzv)
        setup_args = manager.setup_args
        new_manager = type(self)._manager(setup_args, mini)
        extra = minified_fields(type(self), mini)
        registry = with_minified_states(manager.registry, extra, mini)
        self._adata = mini
        self._note_seen(mini)
        self.adata_manager = new_manager.register_fields(mini, source_registry=registry)

    def _stored_or_computed_posterior(self, qzm_key: str, qzv_key: str) -> tuple[np.ndarray, np.ndarray]:
        """The posterior mean and variance from ``adata.obsm`` (both there), else from the guide."""
        obsm = self.adata.obsm
        if (qzm_key in obsm) != (qzv_key in obsm):
            missing = qzv_key if qzm_key in obsm else qzm_key
            raise KeyError(
                f"adata.obsm has no {missing!r}: store both the posterior mean and variance "
                "(model.get_latent_representation(return_dist=True)), or neither to have them computed."
            )
        if qzm_key not in obsm:
            return self.get_latent_representation(return_dist=True)
        qzm, qzv = np.asarray(obsm[qzm_key], dtype=np.float32), np.asarray(obsm[qzv_key], dtype=np.float32)
        n_base = getattr(self.module, "n_latent_base", qzm.shape[-1])
        expected = (self.adata.n_obs, n_base)
        for key, value in ((qzm_key, qzm), (qzv_key, qzv)):
            if value.shape != expected:
                raise ValueError(
                    f"adata.obsm[{key!r}] has shape {value.shape}, but this model's posterior has shape {expected} "
                    "(cells x latent dimensions, as get_latent_representation(return_dist=True) returns it)."
                )
        if not (np.isfinite(qzm).all() and np.isfinite(qzv).all() and (qzv > 0).all()):
            raise ValueError(
                f"adata.obsm[{qzm_key!r}] must be finite and adata.obsm[{qzv_key!r}] finite and positive (variances)."
            )
        return qzm, qzv


def refuse_if_minified(model: Any, adata: Any, query: str) -> None:
    """Raise a clear error when ``query`` would score the counts of a minified AnnData that has none.

    ``adata`` is the data the query reads (None: the model's own).
    """
    if not counts_dropped(model.adata if adata is None else adata):
        return
    name = type(model).__name__
    raise ValueError(
        f"{query} needs the observed counts, but this AnnData is minified ('{LATENT_POSTERIOR}': only the "
        f"latent posterior and library sizes are kept). Pass the full data as adata=, or load the model with it "
        f"({name}.load(dir_path, adata=full_adata))."
    )


def refuse_training_if_minified(model: Any) -> None:
    """Training needs the counts and the encoder: a model of minified data does not train."""
    kind = getattr(model, "minified_data_type", None)
    if kind is None:
        return
    name = type(model).__name__
    raise ValueError(
        f"This {name}'s AnnData is minified ({kind!r}): its guide reads the stored latent posterior, so training "
        f"would not fit the encoder. Train a model of the full data (e.g. {name}.load(dir_path, adata=full_adata))."
    )


def transfer_manager(model: Any, adata: Any) -> Any:
    """The manager through which ``model`` reads another AnnData, minified or full.

    A minified model reads full data through its fields without the stored posterior (the encoder runs);
    data minified for another model (or for none) are refused, since nothing says whose posterior they hold.
    """
    own = model.adata_manager
    target_kind = adata_minify_type(adata)
    model_kind = getattr(model, "minified_data_type", None)
    if target_kind is not None and model_kind is None:
        raise ValueError(
            f"This AnnData is minified ({target_kind!r}), but the {type(model).__name__} model is not: a minified "
            "AnnData is read by the model it was minified with. Load that model with it "
            f"({type(model).__name__}.load(dir_path, adata=minified_adata)), or pass the full data."
        )
    if target_kind is None and model_kind is not None:
        manager = type(model)._manager(own.setup_args)
        return manager.register_fields(adata, source_registry=own.registry, read_only=True)
    return own.transfer_fields(adata, read_only=True)


def check_saved_registry(registry: dict[str, Any], adata: Any, model_name: str) -> None:
    """A saved model that was not minified cannot read minified data (scvi-tools refuses it too)."""
    if adata_minify_type(adata) is None or REGISTRY_KEYS.LATENT_QZM_KEY in registry.get("field_states", {}):
        return
    raise ValueError(
        "It appears you are trying to load a non-minified model with minified adata: the saved model did not "
        "store this latent posterior, so nothing says it is this model's. Load it with the full data "
        f"({model_name}.load(dir_path, adata=full_adata)), then call model.minify_adata()."
    )
