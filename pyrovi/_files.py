"""Model files at the byte level: recognise pickles by their first bytes (to refuse them by name without ever
opening them as pickles), and write safetensors files like any other file."""

from __future__ import annotations

import os
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
    >>> sniff_pickle("model.safetensors")  # doctest: +SKIP
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
    >>> write_safetensors({"w": torch.ones(2)}, "weights.safetensors")  # doctest: +SKIP
    """
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    with open(path, "wb") as handle:
        handle.write(data)
