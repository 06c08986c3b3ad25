"""The one quantization spec grammar, and both of its callers agreeing on it."""

from __future__ import annotations

import pytest

from edgeslim.errors import ConfigError, SpecError
from edgeslim.exporters.config import QuantSpec
from edgeslim.exporters.errors import ExportConfigError, ExportSpecError
from edgeslim.plugin.quantization.config import QuantConfig
from edgeslim.plugin.quantization.errors import QuantConfigError, QuantSpecError
from edgeslim.spec import ParsedSpec, parse_spec

#: spelling -> (weight scheme, weight bits, activation scheme, activation bits, export_only), label
TABLE: list[tuple[str, tuple[str | None, int | None, str | None, int | None, str | None], str]] = [
    ("fp32", (None, None, None, None, "fp32"), "fp32"),
    ("float", (None, None, None, None, "fp32"), "fp32"),
    ("none", (None, None, None, None, "fp32"), "fp32"),
    ("FP16", (None, None, None, None, "fp16"), "fp16"),
    ("float16", (None, None, None, None, "fp16"), "fp16"),
    ("dynamic", ("affine", 8, None, None, "dynamic"), "dynamic"),
    ("drq", ("affine", 8, None, None, "dynamic"), "dynamic"),
    ("dynamic-range", ("affine", 8, None, None, "dynamic"), "dynamic"),
    ("int8", ("affine", 8, "affine", 8, None), "int8"),
    (" W8A8 ", ("affine", 8, "affine", 8, None), "int8"),
    ("affine:8", ("affine", 8, "affine", 8, None), "int8"),
    ("int16", ("affine", 16, "affine", 16, None), "int16"),
    ("w16a16", ("affine", 16, "affine", 16, None), "int16"),
    ("w8a16", ("affine", 8, "affine", 16, None), "w8a16"),
    ("16x8", ("affine", 8, "affine", 16, None), "w8a16"),
    ("int16x8", ("affine", 8, "affine", 16, None), "w8a16"),
    ("int8/a16", ("affine", 8, "affine", 16, None), "w8a16"),
    ("w4a8", ("affine", 4, "affine", 8, None), "w4a8"),
    ("w2a16", ("affine", 2, "affine", 16, None), "w2a16"),
    ("affine:4", ("affine", 4, "affine", 8, None), "w4a8"),
    ("int8/log2:5", ("affine", 8, "log2", 5, None), "affine:8/log2:5"),
    ("log2:4", ("log2", 4, "affine", 8, None), "log2:4"),
    ("log2:2", ("log2", 2, "affine", 8, None), "log2:2"),
    ("log2:16", ("log2", 16, "affine", 8, None), "log2:16"),
    ("log2:4/a8", ("log2", 4, "affine", 8, None), "log2:4"),
    ("log2:4/a16", ("log2", 4, "affine", 16, None), "log2:4/a16"),
    ("log2:4/log2:5", ("log2", 4, "log2", 5, None), "log2:4/log2:5"),
    ("codebook:3", ("codebook", 3, "affine", 8, None), "codebook:3"),
    ("Codebook:4/A16", ("codebook", 4, "affine", 16, None), "codebook:4/a16"),
    ("pwl:4", ("pwl", 4, "affine", 8, None), "pwl:4"),
    ("pwl:4/log2:2", ("pwl", 4, "log2", 2, None), "pwl:4/log2:2"),
]
BAD = ["int7x", "log2:1", "log2:17", "codebook:", "w8a", "foo/a16", "int8/a99", "", "int8/", "w1a8", "w8a17",
       "kmeans:4", "log2:4/log2:6", "log2:4/log2:1", "log2:4/b7", "fp32/a8", "int8/a16/a8", "log2:x", "mixed"]
#: Valid for both callers (the export-only precisions and what no exporter offers are left out).
BOTH = ["int8", "w8a8", "int16", "w16a16", "w8a16", "16x8", "int16x8", "int8/a16", "affine:8", "log2:4", "log2:8",
        "log2:4/a16", "log2:4/log2:5", "codebook:3", "codebook:4/a16", "pwl:4", "pwl:2/log2:3"]


@pytest.mark.parametrize(("text", "fields", "label"), TABLE)
def test_spellings_parse_to_their_fields_and_label(text: str, fields: tuple[object, ...], label: str) -> None:
    p = parse_spec(text)
    assert (p.weight_scheme, p.weight_bits, p.activation_scheme, p.activation_bits, p.export_only) == fields
    assert p.label == label


@pytest.mark.parametrize(("text", "label"), [(t, lbl) for t, _, lbl in TABLE])
def test_label_round_trip(text: str, label: str) -> None:
    p = parse_spec(text)
    assert parse_spec(p.label) == p
    assert parse_spec(p.label).label == label


@pytest.mark.parametrize("bad", BAD)
def test_bad_spellings_raise_naming_the_input_and_the_accepted_ones(bad: str) -> None:
    with pytest.raises(SpecError, match=f"bad quantization spec {bad!r}: .*; accepted: fp32, fp16, dynamic"):
        parse_spec(bad)


def test_scheme_names_come_from_the_caller() -> None:
    assert parse_spec("kmeans:4", schemes=["affine", "kmeans"]) == ParsedSpec("kmeans", 4, "affine", 8)
    with pytest.raises(SpecError, match=r"unknown weight scheme 'log2' .*known: affine, kmeans"):
        parse_spec("log2:4", schemes=["affine", "kmeans"])


def test_the_callers_errors_are_spec_errors_and_their_own_config_errors() -> None:
    with pytest.raises(QuantConfigError) as q:
        QuantConfig.from_spec("int7x")
    with pytest.raises(ExportConfigError) as e:
        QuantSpec.parse("int7x")
    assert isinstance(q.value, QuantSpecError) and isinstance(q.value, SpecError) and isinstance(q.value, ValueError)
    assert isinstance(e.value, ExportSpecError) and isinstance(e.value, SpecError) and isinstance(e.value, ConfigError)
    with pytest.raises(SpecError) as s:
        parse_spec("int7x")
    assert str(q.value) == str(e.value) == str(s.value)


@pytest.mark.parametrize("text", BOTH)
def test_quantization_and_export_read_a_spec_the_same_way(text: str) -> None:
    cfg = QuantConfig.from_spec(text)
    spec = QuantSpec.parse(text)
    w, a = cfg.default.weight, cfg.default.activation
    assert w is not None and a is not None
    p = spec.parsed
    assert (w.scheme, w.bits, a.scheme, a.bits) == (p.weight_scheme, p.weight_bits, p.activation_scheme, p.activation_bits)
    assert cfg.name == spec.label == parse_spec(text).label
    # the exporter hands its label to edgeslim.quantize: that must mean the same config
    assert QuantConfig.from_spec(spec.label) == cfg


@pytest.mark.parametrize("text", ["fp32", "fp16", "dynamic"])
def test_export_only_precisions_are_refused_by_quantize(text: str) -> None:
    assert QuantSpec.parse(text).label == text
    with pytest.raises(QuantSpecError, match=f"{text!r} is an export-only precision"):
        QuantConfig.from_spec(text)
