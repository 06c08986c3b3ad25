"""Schemes on real trained weights: SQNR floors, code ranges, exact decoding, registry."""

from __future__ import annotations

import pytest
import torch

from edgeslim.errors import RegistryError
from edgeslim.plugin.quantization.report import sqnr_db
from edgeslim.plugin.quantization.schemes import SCHEMES, register_scheme, to_coded


@pytest.fixture(scope="module")
def weight(resnet18_fmnist: torch.nn.Module) -> torch.Tensor:
    return resnet18_fmnist.layer2[0].conv1.weight.detach().clone()


# measured on this layer: affine8 41.3, affine4 16.1, log2:4 14.5, codebook:4 18.6, pwl:4 18.4 dB
@pytest.mark.parametrize(
    ("scheme", "bits", "floor"),
    [("affine", 8, 38.0), ("affine", 4, 14.0), ("affine", 16, 80.0), ("log2", 4, 13.0), ("codebook", 4, 17.5),
     ("codebook", 2, 8.0), ("pwl", 4, 17.0)],
)
def test_sqnr_floor_and_codes(weight: torch.Tensor, scheme: str, bits: int, floor: float) -> None:
    s = SCHEMES.get(scheme)
    codes, params = s.quantize(weight, bits)
    assert codes.shape == weight.shape
    assert int(codes.min()) >= 0 and int(codes.max()) < 2**bits
    deq = s.dequantize(codes, params)
    assert sqnr_db(weight, deq) > floor
    coded = to_coded(codes, params)
    assert torch.equal(coded.decode(), deq)


def test_codebook_beats_uniform_at_4_bits(weight: torch.Tensor) -> None:
    aff = SCHEMES.get("affine")
    cb = SCHEMES.get("codebook")
    a = sqnr_db(weight, aff.dequantize(*aff.quantize(weight, 4)))
    c = sqnr_db(weight, cb.dequantize(*cb.quantize(weight, 4)))
    assert c > a + 1.5


def test_log2_levels_are_signed_powers_of_two_on_an_int8_grid(weight: torch.Tensor) -> None:
    codes, params = SCHEMES.get("log2").quantize(weight, 4)
    assert params.qmax == 127
    mags = params.levels.abs().unique().tolist()
    assert mags == [0, 1, 2, 4, 8, 16, 32, 64]
    deq = SCHEMES.get("log2").dequantize(codes, params)
    ratio = (deq.abs() / params.step.reshape(-1, 1, 1, 1))
    nz = ratio[ratio > 0]
    assert torch.equal(torch.log2(nz), torch.log2(nz).round())


def test_log2_sqrt2_base_is_finer(weight: torch.Tensor) -> None:
    s = SCHEMES.get("log2")
    two = sqnr_db(weight, s.dequantize(*s.quantize(weight, 4)))
    root = sqnr_db(weight, s.dequantize(*s.quantize(weight, 4, base="sqrt2")))
    assert root > two + 1.0


def test_per_tensor_codebook_is_one_row(weight: torch.Tensor) -> None:
    codes, params = SCHEMES.get("codebook").quantize(weight, 4, per_channel=False)
    assert params.codebook.shape == (1, 16)
    assert to_coded(codes, params).codebook.shape == (16,)


def test_asymmetric_affine_uses_zero_points(weight: torch.Tensor) -> None:
    s = SCHEMES.get("affine")
    codes, params = s.quantize(weight + 0.05, 8, symmetric=False)
    assert bool((params.zero_point != 0).any())
    assert sqnr_db(weight + 0.05, s.dequantize(codes, params)) > 38


def test_registry_refuses_duplicates_and_names_known_schemes() -> None:
    with pytest.raises(RegistryError, match="already registered"):
        register_scheme("log2")(type("Dup", (), {}))
    with pytest.raises(RegistryError, match="codebook"):
        SCHEMES.get("nope")


def test_builtin_schemes_declare_kind_bits_and_lowering() -> None:
    from edgeslim.plugin.quantization.schemes import (
        ACTIVATION_QSPECS,
        ACTIVATION_SCHEMES,
        WEIGHT_SCHEMES,
        Lowering,
        SchemeKind,
        register_activation_scheme,
    )
    from edgeslim.spec import schemes_of

    assert set(WEIGHT_SCHEMES.names()) == set(SCHEMES.names()) >= {"affine", "codebook", "log2", "pwl"}
    assert set(ACTIVATION_SCHEMES.names()) == set(ACTIVATION_QSPECS.names()) >= {"affine", "log2"}
    assert WEIGHT_SCHEMES.get("affine").kind is SchemeKind.GRID
    assert {"codebook", "log2", "pwl"} <= set(schemes_of(SchemeKind.CODED))
    log2_act = ACTIVATION_SCHEMES.get("log2")
    assert (log2_act.min_bits, log2_act.max_bits) == (2, 5)
    assert log2_act.lowers_to("onnx") is Lowering.QDQ and log2_act.lowers_to("tflite") is Lowering.NONE
    assert WEIGHT_SCHEMES.get("log2").lowers_to("onnx") is Lowering.CODES
    assert WEIGHT_SCHEMES.get("codebook").formats(Lowering.CODES) == ["onnx"]
    with pytest.raises(RegistryError, match="activation quantization scheme 'log2' is already registered"):
        register_activation_scheme("log2", kind=SchemeKind.CODED, bits=(2, 5))(lambda spec, qat: None)
    assert "log2" in ACTIVATION_QSPECS and ACTIVATION_QSPECS.get("log2").__name__ == "log2_activation_qspec"
