"""Saving and loading models: safetensors for tensors, JSON for everything else, never pickle."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from safetensors.torch import save as serialize_safetensors

from ..._checks import check_bool, check_choice, check_path
from ..._constants import REGISTRY_KEYS
from ..._errors import ModelFileError
from ...data import MissingKeyError, UnseenCategoryError
from ...train._trainer_checks import ACCELERATORS, check_device, no_cuda_error
from ...module.priors import (
    LatentPrior,
    distribution_from_config,
    distribution_to_config,
    prior_from_config,
    prior_to_config,
)
from ._model_files import (
    ADATA_FILE,
    FORMAT_VERSION,
    MDATA_FILE,
    META_FILE,
    WEIGHTS_FILE,
    check_model_dir,
    check_indices,
    check_init_params,
    check_prefix,
    check_sizes_against_weights,
    check_state,
    read_meta,
    read_saved_adata,
    read_weights,
)
from ._model_dir_writer import write_model_files
from ._minified_data import minified_fields
from ._minified_mixin import check_saved_registry
from ._query_errors import unknown_to_model
from ._query_state import query_mapping_state, restore_query_mapping

if TYPE_CHECKING:
    from ._contracts import PersistentModel

__all__ = ["save_model", "load_model", "load_saved_registry", "resolve_device", "FORMAT_VERSION", "WEIGHTS_FILE", "META_FILE", "ADATA_FILE"]


def _history_to_json(history: dict[str, pd.DataFrame]) -> dict[str, dict[str, list]]:
    return {
        # JSON has no NaN: a missing value (e.g. an epoch whose metric was not computed) is written as null
        key: {"epoch": [int(i) for i in frame.index], "value": [float(v) if np.isfinite(v) else None for v in frame.iloc[:, 0]]}
        for key, frame in history.items()
    }


def _history_from_json(data: dict[str, dict[str, list]]) -> dict[str, pd.DataFrame]:
    out = {}
    for key, cols in data.items():
        values = np.asarray([np.nan if v is None else v for v in cols["value"]], dtype=np.float64)
        frame = pd.DataFrame({key: values}, index=pd.Index(cols["epoch"], name="epoch"))
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


def _param_from_json(name: str, value: Any, overrides: dict[str, Any], meta_path: Path) -> Any:
    """An init parameter from JSON. Priors and distributions come from fixed tables of known classes."""
    if name in overrides:
        return overrides[name]
    if not isinstance(value, dict):
        return value
    if "__custom__" in value:
        raise ValueError(
            f"This model was saved with user code for `{name}` ({value['__custom__']}), which is not stored "
            f"in the file. Pass it again: `Model.load(path, adata, {name}=...)`."
        )
    marker = next((m for m in ("__prior__", "__distribution__") if m in value), None)
    if marker is None:
        return value
    config = value[marker]
    if not isinstance(config, dict):
        raise ModelFileError(
            f"{meta_path}: init parameter {name!r} has a malformed {marker} entry. Save the model again."
        )
    if marker == "__prior__" and "custom" in config:
        return prior_from_config(config)  # raises, asking the user to pass their prior class again
    rebuild = prior_from_config if marker == "__prior__" else distribution_from_config
    try:
        return rebuild(config)
    except Exception as err:  # noqa: BLE001 - a forged configuration can fail in any way
        raise ModelFileError(f"{meta_path}: init parameter {name!r}: {err} Save the model again.") from err


def _indices(values: np.ndarray | None) -> list[int] | None:
    return None if values is None else [int(i) for i in values]


def save_model(
    model: PersistentModel, dir_path: str | Path, overwrite: bool, save_anndata: bool, prefix: str | None = None,
    **anndata_write_kwargs: Any,
) -> None:
    """Write ``model`` to ``dir_path`` (see :meth:`BaseModelClass.save`)."""
    dir_path = check_path("dir_path", dir_path)
    check_bool("overwrite", overwrite)
    check_bool("save_anndata", save_anndata)
    prefix = check_prefix(prefix)
    data_file = None
    if save_anndata:
        data_file = prefix + (MDATA_FILE if _is_mudata(model.adata) else ADATA_FILE)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.module.state_dict().items()}
    weights = serialize_safetensors(state, metadata={"pyrovi_model": type(model).__name__})
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
        "data_file": data_file,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    query_state = query_mapping_state(model)
    if query_state is not None:
        meta["query_mapping"] = query_state
    try:
        meta_text = json.dumps(meta, indent=1, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"Cannot save {type(model).__name__}: an init parameter is not JSON-serialisable ({err}). "
            "Pass hyperparameters as plain numbers, strings, lists or dicts."
        ) from err
    files = {
        prefix + WEIGHTS_FILE: lambda p: Path(p).write_bytes(weights),
        prefix + META_FILE: lambda p: p.write_text(meta_text, encoding="utf-8"),
    }
    if data_file is not None and _is_mudata(model.adata):
        files[data_file] = lambda p: model.adata.write(p, **anndata_write_kwargs)
    elif data_file is not None:
        files[data_file] = lambda p: model.adata.write_h5ad(p, **anndata_write_kwargs)
    write_model_files(files, dir_path, prefix, overwrite)


def _is_mudata(data: Any) -> bool:
    return type(data).__name__ == "MuData" and hasattr(data, "mod")


def _version() -> str:
    from ... import __version__

    return __version__


def resolve_device(accelerator: str, device: int | str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available; ``"gpu"``/``"cuda"`` require it; ``"cpu"`` is the CPU.

    ``device`` picks one device of the accelerator as in Lightning and scvi-tools: ``"auto"`` (the first),
    an index (``1``), a name (``"cpu"``, ``"cuda"``, ``"cuda:1"``) or a :class:`torch.device`; anything else, or a
    CUDA device on a machine without one, is a clear ValueError.
    """
    if not (isinstance(accelerator, str) and accelerator in ACCELERATORS):
        check_choice("accelerator", accelerator, ACCELERATORS)
    device = check_device("device", device)
    if isinstance(device, torch.device):
        if accelerator in ("gpu", "cuda") and device.type != "cuda":
            raise ValueError(f"accelerator={accelerator!r} with device={str(device)!r}: pick one of them.")
        return torch.device("cuda", 0 if device.index is None else device.index) if device.type == "cuda" else device
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise no_cuda_error(f"accelerator={accelerator!r}")
        if isinstance(device, int):
            if device >= torch.cuda.device_count():
                raise ValueError(f"device={device} but there are {torch.cuda.device_count()} CUDA devices.")
            return torch.device("cuda", device)
        return torch.device("cuda")
    if accelerator == "mps":
        return check_device("accelerator", "mps")
    return torch.device("cpu")


def _check_weights_digest(weights_path: Path, expected: Any) -> None:
    """The weights file is the one its model.json was saved with (files from two saves are never mixed)."""
    if expected is None:
        return  # an optional field of format version 1
    digest = hashlib.sha256()
    with weights_path.open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ModelFileError(
            f"{weights_path}: its SHA-256 differs from the one recorded in {weights_path.parent / META_FILE} when "
            "the model was saved: the weights were changed or come from another save. Save the model again."
        )


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
    cls: type[PersistentModel],
    dir_path: str | Path,
    adata: AnnData | None,
    accelerator: str,
    overrides: dict[str, Any] | None = None,
    device: int | str = "auto",
    prefix: str | None = None,
):
    """Rebuild a model written by :func:`save_model` (see :meth:`BaseModelClass.load`).

    Every file is checked before it is used (:mod:`._model_files`); the model class is the caller's, never
    one named in the file (only compared with ``cls.known_models()``); problems with the files raise
    :class:`~pyrovi.ModelFileError`.
    """
    path = Path(check_path("dir_path", dir_path))
    prefix = check_prefix(prefix)
    meta_path = path / (prefix + META_FILE)
    target = resolve_device(accelerator, device)  # a device that cannot be had fails before any file is read
    check_model_dir(path, prefix)
    meta = read_meta(path, cls.known_models(), cls, prefix)
    if adata is None:
        if "data_file" in meta and meta["data_file"] is None:
            raise ModelFileError(
                f"{path}: the model {prefix}{META_FILE} was saved without save_anndata=True, so it holds no data "
                "of its own. Pass the data: Model.load(path, adata)."
            )
        adata = read_saved_adata(path, prefix, meta.get("data_file"))
        own_data = True  # the directory's own data: whatever does not fit in it is the directory's problem
    else:
        own_data = False
    try:
        _check_genes(meta["var_names"], adata)
    except ValueError as err:
        if own_data:
            raise ModelFileError(f"{meta_path}: does not fit the data saved beside it: {err}") from err
        raise
    if own_data:
        check_indices(meta_path, meta, adata.n_obs)  # the directory's own data: its split must fit it
    else:
        meta = _drop_split_beyond(meta, adata.n_obs, meta_path)

    registry = meta["registry"]
    # minified data the saved model cannot read is the data's problem, said plainly (not a malformed file)
    check_saved_registry(registry, adata, cls.__name__)
    minified_fields(cls, adata)
    try:
        manager = cls._manager(registry["setup_args"], adata)
    except Exception as err:  # noqa: BLE001 - whatever forged setup arguments provoke is the file's problem
        raise ModelFileError(
            f"{meta_path}: the saved AnnData setup (registry) is malformed: its setup_args do not set up a "
            f"{cls.__name__} ({type(err).__name__}: {err}). Save the model again."
        ) from err
    try:
        manager.register_fields(adata, source_registry=registry)
    except (UnseenCategoryError, MissingKeyError) as err:
        if own_data:
            raise ModelFileError(
                f"{meta_path}: its saved AnnData setup (registry) does not fit the data saved beside it ({err}). "
                "The directory was altered; save the model again."
            ) from err
        if isinstance(err, MissingKeyError):
            raise  # the data lacks a column the model was set up with: the data's problem, not the file's
        raise unknown_to_model(err, cls.__name__) from None
    except ModelFileError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever a forged registry provokes is the file's problem
        raise ModelFileError(
            f"{meta_path}: the saved AnnData setup (registry) is malformed or does not fit the data "
            f"({type(err).__name__}: {err}). If this names a problem of the data, fix the data; otherwise save "
            "the model again."
        ) from err
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(meta["init_params"])
    if unknown:
        raise TypeError(f"load got arguments that are not init parameters of the saved model: {sorted(unknown)}.")
    check_init_params(meta_path, cls, {k: v for k, v in meta["init_params"].items() if k not in overrides})
    init_params = {k: _param_from_json(k, v, overrides, meta_path) for k, v in meta["init_params"].items()}
    check_sizes_against_weights(meta_path, path / (prefix + WEIGHTS_FILE), init_params, len(meta["var_names"]))
    try:
        model = cls(adata, **init_params)
    except Exception as err:  # noqa: BLE001 - a forged parameter can fail anywhere in the constructors
        given = f" with the overrides {sorted(overrides)}" if overrides else ""
        named = [k for k in init_params if k in str(err)]
        which = f" (parameter {', '.join(map(repr, named))})" if named else ""
        raise ModelFileError(
            f"{meta_path}: its init_params{given} do not build a {cls.__name__}{which} "
            f"({type(err).__name__}: {err}). Save the model again, or check the arguments passed to load."
        ) from err

    state = read_weights(path, prefix, model.module.state_dict())
    check_state(path / (prefix + WEIGHTS_FILE), state, model.module.state_dict())
    _check_weights_digest(path / (prefix + WEIGHTS_FILE), meta.get("weights_sha256"))
    model.module.load_state_dict(state, strict=True)
    restore_query_mapping(model, meta.get("query_mapping"), meta_path)
    model.module.to(target)
    model.module.eval()
    split = {
        name: None if meta[name] is None else np.asarray(meta[name], dtype=np.int64)
        for name in ("train_indices", "validation_indices", "test_indices")
    }
    model._restore_training_state(meta["is_trained"], _history_from_json(meta["history"]), **split)
    return model


def _drop_split_beyond(meta: dict[str, Any], n_obs: int, meta_path: Path) -> dict[str, Any]:
    """Loaded onto the user's own data: a saved split naming cells beyond it belongs to the training data, not to
    this data. The model loads without a split (``train_indices`` etc. are None), with one warning."""
    keys = ("train_indices", "validation_indices", "test_indices")
    beyond = [k for k in keys if meta.get(k) and max(meta[k]) >= n_obs]
    if not beyond:
        return meta
    warnings.warn(
        f"The saved training split ({', '.join(beyond)} in {meta_path.name}) names cells beyond the {n_obs} cells of "
        "the AnnData given to load, so it does not apply to this data: the model is loaded with "
        "train_indices, validation_indices and test_indices set to None.",
        UserWarning,
        stacklevel=4,
    )
    return {**meta, **{k: None for k in keys}}


def load_saved_registry(
    dir_path: str | Path, prefix: str | None, known_models: Mapping[str, type]
) -> dict[str, Any]:
    """The AnnData setup (registry) of a saved model, read and validated without building the model.

    ``known_models`` are the model classes the file may name, by class name (only compared, never imported).
    """
    path = Path(check_path("dir_path", dir_path))
    prefix = check_prefix(prefix)
    check_model_dir(path, prefix)
    return read_meta(path, known_models, None, prefix)["registry"]
