"""Model files at the byte level: recognise pickles by their first bytes (to refuse them by name without ever
opening them as pickles), and write safetensors files like any other file."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

_PICKLE_MAGIC = b"\x80"  # protocol 2+ pickles start with the PROTO opcode
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archive: a zip of pickles


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    # A safetensors file is an 8-byte little-endian header length, then that many bytes of JSON ('{' first).
    # The length's first byte can be 0x80 (headers are padded to multiples of 8), so this is checked first.
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 0 < length <= size - 8


def sniff_pickle(path: str | os.PathLike) -> str | None:
    """``"a pickle"`` or ``"a torch.save archive (a zip of pickles)"`` when the file starts like one, else None.

    Only reads the first bytes; nothing is unpickled. A file that is laid out as safetensors is never reported.

    Examples
    --------
    >>> write_safetensors({"w": torch.ones(2)}, "model.safetensors")
    >>> sniff_pickle("model.safetensors")
    """
    path = Path(path)
    with path.open("rb") as handle:
        head = handle.read(9)
    if _looks_like_safetensors(head, path.stat().st_size):
        return None
    if head[:4] == _ZIP_MAGIC:
        return "a torch.save archive (a zip of pickles)"
    if head[:1] == _PICKLE_MAGIC:
        return "a pickle"
    return None


def write_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> torch tensor) as a safetensors file, with the permissions the umask gives.

    safetensors' ``save_file`` (0.8) writes through a private temporary file, which leaves the result
    readable by its owner only (mode 0600) while the JSON and h5ad files saved beside it are readable by
    the group (0644 under the usual umask): a model shared in a project directory would then fail to
    load for colleagues. Serialising to bytes and writing them with ``open`` creates the file normally.
    The callers write into a staging location and rename, so an interrupted write never replaces a file.

    Examples
    --------
    >>> write_safetensors({"w": torch.ones(2)}, "weights.safetensors")
    >>> from safetensors.torch import load_file
    >>> load_file("weights.safetensors")["w"]
    tensor([1., 1.])
    """
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    with open(path, "wb") as handle:
        handle.write(data)


# ---------------------------------------------------------------------------------------------------
# untrusted files: what a reader may open, how deep their JSON may nest, what their HDF5 may reference

#: Deepest nesting of JSON objects and arrays in ``model.json`` and in a checkpoint's header. pyrovi's own
#: ``model.json`` nests 5 to 8 levels (a prior's arguments inside ``init_params``), a checkpoint's header about 21
#: (each dict of Lightning's state takes three levels in its tagged encoding); a deeper file is forged, and a
#: very deep one would exhaust Python's recursion limit when parsed.
MAX_JSON_DEPTH = 64

_FILE_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
)


def file_kind(mode: int) -> str | None:
    """What a file that is not a regular file is (``"a symbolic link"``, ``"a FIFO (named pipe)"``...), or None."""
    for test, kind in _FILE_KINDS:
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def check_regular_file(path: str | os.PathLike, max_bytes: int | None = None, follow: bool = False) -> int:
    """The size of ``path``, after checking that it is a regular file of at most ``max_bytes`` bytes.

    Uses ``lstat`` (``follow=False``), so a symbolic link is refused rather than followed, and it never opens the
    file: a FIFO or a device cannot block the caller. Raises :class:`~pyrovi.ModelFileError` naming the file and
    what it is, or :class:`FileNotFoundError` when nothing is there.

    Examples
    --------
    >>> _ = Path("model.json").write_text("{}" + " " * 1232)
    >>> check_regular_file("model.json", max_bytes=256 * 2**20)
    1234
    """
    from ._errors import ModelFileError

    info = os.stat(path) if follow else os.lstat(path)
    kind = file_kind(info.st_mode)
    if kind is not None:
        raise ModelFileError(
            f"{path}: is {kind}, not a regular file; pyrovi reads the files of a saved model or checkpoint only as "
            "regular files in the directory itself (never through links, pipes or devices). Copy the real file "
            "there, or save the model again."
        )
    if max_bytes is not None and info.st_size > max_bytes:
        raise ModelFileError(
            f"{path}: is {info.st_size:,} bytes, more than the {max_bytes:,} bytes such a file can be "
            "(pyrovi's own files stay far below); it is not a file pyrovi wrote. Save the model again."
        )
    return info.st_size


def json_depth_error(value: object, limit: int = MAX_JSON_DEPTH) -> str | None:
    """None when ``value`` (parsed JSON) nests at most ``limit`` levels, else a description of where it does not.

    Iterative (no recursion), and skips over lists of plain numbers and strings without visiting each element.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return f"nests deeper than {limit} levels of objects and arrays"
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        stack.extend((child, depth + 1) for child in children if type(child) in (dict, list))
    return None


def loads_json(text: str | bytes, where: str, limit: int = MAX_JSON_DEPTH) -> object:
    """``json.loads(text)`` for an untrusted file: nesting bounded, every failure a :class:`~pyrovi.ModelFileError`.

    Examples
    --------
    >>> loads_json('{"a": [1, 2]}', "model.json")
    {'a': [1, 2]}
    """
    import json

    from ._errors import ModelFileError

    try:
        value = json.loads(text)
    except RecursionError as err:
        raise ModelFileError(
            f"{where}: nests deeper than {limit} levels of objects and arrays (far beyond any file pyrovi writes); "
            "it is forged or corrupt. Save the model again."
        ) from err
    except UnicodeDecodeError as err:
        raise ModelFileError(f"{where}: is not UTF-8 text ({err.reason} at byte {err.start}).") from err
    except json.JSONDecodeError as err:
        raise ModelFileError(
            f"{where}: is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})."
        ) from err
    except (ValueError, TypeError, MemoryError) as err:  # e.g. an integer with too many digits
        raise ModelFileError(f"{where}: cannot be parsed as JSON ({type(err).__name__}: {err}).") from err
    problem = json_depth_error(value, limit)
    if problem is not None:
        raise ModelFileError(
            f"{where}: {problem} (far beyond any file pyrovi writes); it is forged or corrupt. Save the model again."
        )
    return value


#: HDF5 filters that ship inside the HDF5 library or h5py itself (deflate, shuffle, fletcher32, szip, n-bit,
#: scale-offset, h5py's LZF). Any other filter id makes HDF5 search its plugin path and load a shared library.
_BUILTIN_HDF5_FILTERS = frozenset({1, 2, 3, 4, 5, 6, 32000})
#: A bound on the objects visited, so that a file with millions of tiny groups cannot stall the check.
_MAX_HDF5_OBJECTS = 1_000_000
#: A dataset may declare more than this many bytes only when it stores at least 1/_MAX_HDF5_INFLATION of them: a
#: huge dataset whose chunks were never written (or that compresses a million to one) is tiny on disk but would
#: fill the memory when read. Counts compress some tens to one; nothing anndata writes comes near.
_MAX_HDF5_DECLARED_BYTES = 2**30
_MAX_HDF5_INFLATION = 1000


def check_hdf5_self_contained(path: str | os.PathLike) -> None:
    """Refuse an HDF5 file whose reading could touch anything outside the file itself.

    Walks every link and object (metadata only; no data is read) and raises
    :class:`~pyrovi.ModelFileError`, naming the object and the reason, for: external links, soft links and
    user-defined links (HDF5 resolves a soft link by path, which can lead through other links; pyrovi's and
    anndata's files use hard links only), datasets with external storage (their bytes live in other files, e.g.
    any file the user can read), virtual datasets (mapped from other datasets or files), filters that are not
    built into HDF5 (they load plugin libraries), and files that select a multi-file driver. The file must be a
    regular file (not a link, FIFO or device).

    Examples
    --------
    >>> adata.write_h5ad("adata.h5ad")
    >>> check_hdf5_self_contained("adata.h5ad")
    """
    import h5py

    from ._errors import ModelFileError

    check_regular_file(path)

    def refuse(name: str, why: str, consequence: str = "reading it would leave the file") -> ModelFileError:
        return ModelFileError(
            f"{path}: HDF5 object {name!r} {why}; {consequence}, so pyrovi refuses the whole "
            "file. A file written by anndata or mudata has none. Pass the data yourself: Model.load(path, adata)."
        )

    try:
        handle = h5py.File(path, "r")
    except Exception as err:  # noqa: BLE001 - any failure of an untrusted file is the file's
        raise ModelFileError(
            f"{path}: cannot be opened as an HDF5 file ({type(err).__name__}: {err}). Pass the data yourself: "
            "Model.load(path, adata)."
        ) from err
    with handle:
        if handle.driver not in ("sec2", "stdio"):
            raise refuse("/", f"selects the {handle.driver!r} file driver (a file spread over several files)")
        seen: set[int] = set()
        pending: list[tuple[str, h5py.Group]] = [("/", handle)]
        while pending:
            prefix, group = pending.pop()
            for raw in _link_names(group):
                full = prefix + raw.decode("utf-8", "backslashreplace")
                link_type = group.id.links.get_info(raw).type
                if link_type == h5py.h5l.TYPE_EXTERNAL:
                    target = group.get(raw, getlink=True)
                    raise refuse(full, f"is an external link to {target.filename!r}:{target.path!r}")
                if link_type == h5py.h5l.TYPE_SOFT:
                    raise refuse(full, f"is a soft link to {group.get(raw, getlink=True).path!r}")
                if link_type != h5py.h5l.TYPE_HARD:
                    raise refuse(full, f"is a user-defined link (type {link_type})")
                try:
                    obj = group[raw]
                except Exception as err:  # noqa: BLE001
                    raise refuse(full, f"cannot be opened ({type(err).__name__}: {err})") from err
                key = hash(obj.id)
                if key in seen:
                    continue  # a second hard link to an object already checked
                seen.add(key)
                if len(seen) > _MAX_HDF5_OBJECTS:
                    raise refuse(full, f"is one of more than {_MAX_HDF5_OBJECTS:,} objects")
                if isinstance(obj, h5py.Group):
                    pending.append((full + "/", obj))
                elif isinstance(obj, h5py.Dataset):
                    _check_dataset(obj, full, refuse)


def _link_names(group: object) -> list[bytes]:
    names: list[bytes] = []
    group.id.links.iterate(lambda name: names.append(name))  # type: ignore[attr-defined]
    return names


def _check_dataset(dataset: object, name: str, refuse) -> None:
    import h5py

    plist = dataset.id.get_create_plist()  # type: ignore[attr-defined]
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        raise refuse(name, "is a virtual dataset (its values are mapped from other datasets or files)")
    if plist.get_external_count() > 0:
        files = [plist.get_external(i)[0].decode("utf-8", "backslashreplace") for i in range(min(plist.get_external_count(), 3))]
        raise refuse(name, f"stores its values in external file(s) {files}")
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in _BUILTIN_HDF5_FILTERS:
            raise refuse(name, f"is compressed with HDF5 filter {code}, which is not built in (it would load a plugin)")
    try:
        declared = int(dataset.size) * int(dataset.dtype.itemsize)  # type: ignore[attr-defined]
        stored = int(dataset.id.get_storage_size())  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a shape or type h5py cannot describe is read (and refused) later
        return
    if declared > _MAX_HDF5_DECLARED_BYTES and stored * _MAX_HDF5_INFLATION < declared:
        raise refuse(
            name,
            f"declares shape {tuple(dataset.shape)} ({declared:,} bytes) but stores only {stored:,} bytes (never "  # type: ignore[attr-defined]
            "written, or forged)",
            "reading it would fill the memory",
        )
