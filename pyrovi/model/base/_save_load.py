"""Saving and loading models: safetensors for tensors, JSON for everything else, never pickle."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData, read_h5ad
from safetensors.torch import load_file, save_file

from ..._constants import REGISTRY_KEYS
from ...data import UnseenCategoryError
from ...module.priors import (
    LatentPrior,
    distribution_from_config,
    distribution_to_config,
    prior_from_config,
    prior_to_config,
)
from ._query_errors import _unknown_to_model

if TYPE_CHECKING:
    from ._base_model import BaseModelClass

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
ADATA_FILE = "adata.h5ad"
FORMAT_VERSION = 1


def _history_to_json(history: dict[str, pd.DataFrame]) -> dict[str, dict[str, list]]:
    return {
        key: {"epoch": [int(i) for i in frame.index], "value": [float(v) for v in frame.iloc[:, 0]]}
        for key, frame in history.items()
    }


def _history_from_json(data: dict[str, dict[str, list]]) -> dict[str, pd.DataFrame]:
    out = {}
    for key, cols in data.items():
        frame = pd.DataFrame({key: cols["value"]}, index=pd.Index(cols["epoch"], name="epoch"))
        out[key] = frame
    return out


def _param_to_json(name: str, value: Any) -> Any:
    """An init parameter as JSON: priors and distributions by name and arguments, code by reference."""
    if isinstance(value, LatentPrior):
        return {"__prior__": prior_to_config(value)}
    if isinstance(value, torch.distributions.Distribution):
        return {"__distribution__": distribution_to_config(value)}
    if callable(value):
        # user code cannot be stored without pickle; load asks for it again
        return {"__custom__": f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"}
    return value


def _param_from_json(name: str, value: Any, overrides: dict[str, Any]) -> Any:
    if name in overrides:
        return overrides[name]
    if not isinstance(value, dict):
        return value
    if "__prior__" in value:
        return prior_from_config(value["__prior__"])
    if "__distribution__" in value:
        return distribution_from_config(value["__distribution__"])
    if "__custom__" in value:
        raise ValueError(
            f"This model was saved with user code for `{name}` ({value['__custom__']}), which is not stored "
            f"in the file. Pass it again: `Model.load(path, adata, {name}=...)`."
        )
    return value


def _indices(values: np.ndarray | None) -> list[int] | None:
    return None if values is None else [int(i) for i in values]


def save_model(model: BaseModelClass, dir_path: str | Path, overwrite: bool, save_anndata: bool) -> None:
    """Write ``model`` to ``dir_path`` (see :meth:`BaseModelClass.save`)."""
    path = Path(dir_path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory.")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} already exists and is not empty; pass overwrite=True to replace it.")
    meta = {
        "format_version": FORMAT_VERSION,
        "model_name": type(model).__name__,
        "pyrovi_version": _version(),
        "init_params": {k: _param_to_json(k, v) for k, v in model.init_params_.items()},
        "registry": model.adata_manager.registry,
        "var_names": [str(v) for v in model.adata_manager.get_state(REGISTRY_KEYS.X_KEY)["var_names"]],
        "is_trained": model.is_trained,
        "train_indices": _indices(model.train_indices),
        "validation_indices": _indices(model.validation_indices),
        "test_indices": _indices(model.test_indices),
        "history": _history_to_json(model.history),
    }
    try:
        meta_text = json.dumps(meta, indent=1)
    except TypeError as err:
        raise TypeError(
            f"Cannot save {type(model).__name__}: an init parameter is not JSON-serialisable ({err}). "
            "Pass hyperparameters as plain numbers, strings, lists or dicts."
        ) from err
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.module.state_dict().items()}

    # Write beside the target, then swap: an interrupted save never leaves a half-written model
    # in place of a good one.
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"pyrovi_model": type(model).__name__})
        (staging / META_FILE).write_text(meta_text)
        if save_anndata:
            model.adata.write_h5ad(staging / ADATA_FILE)
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _version() -> str:
    from ... import __version__

    return __version__


def resolve_device(accelerator: str) -> torch.device:
    """``"auto"`` picks CUDA when available; ``"gpu"``/``"cuda"`` require it; ``"cpu"`` is the CPU."""
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"accelerator={accelerator!r} but no CUDA device is available; use 'cpu'.")
        return torch.device("cuda")
    if accelerator == "cpu":
        return torch.device("cpu")
    return torch.device(accelerator)


def _check_genes(saved: list[str], adata: AnnData) -> None:
    present = set(map(str, adata.var_names))
    missing = [g for g in saved if g not in present]
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise ValueError(
            f"The AnnData lacks {len(missing)} of the model's {len(saved)} genes ({shown}). "
            "Load the model with data holding the genes it was trained on."
        )


def load_model(
    cls: type[BaseModelClass],
    dir_path: str | Path,
    adata: AnnData | None,
    accelerator: str,
    overrides: dict[str, Any] | None = None,
):
    """Rebuild a model written by :func:`save_model` (see :meth:`BaseModelClass.load`)."""
    path = Path(dir_path)
    meta_path, weights_path = path / META_FILE, path / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"{path} is not a saved pyrovi model: expected {META_FILE} and {WEIGHTS_FILE} in it."
        )
    meta: dict[str, Any] = json.loads(meta_path.read_text())
    if meta.get("model_name") != cls.__name__:
        raise ValueError(
            f"{path} holds a {meta.get('model_name')} model; load it with "
            f"{meta.get('model_name')}.load, not {cls.__name__}.load."
        )
    if adata is None:
        if not (path / ADATA_FILE).is_file():
            raise ValueError(f"{path} holds no AnnData (saved without save_anndata=True); pass adata=...")
        adata = read_h5ad(path / ADATA_FILE)
    _check_genes(meta["var_names"], adata)

    registry = meta["registry"]
    try:
        cls._manager(registry["setup_args"]).register_fields(adata, source_registry=registry)
    except UnseenCategoryError as err:
        raise _unknown_to_model(err, cls.__name__) from None
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(meta["init_params"])
    if unknown:
        raise TypeError(f"load got arguments that are not init parameters of the saved model: {sorted(unknown)}.")
    init_params = {k: _param_from_json(k, v, overrides) for k, v in meta["init_params"].items()}
    model = cls(adata, **init_params)
    state = load_file(str(weights_path))
    model.module.load_state_dict(state, strict=True)
    model.module.to(resolve_device(accelerator))
    model.module.eval()
    model.is_trained_ = bool(meta["is_trained"])
    model.history_ = _history_from_json(meta["history"])
    for name in ("train_indices", "validation_indices", "test_indices"):
        values = meta.get(name)
        setattr(model, name, None if values is None else np.asarray(values, dtype=np.int64))
    return model
