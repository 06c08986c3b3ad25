"""A saved quantized file back as a :class:`QuantResult` (the next step of the chain starts from it).

``load_result("q/model.pt")`` returns what ``edgeslim.quantize`` returned: the converted graph
(bit-exact), its config, its report and weight bytes, and — for coded schemes (log2, codebook,
pwl: every registered scheme of kind ``CODED``) — the integer codes and per-channel codebooks, recovered exactly from the
converted graph's int8 weights and scales (nothing extra is stored for them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule

from edgeslim.errors import ModelLoadError
from edgeslim.io import load, read_header
from edgeslim.plugin.quantization.api import QuantResult, _dequantized_weights
from edgeslim.plugin.quantization.coded import CodedWeight
from edgeslim.plugin.quantization.config import QuantConfig
from edgeslim.plugin.quantization.info import info_of
from edgeslim.plugin.quantization.report import QuantReport
from edgeslim.plugin.quantization.schemes import WEIGHT_SCHEMES
from edgeslim.spec import SchemeKind


def coded_from_graph(gm: GraphModule, config: QuantConfig) -> dict[str, CodedWeight]:
    """``{layer: CodedWeight}`` of the coded-scheme layers of a converted graph, decoded exactly.

    Each output channel's distinct dequantized values become its codebook row; a layer with more
    levels than its scheme's ``2**bits`` is reported, never silently widened.

    Raises:
        ModelLoadError: A layer of a grid scheme has more levels than its bits allow.
    """
    out: dict[str, CodedWeight] = {}
    for name, w in _dequantized_weights(gm).items():
        spec = config.for_layer(name).weight
        if spec is None or WEIGHT_SCHEMES.get(spec.scheme).kind is not SchemeKind.CODED:
            continue
        k = 1 << spec.bits
        rows = w.reshape(w.shape[0], -1)
        books, codes = [], []
        for row in rows:
            levels, inverse = torch.unique(row, return_inverse=True)
            if levels.numel() > k:
                raise ModelLoadError(f"layer {name}: {levels.numel()} weight levels in a channel, more than "
                                     f"{spec.scheme}:{spec.bits} allows ({k}); the file does not match its config")
            books.append(torch.cat([levels, levels[-1:].expand(k - levels.numel())]))
            codes.append(inverse)
        cw = CodedWeight(torch.stack(codes).reshape(w.shape).to(torch.uint8), torch.stack(books), spec.bits, 0)
        if not torch.equal(cw.decode(), w):
            raise ModelLoadError(f"layer {name}: codes + codebook do not decode to the saved weight")
        out[name] = cw
    return out


def load_result(path: str | Path, *, base: nn.Module | None = None) -> QuantResult:
    """Load a file written by ``edgeslim.save(quant_result, path)`` as a :class:`QuantResult`.

    Raises:
        ModelLoadError: The file is missing, corrupt, or not a quantized model.
    """
    header = read_header(path)
    if header.get("kind") != "quantized":
        raise ModelLoadError(f"{path} holds a {header.get('kind', 'non-edgeslim')} model, not a quantized one: "
                             "quantize it first (edgeslim quantize --model ...)")
    gm = load(path, base=base)
    assert isinstance(gm, GraphModule)
    config = QuantConfig.from_dict(header["config"])
    report_data: dict[str, Any] | None = header.get("report")
    report = QuantReport.from_dict(report_data) if report_data else QuantReport(config.name, [])
    coded = coded_from_graph(gm, config)
    weight_bytes = report.weight_bytes if report.layers else int(header.get("constant_bytes", 0))
    return QuantResult(gm, config, report, weight_bytes, coded, list(header.get("left_float", [])), info_of(gm))


__all__ = ["coded_from_graph", "load_result"]
