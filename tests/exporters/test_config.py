"""Export options: parsing and validation (no conversion)."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from edgeslim.config import from_json, to_json
from edgeslim.errors import SpecError
from edgeslim.exporters import ExportConfigError, ExportOptions, Layout, Precision, QuantSpec
from edgeslim.exporters.config import Tolerance


@pytest.mark.parametrize(
    ("spec", "precision", "label"),
    [("fp32", Precision.FP32, "fp32"), ("INT8", Precision.INT8, "int8"), ("16x8", Precision.W8A16, "w8a16"),
     ("w8a16", Precision.W8A16, "w8a16"), ("fp16", Precision.FP16, "fp16"), ("dynamic", Precision.DYNAMIC, "dynamic"),
     ("log2:4", Precision.CODED, "log2:4"), ("codebook:3", Precision.CODED, "codebook:3"),
     ("pwl:4", Precision.CODED, "pwl:4"), ("log2:4/log2:5", Precision.CODED, "log2:4/log2:5"),
     ("codebook:4/a16", Precision.CODED, "codebook:4/a16"), ("int16", Precision.INT16, "int16"),
     ("w16a16", Precision.INT16, "int16"), ("int8/a16", Precision.W8A16, "w8a16"), ("log2:4/a8", Precision.CODED, "log2:4")],
)
def test_quant_spec_parses_cli_spelling(spec: str, precision: Precision, label: str) -> None:
    q = QuantSpec.parse(spec)
    assert q.precision is precision
    assert q.label == label


@pytest.mark.parametrize("bad", ["int4", "codebook:x", "pwl:1", "log2:4/b8", "log2:4/log2:x", ""])
def test_quant_spec_rejects_unparsable_spellings(bad: str) -> None:
    with pytest.raises(ExportConfigError, match=f"bad quantization spec {bad!r}.*accepted: fp32") as info:
        QuantSpec.parse(bad)
    assert isinstance(info.value, SpecError)


@pytest.mark.parametrize("valid", ["log2:9", "w4a8", "affine:8/log2:4", "codebook:12/a16"])
def test_quant_spec_refuses_valid_specs_no_exporter_offers(valid: str) -> None:
    with pytest.raises(ExportConfigError, match=f"{valid!r}.* no exporter offers it; offered: fp32.*int16") as info:
        QuantSpec.parse(valid)
    assert not isinstance(info.value, SpecError)


def test_options_coerce_strings_and_reject_bad_values() -> None:
    opts = ExportOptions(quant="int8", layout="nhwc", activations="s8s8")  # type: ignore[arg-type]
    assert opts.layout is Layout.NHWC and opts.quant.precision is Precision.INT8
    assert opts.to_dict()["quant"] == "int8"
    with pytest.raises(ExportConfigError, match="layout"):
        ExportOptions(layout="chw")  # type: ignore[arg-type]
    with pytest.raises(ExportConfigError):
        ExportOptions(calibration_size=0)


def test_options_round_trip_with_quant_as_its_label() -> None:
    opts = ExportOptions(quant="codebook:4/a16", layout="nhwc", max_drop=None, tolerance=Tolerance(0.9, 0.8), opset=21)
    d = json.loads(json.dumps(opts.to_dict()))
    assert d["quant"] == "codebook:4/a16" and d["layout"] == "nhwc" and d["activations"] == "auto"
    assert d["tolerance"] == {"min_cosine": 0.9, "min_top1_agreement": 0.8, "max_abs_error": None}
    assert set(d) == {f.name for f in fields(ExportOptions)}
    assert ExportOptions.from_dict(d) == opts
    assert from_json(to_json(opts)) == opts  # tagged
    with pytest.raises(ExportConfigError, match="bad quantization spec 'int4': unknown weight part 'int4'"):
        ExportOptions.from_dict({**d, "quant": "int4"})
