"""Lossless compact storage of a converted graph's constants (the ``quantized`` saved format).

A PT2E-converted model keeps its weights as int8 tensors (one byte per weight) even when a
grid scheme (``log2:4``, ``codebook:4``, ``pwl:4``, ``w4a8``) uses at most 16 distinct values
per output channel. :func:`pack` stores such a tensor as ``bits``-wide indices (two 4-bit codes
per byte) into a small lookup table of the int8 values, per row or per tensor; a tensor whose
entries are all equal (zero points) as one value; anything else as it is. :func:`unpack` is
exact: ``torch.equal(unpack(pack(t)), t)`` for every tensor.

An entry is a plain dict of tensors and primitives (``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

from typing import Any

import torch

#: Code widths tried, narrowest first (they divide 8, so codes never straddle a byte).
_WIDTHS = (1, 2, 4)
_INTEGER = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in a packed tensor")
    return dtype


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integer ``codes`` (< 2**bits) into uint8, ``8 // bits`` per byte, little end first."""
    per = 8 // bits
    flat = codes.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % per
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    groups = flat.reshape(-1, per).to(torch.int32)
    shifts = torch.arange(per, dtype=torch.int32) * bits
    return (groups << shifts).sum(dim=1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``numel`` codes as int64."""
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.int32) * bits
    codes = (packed.to(torch.int32).unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:numel].long()


def _lut_entry(t: torch.Tensor, per_row: bool) -> dict[str, Any] | None:
    rows = t.reshape(t.shape[0], -1) if per_row else t.reshape(1, -1)
    uniq = [torch.unique(r) for r in rows]
    k = max(int(u.numel()) for u in uniq)
    bits = next((b for b in _WIDTHS if k <= 1 << b), None)
    if bits is None:
        return None
    lut = torch.stack([torch.cat([u, u[:1].expand(max(0, (1 << bits) - u.numel()))]) for u in uniq])
    idx = torch.stack([torch.searchsorted(u, r) for u, r in zip(uniq, rows, strict=True)])
    return {
        "enc": "lut", "bits": bits, "per_row": per_row, "lut": lut.to(t.dtype).contiguous(),
        "codes": pack_codes(idx, bits), "shape": list(t.shape), "dtype": str(t.dtype),
    }


def pack(t: torch.Tensor) -> dict[str, Any]:
    """The smallest exact entry for ``t`` (see the module docstring)."""
    t = t.detach().cpu()
    if t.numel() > 1 and bool((t == t.reshape(-1)[0]).all()) and t.dtype in _INTEGER:
        return {"enc": "fill", "value": int(t.reshape(-1)[0]), "shape": list(t.shape), "dtype": str(t.dtype)}
    if t.dtype in (torch.int8, torch.uint8) and t.dim() >= 1 and t.numel() >= 64:
        best: dict[str, Any] | None = None
        for per_row in (False, True) if t.dim() >= 2 else (False,):
            entry = _lut_entry(t, per_row)
            if entry is not None and (best is None or _size(entry) < _size(best)):
                best = entry
        if best is not None and _size(best) < t.numel():
            return best
    return {"enc": "raw", "tensor": t.clone()}


def _size(entry: dict[str, Any]) -> int:
    return int(entry["codes"].numel() + entry["lut"].numel())


def unpack(entry: dict[str, Any]) -> torch.Tensor:
    """Rebuild the tensor of a :func:`pack` entry.

    Raises:
        ValueError: An unknown or inconsistent entry (a corrupt file).
    """
    enc = entry.get("enc")
    if enc == "raw":
        return entry["tensor"]
    shape, dtype = [int(s) for s in entry["shape"]], _dtype(str(entry["dtype"]))
    if enc == "fill":
        return torch.full(shape, int(entry["value"]), dtype=dtype)
    if enc != "lut":
        raise ValueError(f"unknown packed-tensor encoding {enc!r}")
    numel = 1
    for s in shape:
        numel *= s
    lut: torch.Tensor = entry["lut"]
    rows = lut.shape[0]
    idx = unpack_codes(entry["codes"], int(entry["bits"]), numel).reshape(rows, -1)
    return torch.gather(lut.long(), 1, idx).to(dtype).reshape(shape)


def packed_bytes(entry: dict[str, Any]) -> int:
    """Bytes the tensors of an entry take on disk (payload only)."""
    return sum(int(v.numel() * v.element_size()) for v in entry.values() if isinstance(v, torch.Tensor))


__all__ = ["pack", "pack_codes", "packed_bytes", "unpack", "unpack_codes"]
