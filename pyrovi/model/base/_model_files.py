"""Reading a saved model directory: each file checked before anything in it is used.

Only three readers ever touch a model directory: :mod:`json` (``model.json``), safetensors
(``model.safetensors``, raw tensor bytes behind a JSON header) and anndata's HDF5 reader (``adata.h5ad``).
None of them can run code. Names in the JSON are compared with known classes, never imported; a pickle
found where a model file should be is reported, never opened.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from anndata import AnnData, read_h5ad
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..._errors import ModelFileError
from ..._files import sniff_pickle

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
ADATA_FILE = "adata.h5ad"
#: A model set up on a MuData saves it (``save_anndata=True``) under this name, as scvi-tools does.
MDATA_FILE = "mdata.h5mu"
#: Version of the layout of ``model.json`` and the weights. Files of any version up to this one load;
#: raise it when a saved field changes meaning, and convert older files in :func:`read_meta`.
FORMAT_VERSION = 1

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: Suffixes of the pickled files other tools write in model directories (scvi-tools, torch.save, joblib).
_PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})

_RESAVE = "Save the model again with pyrovi (Model.save) from the session that trained it."


def check_prefix(prefix: str | None) -> str:
    """``prefix`` as saved file names start with it: ``""`` for none; a plain name, never a path."""
    if prefix is None:
        return ""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a string, got {type(prefix).__name__}.")
    if "/" in prefix or "\\" in prefix or prefix.startswith(".") or "\0" in prefix:
        raise ValueError(
            f"prefix={prefix!r} must be a plain file-name prefix (no path separators, not starting with '.'); "
            "put the directory in dir_path."
        )
    return prefix


def _fail(path: Path, problem: str, fix: str = _RESAVE) -> ModelFileError:
    return ModelFileError(f"{path}: {problem} {fix}")


def _sniff(path: Path) -> str | None:
    """What a file's first bytes say it is, when that is a pickle or a torch archive."""
    return sniff_pickle(path)


def check_model_dir(path: Path, prefix: str = "") -> None:
    """The directory exists and holds ``{prefix}model.json`` and ``{prefix}model.safetensors``."""
    if not path.is_dir():
        raise _fail(path, "no such directory.", "Pass the directory that Model.save wrote.")
    missing = [prefix + name for name in (META_FILE, WEIGHTS_FILE) if not (path / (prefix + name)).is_file()]
    if not missing:
        return
    foreign = sorted(p.name for p in path.iterdir() if p.suffix.lower() in _PICKLE_SUFFIXES)
    if foreign:
        raise _fail(
            path,
            f"this is not a pyrovi model directory: it lacks {', '.join(missing)} and holds "
            f"{', '.join(foreign)}, pickled files of another tool (e.g. scvi-tools). pyrovi never unpickles, "
            "because unpickling runs code stored in the file.",
            "Retrain the model with pyrovi, or load it with the tool that wrote it.",
        )
    others = sorted(p.name[: -len(META_FILE)] for p in path.glob(f"*{META_FILE}") if p.is_file())
    hint = f" It holds models saved with prefix {others}: pass prefix=..." if others and prefix not in others else ""
    raise _fail(
        path / missing[0],
        f"missing; a saved pyrovi model is a directory with {prefix}{META_FILE} and {prefix}{WEIGHTS_FILE} "
        f"(lacking: {', '.join(missing)}).{hint}",
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_field(meta_path: Path, meta: Mapping[str, Any], key: str, ok: bool, expected: str) -> None:
    if not ok:
        raise _fail(meta_path, f"field {key!r} must be {expected}, got {meta.get(key)!r:.200}.")


def _is_index_list(value: Any) -> bool:
    return value is None or (isinstance(value, list) and all(_is_int(i) and i >= 0 for i in value))


def _is_history(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    for frame in value.values():
        if not isinstance(frame, dict):
            return False
        if not (isinstance(frame.get("epoch"), list) and isinstance(frame.get("value"), list)):
            return False
        if len(frame["epoch"]) != len(frame["value"]) or not all(_is_int(e) for e in frame["epoch"]):
            return False
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in frame["value"]):
            return False
    return True


def read_meta(path: Path, known_models: Mapping[str, type], expected: type | None, prefix: str = "") -> dict[str, Any]:
    """Parse and validate ``model.json``: format version first, then the model class, then every field.

    ``expected=None`` accepts any known model class (for reading a saved setup without loading the model).
    """
    meta_path = path / (prefix + META_FILE)
    kind = _sniff(meta_path)
    if kind is not None:
        raise _fail(meta_path, f"is {kind}, not JSON; pyrovi never unpickles (it would run code from the file).")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise _fail(meta_path, f"is not UTF-8 text ({err.reason} at byte {err.start}).") from err
    except json.JSONDecodeError as err:
        raise _fail(meta_path, f"is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}).") from err
    if not isinstance(meta, dict):
        raise _fail(meta_path, f"must hold a JSON object, got {type(meta).__name__}.")

    # The version decides how to read everything else, so it is checked before any other field.
    version = meta.get("format_version")
    if not _is_int(version) or version < 1:
        raise _fail(meta_path, f"has no valid format_version (got {version!r}); it was not written by pyrovi.")
    if version > FORMAT_VERSION:
        from ... import __version__

        raise _fail(
            meta_path,
            f"was saved by a newer pyrovi (format version {version}; pyrovi {__version__} reads versions up "
            f"to {FORMAT_VERSION}, saved by pyrovi {meta.get('pyrovi_version', '?')}).",
            "Upgrade pyrovi to load it.",
        )

    name = meta.get("model_name")
    if not isinstance(name, str) or name not in known_models:
        raise _fail(
            meta_path,
            f"names an unknown model class {name!r:.200}; pyrovi's models are {sorted(known_models)}.",
        )
    if expected is not None and name != expected.__name__:
        raise _fail(
            path,
            f"holds a {name} model, not a {expected.__name__}.",
            f"Load it with {name}.load(...), not {expected.__name__}.load(...).",
        )

    _check_field(meta_path, meta, "init_params", isinstance(meta.get("init_params"), dict), "a JSON object")
    registry = meta.get("registry")
    _check_field(
        meta_path,
        meta,
        "registry",
        isinstance(registry, dict) and isinstance(registry.get("setup_args"), dict),
        "a JSON object with 'setup_args'",
    )
    var_names = meta.get("var_names")
    _check_field(
        meta_path,
        meta,
        "var_names",
        isinstance(var_names, list) and len(var_names) > 0 and all(isinstance(v, str) for v in var_names),
        "a non-empty list of gene names",
    )
    _check_field(meta_path, meta, "is_trained", isinstance(meta.get("is_trained"), bool), "true or false")
    for key in ("train_indices", "validation_indices", "test_indices"):
        _check_field(meta_path, meta, key, _is_index_list(meta.get(key)), "null or a list of cell positions")
    _check_field(meta_path, meta, "history", _is_history(meta.get("history")), "a JSON object of epochs and values")
    if "data_file" in meta:  # absent from files saved before it was recorded
        allowed = (None, prefix + ADATA_FILE, prefix + MDATA_FILE)
        _check_field(meta_path, meta, "data_file", meta["data_file"] in allowed, f"one of {list(allowed)}")
    return meta


def read_weights(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of ``model.safetensors``; a pickle, a truncated or otherwise broken file is a ModelFileError."""
    weights_path = path / (prefix + WEIGHTS_FILE)
    kind = _sniff(weights_path)
    if kind is not None:
        raise _fail(
            weights_path,
            f"is {kind}, not a safetensors file; pyrovi never unpickles (it would run code from the file).",
        )
    try:
        return load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _fail(weights_path, f"is not a readable safetensors file (truncated or corrupt: {err}).") from err


def check_state(weights_path: Path, state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    """The saved tensors are exactly the module's: same names, shapes and dtypes."""
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    for key, value in expected.items():
        saved = state.get(key)
        if saved is None:
            continue
        if saved.shape != value.shape:
            problems.append(f"{key} has shape {tuple(saved.shape)}, the architecture needs {tuple(value.shape)}")
        elif saved.dtype != value.dtype:
            problems.append(f"{key} is {saved.dtype}, the architecture needs {value.dtype}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise _fail(
            weights_path,
            f"does not match the architecture described in {META_FILE} ({shown}).",
            "The two files must come from the same Model.save; save the model again.",
        )


def read_saved_adata(path: Path, prefix: str = "", name: str | None = None) -> AnnData:
    """The data saved with ``save_anndata=True``: ``adata.h5ad``, or ``mdata.h5mu`` for a MuData model.

    ``name`` is the file ``model.json`` records (older files record none: whichever exists). Both are HDF5
    files, read as data and never executed.
    """
    adata_path, mdata_path = path / (prefix + ADATA_FILE), path / (prefix + MDATA_FILE)
    if name is not None:
        data_path = mdata_path if name == prefix + MDATA_FILE else adata_path
    else:
        data_path = mdata_path if mdata_path.is_file() and not adata_path.is_file() else adata_path
    if not data_path.is_file():
        raise _fail(
            path,
            f"holds no {prefix}{ADATA_FILE} (the model was saved without save_anndata=True).",
            "Pass the data: Model.load(path, adata).",
        )
    with data_path.open("rb") as handle:
        head = handle.read(520)
    # HDF5 puts its signature at offset 0, or after a user block (mudata writes a 512-byte one)
    if not any(head[offset : offset + 8] == _HDF5_MAGIC for offset in (0, 512)):
        raise _fail(data_path, "is not an HDF5 (.h5ad/.h5mu) file.", "Pass the data: Model.load(path, adata).")
    try:
        if data_path is mdata_path:
            import mudata

            return mudata.read_h5mu(data_path)
        return read_h5ad(data_path)
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise _fail(
            data_path, f"cannot be read as an AnnData ({err}).", "Pass the data: Model.load(path, adata)."
        ) from err
