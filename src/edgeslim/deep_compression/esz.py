"""The ``.esz`` container: one file, a checksummed manifest, then checksummed blobs.

Layout::

    b"ESZ1"                      magic
    uint32 little-endian         length M of the manifest
    M bytes                      the manifest: JSON, xz-compressed
    32 bytes                     sha256 of those M bytes
    blobs                        concatenated; the manifest gives each one's offset, length, sha256

The manifest holds the architecture, the per-layer shapes, code widths, codebooks (float32
bits, hex) and blob checksums, the dense tensors' names, dtypes and shapes, and the total
payload length. :func:`read` checks everything before returning anything, so a truncated or
corrupted file fails as a whole with an :class:`EszError` that names the file.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeslim.errors import ModelLoadError

MAGIC = b"ESZ1"
FORMAT = "edgeslim-esz"
VERSION = 1
_U32 = struct.Struct("<I")


class EszError(ModelLoadError):
    """An ``.esz`` file is missing, truncated, corrupted or of an unknown version."""


@dataclass(frozen=True)
class EszFile:
    """A verified ``.esz`` file: its manifest and its blobs by name."""

    manifest: dict[str, Any]
    blobs: dict[str, bytes]


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def dumps(manifest: dict[str, Any], blobs: dict[str, bytes]) -> bytes:
    """The bytes of an ``.esz`` file (the manifest gets a ``blobs`` table added)."""
    table, offset = {}, 0
    for name, data in blobs.items():
        table[name] = [offset, len(data), sha256(data)]
        offset += len(data)
    full = {**manifest, "format": FORMAT, "version": VERSION, "blobs": table, "payload_bytes": offset}
    head = lzma.compress(
        json.dumps(full, separators=(",", ":"), sort_keys=True).encode(), preset=9 | lzma.PRESET_EXTREME
    )
    return MAGIC + _U32.pack(len(head)) + head + hashlib.sha256(head).digest() + b"".join(blobs.values())


def write(path: str | Path, manifest: dict[str, Any], blobs: dict[str, bytes]) -> Path:
    """Write an ``.esz`` file atomically (temporary file renamed into place); returns the path."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(dumps(manifest, blobs))
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _fail(path: str | Path, what: str) -> EszError:
    return EszError(
        f"{path} is not a usable .esz file: {what}. Nothing was loaded; the file is damaged or incomplete "
        "(an interrupted copy or download?) — copy it again, or re-create it with `edgeslim pack`"
    )


def loads(data: bytes, path: str | Path = "<bytes>") -> EszFile:
    """Parse and verify the bytes of an ``.esz`` file.

    Raises:
        EszError: Bad magic, truncation, checksum mismatch, unknown version.
    """
    if len(data) < len(MAGIC) + _U32.size or data[: len(MAGIC)] != MAGIC:
        raise _fail(
            path,
            "it does not start with the .esz signature (ESZ1)"
            if len(data) >= 4
            else f"it is only {len(data)} bytes long",
        )
    (m,) = _U32.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _U32.size
    if len(data) < start + m + 32:
        raise _fail(path, f"truncated inside its manifest ({len(data)} bytes)")
    head, digest = data[start : start + m], data[start + m : start + m + 32]
    if hashlib.sha256(head).digest() != digest:
        raise _fail(path, "the manifest's sha256 checksum does not match")
    try:
        manifest = json.loads(lzma.decompress(head))
    except (lzma.LZMAError, ValueError) as exc:
        raise _fail(path, f"the manifest cannot be read ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise _fail(path, f"the manifest is not an {FORMAT} manifest")
    if int(manifest.get("version", 0)) > VERSION:
        raise EszError(
            f"{path} is an .esz file of version {manifest.get('version')}, newer than this edgeslim reads ({VERSION}); upgrade edgeslim"
        )
    body = data[start + m + 32 :]
    expected = int(manifest["payload_bytes"])
    if len(body) != expected:
        raise _fail(
            path,
            f"{'truncated' if len(body) < expected else 'trailing data'}: {len(body)} payload bytes, the manifest says {expected}",
        )
    blobs = {}
    for name, (offset, length, digest_hex) in manifest["blobs"].items():
        blob = body[offset : offset + length]
        if len(blob) != length or sha256(blob) != digest_hex:
            raise _fail(path, f"the sha256 checksum of {name!r} does not match (corrupted bytes)")
        blobs[name] = blob
    return EszFile(manifest, blobs)


def read(path: str | Path) -> EszFile:
    """Read and verify an ``.esz`` file (see :func:`loads`)."""
    p = Path(path)
    if not p.is_file():
        raise EszError(f"{p} does not exist (or is not a file): give the path of a file written by `edgeslim pack`")
    return loads(p.read_bytes(), p)


__all__ = ["FORMAT", "MAGIC", "VERSION", "EszError", "EszFile", "dumps", "loads", "read", "sha256", "write"]
