"""House style rule 11: metadata lives in results, side tables and saved manifests, never in
attributes patched onto modules (``model.edgeslim_*``)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import edgeslim
from edgeslim import models
from edgeslim.errors import ModelLoadError
from edgeslim.plugin.pruning import Method, PruneConfig, Target, prune
from edgeslim.plugin.pruning.unstructured import masks_of
from edgeslim.plugin.quantization import convert, quantize
from edgeslim.plugin.quantization.errors import QuantizationError
from edgeslim.plugin.quantization.info import info_of

SRC = Path(__file__).resolve().parents[1] / "src" / "edgeslim"

#: Writing (or reading back) an ``edgeslim_*`` attribute on an object.
PATCHES = (
    re.compile(r"\.edgeslim_[a-z_]+\s*=(?!=)"),
    re.compile(r"""(setattr|getattr|hasattr|delattr)\([^)]*["']edgeslim_"""),
    re.compile(r"\bdel\s+[\w.]+\.edgeslim_"),
)


def test_no_source_line_patches_an_edgeslim_attribute() -> None:
    hits = [
        f"{path.relative_to(SRC)}:{i}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if any(p.search(line) for p in PATCHES)
    ]
    assert not hits, "module attributes used for metadata:\n" + "\n".join(hits)


def _patched(model: nn.Module) -> list[str]:
    return [f"{name or 'top'}.{k}" for name, m in model.named_modules() for k in vars(m) if k.startswith("edgeslim_")]


@pytest.fixture(scope="module")
def pruned_and_quantized() -> tuple[nn.Module, edgeslim.PruneResult, edgeslim.QuantResult, torch.Tensor]:
    torch.manual_seed(0)
    net = models.load("resnet18", num_classes=10)
    x = torch.randn(4, 3, 32, 32)
    res = prune(net, x[:1], PruneConfig(target=Target.parse("ratio=0.3")))
    q = quantize(res.model, x, "int8", calibration=[(x, torch.zeros(4, dtype=torch.long))])
    return net, res, q, x


def test_prune_quantize_load_patch_no_attributes_and_round_trip(pruned_and_quantized, tmp_path: Path) -> None:
    net, res, q, x = pruned_and_quantized
    assert _patched(net) == [] and _patched(res.model) == [] and _patched(q.model) == []
    # pruned: the architecture travels in the side table and the manifest, not on the module
    arch = models.arch_of_module(res.model)
    assert arch is not None and arch.name == "resnet18"
    back = edgeslim.load(edgeslim.save(res, tmp_path / "p.pt", meta={"step": "prune"}))
    assert _patched(back) == [] and edgeslim.io.load_meta(tmp_path / "p.pt") == {"step": "prune"}
    with torch.no_grad():
        assert torch.equal(back(x), res.model.eval()(x))
    # quantized: the QuantResult carries its info; the reloaded graph is bit-exact and knows its ancestry
    assert q.info is not None and q.info.converted and q.info.float_structure["arch"]["name"] == "resnet18"
    qback = edgeslim.load(edgeslim.save(q, tmp_path / "q.pt"))
    assert _patched(qback) == []
    assert torch.equal(qback(x), q.model(x))
    assert torch.load(tmp_path / "q.pt", weights_only=True)["kind"] == "quantized"
    # a bare converted graph (from convert() or load) saves as quantized through the side table
    again = edgeslim.load(edgeslim.save(qback, tmp_path / "q2.pt"))
    assert torch.equal(again(x), q.model(x))
    info = info_of(again)
    assert info is not None and info.report == q.report.to_dict()


def test_unknown_graphs_are_refused_with_what_to_do(pruned_and_quantized, tmp_path: Path) -> None:
    _net, _res, q, _x = pruned_and_quantized
    with pytest.raises(ModelLoadError, match="QuantResult"):
        edgeslim.save(copy.deepcopy(q.model), tmp_path / "copy.pt")  # a copy has no record
    with pytest.raises(QuantizationError, match="prepare_qat"):
        convert(copy.deepcopy(q.model))
    with pytest.raises(QuantizationError, match="already converted"):
        convert(q.model)


def test_unstructured_masks_live_beside_the_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = models.load("resnet18", num_classes=10)
    res = prune(net, torch.randn(1, 3, 32, 32), PruneConfig(method=Method.UNSTRUCTURED, target=Target.parse("sparsity=0.5")))
    assert res.masks is not None and _patched(res.model) == []
    assert sorted(masks_of(res.model)) == sorted(res.masks.masks) and masks_of(net) == {}
    back = edgeslim.load(edgeslim.save(res.model, tmp_path / "u.pt"))
    assert _patched(back) == [] and sorted(masks_of(back)) == sorted(res.masks.masks)
    res.masks.make_permanent()
    assert masks_of(res.model) == {}
