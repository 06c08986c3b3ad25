"""Canonical Huffman coder: exact round trips, sizes against the entropy, corrupt streams."""

from __future__ import annotations

import numpy as np
import pytest

from edgeslim.deep_compression import huffman


def _entropy_bits(x: np.ndarray) -> float:
    p = np.bincount(x) / len(x)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum() * len(x))


@pytest.mark.parametrize("n", [1, 5, huffman.BLOCK, huffman.BLOCK + 1, 3 * huffman.BLOCK + 17])
def test_round_trip_across_block_boundaries(n: int) -> None:
    rng = np.random.default_rng(n)
    x = np.minimum(rng.geometric(0.35, size=n) - 1, 16)
    data = huffman.encode(x, 17)
    assert np.array_equal(huffman.decode(data), x)


def test_size_is_within_one_bit_per_symbol_of_the_entropy() -> None:
    rng = np.random.default_rng(0)
    x = np.minimum(rng.geometric(0.3, size=200_000) - 1, 31)
    payload_bits = huffman.coded_bits(np.bincount(x, minlength=32))
    h = _entropy_bits(x)
    assert h <= payload_bits <= h + len(x)
    assert payload_bits < 0.75 * 5 * len(x)  # far below the 5 fixed bits of a 32-symbol alphabet
    assert len(huffman.encode(x, 32)) * 8 >= payload_bits


def test_one_symbol_and_empty_streams() -> None:
    assert np.array_equal(huffman.decode(huffman.encode(np.full(10, 3), 8)), np.full(10, 3))
    assert huffman.decode(huffman.encode(np.zeros(0, dtype=np.int64), 4)).size == 0


def test_code_lengths_are_limited_and_prefix_free() -> None:
    counts = np.array(
        [1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181, 6765, 10946, 17711]
    )
    lengths = huffman.code_lengths(counts)
    assert lengths.max() <= huffman.MAX_LEN  # unlimited Huffman would need 21 bits here
    assert np.sum(2.0 ** -lengths.astype(float)) <= 1.0
    codes = huffman.canonical_codes(lengths)
    words = {format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths, strict=True)}
    assert len(words) == len(counts)
    assert not any(a != b and b.startswith(a) for a in words for b in words)


def test_symbols_outside_the_alphabet_are_refused() -> None:
    with pytest.raises(huffman.HuffmanError, match=r"\[0, 4\).*\[0, 4\]"):
        huffman.encode(np.array([0, 4]), 4)


def test_truncated_stream_is_an_error() -> None:
    x = np.arange(50_000) % 7
    data = huffman.encode(x, 7)
    with pytest.raises(huffman.HuffmanError, match="truncated"):
        huffman.decode(data[: len(data) // 2])
    with pytest.raises(huffman.HuffmanError, match="header"):
        huffman.decode(data[:5])
