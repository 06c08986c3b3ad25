"""``edgeslim export``: write a verified ONNX or TFLite artefact of a model."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from edgeslim.cli.common import console, emit_json, load_model_arg


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command("export")(export_cmd)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr (converters print from C++ too), so stdout ends in JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def export_cmd(
    model: Annotated[str, typer.Option(help="Model name (resnet18-fmnist, mobilenet_v2-fmnist, torchvision name) or an edgeslim-saved .pt file")],
    out: Annotated[Path, typer.Option(help="Output file (.onnx / .tflite)")],
    format: Annotated[str, typer.Option("--format", help="onnx | tflite")] = "onnx",
    quant: Annotated[str, typer.Option(help="fp32 | fp16 | dynamic | int8 | w8a16 (16x8) | log2:N | codebook:N")] = "fp32",
    layout: Annotated[str, typer.Option(help="Input layout: nchw (default) | nhwc (TFLite only)")] = "nchw",
    activations: Annotated[str, typer.Option(help="ONNX int8 activations: u8s8 (fastest in ORT on x86) | s8s8")] = "u8s8",
    io_dtype: Annotated[str, typer.Option("--io-dtype", help="TFLite int8 model input/output: float | int8 (carries scale/zero point)")] = "float",
    method: Annotated[str, typer.Option(help="auto | runtime (ORT/ai-edge-quantizer) | edgeslim (edgeslim.quantize PT2E first)")] = "auto",
    calibration_size: Annotated[int, typer.Option("--calibration-size", help="Real training images for calibration")] = 256,
    input_size: Annotated[int, typer.Option("--input-size", help="Input resolution (H = W)")] = 32,
    batch: Annotated[int, typer.Option(help="Example batch size (fixed batch of TFLite; ONNX batch is dynamic)")] = 1,
    verify: Annotated[bool, typer.Option(help="Run the artefact on real test images and compare with PyTorch")] = True,
    verify_samples: Annotated[int, typer.Option("--verify-samples", help="Test images used by the verification")] = 256,
    optimized_copy: Annotated[bool, typer.Option("--optimized-copy", help="ONNX: also write an ORT graph-optimised copy")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite an existing output file")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON summary as the last stdout line")] = False,
) -> None:
    """Export MODEL to OUT in FORMAT, quantized as QUANT, and verify it in its runtime."""
    import torch

    from edgeslim.exporters import OutputExistsError, export

    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists; pass --force to overwrite it")
    net, source = load_model_arg(model)
    x = torch.randn(batch, 3, input_size, input_size)
    console.print(f"exporting {source} to {format} ({quant}) → {out}")
    with _stdout_to_stderr():
        result = export(
            net, format, out, x, quant=quant, verify=verify, overwrite=force, layout=layout, activations=activations,
            io_dtype=io_dtype, method=method, calibration_size=calibration_size, verify_samples=verify_samples,
            optimized_copy=optimized_copy,
        )
    summary = {"model": source, **result.to_dict()}
    v = result.verification
    console.print(
        f"[green]wrote[/] {result.path} ({result.bytes / 2**20:.2f} MiB, {result.format} {result.quant}, "
        f"input {result.input['dtype']} {result.input['shape']} {result.layout})"
        + (f"; verified: {v}" if v else "; not verified"),
        highlight=False,
    )
    if json_:
        emit_json(summary)
