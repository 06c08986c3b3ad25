"""The "quantized" saved format: weights_only files, bit-exact reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import edgeslim
from edgeslim.errors import ModelLoadError
from edgeslim.plugin.quantization import QuantResult


@pytest.mark.parametrize("fixture", ["int8_resnet", "log2_mbv2"])
def test_round_trip_is_bit_exact(fixture: str, request: pytest.FixtureRequest, tmp_path: Path, test_images: torch.Tensor) -> None:
    result: QuantResult = request.getfixturevalue(fixture)
    path = edgeslim.save(result.model, tmp_path / "q.pt", meta={"note": "test"})
    raw = torch.load(path, map_location="cpu", weights_only=True)  # no pickled classes
    assert raw["kind"] == "quantized"
    loaded = edgeslim.load(path)
    assert loaded is not None and loaded.edgeslim_kind == "quantized"
    assert torch.equal(loaded(test_images), result.model(test_images))
    assert loaded.edgeslim_meta == {"note": "test"}


def test_a_float_model_cannot_be_saved_as_quantized(resnet18_fmnist: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="quantize"):
        edgeslim.save(resnet18_fmnist, tmp_path / "x.pt", kind="quantized")
