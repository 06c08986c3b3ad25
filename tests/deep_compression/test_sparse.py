"""Relative indices with padding zeros (Deep Compression's sparse format)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeslim.deep_compression import sparse


def test_a_gap_longer_than_the_index_width_gets_padding_entries() -> None:
    # positions 1 and 20 with 3-bit gaps: 1 zero before the first; 18 zeros before the second
    # = two padding entries (7 zeros + the pad each, 16 positions) and a gap of 2
    s = sparse.encode(np.array([1, 20]), np.array([5, 6]), index_bits=3, pad=16)
    assert s.gaps.tolist() == [1, 7, 7, 2]
    assert s.codes.tolist() == [5, 16, 16, 6]
    pos, codes = sparse.decode(s, numel=25, pad=16)
    assert pos.tolist() == [1, 20] and codes.tolist() == [5, 6]
    assert sparse.n_entries(np.array([1, 20]), 3) == 4


def test_random_round_trip() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random(100_000) < 0.07
    pos = np.flatnonzero(mask)
    codes = rng.integers(0, 16, size=len(pos))
    for bits in (2, 4, 8):
        s = sparse.encode(pos, codes, bits, pad=16)
        assert len(s.codes) == sparse.n_entries(pos, bits)
        back_pos, back_codes = sparse.decode(s, 100_000, pad=16)
        assert np.array_equal(back_pos, pos) and np.array_equal(back_codes, codes)


def test_indices_past_the_tensor_are_an_error() -> None:
    s = sparse.encode(np.array([3, 9]), np.array([0, 1]), 4, pad=4)
    with pytest.raises(sparse.SparseIndexError, match="position 9 of a 5-weight tensor"):
        sparse.decode(s, numel=5, pad=4)
