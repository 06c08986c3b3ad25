"""A codebook model to ``.esz`` blobs and back (bit for bit).

Coded layers (conv/linear weights) become one blob each (:mod:`edgeslim.deep_compression.streams`); every
other tensor of the state_dict (biases, batch norm, counters) goes, in its stored dtype, into
one xz-compressed ``dense`` blob. Floats are stored as float16 when the model's values are
float16-exact (:func:`round_floats` makes them so).
"""

from __future__ import annotations

import lzma
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeslim.deep_compression import esz
from edgeslim.deep_compression.codebook import Codebook
from edgeslim.deep_compression.huffman import HuffmanError
from edgeslim.deep_compression.sparse import SparseIndexError
from edgeslim.deep_compression.streams import decode_layer, encode_layer

Layers = dict[str, tuple[torch.Tensor, Codebook]]


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dt


@torch.no_grad()
def round_floats(model: nn.Module, skip: Sequence[str]) -> list[str]:
    """Round the float tensors of ``model``'s state_dict (but ``skip``) to float16 values, in place.

    A tensor is rounded only if float16 keeps it finite and keeps its non-zeros non-zero.
    Returns the names rounded.
    """
    done = []
    for name, t in model.state_dict(keep_vars=True).items():
        if name in skip or not t.is_floating_point() or t.dtype == torch.float16:
            continue
        h = t.detach().to(torch.float16)
        if bool(torch.isfinite(h).all()) and bool(((h == 0) == (t == 0)).all()):
            t.data.copy_(h.to(t.dtype))
            done.append(name)
    return done


def _is_half_exact(t: torch.Tensor) -> bool:
    if not t.is_floating_point() or t.dtype == torch.float16:
        return False
    h = t.to(torch.float16)
    return bool(torch.isfinite(h).all()) and torch.equal(h.to(t.dtype), t)


def to_blobs(
    model: nn.Module, layers: Layers, index_bits: Sequence[int], float16: bool = True
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``(manifest part, blobs)`` of ``model`` whose ``layers`` are codebook-coded.

    Each layer's weight must equal its codebook values at the given positions and zero
    elsewhere (checked: the file must rebuild this very model).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    entries, blobs = [], {}
    for name, (positions, book) in layers.items():
        w = state[name]
        enc = encode_layer(positions, book, index_bits)
        rebuilt = decode_layer(enc.data, list(w.shape), book.centroids, book.bits)
        if not torch.equal(rebuilt.view(torch.int32), w.to(torch.float32).contiguous().view(torch.int32)):
            raise ValueError(
                f"layer {name}: its weight is not exactly its codebook values (train_centroids bakes them in)"
            )
        blobs[name] = enc.data
        entries.append(
            {
                "name": name,
                "shape": list(w.shape),
                "bits": book.bits,
                "index_bits": enc.index_bits,
                "stored": int(positions.numel()),
                "entries": enc.entries,
                "padding": enc.padding,
                "code_bytes": enc.code_bytes,
                "index_bytes": enc.index_bytes,
                "codebook": book.centroids.to(torch.float32).contiguous().numpy().tobytes().hex(),
            }
        )
    dense, raw = [], []
    for name, t in state.items():
        if name in layers:
            continue
        stored = torch.float16 if float16 and _is_half_exact(t) else t.dtype
        dense.append({"name": name, "dtype": str(t.dtype), "stored": str(stored), "shape": list(t.shape)})
        raw.append(t.to(stored).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    blobs["dense"] = lzma.compress(b"".join(raw), preset=9 | lzma.PRESET_EXTREME)
    return {"layers": entries, "dense": dense}, blobs


def state_from(file: esz.EszFile, path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict an ``.esz`` file describes.

    Raises:
        EszError: A blob decodes inconsistently (names the file and the layer).
    """
    m, state = file.manifest, {}
    for e in m["layers"]:
        book = torch.from_numpy(np.frombuffer(bytes.fromhex(e["codebook"]), dtype=np.float32).copy())
        try:
            state[e["name"]] = decode_layer(file.blobs[e["name"]], e["shape"], book, int(e["bits"]))
        except (HuffmanError, SparseIndexError, KeyError) as exc:
            raise esz.EszError(
                f"{path}: layer {e['name']!r} cannot be decoded ({exc}); re-create the file with `edgeslim pack`"
            ) from None
    try:
        raw = lzma.decompress(file.blobs["dense"])
    except (lzma.LZMAError, KeyError) as exc:
        raise esz.EszError(
            f"{path}: the dense tensors cannot be decoded ({exc}); re-create the file with `edgeslim pack`"
        ) from None
    offset = 0
    for d in m["dense"]:
        stored, dtype = _dtype(d["stored"]), _dtype(d["dtype"])
        n = int(np.prod(d["shape"])) if d["shape"] else 1
        size = n * torch.empty(0, dtype=stored).element_size()
        chunk = raw[offset : offset + size]
        if len(chunk) != size:
            raise esz.EszError(
                f"{path}: the dense tensors end before {d['name']!r}; re-create the file with `edgeslim pack`"
            )
        flat = torch.frombuffer(bytearray(chunk), dtype=stored) if size else torch.empty(0, dtype=stored)
        state[d["name"]] = flat.reshape(d["shape"]).to(dtype)
        offset += size
    return state


__all__ = ["Layers", "round_floats", "state_from", "to_blobs"]
