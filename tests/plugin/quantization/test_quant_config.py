"""QuantConfig: CLI spellings, validation, per-layer overrides, JSON/YAML round-trip."""

from __future__ import annotations

import pytest

from edgeslim.errors import SpecError
from edgeslim.plugin.quantization import ActivationSpec, LayerConfig, QuantConfig, WeightSpec
from edgeslim.plugin.quantization.config import FLOAT
from edgeslim.plugin.quantization.errors import QuantConfigError


@pytest.mark.parametrize(
    ("spec", "scheme", "wbits", "abits"),
    [("int8", "affine", 8, 8), ("w8a16", "affine", 8, 16), ("w4a8", "affine", 4, 8), ("int16", "affine", 16, 16),
     ("log2:4", "log2", 4, 8), ("codebook:3", "codebook", 3, 8), ("pwl:4", "pwl", 4, 8)],
)
def test_from_spec(spec: str, scheme: str, wbits: int, abits: int) -> None:
    cfg = QuantConfig.from_spec(spec)
    assert cfg.default.weight is not None and cfg.default.activation is not None
    assert (cfg.default.weight.scheme, cfg.default.weight.bits, cfg.default.activation.bits) == (scheme, wbits, abits)


@pytest.mark.parametrize("spec", ["int9x", "log2:1", "log2:17", "affine:0", "kmeans:4", "log2:x", "w1a8", "mixed", "fp32"])
def test_bad_specs_fail_with_a_clear_message(spec: str) -> None:
    with pytest.raises(QuantConfigError, match=repr(spec)) as info:
        QuantConfig.from_spec(spec)
    assert isinstance(info.value, SpecError)


def test_the_name_is_the_canonical_label() -> None:
    assert QuantConfig.from_spec("16x8").name == "w8a16"
    assert QuantConfig.from_spec(" W8A8 ").name == "int8"
    assert QuantConfig.from_spec("codebook:4/a8").name == "codebook:4"


@pytest.mark.parametrize("bits", [1, 17, 0, -3])
def test_bits_outside_2_to_16_are_refused(bits: int) -> None:
    with pytest.raises(QuantConfigError, match=r"2\.\.16"):
        WeightSpec("affine", bits)
    with pytest.raises(QuantConfigError, match=r"2\.\.16"):
        ActivationSpec(bits)


def test_unknown_calibrator_lists_the_known_ones() -> None:
    with pytest.raises(QuantConfigError, match="entropy"):
        ActivationSpec(8, "magic")


def test_overrides_first_match_wins() -> None:
    cfg = QuantConfig.from_spec("int8").with_overrides({"fc": FLOAT, "layer4.*": LayerConfig(WeightSpec("log2", 4))})
    assert cfg.for_layer("fc").is_float
    assert cfg.for_layer("layer4.1.conv2").weight == WeightSpec("log2", 4)
    assert cfg.for_layer("layer1.0.conv1").weight == WeightSpec("affine", 8)


def test_json_and_yaml_round_trip() -> None:
    cfg = QuantConfig.from_spec("w8a16", calibrator="percentile").with_overrides(
        {"fc": FLOAT, "conv1": LayerConfig(WeightSpec("log2", 4, options=(("base", "sqrt2"),)), ActivationSpec(8, "entropy"))}
    )
    assert QuantConfig.from_json(cfg.to_json()) == cfg
    assert QuantConfig.from_yaml(cfg.to_yaml()) == cfg
