"""Mixed precision: per-layer sensitivity, then bit-widths chosen under a size or accuracy budget.

Sensitivity of layer ``l`` to candidate ``c`` is measured on a few batches: only that layer's
weight is replaced by its quantized-dequantized value (everything else float) and the increase
of the cross-entropy loss is recorded, together with the weight SQNR. The search then picks one
candidate per layer:

* ``method="greedy"``: start at the most precise candidate everywhere and repeatedly take the
  downgrade with the smallest sensitivity increase per byte saved until the size budget holds;
* ``method="knapsack"``: an exact multiple-choice knapsack (bytes discretised) minimising the
  summed sensitivity under the size budget;
* ``max_accuracy_drop=``: greedy downgrades as long as the measured top-1 drop on the
  evaluation batches stays within the budget (smallest model meeting it).
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch
from torch import nn

from edgeslim.plugin.quantization.config import ActivationSpec, LayerConfig, QuantConfig, WeightSpec
from edgeslim.plugin.quantization.errors import QuantConfigError, QuantizationError
from edgeslim.plugin.quantization.report import sqnr_db
from edgeslim.plugin.quantization.schemes import SCHEMES, WEIGHT_SCHEMES
from edgeslim.spec import SchemeKind
from edgeslim.train import count_top1

DEFAULT_CANDIDATES: tuple[WeightSpec, ...] = (
    WeightSpec("affine", 8), WeightSpec("codebook", 4), WeightSpec("codebook", 3), WeightSpec("codebook", 2),
)


@dataclass(frozen=True)
class Sensitivity:
    """One (layer, candidate) measurement."""

    layer: str
    candidate: str
    loss_increase: float
    sqnr_db: float
    bytes: int


@dataclass
class MixedPrecisionResult:
    """The chosen map and what it was chosen from.

    Attributes:
        choice: ``{layer: "scheme:bits"}``.
        config: A :class:`QuantConfig` with one override per layer (int8 activations).
        weight_bytes: Estimated deployed weight bytes of the choice.
        float_bytes: fp32 bytes of the same weights.
        table: Every sensitivity measurement.
    """

    choice: dict[str, str]
    config: QuantConfig
    weight_bytes: int
    float_bytes: int
    table: list[Sensitivity] = field(default_factory=list)

    def summary(self) -> str:
        """E.g. ``"affine:8 x3, codebook:4 x16, codebook:3 x2"``."""
        counts = Counter(self.choice.values())
        return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


def _label(spec: WeightSpec) -> str:
    return f"{spec.scheme}:{spec.bits}"


def _fake_weight(w: torch.Tensor, spec: WeightSpec) -> torch.Tensor:
    scheme = SCHEMES.get(spec.scheme)
    codes, params = scheme.quantize(w, spec.bits, **dict(spec.options))
    return scheme.dequantize(codes, params).reshape(w.shape).to(w.dtype)


def spec_bytes(w: torch.Tensor, spec: WeightSpec) -> int:
    """Deployed bytes of ``w`` under ``spec``: packed codes + per-channel scale (+ codebook for non-affine)."""
    c = int(w.shape[0])
    book = c * 2**spec.bits * 4 if WEIGHT_SCHEMES.get(spec.scheme).kind is SchemeKind.CODED else 0
    return (w.numel() * spec.bits + 7) // 8 + c * 4 + book


def _loss_and_top1(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Mean cross-entropy and top-1 (:func:`edgeslim.train.count_top1`)."""
    counts = count_top1(model, batches, with_loss=True)
    return counts.loss, counts.accuracy


def _w(mod: nn.Module) -> torch.Tensor:
    weight = mod.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def weighted_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of the conv/linear layers (the ones the quantizer quantizes)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear)}


@torch.no_grad()
def measure(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], candidates: Sequence[WeightSpec]) -> list[Sensitivity]:
    """Per-layer, per-candidate loss increase and SQNR (one layer quantized at a time)."""
    model = copy.deepcopy(model).eval()
    base, _ = _loss_and_top1(model, batches)
    out: list[Sensitivity] = []
    for name, mod in weighted_layers(model).items():
        w = _w(mod).detach().clone()
        for spec in candidates:
            wq = _fake_weight(w, spec)
            _w(mod).copy_(wq)
            loss, _ = _loss_and_top1(model, batches)
            _w(mod).copy_(w)
            out.append(Sensitivity(name, _label(spec), max(loss - base, 0.0), sqnr_db(w, wq), spec_bytes(w, spec)))
    return out


def search(
    model: nn.Module,
    example_inputs: Any,
    data: Iterable[Any],
    *,
    budget_fraction: float | None = None,
    budget_bytes: int | None = None,
    max_accuracy_drop: float | None = None,
    candidates: Sequence[WeightSpec] = DEFAULT_CANDIDATES,
    method: str = "greedy",
    eval_batches: int = 4,
    activation: ActivationSpec | None = None,
    sensitivities: Sequence[Sensitivity] | None = None,
) -> MixedPrecisionResult:
    """Choose per-layer weight schemes/bit-widths; see the module docstring.

    Args:
        model: The float model (not modified).
        example_inputs: Unused by the search itself; kept for symmetry with :func:`quantize`.
        data: Batches ``(images, labels)`` for the sensitivity measurement (e.g. the calibration set).
        budget_fraction: Weight bytes allowed, as a fraction of the fp32 weight bytes (e.g. ``1/6``).
        budget_bytes: Weight bytes allowed, absolute.
        max_accuracy_drop: Top-1 drop allowed on the evaluation batches (fraction, e.g. 0.01).
        candidates: Weight specs to choose from, most precise first.
        method: ``"greedy"`` or ``"knapsack"`` (size budgets).
        eval_batches: Batches of ``data`` used for the measurements.
        activation: Activation spec of every layer (default int8 min-max).
        sensitivities: Reuse an earlier :func:`measure` table (same candidates) instead of measuring.

    Raises:
        QuantConfigError: No budget, or an unknown method.
        QuantizationError: The size budget is below the smallest candidate everywhere.
    """
    if budget_fraction is None and budget_bytes is None and max_accuracy_drop is None:
        raise QuantConfigError("mixed precision needs a budget: budget_fraction=, budget_bytes= or max_accuracy_drop=")
    if method not in _METHODS:
        raise QuantConfigError(f"unknown mixed-precision method {method!r}; known: {', '.join(sorted(_METHODS))}")
    labels = [_label(c) for c in candidates]
    weights = {name: _w(m) for name, m in weighted_layers(model).items()}
    float_bytes = sum(int(w.numel()) * 4 for w in weights.values())
    budget = None
    if max_accuracy_drop is None:
        budget = int(budget_bytes if budget_bytes is not None else float_bytes * float(budget_fraction or 1))
        smallest = sum(min(spec_bytes(w, c) for c in candidates) for w in weights.values())
        if smallest > budget:
            raise QuantizationError(
                f"size budget {budget} B is unreachable with these candidates: the smallest choice needs {smallest} B "
                f"({smallest / float_bytes:.3f} of fp32); raise the budget or add lower-bit candidates"
            )
    batches = [(b[0], b[1]) for b in islice(data, eval_batches)]
    if not batches:
        raise QuantConfigError("mixed precision needs data: the loader yielded no batches")
    table = list(sensitivities) if sensitivities is not None else measure(model, batches, candidates)
    layers = list(dict.fromkeys(s.layer for s in table))
    by = {(s.layer, s.candidate): s for s in table}
    if budget is None:
        choice = _accuracy_greedy(model, batches, layers, labels, by, candidates, float(max_accuracy_drop or 0))
    else:
        choice = _METHODS[method](layers, labels, by, budget)
    spec_of = {_label(c): c for c in candidates}
    act = activation or ActivationSpec()
    overrides = {layer: LayerConfig(spec_of[lab], act) for layer, lab in choice.items()}
    cfg = QuantConfig(default=LayerConfig(WeightSpec("affine", 8), act), name="mixed").with_overrides(overrides)
    total = sum(by[(layer, lab)].bytes for layer, lab in choice.items())
    return MixedPrecisionResult(choice, cfg, total, float_bytes, table)


def _greedy(layers: list[str], labels: list[str], by: dict[tuple[str, str], Sensitivity], budget: int) -> dict[str, str]:
    idx = dict.fromkeys(layers, 0)
    total = sum(by[(layer, labels[0])].bytes for layer in layers)
    while total > budget:
        best: tuple[float, str] | None = None
        for layer in layers:
            i = idx[layer]
            if i + 1 >= len(labels):
                continue
            cur, nxt = by[(layer, labels[i])], by[(layer, labels[i + 1])]
            saved = cur.bytes - nxt.bytes
            if saved <= 0:
                continue
            cost = (nxt.loss_increase - cur.loss_increase + 1e-9) / saved
            if best is None or cost < best[0]:
                best = (cost, layer)
        if best is None:
            break
        layer = best[1]
        total -= by[(layer, labels[idx[layer]])].bytes - by[(layer, labels[idx[layer] + 1])].bytes
        idx[layer] += 1
    return {layer: labels[i] for layer, i in idx.items()}


def _knapsack(layers: list[str], labels: list[str], by: dict[tuple[str, str], Sensitivity], budget: int, units: int = 4000) -> dict[str, str]:
    unit = max(budget / units, 1.0)
    inf = math.inf
    dp = [0.0] * (units + 1)  # dp[u]: min summed loss increase within u units
    back: list[list[int]] = []
    for layer in layers:
        new = [inf] * (units + 1)
        pick = [-1] * (units + 1)
        for j, lab in enumerate(labels):
            s = by[(layer, lab)]
            cost = math.ceil(s.bytes / unit)
            for u in range(cost, units + 1):
                v = dp[u - cost] + s.loss_increase
                if v < new[u]:
                    new[u], pick[u] = v, j
        back.append(pick)
        dp = new
    if not math.isfinite(dp[units]):
        return _greedy(layers, labels, by, budget)
    choice: dict[str, str] = {}
    u = units
    for layer, pick in zip(reversed(layers), reversed(back), strict=True):
        j = pick[u]
        choice[layer] = labels[j]
        u -= math.ceil(by[(layer, labels[j])].bytes / unit)
    return {layer: choice[layer] for layer in layers}


def _accuracy_greedy(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], layers: list[str], labels: list[str],
                     by: dict[tuple[str, str], Sensitivity], candidates: Sequence[WeightSpec], max_drop: float) -> dict[str, str]:
    work = copy.deepcopy(model).eval()
    mods = weighted_layers(work)
    floats = {n: _w(m).detach().clone() for n, m in mods.items()}
    _, top0 = _loss_and_top1(work, batches)
    idx = dict.fromkeys(layers, 0)
    spec_of = {_label(c): c for c in candidates}
    cache: dict[tuple[str, str], torch.Tensor] = {}

    def fake(layer: str, label: str) -> torch.Tensor:
        if (layer, label) not in cache:
            cache[(layer, label)] = _fake_weight(floats[layer], spec_of[label])
        return cache[(layer, label)]

    with torch.no_grad():
        for layer in layers:
            _w(mods[layer]).copy_(fake(layer, labels[0]))
        order = sorted((by[(la, labels[i + 1])].loss_increase / max(by[(la, labels[i])].bytes - by[(la, labels[i + 1])].bytes, 1), la, i)
                       for la in layers for i in range(len(labels) - 1))
        tried: set[tuple[str, int]] = set()
        for _pass in range(len(labels) - 1):  # a layer's later downgrade may sort before its earlier one
            for _, layer, i in order:
                if idx[layer] != i or (layer, i) in tried:
                    continue
                tried.add((layer, i))
                _w(mods[layer]).copy_(fake(layer, labels[i + 1]))
                _, top = _loss_and_top1(work, batches)
                if top0 - top > max_drop:
                    _w(mods[layer]).copy_(fake(layer, labels[i]))
                else:
                    idx[layer] = i + 1
    return {layer: labels[i] for layer, i in idx.items()}


_METHODS = {"greedy": _greedy, "knapsack": _knapsack}

__all__ = ["DEFAULT_CANDIDATES", "MixedPrecisionResult", "Sensitivity", "measure", "search", "spec_bytes", "weighted_layers"]
