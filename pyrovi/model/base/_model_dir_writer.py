"""Writing a model's files into a directory, touching nothing that pyrovi did not write.

A saved model is two or three files, ``{prefix}model.json``, ``{prefix}model.safetensors`` and optionally
``{prefix}adata.h5ad`` (or ``mdata.h5mu``). ``model.json`` records which data file the save wrote
(``data_file``), so a later ``save(..., overwrite=True)`` knows exactly which files are pyrovi's: it
replaces and removes only those. Anything else in the directory, a user's own ``adata.h5ad`` included, is
never replaced, moved or deleted; a save that would have to replace such a file is refused.

Every file is written under a hidden temporary name in the target directory, flushed, and renamed over its
final name; ``model.json`` is renamed last. A new directory is assembled beside its final path and renamed
into place whole. A directory that exists (the current one, one reached through a symbolic link, a mount
point) is never renamed, moved or recreated. ``model.json`` also records the SHA-256 of the weights file, so
that a pair of files from two different saves is detected when loading.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from ._model_files import ADATA_FILE, MAX_META_BYTES, MDATA_FILE, META_FILE, WEIGHTS_FILE


def model_file_names(prefix: str) -> tuple[str, ...]:
    """The names a save with ``prefix`` may write, ``model.json`` last."""
    return tuple(prefix + name for name in (WEIGHTS_FILE, ADATA_FILE, MDATA_FILE, META_FILE))


def _check_ancestors(path: Path) -> None:
    """Refuse a path below a file (``file.txt/sub``): name the file, instead of mkdir's bare FileExistsError."""
    for ancestor in path.parents:
        if os.path.lexists(ancestor):
            if not ancestor.is_dir():  # follows links: a link to a directory is a directory here
                raise NotADirectoryError(
                    errno.ENOTDIR,
                    f"cannot save to {path}: {ancestor} is a file, not a directory. Choose a path below a directory.",
                )
            return


def _failed(err: OSError, path: Path, step: str) -> OSError:
    """``err`` (an OSError of a staging, writing or renaming step) as the same OSError subclass naming ``path``."""
    cause = err.strerror or str(err)
    name = str(err.filename or "")
    # the user's path, not pyrovi's hidden staging names (".model.json.tmp-1a2b3c4d")
    where = f" ({name})" if name and name != str(path) and ".tmp-" not in name and ".bak-" not in name else ""
    new = OSError(
        err.errno if err.errno is not None else 0,
        f"could not save the model to {path}: {step} failed: {cause}{where}. Check that the location exists and "
        "is writable, or choose another path.",
    )
    return new if isinstance(new, type(err)) else type(err)(*new.args)


def _lost_race(path: Path) -> FileExistsError:
    return FileExistsError(
        errno.EEXIST,
        f"another save into {path} happened at the same time; nothing of this save was kept. Save again (with "
        "overwrite=True to replace the model saved there).",
    )


_SAVE_LOCKS_GUARD = threading.Lock()
_SAVE_LOCKS: dict[str, threading.Lock] = {}


def _save_lock(path: Path) -> threading.Lock:
    """One lock per resolved target path: saves of this process into one directory run one after the other."""
    key = os.path.normcase(os.path.realpath(path))
    with _SAVE_LOCKS_GUARD:
        lock = _SAVE_LOCKS.get(key)
        if lock is None:
            if len(_SAVE_LOCKS) > 1024:  # forget locks nobody holds
                for name in [k for k, v in _SAVE_LOCKS.items() if not v.locked()]:
                    del _SAVE_LOCKS[name]
            lock = _SAVE_LOCKS[key] = threading.Lock()
        return lock


def _resolve_target(path: Path) -> Path:
    """The directory to write into: a symbolic link to a directory is followed to it; a file is refused."""
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        if not target.exists():
            raise FileNotFoundError(
                f"{path} is a symbolic link to {target}, which does not exist; create that directory first "
                "or save to another path."
            )
        path = target
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory; choose another path.")
    _check_ancestors(path)
    return path


def _is_regular(path: Path) -> bool:
    try:
        return path.lstat().st_mode & 0o170000 == 0o100000
    except OSError:
        return False


def _owned_files(path: Path, prefix: str) -> frozenset[str]:
    """The files of ``path`` that an earlier pyrovi save with ``prefix`` wrote, as its model.json records.

    Nothing is owned when there is no model.json, when it is not a regular file, or when it is not the JSON
    that pyrovi writes. A model.json without ``data_file`` (an optional field of format version 1) owns both
    data file names.
    """
    meta_path = path / (prefix + META_FILE)
    if not _is_regular(meta_path) or meta_path.stat().st_size > MAX_META_BYTES:
        return frozenset()
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return frozenset()
    if not isinstance(meta, dict) or not isinstance(meta.get("format_version"), int):
        return frozenset()
    if not isinstance(meta.get("model_name"), str):
        return frozenset()
    data_names = {prefix + ADATA_FILE, prefix + MDATA_FILE}
    owned = {prefix + META_FILE, prefix + WEIGHTS_FILE}
    if "data_file" not in meta:
        owned |= data_names
    elif meta["data_file"] in data_names:
        owned.add(meta["data_file"])
    return frozenset(name for name in owned if _is_regular(path / name))


def _check_replaceable(path: Path, names: list[str], prefix: str, overwrite: bool) -> frozenset[str]:
    """Refuse a save that would replace files pyrovi did not write; return the files it owns there."""
    present = [name for name in model_file_names(prefix) if os.path.lexists(path / name)]
    if present and not overwrite:
        raise FileExistsError(
            f"{path} already holds a saved model ({', '.join(present)}); pass overwrite=True to replace it."
        )
    if not prefix and not present and not overwrite and any(path.iterdir()):
        raise FileExistsError(
            f"{path} already exists and is not empty; pass overwrite=True to save the model's files beside "
            "the files it holds (they are left untouched), or choose another directory."
        )
    owned = _owned_files(path, prefix) if present else frozenset()
    foreign = [name for name in names if name in present and name not in owned]
    if foreign:
        name = prefix + META_FILE if prefix + META_FILE in foreign else foreign[0]
        what = "is a symbolic link" if (path / name).is_symlink() else "is not a regular file"
        why = what if not _is_regular(path / name) else f"no pyrovi {prefix}{META_FILE} there records it"
        raise FileExistsError(
            f"{path / name} was not written by a pyrovi save ({why}), and pyrovi never replaces files it did "
            "not write. Move it away, save to another directory, or pass prefix=... to save under other names."
        )
    return owned


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk, so that a crash after a rename cannot leave an empty file."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # directories cannot be opened on some platforms (Windows); nothing to flush there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_new_directory(files: Mapping[str, Callable[[Path], None]], path: Path) -> None:
    """Assemble the files in a hidden sibling directory, then rename it to ``path`` (atomic on POSIX)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _failed(err, path, f"creating {path.parent}") from err
    staging = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
    except OSError as err:
        raise _failed(err, path, f"creating a temporary directory in {path.parent}") from err
    try:
        for name, write in files.items():
            try:
                write(staging / name)
            except OSError as err:
                raise _failed(err, path, f"writing {name}") from err
            _fsync(staging / name)
        _fsync(staging)
        try:
            staging.rename(path)
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST) or os.path.lexists(path):
                # another process created the directory meanwhile (this process's saves hold _save_lock)
                raise _lost_race(path) from err
            raise _failed(err, path, "moving the new directory into place") from err
        _fsync(path.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _write_in_place(files: Mapping[str, Callable[[Path], None]], path: Path, stale: list[str]) -> None:
    """Write each file under a temporary name in ``path``, then rename them over their names, model.json last.

    The files being replaced are kept under hard-linked hidden names until all renames succeed, and put back
    if one fails; ``stale`` files (pyrovi's, from the previous save, not written now) are removed at the end.
    """
    tag = uuid.uuid4().hex[:8]
    temporary = {name: path / f".{name}.tmp-{tag}" for name in files}
    backups: dict[str, Path] = {}
    try:
        for name, write in files.items():
            try:
                write(temporary[name])
            except OSError as err:
                raise _failed(err, path, f"writing {name}") from err
            _fsync(temporary[name])
        for name in files:
            if os.path.lexists(path / name):
                backup = path / f".{name}.bak-{tag}"
                try:
                    os.link(path / name, backup)
                    backups[name] = backup
                except OSError:
                    pass  # no hard links here: the weights' checksum in model.json still detects a mixed pair
        done: list[str] = []
        try:
            for name in files:  # model.json comes last (see model_file_names)
                os.replace(temporary[name], path / name)
                done.append(name)
        except BaseException as err:
            for name in done:
                if name in backups:
                    os.replace(backups.pop(name), path / name)
                else:
                    os.unlink(path / name)
            if isinstance(err, OSError):
                raise _failed(err, path, f"renaming {name} into place") from err
            raise
        for name in stale:
            os.unlink(path / name)
        _fsync(path)
    finally:
        for leftover in (*temporary.values(), *backups.values()):
            if os.path.lexists(leftover):
                os.unlink(leftover)


def write_model_files(
    files: Mapping[str, Callable[[Path], None]], dir_path: str | os.PathLike, prefix: str, overwrite: bool
) -> None:
    """Write a model's ``files`` (name -> function writing that file at a given path) into ``dir_path``.

    ``files`` holds the names of :func:`model_file_names` only. A new directory is created whole; an existing
    one (also through a symbolic link) receives the files beside what it holds. With ``overwrite=True`` the
    files of the previous save under the same prefix are replaced, and its data file removed when this save
    writes none; files pyrovi did not write are never replaced, moved or deleted (:class:`FileExistsError`).
    """
    order = model_file_names(prefix)
    unknown = set(files) - set(order)
    if unknown:
        raise ValueError(f"not model file names for prefix {prefix!r}: {sorted(unknown)}")
    files = {name: files[name] for name in order if name in files}
    path = _resolve_target(Path(dir_path))
    with _save_lock(path):  # two threads saving into one directory: one after the other
        if not path.exists():
            _write_new_directory(files, path)
            return
        owned = _check_replaceable(path, list(files), prefix, overwrite)
        stale = [name for name in owned if name not in files]
        _write_in_place(files, path, stale)
