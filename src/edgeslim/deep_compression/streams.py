"""One layer's bytes in an ``.esz`` file: Huffman-coded codes and relative indices.

``encode_layer`` tries every relative-index width allowed and keeps the one whose two coded
streams are smallest; ``decode_layer`` rebuilds the exact float weight from the bytes, the
codebook and the shape.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from edgeslim.deep_compression import huffman, sparse
from edgeslim.deep_compression.codebook import Codebook

_LEN = struct.Struct("<Q")


@dataclass(frozen=True)
class EncodedLayer:
    """A layer's payload and what its manifest entry records.

    Attributes:
        data: Length-prefixed Huffman stream of the codes, then that of the gaps.
        index_bits: Width of the relative indices.
        entries: Stored entries (weights plus padding zeros).
        padding: Padding entries.
        code_bytes: Bytes of the coded codes.
        index_bytes: Bytes of the coded gaps.
    """

    data: bytes
    index_bits: int
    entries: int
    padding: int
    code_bytes: int
    index_bytes: int


def stored_positions(weight: torch.Tensor) -> torch.Tensor:
    """Flat positions of the non-zero weights (the ones a codebook stores)."""
    return torch.nonzero(weight.detach().reshape(-1) != 0).reshape(-1)


def encode_layer(positions: torch.Tensor, book: Codebook, index_bits: Sequence[int]) -> EncodedLayer:
    """Code one layer, choosing the relative-index width with the fewest bytes."""
    pos = positions.numpy().astype(np.int64)
    codes = book.codes.numpy().astype(np.int64)
    pad = 1 << book.bits
    best: EncodedLayer | None = None
    for b in sorted(set(index_bits)):
        s = sparse.encode(pos, codes, b, pad)
        c, g = huffman.encode(s.codes, pad + 1), huffman.encode(s.gaps, 1 << b)
        data = _LEN.pack(len(c)) + c + g
        cand = EncodedLayer(data, b, len(s.codes), len(s.codes) - len(codes), len(c), len(g))
        if best is None or len(cand.data) < len(best.data):
            best = cand
    assert best is not None
    return best


def layer_streams(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The decoded ``(codes, gaps)`` symbol streams of a layer payload (padding entries included).

    Raises:
        huffman.HuffmanError: The bytes are inconsistent.
    """
    if len(data) < _LEN.size:
        raise huffman.HuffmanError("layer payload shorter than its header")
    (n_codes,) = _LEN.unpack_from(data)
    if _LEN.size + n_codes > len(data):
        raise huffman.HuffmanError("layer payload truncated inside its codes")
    return huffman.decode(data[_LEN.size : _LEN.size + n_codes]), huffman.decode(data[_LEN.size + n_codes :])


def decode_layer(data: bytes, shape: Sequence[int], centroids: torch.Tensor, bits: int) -> torch.Tensor:
    """The float weight of a layer: ``centroids[code]`` at the stored positions, zero elsewhere.

    Raises:
        huffman.HuffmanError, sparse.SparseIndexError: The bytes are inconsistent.
    """
    codes, gaps = layer_streams(data)
    numel = int(np.prod(shape)) if len(shape) else 1
    pad = 1 << bits
    pos, real = sparse.decode(sparse.SparseStreams(gaps, codes), numel, pad)
    if len(real) and (real.max() >= centroids.numel() or real.min() < 0):
        raise huffman.HuffmanError(f"a code points past the {centroids.numel()}-entry codebook")
    flat = torch.zeros(numel, dtype=torch.float32)
    flat[torch.from_numpy(pos)] = centroids[torch.from_numpy(real)]
    return flat.view(*shape)


__all__ = ["EncodedLayer", "decode_layer", "encode_layer", "layer_streams", "stored_positions"]
