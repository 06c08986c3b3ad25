"""The .esz container: round trip, and whole-file failure on truncation or corruption."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeslim.deep_compression import esz


@pytest.fixture
def esz_file(tmp_path: Path) -> Path:
    return esz.write(
        tmp_path / "m.esz", {"arch": {"name": "x"}, "layers": []}, {"a": b"\x01" * 100, "dense": b"xyz" * 50}
    )


def test_round_trip(esz_file: Path) -> None:
    f = esz.read(esz_file)
    assert f.blobs == {"a": b"\x01" * 100, "dense": b"xyz" * 50}
    assert f.manifest["arch"] == {"name": "x"} and f.manifest["version"] == esz.VERSION
    assert f.manifest["blobs"]["a"][2] == esz.sha256(b"\x01" * 100)


@pytest.mark.parametrize("keep", [3, 10, 60, -1])
def test_truncated_file_names_the_file_and_what_to_do(esz_file: Path, keep: int) -> None:
    data = esz_file.read_bytes()
    esz_file.write_bytes(data[:keep])
    with pytest.raises(esz.EszError) as info:
        esz.read(esz_file)
    msg = str(info.value)
    assert str(esz_file) in msg and "Nothing was loaded" in msg and "edgeslim pack" in msg
    assert ("truncated" in msg) or ("only 3 bytes" in msg) or ("signature" in msg)


def test_flipped_byte_in_a_blob_fails_its_checksum(esz_file: Path) -> None:
    data = bytearray(esz_file.read_bytes())
    data[-10] ^= 0xFF  # inside the "dense" blob
    esz_file.write_bytes(bytes(data))
    with pytest.raises(esz.EszError, match=r"sha256 checksum of 'dense' does not match"):
        esz.read(esz_file)


def test_flipped_byte_in_the_manifest_fails_its_checksum(esz_file: Path) -> None:
    data = bytearray(esz_file.read_bytes())
    data[12] ^= 0x01
    esz_file.write_bytes(bytes(data))
    with pytest.raises(esz.EszError, match="manifest's sha256"):
        esz.read(esz_file)


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(esz.EszError, match=r"does not exist"):
        esz.read(tmp_path / "nope.esz")
    other = tmp_path / "model.onnx"
    other.write_bytes(b"\x08\x07" * 100)
    with pytest.raises(esz.EszError, match=r"model.onnx is not a usable .esz file.*signature"):
        esz.read(other)
