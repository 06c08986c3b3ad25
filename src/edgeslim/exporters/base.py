"""The exporter protocol, its registry, and what every exporter shares.

An exporter is ONE file that registers a class with :data:`EXPORTERS`::

    @EXPORTERS.register("onnx")
    class OnnxExporter:
        suffix = ".onnx"
        def check(self, job): ...       # refuse unsupported options before any work
        def write(self, job, dest): ...  # write the artefact to ``dest`` (a temporary path)
        def open(self, path, job): ...   # a Runner over the artefact in its own runtime
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from edgeslim.exporters.config import ExportOptions, Layout
from edgeslim.exporters.errors import UnsupportedOpError
from edgeslim.registry import Registry


class Runner(Protocol):
    """A loaded artefact: NCHW float32 batch in, float32 outputs (logits) out.

    The runner hides the artefact's layout (NHWC), fixed batch size and quantized I/O, so
    verification and evaluation always feed what PyTorch is fed.
    """

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run a batch ``x`` of shape ``(N, C, H, W)``; returns ``(N, ...)`` float32."""
        ...


@dataclass
class ExportJob:
    """One export request, after the model has been unwrapped.

    Attributes:
        model: The model to export (eager, or a PT2E-converted GraphModule).
        example: One example input, NCHW, batch as given by the user.
        options: The export options.
        calibration: Real calibration batches (NCHW float), already sized like ``example``.
        coded_weights: ``{module name: CodedWeight}`` of log2/codebook models.
        prequantized: True when ``model`` is already quantized (Q/DQ ops inside).
        metadata: What the exporter wants reported (route, runtime settings ...).
    """

    model: nn.Module
    example: torch.Tensor
    options: ExportOptions
    calibration: list[torch.Tensor] = field(default_factory=list)
    coded_weights: dict[str, Any] = field(default_factory=dict)
    prequantized: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)


class Exporter(Protocol):
    """What a registered exporter implements."""

    suffix: str

    def check(self, job: ExportJob) -> None:
        """Raise :class:`~edgeslim.exporters.errors.ExportConfigError` for unsupported options."""
        ...

    def write(self, job: ExportJob, dest: Path) -> None:
        """Write the artefact to ``dest``; may add entries to ``job.metadata``."""
        ...

    def open(self, path: Path, job: ExportJob | None = None) -> Runner:
        """Load ``path`` in the format's runtime."""
        ...


EXPORTERS: Registry[type[Exporter]] = Registry("exporter")


def get_exporter(name: str) -> Exporter:
    """Instantiate the exporter registered as ``name``.

    The built-in exporters register themselves when their module is imported, which the
    package ``edgeslim.exporters`` does (Python runs it before this module); third-party
    ones come from the ``edgeslim.plugins`` entry points. Nothing is imported from here.
    """
    return EXPORTERS.get(name)()


def format_for_suffix(suffix: str) -> str | None:
    """The registered exporter format whose artefacts end in ``suffix`` (``".onnx"`` -> ``"onnx"``); None if none."""
    for name in EXPORTERS.names():
        if EXPORTERS.get(name).suffix == suffix.lower():
            return name
    return None


def artifact_suffixes() -> dict[str, str]:
    """Every registered exporter's artefact suffix -> its format (``{".onnx": "onnx", ...}``), sorted by format."""
    return {EXPORTERS.get(name).suffix: name for name in EXPORTERS.names()}


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send converters' progress chatter (printed on stdout) to stderr.

    ``torch.onnx.export`` and litert-torch print progress on stdout; the CLI keeps stdout
    for its JSON summary.
    """
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        text = buf.getvalue()
        if text:
            sys.stderr.write(text)


def locate_op(model: nn.Module, example: torch.Tensor, op: str) -> str | None:
    """The qualified name of the module that calls ``op`` (e.g. ``aten.grid_sampler_2d``), via ``torch.export``."""
    try:
        ep = torch.export.export(model, (example,))
        graphs = [ep.graph]
        graphs.append(ep.run_decompositions().graph)
    except Exception:
        if "ep" not in locals():
            return None
    short = re.split(r"::|\.", op)[1] if re.search(r"::|\.", op) else op
    for graph in graphs:
        for node in graph.nodes:
            if node.op == "call_function" and re.search(rf"\b{re.escape(short)}\b", str(node.target)):
                return node_module(node)
    return None


def node_module(node: Any) -> str:
    """The qualified name of the module an FX node was traced in (``<top-level>`` if none)."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, _ = list(stack.values())[-1]
        return str(path) or "<top-level>"
    return "<top-level>"


def raise_unsupported(exc: Exception, *, job_model: nn.Module, example: torch.Tensor, converter: str, alternative: str) -> None:
    """Re-raise a converter failure that names an aten op as :class:`UnsupportedOpError` (op + module).

    Returns normally when the message names no op (the caller raises its own error then).
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    m = re.search(r"(aten(?:::|\.)[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)", text)
    if not m:
        return
    op = m.group(1)
    module = locate_op(job_model, example, op)
    first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
    raise UnsupportedOpError(
        f"{converter} cannot handle op {op} in module {module or 'unknown'}: {first}. "
        f"Replace that layer with a supported one, or try {alternative}",
        op=op,
        module=module,
    ) from exc


def to_layout(x: np.ndarray, layout: Layout) -> np.ndarray:
    """Turn an NCHW batch into ``layout`` (4-D inputs only; others are returned unchanged)."""
    if layout is Layout.NHWC and x.ndim == 4:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return x


def is_prequantized(model: nn.Module) -> bool:
    """True if ``model`` is a graph that already contains quantize/dequantize ops (PT2E-converted)."""
    graph = getattr(model, "graph", None)
    if graph is None:
        return False
    for node in graph.nodes:
        target = str(getattr(node, "target", ""))
        if node.op == "call_function" and ("quantize_per" in target or "dequantize_per" in target):
            return True
    return False


def fashion_inputs(shape: tuple[int, ...], n: int, *, split: str = "test") -> list[torch.Tensor]:
    """Real Fashion-MNIST images (reference preprocessing) resized to ``shape`` (``(N, 3, H, W)``).

    Test images are the first ``n``; train images a seeded random subset (for calibration).
    Batches have 64 images (runners split them into a fixed-batch artefact's batch size; the
    PyTorch reference of a quantized graph dequantizes its weights once per call, so batch 1
    would cost ~50x more).

    Raises:
        edgeslim.errors.DataError: The data set is not installed.
    """
    from edgeslim.data import calibration_subset, fashion_mnist_loader

    batch = 64
    loader = (
        fashion_mnist_loader("test", limit=n, batch_size=batch)
        if split == "test"
        else calibration_subset("train", n, batch_size=batch)
    )
    out: list[torch.Tensor] = []
    for images, _ in loader:
        out.append(resize(images, shape))
    return out


def resize(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Bilinearly resize an NCHW batch to ``shape[2:]`` (unchanged if it already has that size)."""
    if tuple(x.shape[2:]) != tuple(shape[2:]):
        x = torch.nn.functional.interpolate(x, size=tuple(shape[2:]), mode="bilinear", align_corners=False)
    return x.contiguous()


def batches_from(data: Any, shape: tuple[int, ...], n: int) -> list[torch.Tensor]:
    """Normalise user data (a tensor, a list of tensors or a loader of ``(x, y)``) into batches."""
    if isinstance(data, torch.Tensor):
        return [data[i : i + 64] for i in range(0, min(len(data), n), 64)]
    out: list[torch.Tensor] = []
    seen = 0
    for item in data:
        x = resize(item[0] if isinstance(item, (tuple, list)) else item, shape)
        out.append(x[: n - seen])
        seen += len(out[-1])
        if seen >= n:
            break
    return out


__all__ = [
    "EXPORTERS",
    "ExportJob",
    "Exporter",
    "Runner",
    "batches_from",
    "fashion_inputs",
    "get_exporter",
    "is_prequantized",
    "locate_op",
    "node_module",
    "quiet_stdout",
    "raise_unsupported",
    "resize",
    "to_layout",
]
