"""Relative-index storage of a sparse weight (Han et al., Deep Compression, section 2).

Each stored entry is ``(gap, code)``: ``gap`` zeros precede it since the previous entry. A gap
must fit ``index_bits`` bits; a longer run of zeros is bridged by *padding* entries (gap
``2**index_bits - 1`` and the reserved code ``pad``, standing for one more zero), as in the
paper's filler zeros. Trailing zeros are implied by the tensor's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeslim.errors import EdgeslimError


class SparseIndexError(EdgeslimError, ValueError):
    """A relative-index stream does not fit the tensor it claims to describe."""


@dataclass(frozen=True)
class SparseStreams:
    """The two symbol streams of one sparse tensor.

    Attributes:
        gaps: Zeros before each entry, ``0 <= gap < 2**index_bits``.
        codes: Code of each entry; ``pad`` marks a padding zero.
    """

    gaps: np.ndarray
    codes: np.ndarray


def encode(positions: np.ndarray, codes: np.ndarray, index_bits: int, pad: int) -> SparseStreams:
    """Relative indices of the sorted flat ``positions`` of the non-zeros, with padding entries.

    Args:
        positions: Increasing flat indices of the stored weights.
        codes: Their codes (same length), none equal to ``pad``.
        index_bits: Bits per gap.
        pad: The code of a padding zero.
    """
    positions = np.asarray(positions, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.int64)
    span = 1 << index_bits
    gaps = np.diff(positions, prepend=-1) - 1
    fillers = gaps // span
    rest = gaps % span
    per = fillers + 1  # entries written for each stored weight
    out_gaps = np.full(int(per.sum()), span - 1, dtype=np.int64)
    out_codes = np.full(len(out_gaps), pad, dtype=np.int64)
    last = np.cumsum(per) - 1  # the real entry comes after its fillers
    out_gaps[last] = rest
    out_codes[last] = codes
    return SparseStreams(out_gaps, out_codes)


def decode(streams: SparseStreams, numel: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, codes)`` of the stored weights (padding entries dropped).

    Raises:
        SparseIndexError: The streams differ in length or point past ``numel``.
    """
    if len(streams.gaps) != len(streams.codes):
        raise SparseIndexError(f"{len(streams.gaps)} gaps but {len(streams.codes)} codes")
    pos = np.cumsum(streams.gaps.astype(np.int64) + 1) - 1
    if len(pos) and pos[-1] >= numel:
        raise SparseIndexError(f"relative indices reach position {int(pos[-1])} of a {numel}-weight tensor")
    real = streams.codes != pad
    return pos[real], streams.codes[real]


def n_entries(positions: np.ndarray, index_bits: int) -> int:
    """Entries (stored weights plus padding) that :func:`encode` writes for ``positions``."""
    gaps: np.ndarray = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1) - 1
    return int(len(gaps) + np.right_shift(gaps, index_bits).sum())


__all__ = ["SparseIndexError", "SparseStreams", "decode", "encode", "n_entries"]
