"""Where a saved model comes from: the lineage kept in every edgeslim file's header.

``meta["lineage"]`` is a list of steps, oldest first, each a JSON-able dict::

    {"step": "float", "source": "resnet18-fmnist", "sha256": "...", "dataset": "fashion-mnist",
     "top1": {"fashion-mnist/test[:2000]@32x32": 0.9265}}
    {"step": "prune", "source": "out/model.pt", "sha256": "...", "top1": {...}}
    {"step": "quantize", "scheme": "int8", "top1": {...}}

``sha256`` is :func:`edgeslim.io.state_sha256` of a float model's state_dict. ``top1`` maps an
evaluation-set key (``dataset/split[:N]@HxW``) to the top-1 measured on it. The float ancestor of
a quantized model is the last float step (``float``, ``prune``, ``finetune``) before it; export
compares an artefact's top-1 with that ancestor's on the same images.
"""

from __future__ import annotations

from typing import Any

#: Steps that produce a float model (weights in float32).
FLOAT_STEPS = ("float", "prune", "finetune")


def lineage_of(meta: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The lineage list of a saved file's ``meta`` (empty when absent)."""
    steps = (meta or {}).get("lineage") or []
    return [dict(s) for s in steps if isinstance(s, dict)]


def float_ancestor(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last float step of a lineage (the model a quantized one was quantized from)."""
    return next((s for s in reversed(steps) if s.get("step") in FLOAT_STEPS), None)


def dataset_of(steps: list[dict[str, Any]]) -> str | None:
    """The data set the lineage's first model was trained on, if recorded."""
    return next((str(s["dataset"]) for s in steps if s.get("dataset")), None)


def extend(steps: list[dict[str, Any]], step: str, **info: Any) -> list[dict[str, Any]]:
    """A new lineage: ``steps`` plus one step (``info``: source, sha256, top1, scheme ...)."""
    return [*steps, {"step": step, **{k: v for k, v in info.items() if v is not None}}]


__all__ = ["FLOAT_STEPS", "dataset_of", "extend", "float_ancestor", "lineage_of"]
