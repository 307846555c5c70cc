"""Reading a saved model directory: each file checked before anything in it is used.

Only three readers ever touch a model directory: :mod:`json` (``model.json``), safetensors
(``model.safetensors``, raw tensor bytes behind a JSON header) and anndata's HDF5 reader (``adata.h5ad``).
None of them can run code. Names in the JSON are compared with known classes, never imported; a pickle
found where a model file should be is reported, never opened.

Every file is untrusted data (a model directory may come from anyone): each must be a regular file in the
directory (never a link, FIFO or device, checked with ``lstat`` before it is opened), of bounded size;
``model.json`` is parsed with bounded nesting and every field is checked for type, range and consistency; the
weights must be finite; the HDF5 data file must be self-contained (no external links, external storage,
virtual datasets or plugin filters: :func:`pyrovi._files.check_hdf5_self_contained`). Whatever goes wrong is a
:class:`~pyrovi.ModelFileError` naming the file and the problem, never a raw error of a library.
"""

from __future__ import annotations

import math
import os
import struct
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from anndata import AnnData, read_h5ad
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..._errors import ModelFileError
from ..._files import check_hdf5_self_contained, check_regular_file, file_kind, loads_json, sniff_pickle

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
ADATA_FILE = "adata.h5ad"
#: A model set up on a MuData saves it (``save_anndata=True``) under this name, as scvi-tools does.
MDATA_FILE = "mdata.h5mu"
#: Version of the layout of ``model.json`` and the weights. Files of any version up to this one load;
#: raise it when a saved field changes meaning, and convert older files in :func:`read_meta`.
FORMAT_VERSION = 1

#: Largest ``model.json`` read (256 MiB). pyrovi's own stay far below: the largest parts are the cell indices
#: of the split (about 9 bytes a cell: some 25 million cells fit) and the gene names.
MAX_META_BYTES = 256 * 2**20
#: Largest safetensors header read (safetensors' own limit): names, dtypes, shapes and offsets of the tensors.
MAX_WEIGHTS_HEADER_BYTES = 100_000_000

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


def _lstat_kind(path: Path) -> str | None:
    """None when nothing is at ``path``; ``"file"`` for a regular file; else what it is (a link, a FIFO...)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"unreadable ({err.strerror})"
    return file_kind(mode) or "file"


def check_model_dir(path: Path, prefix: str = "") -> None:
    """The directory exists and holds ``{prefix}model.json`` and ``{prefix}model.safetensors`` as regular files.

    Files are examined with ``lstat``: a symbolic link, FIFO, socket or device under a model file's name is
    refused (never followed or opened, so a FIFO cannot block the load).
    """
    if not path.is_dir():
        raise _fail(path, "no such directory.", "Pass the directory that Model.save wrote.")
    kinds = {name: _lstat_kind(path / (prefix + name)) for name in (META_FILE, WEIGHTS_FILE)}
    for name, kind in kinds.items():
        if kind is not None and kind != "file":
            raise _fail(
                path / (prefix + name),
                f"is {kind}, not a regular file; pyrovi reads a saved model's files only as regular files in the "
                "directory itself, never through links, pipes or devices.",
                "Copy the real files into the directory, or save the model again.",
            )
    missing = [prefix + name for name, kind in kinds.items() if kind is None]
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
    others = sorted(p.name[: -len(META_FILE)] for p in path.glob(f"*{META_FILE}") if _lstat_kind(p) == "file")
    hint = f" It holds models saved with prefix {others}: pass prefix=..." if others and prefix not in others else ""
    raise _fail(
        path / missing[0],
        f"missing; a saved pyrovi model is a directory with {prefix}{META_FILE} and {prefix}{WEIGHTS_FILE} "
        f"(lacking: {', '.join(missing)}).{hint}",
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _check_field(meta_path: Path, meta: Mapping[str, Any], key: str, ok: bool, expected: str) -> None:
    if not ok:
        raise _fail(meta_path, f"field {key!r} must be {expected}, got {_short(meta.get(key))}.")


def _is_index_list(value: Any) -> bool:
    return value is None or (isinstance(value, list) and all(_is_int(i) and i >= 0 for i in value))


def _history_problem(value: Any) -> str | None:
    """None when ``value`` is a saved history: ``{metric: {"epoch": [int...], "value": [float...]}}``."""
    if not isinstance(value, dict):
        return "is not a JSON object"
    for key, frame in value.items():
        if not isinstance(frame, dict) or not (isinstance(frame.get("epoch"), list) and isinstance(frame.get("value"), list)):
            return f"metric {key!r} is not an object with 'epoch' and 'value' lists"
        epochs, values = frame["epoch"], frame["value"]
        if len(epochs) != len(values):
            return f"metric {key!r} has {len(epochs)} epochs but {len(values)} values"
        if not all(_is_int(e) and e >= 0 for e in epochs):
            return f"metric {key!r} has an epoch that is not a non-negative integer"
        if len(set(epochs)) != len(epochs):
            return f"metric {key!r} lists an epoch twice"
        # NaN (a metric that was not finite, or null) is a value a history can hold; infinities are not written
        if not all(v is None or (_is_number(v) and not math.isinf(v)) for v in values):
            return f"metric {key!r} has a value that is not a finite number or NaN"
    return None


def _nonfinite_path(value: Any, where: str) -> str | None:
    """Where ``value`` (parsed JSON) holds NaN or an infinity (JSON has neither; Python's parser accepts them)."""
    stack = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return at
        if isinstance(item, dict):
            stack.extend((v, f"{at}.{k}") for k, v in item.items() if isinstance(v, (dict, list, float)))
        elif isinstance(item, list):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(item) if isinstance(v, (dict, list, float)))
    return None


# What each kind of entry of a field's state must be; entries of other names are checked when the state is
# applied to the data (anything raised there is a ModelFileError too).
_STATE_NAME_KEYS = frozenset({"obs_key", "obsm_key", "layer", "mod_key", "uns_key", "original_key"})
_STATE_NAME_LISTS = frozenset({"var_names", "column_names", "obs_keys"})


def _category_list_problem(values: Any) -> str | None:
    if not isinstance(values, list):
        return "must be a list of categories"
    if not all(_is_scalar(v) and v is not None for v in values):
        return "must hold strings or numbers only"
    if len({(type(v), v) for v in values}) != len(values):
        return "names a category twice"
    return None


def _state_problem(key: str, value: Any) -> str | None:
    if key in _STATE_NAME_KEYS:
        return None if value is None or isinstance(value, str) else "must be a name (a string) or null"
    if key in _STATE_NAME_LISTS:
        return None if isinstance(value, list) and all(isinstance(v, str) for v in value) else "must be a list of names"
    if key == "categories":
        if isinstance(value, dict):
            for sub, values in value.items():
                problem = _category_list_problem(values)
                if problem is not None:
                    return f"of {sub!r} {problem}"
            return None
        return _category_list_problem(value)
    if key == "n_cats_per_key":
        ok = isinstance(value, list) and all(_is_int(v) and v >= 0 for v in value)
        return None if ok else "must be a list of non-negative integers"
    if key.startswith("n_"):
        return None if _is_int(value) and value >= 0 else "must be a non-negative integer"
    if key == "is_count_data":
        return None if isinstance(value, bool) else "must be true or false"
    if key == "unlabeled_category":
        return None if _is_scalar(value) else "must be a category (a string or a number)"
    if key == "protein_batch_mask":
        if value is None:
            return None
        ok = isinstance(value, dict) and all(
            isinstance(v, list) and all(isinstance(b, bool) for b in v) for v in value.values()
        )
        return None if ok else "must be null or an object of lists of true/false"
    return None


def _registry_problem(registry: Any, var_names: list[str]) -> str | None:
    """None when ``registry`` has the layout of a saved AnnData setup, else what is wrong (first problem)."""
    if not isinstance(registry, dict):
        return "is not a JSON object"
    setup_args = registry.get("setup_args")
    if not isinstance(setup_args, dict):
        return "has no 'setup_args' object"
    for name, value in setup_args.items():
        plain = _is_scalar(value) or (isinstance(value, list) and all(_is_scalar(v) for v in value))
        mapping = isinstance(value, dict) and all(
            _is_scalar(v) or (isinstance(v, list) and all(_is_scalar(x) for x in v)) for v in value.values()
        )
        if not (plain or mapping):
            return f"setup argument {name!r} is {_short(value)}, not a name, number, list or mapping of them"
    states = registry.get("field_states")
    if not isinstance(states, dict):
        return "has no 'field_states' object"
    for field, state in states.items():
        if not isinstance(state, dict):
            return f"the state of field {field!r} is {_short(state)}, not a JSON object"
        for key, value in state.items():
            problem = _state_problem(key, value)
            if problem is not None:
                return f"field {field!r}: {key!r} {problem} (got {_short(value)})"
        names = state.get("var_names")
        if isinstance(names, list) and "n_vars" in state and state["n_vars"] != len(names):
            return f"field {field!r}: n_vars={state['n_vars']} but it lists {len(names)} var_names"
        obs_keys, cats = state.get("obs_keys"), state.get("categories")
        if isinstance(obs_keys, list) and isinstance(cats, dict) and set(obs_keys) - set(cats):
            return f"field {field!r}: no categories for {sorted(set(obs_keys) - set(cats))}"
    counts = states.get("X")
    if isinstance(counts, dict) and isinstance(counts.get("var_names"), list) and counts["var_names"] != var_names:
        return "the genes of field 'X' differ from the file's var_names"
    stats = registry.get("summary_stats", {})
    if not isinstance(stats, dict) or not all(_is_int(v) and v >= 0 for v in stats.values()):
        return "'summary_stats' is not an object of non-negative integers"
    return None


def read_meta(path: Path, known_models: Mapping[str, type], expected: type | None, prefix: str = "") -> dict[str, Any]:
    """Parse and validate ``model.json``: format version first, then the model class, then every field.

    ``expected=None`` accepts any known model class (for reading a saved setup without loading the model).
    The file must be a regular file of at most :data:`MAX_META_BYTES` bytes whose JSON nests at most
    :data:`pyrovi._files.MAX_JSON_DEPTH` levels.
    """
    meta_path = path / (prefix + META_FILE)
    check_regular_file(meta_path, MAX_META_BYTES)
    kind = _sniff(meta_path)
    if kind is not None:
        raise _fail(meta_path, f"is {kind}, not JSON; pyrovi never unpickles (it would run code from the file).")
    meta = loads_json(meta_path.read_bytes(), str(meta_path))
    if not isinstance(meta, dict):
        raise _fail(meta_path, f"must hold a JSON object, got {type(meta).__name__}.")

    # The version decides how to read everything else, so it is checked before any other field.
    version = meta.get("format_version")
    if not _is_int(version) or version < 1:
        raise _fail(meta_path, f"has no valid format_version (got {_short(version)}); it was not written by pyrovi.")
    if version > FORMAT_VERSION:
        from ... import __version__

        saved_by = meta.get("pyrovi_version")
        raise _fail(
            meta_path,
            f"was saved by a newer pyrovi (format version {version}; pyrovi {__version__} reads versions up "
            f"to {FORMAT_VERSION}, saved by pyrovi {saved_by if isinstance(saved_by, str) else '?'}).",
            "Upgrade pyrovi to load it.",
        )

    name = meta.get("model_name")
    if not isinstance(name, str) or name not in known_models:
        raise _fail(
            meta_path,
            f"names an unknown model class {_short(name)}; pyrovi's models are {sorted(known_models)}.",
        )
    if expected is not None and name != expected.__name__:
        raise _fail(
            path,
            f"holds a {name} model, not a {expected.__name__}.",
            f"Load it with {name}.load(...), not {expected.__name__}.load(...).",
        )

    _check_field(meta_path, meta, "pyrovi_version", isinstance(meta.get("pyrovi_version", ""), str), "a version string")
    _check_field(meta_path, meta, "init_params", isinstance(meta.get("init_params"), dict), "a JSON object")
    var_names = meta.get("var_names")
    _check_field(
        meta_path,
        meta,
        "var_names",
        isinstance(var_names, list) and len(var_names) > 0 and all(isinstance(v, str) for v in var_names),
        "a non-empty list of gene names",
    )
    if len(set(var_names)) != len(var_names):
        raise _fail(meta_path, "field 'var_names' names a gene twice.")
    registry = meta.get("registry")
    _check_field(
        meta_path,
        meta,
        "registry",
        isinstance(registry, dict) and isinstance(registry.get("setup_args"), dict),
        "a JSON object with 'setup_args'",
    )
    problem = _registry_problem(registry, var_names)
    if problem is not None:
        raise _fail(meta_path, f"the saved AnnData setup (registry) is malformed: {problem}.")
    _check_field(meta_path, meta, "is_trained", isinstance(meta.get("is_trained"), bool), "true or false")
    for key in ("train_indices", "validation_indices", "test_indices"):
        _check_field(meta_path, meta, key, key in meta and _is_index_list(meta[key]), "null or a list of cell positions")
        values = meta[key]
        if values is not None and len(set(values)) != len(values):
            raise _fail(meta_path, f"field {key!r} lists a cell twice.")
    sets = {key: set(meta[key] or ()) for key in ("train_indices", "validation_indices", "test_indices")}
    for a, b in (("train_indices", "validation_indices"), ("train_indices", "test_indices"),
                 ("validation_indices", "test_indices")):
        if sets[a] & sets[b]:
            raise _fail(meta_path, f"fields {a!r} and {b!r} share cells (e.g. {min(sets[a] & sets[b])}); a split is disjoint.")
    history_problem = _history_problem(meta.get("history"))
    if history_problem is not None:
        raise _fail(meta_path, f"field 'history' must be a JSON object of epochs and values: {history_problem}.")
    if "data_file" in meta:  # optional in format version 1
        allowed = (None, prefix + ADATA_FILE, prefix + MDATA_FILE)
        _check_field(meta_path, meta, "data_file", meta["data_file"] in allowed, f"one of {list(allowed)}")
    if "weights_sha256" in meta:  # optional in format version 1
        digest = meta["weights_sha256"]
        ok = isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
        _check_field(meta_path, meta, "weights_sha256", ok, "64 lowercase hexadecimal digits")
    bad = _nonfinite_path({k: v for k, v in meta.items() if k != "history"}, "model.json")
    if bad is not None:
        raise _fail(meta_path, f"holds a NaN or infinite number at {bad}; JSON has none and pyrovi writes none.")
    return meta


def check_indices(meta_path: Path, meta: Mapping[str, Any], n_obs: int) -> None:
    """The saved split's cell positions lie within the ``n_obs`` cells of the data the model is loaded with."""
    for key in ("train_indices", "validation_indices", "test_indices"):
        values = meta.get(key)
        if values and max(values) >= n_obs:
            raise _fail(
                meta_path,
                f"field {key!r} names cell position {max(values)}, but the data has {n_obs} cells; the file "
                "belongs to other data, or was altered.",
                "Load the model with the data it was trained on, or save it again.",
            )


def _annotation_check(hint: Any) -> tuple[str, Any] | None:
    """A test for JSON values of an ``__init__`` annotation, with its description; None if not checkable."""
    origin = typing.get_origin(hint)
    if hint is bool:
        return "true or false", lambda v: isinstance(v, bool)
    if hint is int:
        return "an integer", _is_int
    if hint is float:
        return "a number", lambda v: _is_number(v) and math.isfinite(v)
    if hint is str:
        return "a string", lambda v: isinstance(v, str)
    if hint is type(None):
        return "null", lambda v: v is None
    if origin is typing.Literal:
        options = typing.get_args(hint)
        return f"one of {list(options)}", lambda v: any(v == o and type(v) is type(o) for o in options)
    args = typing.get_args(hint)
    if args and origin in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        arms = [_annotation_check(a) for a in args]
        if any(arm is None for arm in arms):
            return None  # an arm (a class, a callable) that JSON holds in another form
        return " or ".join(d for d, _ in arms), lambda v: any(test(v) for _, test in arms)
    return None


def check_init_params(meta_path: Path, cls: type, params: Mapping[str, Any]) -> None:
    """Each saved init parameter has the JSON type the model's ``__init__`` annotation asks for.

    Only plain annotations are checked here (int, float, bool, str, Literal and their unions); values and ranges
    are checked by the model as it is built, and :func:`load_model` reports whatever fails there.
    """
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - annotations that cannot be resolved are simply not checked here
        return
    for name, value in params.items():
        if isinstance(value, dict) and any(m in value for m in ("__prior__", "__distribution__", "__custom__")):
            continue
        check = _annotation_check(hints[name]) if name in hints else None
        if check is not None and not check[1](value):
            raise _fail(
                meta_path,
                f"init parameter {name!r} must be {check[0]}, got {_short(value)}.",
                "Save the model again, or pass the parameter to load (Model.load(path, adata, "
                f"{name}=...)).",
            )


def read_weights(path: Path, prefix: str = "", expected: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of ``model.safetensors``; a pickle, a truncated, forged or otherwise broken file is a ModelFileError.

    The file must be a regular file; with ``expected`` (the module's state), no larger than those tensors and
    the largest header safetensors reads. Every floating-point tensor must be finite.
    """
    weights_path = path / (prefix + WEIGHTS_FILE)
    limit = None
    if expected is not None:
        limit = 8 + MAX_WEIGHTS_HEADER_BYTES + sum(t.numel() * t.element_size() for t in expected.values())
    size = check_regular_file(weights_path, limit)
    kind = _sniff(weights_path)
    if kind is not None:
        raise _fail(
            weights_path,
            f"is {kind}, not a safetensors file; pyrovi never unpickles (it would run code from the file).",
        )
    with weights_path.open("rb") as handle:
        head = handle.read(8)
    header = struct.unpack("<Q", head)[0] if len(head) == 8 else None
    if header is None or header > min(MAX_WEIGHTS_HEADER_BYTES, size - 8):
        raise _fail(
            weights_path,
            "is not a readable safetensors file (truncated, corrupt or forged: "
            + ("shorter than its 8-byte header length" if header is None else
               f"its header length {header:,} exceeds the file's {size:,} bytes or the "
               f"{MAX_WEIGHTS_HEADER_BYTES:,}-byte limit")
            + ").",
        )
    try:
        state = load_file(str(weights_path))
    except Exception as err:  # noqa: BLE001 - SafetensorError, and whatever else a forged header provokes
        raise _fail(weights_path, f"is not a readable safetensors file (truncated or corrupt: {err}).") from err
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise _fail(
            weights_path,
            f"holds NaN or infinite weights in {shown}; such a model would fail at its first query.",
            "Retrain the model (pyrovi's training stops before a step makes a weight non-finite), or load "
            "another copy.",
        )
    return state


def _header_shapes(weights_path: Path) -> dict[str, tuple[int, ...]] | None:
    """The tensor shapes a safetensors header declares (the header only is read), or None when it cannot be read
    (:func:`read_weights` then names the problem)."""
    try:
        size = check_regular_file(weights_path)
        with weights_path.open("rb") as handle:
            head = handle.read(8)
            if len(head) != 8:
                return None
            (length,) = struct.unpack("<Q", head)
            if not 2 <= length <= min(MAX_WEIGHTS_HEADER_BYTES, size - 8):
                return None
            header = loads_json(handle.read(length), str(weights_path))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            return None
        shapes[name] = tuple(shape)
    return shapes


def check_sizes_against_weights(
    meta_path: Path, weights_path: Path, params: Mapping[str, Any], n_inputs: int
) -> None:
    """Refuse init params that describe a network far larger than the weights file, before it is built.

    The network's layer sizes (``n_hidden``, ``n_latent``, ``n_layers*``) give a lower bound on its number of
    weights: the first encoder layer alone has ``n_hidden`` weights per input feature, each further hidden layer
    ``n_hidden ** 2``, the latent mean ``(n_latent - 1) * n_hidden`` at least. A model.json forged to ``n_hidden=30_000_000`` would
    otherwise allocate gigabytes (or get the process killed) before its mismatch with the weights is seen.
    """
    sizes = {k: v for k, v in params.items() if _is_int(v) and v > 0}
    hidden = max((v for k, v in sizes.items() if k.startswith("n_hidden")), default=0)
    latent = sizes.get("n_latent", 0)
    layers = [v for k, v in sizes.items() if k.startswith("n_layers")]
    if not hidden and not latent:
        return
    shapes = _header_shapes(weights_path)
    if shapes is None:
        return
    held = sum(math.prod(shape) for shape in shapes.values())
    needed = hidden * max(n_inputs, 1) + sum(max(n - 1, 0) for n in layers) * hidden * hidden + max(latent - 1, 0) * max(hidden, 1)
    if needed > held:
        named = ", ".join(f"{k}={v:,}" for k, v in sizes.items() if k.startswith(("n_hidden", "n_latent", "n_layers")))
        raise _fail(
            meta_path,
            f"its init_params ({named}) describe a network of at least {needed:,} weights, but {weights_path.name} "
            f"holds {held:,}; the two files do not belong together (or model.json was altered). Nothing was built.",
        )


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


def _h5_length(group: Any) -> int | None:
    """Rows of an anndata-written obs/var group: the length of its index dataset (metadata only), or None."""
    import h5py

    if not isinstance(group, h5py.Group):
        return None
    name = group.attrs.get("_index", "_index")
    name = name.decode() if isinstance(name, bytes) else str(name)
    index = group.get(name)
    return int(index.shape[0]) if isinstance(index, h5py.Dataset) and index.shape else None


def _check_h5ad_shape(data_path: Path) -> None:
    """``X`` has one row per obs name and one column per var name (shapes read from the metadata, no data)."""
    import h5py

    try:
        with h5py.File(data_path, "r") as handle:
            x = handle.get("X")
            if isinstance(x, h5py.Dataset):
                shape = tuple(int(d) for d in x.shape)
            elif isinstance(x, h5py.Group) and "shape" in x.attrs:
                shape = tuple(int(d) for d in x.attrs["shape"])
            else:
                return  # anndata's reader names what is missing
            n_obs, n_vars = _h5_length(handle.get("obs")), _h5_length(handle.get("var"))
    except (OSError, ValueError, TypeError):
        return  # the reader below names the problem
    if len(shape) != 2 or (n_obs is not None and shape[0] != n_obs) or (n_vars is not None and shape[1] != n_vars):
        raise _fail(
            data_path,
            f"declares X of shape {shape} for {n_obs} cells (obs names) and {n_vars} genes (var names); the file "
            "was altered or is corrupt, and pyrovi does not read it.",
            "Pass the data: Model.load(path, adata).",
        )


def read_saved_adata(path: Path, prefix: str = "", name: str | None = None) -> AnnData:
    """The data saved with ``save_anndata=True``: ``adata.h5ad``, or ``mdata.h5mu`` for a MuData model.

    ``name`` is the file ``model.json`` records (older files record none: whichever exists). Both are HDF5
    files, read as data and never executed, and only once :func:`~pyrovi._files.check_hdf5_self_contained`
    found nothing in them that reads outside the file.
    """
    adata_path, mdata_path = path / (prefix + ADATA_FILE), path / (prefix + MDATA_FILE)
    if name is not None:
        data_path = mdata_path if name == prefix + MDATA_FILE else adata_path
    else:
        data_path = mdata_path if _lstat_kind(mdata_path) and not _lstat_kind(adata_path) else adata_path
    if _lstat_kind(data_path) is None:
        raise _fail(
            path,
            f"holds no {data_path.name} (the model was saved without save_anndata=True).",
            "Pass the data: Model.load(path, adata).",
        )
    check_regular_file(data_path)  # before opening: a FIFO would block, a link would lead elsewhere
    with data_path.open("rb") as handle:
        head = handle.read(520)
    # HDF5 puts its signature at offset 0, or after a user block (mudata writes a 512-byte one)
    if not any(head[offset : offset + 8] == _HDF5_MAGIC for offset in (0, 512)):
        raise _fail(data_path, "is not an HDF5 (.h5ad/.h5mu) file.", "Pass the data: Model.load(path, adata).")
    check_hdf5_self_contained(data_path)
    if data_path != mdata_path:
        _check_h5ad_shape(data_path)
    try:
        if data_path == mdata_path:
            import mudata

            return mudata.read_h5mu(data_path)
        return read_h5ad(data_path)
    except Exception as err:  # noqa: BLE001 - any failure to read an untrusted file is the file's
        raise _fail(
            data_path,
            f"cannot be read as {'a MuData' if data_path == mdata_path else 'an AnnData'} ({type(err).__name__}: {err}).",
            "Pass the data: Model.load(path, adata).",
        ) from err
