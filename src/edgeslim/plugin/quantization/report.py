"""Quantization reports: per-layer SQNR, bits and bytes; Markdown table; a matplotlib plot."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgeslim.config import from_data, serializable, to_data


def sqnr_db(reference: torch.Tensor, quantized: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10·log10(‖x‖² / ‖x − q‖²)`` in dB (``inf`` if exact)."""
    ref = reference.detach().to(torch.float64)
    noise = float((ref - quantized.detach().to(torch.float64)).pow(2).sum())
    signal = float(ref.pow(2).sum())
    if noise == 0:
        return math.inf
    return 10 * math.log10(max(signal, 1e-300) / noise)


@serializable(strict=False)
@dataclass(frozen=True)
class LayerReport:
    """One conv/linear layer: scheme, bits, weight SQNR (dB) and deployed bytes."""

    name: str
    scheme: str
    weight_bits: int
    act_bits: int
    sqnr_db: float
    params: int
    bytes: int


@serializable(rename={"config_name": "config"}, derived=("weight_bytes", "float_bytes", "mean_sqnr_db"), strict=False)
@dataclass
class QuantReport:
    """The per-layer report of one quantized model.

    Attributes:
        config_name: The config's label (``"int8"``, ``"mixed"`` ...).
        layers: One :class:`LayerReport` per conv/linear layer.
        accuracy: Optional ``{"top1_fp32": ..., "top1_quant": ...}`` filled in by callers.
    """

    config_name: str
    layers: list[LayerReport]
    accuracy: dict[str, float] = field(default_factory=dict)

    @property
    def weight_bytes(self) -> int:
        """Bytes of all conv/linear weights as deployed."""
        return sum(layer.bytes for layer in self.layers)

    @property
    def float_bytes(self) -> int:
        """Bytes of the same weights in float32."""
        return sum(layer.params * 4 for layer in self.layers)

    @property
    def mean_sqnr_db(self) -> float:
        """Mean weight SQNR over the quantized layers (dB)."""
        vals = [layer.sqnr_db for layer in self.layers if math.isfinite(layer.sqnr_db)]
        return sum(vals) / len(vals) if vals else math.inf

    def bits_map(self) -> dict[str, int]:
        """``{layer: weight bits}`` (32 for float layers)."""
        return {layer.name: layer.weight_bits for layer in self.layers}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: the fields (``config_name`` as ``config``) and the derived byte counts and SQNR."""
        data: dict[str, Any] = to_data(self, tagged=False)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantReport:
        """Inverse of :meth:`to_dict` (the stored report of a saved quantized model)."""
        return from_data({"config": "custom", "layers": [], **data}, cls)

    def to_markdown(self) -> str:
        """A Markdown table of the layers."""
        rows = ["| layer | scheme | W bits | A bits | SQNR dB | params | bytes |", "|---|---|---:|---:|---:|---:|---:|"]
        rows += [f"| {r.name} | {r.scheme} | {r.weight_bits} | {r.act_bits} | {r.sqnr_db:.1f} | {r.params} | {r.bytes} |"
                 for r in self.layers]
        return "\n".join(rows)

    def plot(self, path: str | Path) -> Path:
        """Save a bar chart of per-layer SQNR, coloured by weight bits, to ``path`` (PNG/SVG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [r.name for r in self.layers]
        vals = [r.sqnr_db if math.isfinite(r.sqnr_db) else 0.0 for r in self.layers]
        bits = [r.weight_bits for r in self.layers]
        fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.3), 4))
        colors = plt.get_cmap("viridis")([min(b, 16) / 16 for b in bits])
        ax.bar(range(len(names)), vals, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set_ylabel("weight SQNR (dB)")
        ax.set_title(f"{self.config_name}: mean {self.mean_sqnr_db:.1f} dB, {self.weight_bytes / 2**20:.2f} MiB")
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
        plt.close(fig)
        return out


__all__ = ["LayerReport", "QuantReport", "sqnr_db"]
