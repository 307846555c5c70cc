"""Reading what a posterior predictive check compares: the models' features, cells and observed counts.

A check compares one modality: ``"rna"`` (the genes of any model) or ``"protein"`` (the proteins of
models that have them, such as TOTALVI).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._constants import REGISTRY_KEYS
from ..model.base._features import feature_positions
from ..model.base._minified_data import counts_dropped

#: split of the cells given to the check (by default all cells)
IN_SAMPLE = "in-sample"
#: split of a model's validation cells, which its encoder and decoder never trained on
HELD_OUT = "held-out"
SPLITS = (IN_SAMPLE, HELD_OUT)
#: the modalities a check can compare, and the name of their feature axis
FEATURE_DIMS = {"rna": "genes", "protein": "proteins"}


def model_genes(model: Any) -> list[str]:
    """The genes of ``model`` in its registered order."""
    return list(model.adata_manager.get_state(REGISTRY_KEYS.X_KEY)["var_names"])


def _model_layer(model: Any) -> str | None:
    return model.adata_manager.get_state(REGISTRY_KEYS.X_KEY)["layer"]


def check_modality(modality: str) -> str:
    if modality not in FEATURE_DIMS:
        raise ValueError(f"modality must be one of {list(FEATURE_DIMS)}, got {modality!r}.")
    return modality


def _model_features(model: Any, modality: str) -> list[str]:
    """The genes (``"rna"``) or proteins (``"protein"``) of ``model`` in its registered order."""
    return model_genes(model) if modality == "rna" else list(model.protein_names)


def check_models(models: Mapping[str, Any], modality: str = "rna") -> dict[str, Any]:
    """Check the ``{name: model}`` mapping: non-empty, string names, models with a posterior predictive
    (and proteins, for the ``"protein"`` modality)."""
    if not isinstance(models, Mapping):
        raise TypeError(
            f"models must be a dict {{name: model}}, got {type(models).__name__}; "
            "e.g. PosteriorPredictiveCheck(adata, {'scVI (NB)': model})."
        )
    if not models:
        raise ValueError("models is empty; pass at least one fitted model.")
    for name, model in models.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"model names must be non-empty strings, got {name!r}.")
        if not hasattr(model, "posterior_predictive_sample") or not hasattr(model, "adata_manager"):
            raise TypeError(
                f"models[{name!r}] is a {type(model).__name__}, which has no posterior_predictive_sample; "
                "pass pyrovi models such as SCVI."
            )
        if modality == "protein" and not hasattr(model, "protein_names"):
            raise TypeError(
                f"models[{name!r}] is a {type(model).__name__}, which models no proteins; modality='protein' "
                "checks models of RNA and proteins such as TOTALVI. Check its genes with modality='rna'."
            )
    return dict(models)


def shared_features(models: Mapping[str, Any], modality: str = "rna") -> list[str]:
    """The features every model shares, in the first model's order; an error names the mismatch."""
    kind = FEATURE_DIMS[modality]
    names = list(models)
    reference = _model_features(models[names[0]], modality)
    for name in names[1:]:
        features = _model_features(models[name], modality)
        if set(features) != set(reference) or len(features) != len(reference):
            only_ref = sorted(set(reference) - set(features))
            only_other = sorted(set(features) - set(reference))
            raise ValueError(
                f"The models must share their {kind} to be compared: {names[0]!r} has {len(reference)} {kind} "
                f"and {name!r} {len(features)}; only in {names[0]!r}: {only_ref[:5]}, only in {name!r}: "
                f"{only_other[:5]}. Set both up on the same {kind}."
            )
    return reference


def resolve_layer(models: Mapping[str, Any], layer: str | None) -> str | None:
    """The layer holding the observed counts: the one given, else the one the models were set up with."""
    if layer is not None:
        return layer
    layers = {name: _model_layer(model) for name, model in models.items()}
    if len(set(layers.values())) > 1:
        raise ValueError(
            f"The models read their counts from different layers ({layers}); pass layer= to say which "
            "one holds the observed counts."
        )
    return next(iter(layers.values()))


def resolve_cells(indices: Sequence[int] | np.ndarray | None, n_obs: int) -> np.ndarray:
    """Row positions (int64) of the cells to check; all when ``indices`` is None."""
    if indices is None:
        return np.arange(n_obs, dtype=np.int64)
    indices = np.asarray(indices)
    if indices.dtype == np.bool_:
        if indices.shape != (n_obs,):
            raise ValueError(f"a boolean indices mask needs one entry per cell ({n_obs}), got {indices.shape}.")
        indices = np.flatnonzero(indices)
    if indices.ndim != 1 or indices.size == 0:
        raise ValueError(f"indices must be a non-empty 1-d array of row positions, got shape {indices.shape}.")
    if not np.issubdtype(indices.dtype, np.integer):
        raise TypeError(f"indices must hold integer row positions or be a boolean mask, got {indices.dtype}.")
    if indices.min() < 0 or indices.max() >= n_obs:
        raise IndexError(f"indices must lie in [0, {n_obs}), got values from {indices.min()} to {indices.max()}.")
    return indices.astype(np.int64)


def read_counts(adata: AnnData, layer: str | None, genes: Sequence[str], cells: np.ndarray) -> np.ndarray:
    """Dense float32 counts of ``cells`` x ``genes`` (in that gene order) from ``X`` or a layer."""
    if counts_dropped(adata):
        raise ValueError(
            "This AnnData is minified (model.minify_adata()): its counts were dropped and only the latent posterior "
            "kept, so there are no observed counts to check replicates against. Pass the full data instead."
        )
    if layer is None:
        matrix, source = adata.X, "adata.X"
    elif layer in adata.layers:
        matrix, source = adata.layers[layer], f"adata.layers[{layer!r}]"
    else:
        raise KeyError(f"adata.layers has no layer {layer!r}; layers are {list(adata.layers.keys())}.")
    if matrix is None:
        raise ValueError(f"{source} is empty; pass layer= naming the layer that holds the counts.")
    columns = pd.Index(adata.var_names).get_indexer(list(genes))
    if (columns < 0).any():
        missing = [g for g, c in zip(genes, columns) if c < 0]
        raise ValueError(
            f"The AnnData lacks {len(missing)} of the models' {len(genes)} genes, e.g. {missing[:5]}."
        )
    block = matrix[cells][:, columns]
    block = block.toarray() if sparse.issparse(block) else np.asarray(block)
    return block.astype(np.float32, copy=False)


def protein_arrays(model: Any, adata: AnnData) -> tuple[np.ndarray | sparse.spmatrix, np.ndarray]:
    """``adata``'s protein counts (cells x the model's proteins) and batch codes, as the model reads them.

    Read once per model and check: for data other than the model's own, this validates the data again.
    """
    manager = model._validate_anndata(adata)
    proteins = manager.get_array(REGISTRY_KEYS.PROTEIN_EXP_KEY)
    proteins = proteins.to_numpy() if isinstance(proteins, pd.DataFrame) else proteins
    batch = manager.get_array(REGISTRY_KEYS.BATCH_KEY)
    codes = np.zeros(adata.n_obs, dtype=np.int64) if batch is None else np.asarray(batch).reshape(-1)
    return proteins, codes


def read_proteins(
    model: Any, matrix: np.ndarray | sparse.spmatrix, proteins: Sequence[str], cells: np.ndarray
) -> np.ndarray:
    """Dense float32 counts of ``cells`` x ``proteins`` (in that order) from ``matrix``, ``model``'s protein counts."""
    columns = feature_positions(model.protein_names, proteins, "proteins")
    block = matrix[cells][:, columns]
    block = block.toarray() if sparse.issparse(block) else np.asarray(block)
    return block.astype(np.float32, copy=False)


def measured_proteins(model: Any, codes: np.ndarray, proteins: Sequence[str], cells: np.ndarray) -> np.ndarray:
    """For each of ``proteins``: whether ``model`` holds it measured in the batch of every one of ``cells``.

    ``codes`` are the batch codes of all cells, as from :func:`protein_arrays`.

    A protein missing from a batch's panel (all zeros there at setup) has no observed counts in that
    batch's cells; the model imputes it, so comparing such zeros with replicates would be meaningless.
    """
    mask = model.module.protein_batch_mask.cpu().numpy()  # (n_batch, n_proteins), the model's order
    measured = mask[np.unique(codes[cells])].all(0)
    return measured[feature_positions(model.protein_names, proteins, "proteins")]


def held_out_cells(model: Any, adata: AnnData) -> np.ndarray | None:
    """The model's validation cells as rows of ``adata``, or None when it has none or ``adata`` is other data.

    Validation indices are rows of the training AnnData, so they only mean something for that AnnData
    (the same object, or one with the same cells in the same order).
    """
    cells = getattr(model, "validation_indices", None)
    if cells is None or len(cells) == 0:
        return None
    own = model.adata
    if adata is not own and not (adata.n_obs == own.n_obs and adata.obs_names.equals(own.obs_names)):
        return None
    return np.asarray(cells, dtype=np.int64)


def name_models(model_or_models: Any) -> dict[str, Any]:
    """``{name: model}`` from a mapping, a single model or a sequence of models (named by class)."""
    if isinstance(model_or_models, Mapping):
        return dict(model_or_models)
    models = list(model_or_models) if isinstance(model_or_models, (list, tuple)) else [model_or_models]
    classes = [type(m).__name__ for m in models]
    unique = len(set(classes)) == len(classes)
    return {(cls if unique else f"{cls}_{i}"): m for i, (cls, m) in enumerate(zip(classes, models))}
