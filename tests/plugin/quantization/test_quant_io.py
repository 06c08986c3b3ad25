"""The "quantized" saved format: weights_only files, bit-exact reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.fx import GraphModule

import edgeslim
import edgeslim.io
from edgeslim.errors import ModelLoadError
from edgeslim.plugin.quantization import QuantResult
from edgeslim.plugin.quantization.info import info_of
from edgeslim.plugin.quantization.packing import packed_bytes


@pytest.mark.parametrize("fixture", ["int8_resnet", "log2_mbv2"])
def test_round_trip_is_bit_exact(fixture: str, request: pytest.FixtureRequest, tmp_path: Path, test_images: torch.Tensor) -> None:
    result: QuantResult = request.getfixturevalue(fixture)
    path = edgeslim.save(result, tmp_path / "q.pt", meta={"note": "test"})
    raw = torch.load(path, map_location="cpu", weights_only=True)  # no pickled classes
    assert raw["kind"] == "quantized"
    loaded = edgeslim.load(path)
    info = info_of(loaded)
    assert isinstance(loaded, GraphModule) and info is not None and info.converted
    assert torch.equal(loaded(test_images), result.model(test_images))
    assert edgeslim.io.load_meta(path) == {"note": "test"}


def test_a_float_model_cannot_be_saved_as_quantized(resnet18_fmnist: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="quantize"):
        edgeslim.save(resnet18_fmnist, tmp_path / "x.pt", kind="quantized")


@pytest.mark.parametrize(("fixture", "max_bytes_per_weight"), [("int8_resnet", 1.0), ("log2_mbv2", 0.5)])
def test_saved_file_is_integer_not_float(fixture: str, max_bytes_per_weight: float, request: pytest.FixtureRequest,
                                         tmp_path: Path) -> None:
    """The file holds int8 (or packed 4-bit) weights: within 15 % of weight_bytes plus what stays float."""
    result: QuantResult = request.getfixturevalue(fixture)
    path = edgeslim.save(result, tmp_path / "q.pt")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert "state_dict" not in raw["float"]  # no float weights unless keep_float
    params = sum(layer.params for layer in result.report.layers)
    stays_float = sum(packed_bytes(e) for e in raw["constants"].values()) - sum(
        packed_bytes(e) for e in raw["constants"].values() if _is_weight(e))
    weights_on_disk = sum(packed_bytes(e) for e in raw["constants"].values() if _is_weight(e))
    assert weights_on_disk <= params * max_bytes_per_weight * 1.02 + 64 * 1024
    assert path.stat().st_size <= 1.15 * (result.weight_bytes + stays_float)
    float_path = edgeslim.save(result, tmp_path / "qf.pt", keep_float=True)
    assert float_path.stat().st_size > path.stat().st_size + 3.5 * params  # the float weights are there when asked


def _is_weight(entry: dict) -> bool:
    t = entry.get("tensor")
    if entry["enc"] == "lut":
        return True
    return t is not None and t.dtype == torch.int8 and t.dim() >= 2


def test_load_result_gives_back_config_report_and_exact_codes(log2_mbv2: QuantResult, tmp_path: Path,
                                                              test_images: torch.Tensor) -> None:
    from edgeslim.plugin.quantization.saved import load_result

    path = edgeslim.save(log2_mbv2, tmp_path / "q.pt")
    back = load_result(path)
    assert back.config == log2_mbv2.config
    assert back.weight_bytes == log2_mbv2.weight_bytes
    assert set(back.coded_weights) == set(log2_mbv2.coded_weights)
    for name, cw in log2_mbv2.coded_weights.items():
        assert torch.equal(back.coded_weights[name].decode(), cw.decode()), name
    assert torch.equal(back.model(test_images), log2_mbv2.model(test_images))
    assert back.info is not None and log2_mbv2.info is not None
    assert back.info.example_shape == log2_mbv2.info.example_shape and back.info.float_sha256 == log2_mbv2.info.float_sha256


def test_load_result_refuses_a_float_file(resnet18_fmnist: torch.nn.Module, tmp_path: Path) -> None:
    from edgeslim.plugin.quantization.saved import load_result

    path = edgeslim.save(resnet18_fmnist, tmp_path / "f.pt")
    with pytest.raises(ModelLoadError, match=r"f\.pt holds a pruned model, not a quantized one"):
        load_result(path)


def test_a_truncated_file_is_refused_with_its_name(int8_resnet: QuantResult, tmp_path: Path) -> None:
    path = edgeslim.save(int8_resnet, tmp_path / "q.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=r"q\.pt is not a safe edgeslim/torch file"):
        edgeslim.load(path)


def test_a_format_1_file_still_loads(int8_resnet: QuantResult, tmp_path: Path, test_images: torch.Tensor) -> None:
    """Files written before format 2 (float state_dict inside, raw constants) reload bit-exact."""
    from edgeslim.plugin.quantization.packing import unpack

    raw = torch.load(edgeslim.save(int8_resnet, tmp_path / "v2.pt", keep_float=True), map_location="cpu",
                     weights_only=True)
    raw["edgeslim_format"] = 1
    raw["constants"] = {k: unpack(v) for k, v in raw["constants"].items()}
    raw["float"] = {k: v for k, v in raw["float"].items() if k != "shapes"}
    assert "state_dict" in raw["float"]
    torch.save(raw, tmp_path / "v1.pt")
    loaded = edgeslim.load(tmp_path / "v1.pt")
    assert torch.equal(loaded(test_images), int8_resnet.model(test_images))
