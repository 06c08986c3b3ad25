"""Canonical Huffman coding of small-alphabet integer streams, vectorised with numpy.

A stream of symbols ``0 <= s < n_symbols`` is written as one code-length byte per symbol of
the alphabet (the canonical code is rebuilt from the lengths alone), the number of symbols, a
sync table (the 32-bit offset of every :data:`BLOCK`-th symbol) and the packed bits. The sync
table lets the decoder walk all blocks at once: each numpy step advances every block by one
symbol, so decoding a million symbols takes a few thousand array operations, not a million
Python iterations. Code lengths are limited to :data:`MAX_LEN` bits.
"""

from __future__ import annotations

import heapq
import struct

import numpy as np

from edgeslim.errors import EdgeslimError

#: Longest code (bits); the decoder's lookup table has ``2**MAX_LEN`` entries.
MAX_LEN = 16
#: Symbols between two sync points of the decoder.
BLOCK = 2048
_HEAD = struct.Struct("<IQ")  # alphabet size, number of symbols


class HuffmanError(EdgeslimError, ValueError):
    """A Huffman stream is corrupt or does not fit its alphabet."""


def code_lengths(counts: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Huffman code lengths for symbol ``counts`` (0 for unused symbols), at most ``max_len`` bits.

    Lengths over ``max_len`` (very skewed counts) are avoided by flattening the counts
    (halving, keeping every used symbol at least 1) and rebuilding, as zlib-style coders do.
    """
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    lengths = np.zeros(len(counts), dtype=np.uint8)
    if len(used) == 0:
        return lengths
    if len(used) == 1:
        lengths[used[0]] = 1
        return lengths
    work = counts[used].copy()
    while True:
        heap: list[tuple[int, int, list[int]]] = [(int(c), i, [i]) for i, c in enumerate(work)]
        heapq.heapify(heap)
        depth = np.zeros(len(used), dtype=np.int64)
        tie = len(heap)
        while len(heap) > 1:
            c1, _, s1 = heapq.heappop(heap)
            c2, _, s2 = heapq.heappop(heap)
            merged = s1 + s2
            depth[merged] += 1
            heapq.heappush(heap, (c1 + c2, tie, merged))
            tie += 1
        if depth.max() <= max_len:
            lengths[used] = depth
            return lengths
        work = np.maximum(work // 2, 1)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code of each symbol (by increasing length, then symbol), as integers."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.int64)
    order = np.lexsort((np.arange(len(lengths)), lengths))
    code, prev = 0, 0
    for s in order:
        n = int(lengths[s])
        if n == 0:
            continue
        code <<= n - prev
        codes[s] = code
        code += 1
        prev = n
    return codes


def encode(symbols: np.ndarray, n_symbols: int) -> bytes:
    """Huffman-code ``symbols`` (integers in ``[0, n_symbols)``) into a self-describing byte string."""
    sym = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if n_symbols < 1 or n_symbols > 1 << 16:
        raise HuffmanError(f"alphabet of {n_symbols} symbols is outside 1..65536")
    if sym.size and (sym.min() < 0 or sym.max() >= n_symbols):
        raise HuffmanError(f"symbols must lie in [0, {n_symbols}), got [{sym.min()}, {sym.max()}]")
    lengths = code_lengths(np.bincount(sym, minlength=n_symbols))
    codes = canonical_codes(lengths)
    lens = lengths.astype(np.int64)[sym]
    ends = np.cumsum(lens)
    starts = ends - lens
    total = int(ends[-1]) if sym.size else 0
    if total >= 1 << 32:
        raise HuffmanError(f"stream of {total} bits is over the 4 Gbit a sync offset can address")
    sync = starts[::BLOCK].astype(np.uint32)
    # one row per bit: the symbol's code shifted so that its j-th bit (MSB first) is the lowest
    owner = np.repeat(np.arange(sym.size), lens)
    j = np.arange(total) - np.repeat(starts, lens)
    bits = ((codes[sym][owner] >> (lens[owner] - 1 - j)) & 1).astype(np.uint8)
    payload = np.packbits(bits).tobytes()
    return _HEAD.pack(n_symbols, sym.size) + lengths.tobytes() + sync.tobytes() + payload


def decode(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode` (int64 symbols).

    Raises:
        HuffmanError: The bytes are not a complete, consistent stream.
    """
    if len(data) < _HEAD.size:
        raise HuffmanError("Huffman stream shorter than its header")
    n_symbols, count = _HEAD.unpack_from(data)
    if not 1 <= n_symbols <= 1 << 16:
        raise HuffmanError(f"Huffman stream claims {n_symbols} symbols")
    pos = _HEAD.size
    lengths = (
        np.frombuffer(data, dtype=np.uint8, count=n_symbols, offset=pos).astype(np.int64)
        if len(data) >= pos + n_symbols
        else None
    )
    if lengths is None:
        raise HuffmanError("Huffman stream truncated inside its code lengths")
    pos += n_symbols
    n_sync = (count + BLOCK - 1) // BLOCK
    if len(data) < pos + 4 * n_sync:
        raise HuffmanError("Huffman stream truncated inside its sync table")
    sync = np.frombuffer(data, dtype=np.uint32, count=n_sync, offset=pos).astype(np.int64)
    pos += 4 * n_sync
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if lengths.max() > MAX_LEN or lengths.max() == 0:
        raise HuffmanError("Huffman stream has invalid code lengths")
    kraft = float(np.sum(np.exp2(-lengths[lengths > 0].astype(np.float64))))
    if kraft > 1.0 + 1e-12:
        raise HuffmanError("Huffman code lengths violate the Kraft inequality (corrupt stream)")
    codes = canonical_codes(lengths)
    width = int(lengths.max())
    # lookup table: every width-bit window -> (symbol, length)
    table_sym = np.full(1 << width, -1, dtype=np.int64)
    table_len = np.zeros(1 << width, dtype=np.int64)
    for s in np.flatnonzero(lengths):
        n = int(lengths[s])
        lo = int(codes[s]) << (width - n)
        table_sym[lo : lo + (1 << (width - n))] = s
        table_len[lo : lo + (1 << (width - n))] = n
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8, offset=pos))
    bits = np.concatenate([bits, np.zeros(width, dtype=np.uint8)])
    n_bits = len(bits) - width
    if n_sync and sync[-1] >= n_bits:
        raise HuffmanError("Huffman stream truncated (sync point past the end of the bits)")
    out = np.empty(count, dtype=np.int64)
    cur = sync.copy()
    weights = (1 << np.arange(width - 1, -1, -1)).astype(np.int64)
    blocks_len = np.minimum(BLOCK, count - np.arange(n_sync) * BLOCK)
    for step in range(BLOCK):
        live = blocks_len > step
        if not live.any():
            break
        at = cur[live]
        if at.max() >= n_bits:
            raise HuffmanError("Huffman stream truncated (ran past the end of the bits)")
        window = bits[at[:, None] + np.arange(width)].astype(np.int64) @ weights
        s = table_sym[window]
        if (s < 0).any():
            raise HuffmanError("Huffman stream holds a bit pattern that is no code (corrupt stream)")
        out[np.flatnonzero(live) * BLOCK + step] = s
        cur[live] = at + table_len[window]
    return out


def coded_bits(counts: np.ndarray) -> int:
    """Payload bits a Huffman code of these symbol counts takes (no header), for size estimates."""
    counts = np.asarray(counts, dtype=np.int64)
    return int((code_lengths(counts).astype(np.int64) * counts).sum())


__all__ = ["BLOCK", "MAX_LEN", "HuffmanError", "canonical_codes", "code_lengths", "coded_bits", "decode", "encode"]
