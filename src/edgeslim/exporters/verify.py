"""Numerical verification: run the artefact in its own runtime and compare with PyTorch.

The runner (see :class:`~edgeslim.exporters.base.Runner`) is always fed the NCHW float batch
PyTorch gets; it transposes to NHWC and quantizes the input itself when the artefact needs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeslim.config import serializable, to_data
from edgeslim.exporters.base import Runner
from edgeslim.exporters.config import Tolerance
from edgeslim.exporters.errors import ExportVerificationError


@serializable()
@dataclass(frozen=True)
class VerificationReport:
    """How closely an artefact reproduces the PyTorch model on real inputs.

    Attributes:
        samples: Number of inputs compared.
        max_abs_error: Largest absolute output difference.
        mean_abs_error: Mean absolute output difference.
        rel_max_abs_error: ``max_abs_error`` divided by the range of the reference outputs.
        cosine: Mean cosine similarity of the per-sample output vectors.
        top1_agreement: Fraction of samples whose arg-max agrees.
        tolerance: The thresholds applied.
        passed: Whether every threshold held.
        decisive_samples: Samples whose reference top-1/top-2 margin is larger than the typical
            error (the median over samples of the per-sample max|Δ|, at most 2 % of the
            reference outputs' range); on the others (near-ties) any numerical noise may flip
            the arg-max.
        decisive_top1_agreement: Top-1 agreement over the decisive samples (``None`` if none).
    """

    samples: int
    max_abs_error: float
    mean_abs_error: float
    rel_max_abs_error: float
    cosine: float
    top1_agreement: float
    tolerance: Tolerance
    passed: bool
    decisive_samples: int = 0
    decisive_top1_agreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (:func:`edgeslim.config.to_data`, untagged)."""
        data: dict[str, Any] = to_data(self, tagged=False)
        return data

    def __str__(self) -> str:
        return (
            f"{self.samples} samples: max|Δ| {self.max_abs_error:.4g} ({self.rel_max_abs_error:.2%} of range), "
            f"cosine {self.cosine:.6f}, top-1 agreement {self.top1_agreement:.2%} "
            + (f"({self.decisive_top1_agreement:.2%} of the {self.decisive_samples} samples that are not near-ties)"
               if self.decisive_top1_agreement is not None else "(every sample a near-tie)")
        )


#: Largest reference top-1/top-2 margin, as a fraction of the reference outputs' range, that
#: counts as a near-tie (a few steps of an 8-bit output quantizer).
NEAR_TIE_SPAN = 0.02


def compare(actual: np.ndarray, reference: np.ndarray, tolerance: Tolerance) -> VerificationReport:
    """Compare two ``(N, ...)`` output arrays.

    Top-1 agreement passes when the raw agreement meets the tolerance, or the agreement over the
    *decisive* samples does. A sample is decisive when the reference's top-1/top-2 margin exceeds
    the typical output error of this batch (the median of the per-sample max|Δ|), capped at
    :data:`NEAR_TIE_SPAN` of the reference outputs' range (so a badly wrong artefact cannot call
    everything a tie): the arg-max of a near-tie flips under any numerical noise (random-weight
    networks are made of them), while a flip of a decisive sample needs an error larger than the
    typical one. When no sample is decisive the reference itself does not pick classes and top-1
    agreement says nothing: the cosine decides. The cosine threshold applies to every sample.

    Args:
        actual: The artefact's outputs.
        reference: PyTorch's outputs.
        tolerance: Thresholds for ``passed``.
    """
    a = actual.reshape(actual.shape[0], -1).astype(np.float64)
    r = reference.reshape(reference.shape[0], -1).astype(np.float64)
    if a.shape != r.shape:
        raise ExportVerificationError(
            f"artefact output shape {actual.shape} differs from PyTorch's {reference.shape}",
            VerificationReport(len(r), float("inf"), float("inf"), float("inf"), 0.0, 0.0, tolerance, False),
        )
    diff = np.abs(a - r)
    span = float(r.max() - r.min()) or 1.0
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(r, axis=1)
    cos = np.sum(a * r, axis=1) / np.where(norms == 0, 1.0, norms)
    cos = np.where(norms == 0, np.where(np.linalg.norm(a - r, axis=1) == 0, 1.0, 0.0), cos)
    same = a.argmax(1) == r.argmax(1)
    agree = float(np.mean(same))
    noise = min(float(np.median(diff.max(axis=1))) if diff.size else 0.0, NEAR_TIE_SPAN * span)
    top2 = np.sort(r, axis=1)[:, -2:] if r.shape[1] >= 2 else np.concatenate([r, r], axis=1)
    decisive = (top2[:, 1] - top2[:, 0]) > noise
    n_decisive = int(decisive.sum())
    agree_decisive = float(np.mean(same[decisive])) if n_decisive else None
    top1_ok = agree >= tolerance.min_top1_agreement or agree_decisive is None or (
        agree_decisive >= tolerance.min_top1_agreement
    )
    max_abs = float(diff.max())
    rel = max_abs / span
    ok = bool(np.isfinite(a).all()) and float(cos.mean()) >= tolerance.min_cosine and top1_ok
    if tolerance.max_abs_error is not None:
        ok = ok and rel <= tolerance.max_abs_error
    return VerificationReport(
        samples=int(r.shape[0]),
        max_abs_error=max_abs,
        mean_abs_error=float(diff.mean()),
        rel_max_abs_error=rel,
        cosine=float(cos.mean()),
        top1_agreement=agree,
        tolerance=tolerance,
        passed=ok,
        decisive_samples=n_decisive,
        decisive_top1_agreement=agree_decisive,
    )


@torch.inference_mode()
def verify(
    runner: Runner,
    reference: nn.Module,
    inputs: Iterable[torch.Tensor],
    tolerance: Tolerance,
    *,
    what: str = "artefact",
    raise_on_failure: bool = True,
) -> VerificationReport:
    """Run ``runner`` and ``reference`` on the same real inputs and compare the outputs.

    Args:
        runner: The artefact loaded in its runtime.
        reference: The PyTorch model it came from.
        inputs: NCHW float batches (real data).
        tolerance: Thresholds for the precision.
        what: Name of the artefact in the error message.
        raise_on_failure: Raise :class:`ExportVerificationError` if a threshold is missed.

    Returns:
        The report.
    """
    got, want = [], []
    for x in inputs:
        got.append(np.asarray(runner(x.numpy()), dtype=np.float32))
        want.append(reference(x).float().numpy())
    if not got:
        raise ExportVerificationError(
            f"no inputs to verify {what} on",
            VerificationReport(0, float("nan"), float("nan"), float("nan"), 0.0, 0.0, tolerance, False),
        )
    ref = np.concatenate(want)
    report = compare(np.concatenate(got), ref, tolerance)
    if len(ref) > 1 and bool(np.all(ref == ref[:1])):
        raise ExportVerificationError(
            f"nothing to verify {what} on: the PyTorch model gives the same output for all {len(ref)} verification "
            "inputs, so any artefact printing that constant would pass; verify with inputs the model tells apart "
            "(real data for a trained model; a random network may need weights at a trained scale), or export with "
            "verify=False",
            report,
        )
    if raise_on_failure and not report.passed:
        raise ExportVerificationError(
            f"{what} does not reproduce the PyTorch model: {report}; required cosine >= "
            f"{tolerance.min_cosine}, top-1 agreement >= {tolerance.min_top1_agreement:.0%} (of all samples, or of "
            "the samples that are not near-ties)"
            + (f", max|Δ| <= {tolerance.max_abs_error:.2%} of range" if tolerance.max_abs_error is not None else "")
            + ". Try a larger calibration set, u8u8/s8s8 ONNX encodings, w8a16, or keep the worst layer in float "
            "(see edgeslim.exporters.layerwise).",
            report,
        )
    return report


def top1(runner: Runner, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], *, limit: int | None = None) -> float:
    """Top-1 accuracy of the artefact, run in its runtime, over ``loader`` (first ``limit`` images)."""
    correct = total = 0
    for images, labels in loader:
        if limit is not None and total >= limit:
            break
        keep = len(labels) if limit is None else limit - total
        out = np.asarray(runner(images[:keep].numpy()))
        correct += int((out.argmax(1) == labels[:keep].numpy()).sum())
        total += int(labels[:keep].numel())
    return correct / total if total else float("nan")


__all__ = ["VerificationReport", "compare", "top1", "verify"]
