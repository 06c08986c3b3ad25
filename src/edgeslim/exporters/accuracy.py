"""Verification against the float ancestor: is the artefact still accurate, not only faithful?

Fidelity (:mod:`~edgeslim.exporters.verify`) compares the artefact with the graph it was built
from; a faithfully exported 4-bit model can still have lost 17 points. :func:`check_accuracy`
runs the artefact in its runtime on labelled images and compares its top-1 with the float
model it descends from, on the same images — measured here when the float model is at hand,
or taken from the saved file's lineage, where it was measured on the same images when the
model was quantized. A drop larger than ``max_drop`` points raises
:class:`~edgeslim.exporters.errors.ExportAccuracyError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgeslim.config import serializable, to_data
from edgeslim.exporters.base import Runner, resize
from edgeslim.exporters.errors import ExportAccuracyError
from edgeslim.exporters.verify import top1 as runner_top1
from edgeslim.train import count_top1


@serializable()
@dataclass(frozen=True)
class AccuracyCheck:
    """The artefact's top-1 next to its float ancestor's, on the same labelled images.

    Attributes:
        images: Images evaluated (``eval_key`` names them).
        eval_key: ``dataset/split/count@HxW`` of the images.
        top1_float: The float ancestor's top-1 (fraction), or None when unknown.
        top1_artefact: The artefact's top-1 in its runtime (fraction).
        float_source: Where ``top1_float`` comes from (``measured`` or ``lineage``).
        drop_pt: ``100 * (top1_float - top1_artefact)`` (None without a float top-1).
        max_drop_pt: The allowed drop (None: not enforced).
        passed: False only when the drop exceeds the allowed one.
    """

    images: int
    eval_key: str
    top1_float: float | None
    top1_artefact: float
    float_source: str | None
    drop_pt: float | None
    max_drop_pt: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (:func:`edgeslim.config.to_data`, untagged)."""
        data: dict[str, Any] = to_data(self, tagged=False)
        return data

    def __str__(self) -> str:
        art = f"{100 * self.top1_artefact:.2f} %"
        if self.top1_float is None:
            return f"top-1 {art} on {self.eval_key} (float ancestor unknown)"
        return f"top-1 {art} vs float {100 * self.top1_float:.2f} % on {self.eval_key} (drop {self.drop_pt:.2f} pt)"


def eval_key(name: str, shape: tuple[int, ...], count: int) -> str:
    """The name of an evaluation set, e.g. ``fashion-mnist/test[:2000]@32x32`` (the first ``count`` images)."""
    return f"{name}[:{count}]@{shape[-2]}x{shape[-1]}"


def labelled_batches(loader: Iterable[Any], shape: tuple[int, ...], limit: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``limit`` ``(images, labels)`` of ``loader``, images resized to ``shape``."""
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    seen = 0
    for images, labels in loader:
        keep = min(len(labels), limit - seen)
        out.append((resize(images[:keep], shape), labels[:keep]))
        seen += keep
        if seen >= limit:
            break
    return out


def torch_top1(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 of a PyTorch model over labelled batches (:func:`edgeslim.train.count_top1`, the model run as it is)."""
    return count_top1(model, batches).accuracy


def check_accuracy(
    runner: Runner,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    key: str,
    *,
    float_model: nn.Module | None = None,
    float_top1: float | None = None,
    max_drop: float | None = 1.0,
    what: str = "artefact",
) -> AccuracyCheck:
    """Compare the artefact's top-1 with its float ancestor's on ``batches``.

    Args:
        runner: The artefact in its runtime.
        batches: Labelled images (the same ones the float top-1 refers to).
        key: Their :func:`eval_key`.
        float_model: The float ancestor (measured here); else ``float_top1`` is used.
        float_top1: The ancestor's top-1 on the same images (from the saved lineage).
        max_drop: Allowed drop in points; None: report only.
        what: The artefact's name in the error message.

    Raises:
        ExportAccuracyError: The drop exceeds ``max_drop`` (the message names both top-1s).
    """
    images = sum(len(y) for _, y in batches)
    art = runner_top1(runner, batches)  # the same count as verify.top1, over the given batches
    source: str | None = None
    if float_model is not None:
        float_top1, source = torch_top1(float_model, batches), "measured"
    elif float_top1 is not None:
        source = "lineage"
    drop = None if float_top1 is None else 100.0 * (float_top1 - art)
    ok = drop is None or max_drop is None or drop <= max_drop
    check = AccuracyCheck(images, key, float_top1, art, source, drop, max_drop, ok)
    if not ok:
        assert float_top1 is not None and drop is not None
        raise ExportAccuracyError(
            f"{what} loses {drop:.2f} pt of top-1 accuracy against its float ancestor: {100 * art:.2f} % vs "
            f"{100 * float_top1:.2f} % ({source}) on {images} images ({key}), more than the allowed drop of "
            f"{max_drop:g} pt. The artefact was not written. Use a gentler scheme (more bits, int8, w8a16), QAT "
            "(edgeslim quantize --qat-epochs), or accept the drop with --max-drop.",
            check,
        )
    return check


__all__ = ["AccuracyCheck", "check_accuracy", "eval_key", "labelled_batches", "torch_top1"]
