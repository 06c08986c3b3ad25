"""Lossless packing of converted-graph constants (the quantized saved format's storage)."""

from __future__ import annotations

import pytest
import torch

from edgeslim.plugin.quantization.packing import pack, pack_codes, packed_bytes, unpack, unpack_codes


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_codes_round_trip(bits: int) -> None:
    codes = torch.randint(0, 1 << bits, (1001,))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-1001 * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, 1001), codes)


def test_16_levels_per_row_pack_to_half_a_byte_per_weight() -> None:
    gen = torch.Generator().manual_seed(0)
    levels = torch.randint(-127, 128, (64, 16), generator=gen, dtype=torch.int64)  # a codebook per channel
    idx = torch.randint(0, 16, (64, 576), generator=gen)
    w = torch.gather(levels, 1, idx).to(torch.int8).reshape(64, 64, 3, 3)
    entry = pack(w)
    assert entry["enc"] == "lut" and entry["bits"] == 4 and entry["per_row"]
    assert packed_bytes(entry) <= w.numel() // 2 + 64 * 16 + 8  # 4-bit codes + an int8 table per row
    back = unpack(entry)
    assert back.dtype == torch.int8 and torch.equal(back, w)


def test_full_range_int8_stays_raw_and_constants_collapse() -> None:
    w = torch.arange(-128, 128, dtype=torch.int8).repeat(4).reshape(4, 256)
    assert pack(w)["enc"] == "raw" and torch.equal(unpack(pack(w)), w)
    zp = torch.zeros(512, dtype=torch.int64)
    entry = pack(zp)
    assert entry["enc"] == "fill" and packed_bytes(entry) == 0 and torch.equal(unpack(entry), zp)
    scales = torch.rand(64)
    assert torch.equal(unpack(pack(scales)), scales)


def test_a_corrupt_entry_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown packed-tensor encoding"):
        unpack({"enc": "zip", "shape": [2], "dtype": "torch.int8"})
