"""Configuration of ``edgeslim.deep_compression``: one frozen dataclass, JSON round-trip."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from edgeslim.config import from_data, serializable, to_data
from edgeslim.errors import ConfigError


class Init(str, Enum):
    """How a layer's k-means centroids are initialised before the Lloyd iterations.

    ``linear``: evenly spaced between the smallest and largest stored weight (Han et al.: keeps
    the rare large weights represented); ``density``: at the quantiles of the weights (more
    centroids where weights are dense).
    """

    LINEAR = "linear"
    DENSITY = "density"


@serializable(what="pack option")
@dataclass(frozen=True)
class PackConfig:
    """Settings of the three Deep Compression stages.

    Args:
        sparsity: Fraction of conv/linear weights removed, over all of them together; split
            across layers by a sensitivity analysis (more where the loss barely moves).
        sensitivity_sparsities: Per-layer sparsities measured by the sensitivity analysis (the
            largest is the most any layer may lose).
        sensitivity_batches: Held-out batches the sensitivity analysis scores.
        prune_steps: Iterations of prune-then-fine-tune that reach ``sparsity``.
        prune_epochs: Fine-tuning epochs over all pruning steps (fractions allowed; 0: none).
        prune_lr: Peak learning rate of that fine-tuning (SGD, one-cycle).
        bits: Code widths a layer may get (its codebook has ``2**bits`` shared weights).
        mean_bits: Size budget: mean bits per stored weight over all layers; the bits of each
            layer are lowered, least damage per byte first, until the budget holds.
        init: Centroid initialisation used for training (both are measured and reported).
        kmeans_iterations: Lloyd iterations of each codebook.
        quant_epochs: Centroid fine-tuning epochs (fractions allowed; 0: none).
        quant_lr: Learning rate of the centroids (Adam); other float parameters use it too.
        distill: Fine-tune against the unpacked float model's outputs (knowledge distillation).
        index_bits: Relative-index widths tried per layer (the smallest coded size wins).
        float16: Store the remaining float tensors (biases, batch norm) as float16 when that
            loses no value to overflow or underflow (the model is rounded the same way first).
        int8_grid: After fine-tuning, snap each layer's centroids onto ``k·step`` (``|k| <= 127``,
            one step per layer), so the packed weights are exactly int8 codes and unpack to
            int8 ONNX/TFLite artefacts without re-rounding (:mod:`edgeslim.deep_compression.grid`).
        batch_size: Training batch size.
    """

    sparsity: float = 0.9
    sensitivity_sparsities: tuple[float, ...] = (0.7, 0.85, 0.9, 0.95, 0.98)
    sensitivity_batches: int = 1
    prune_steps: int = 3
    prune_epochs: float = 0.3
    prune_lr: float = 0.01
    bits: tuple[int, ...] = (2, 3, 4, 5, 6)
    mean_bits: float = 4.0
    init: Init = Init.LINEAR
    kmeans_iterations: int = 30
    quant_epochs: float = 0.1
    quant_lr: float = 1e-4
    distill: bool = True
    index_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    float16: bool = True
    int8_grid: bool = True
    batch_size: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "init", Init(self.init))
        for name in ("sensitivity_sparsities", "bits", "index_bits"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if not self.sensitivity_sparsities or not all(0.0 < s < 1.0 for s in self.sensitivity_sparsities):
            raise ConfigError(f"sensitivity_sparsities must lie in (0, 1), got {self.sensitivity_sparsities}")
        if self.sparsity > max(self.sensitivity_sparsities):
            raise ConfigError(
                f"sparsity {self.sparsity} exceeds the largest per-layer sparsity measured "
                f"({max(self.sensitivity_sparsities)}): add a larger value to sensitivity_sparsities"
            )
        if not self.bits or not all(1 <= b <= 8 for b in self.bits):
            raise ConfigError(f"bits must lie in 1..8, got {self.bits}")
        if not min(self.bits) <= self.mean_bits:
            raise ConfigError(f"mean_bits {self.mean_bits} is below the narrowest width {min(self.bits)}")
        if not self.index_bits or not all(1 <= b <= 12 for b in self.index_bits):
            raise ConfigError(f"index_bits must lie in 1..12, got {self.index_bits}")
        if self.prune_steps < 1:
            raise ConfigError(f"prune_steps must be >= 1, got {self.prune_steps}")
        if self.prune_epochs < 0 or self.quant_epochs < 0:
            raise ConfigError("prune_epochs and quant_epochs must be >= 0")
        if self.sensitivity_batches < 1 or self.batch_size < 1 or self.kmeans_iterations < 0:
            raise ConfigError("sensitivity_batches and batch_size must be >= 1, kmeans_iterations >= 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (enums as their values, tuples as lists; :func:`edgeslim.config.to_data`, untagged)."""
        data: dict[str, Any] = to_data(self, tagged=False)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PackConfig:
        """Inverse of :meth:`to_dict`; unknown keys and values of the wrong type are refused (a ConfigError)."""
        return from_data(data, cls)


__all__ = ["Init", "PackConfig"]
