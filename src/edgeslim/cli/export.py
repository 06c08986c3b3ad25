"""``edgeslim export``: write a verified ONNX or TFLite artefact of a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgeslim.cli.common import (
    DataArg,
    DataDirOpt,
    DataOpt,
    MeanOpt,
    ModelArg,
    StdOpt,
    WeightsOpt,
    console,
    count_images,
    emit_json,
    refuse_existing_outputs,
    resolve_data,
    resolve_model,
    stdout_to_stderr,
)


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command("export")(export_cmd)


def export_cmd(
    model: Annotated[str, typer.Option(help="Model name (resnet18-fmnist, mobilenet_v2-fmnist, vit-fmnist, torchvision name), an edgeslim-saved .pt file (a quantized one is exported as it is), or your factory FILE.py:build / package.module:build")],
    out: Annotated[Path, typer.Option(help="Output file (.onnx / .tflite / .engine)")],
    format: Annotated[str, typer.Option("--format", help="onnx | tflite | tensorrt (needs an NVIDIA GPU and the tensorrt package)")] = "onnx",
    quant: Annotated[str | None, typer.Option(help="fp32 | fp16 | dynamic | int8 | w8a16 (16x8) | int16 | log2:N | codebook:N | pwl:N; default: the model's own quantization (fp32 for a float model)")] = None,
    layout: Annotated[str, typer.Option(help="Input layout: nchw (default) | nhwc (TFLite only)")] = "nchw",
    activations: Annotated[str, typer.Option(help="ONNX int8 encoding: auto (u8u8 on x86 without VNNI, else u8s8) | u8s8 (fastest in ORT on x86) | s8s8 | u8u8")] = "auto",
    io_dtype: Annotated[str, typer.Option("--io-dtype", help="TFLite int8 model input/output: float | int8 (carries scale/zero point)")] = "float",
    method: Annotated[str, typer.Option(help="auto | runtime (ORT/ai-edge-quantizer) | edgeslim (edgeslim.quantize PT2E first)")] = "auto",
    calibration_size: Annotated[int, typer.Option("--calibration-size", help="Real training images for calibration (from --data; default Fashion-MNIST)")] = 256,
    input_size: Annotated[int, typer.Option("--input-size", help="Input resolution (H = W)")] = 32,
    batch: Annotated[int, typer.Option(help="Example batch size (fixed batch of TFLite; ONNX batch is dynamic)")] = 1,
    verify: Annotated[bool, typer.Option(help="Run the artefact on real test images and compare with PyTorch")] = True,
    verify_samples: Annotated[int, typer.Option("--verify-samples", help="Test images used by the verification")] = 256,
    eval_samples: Annotated[int, typer.Option("--eval-samples", help="Labelled test images on which the artefact's top-1 is compared with its float ancestor's")] = 2000,
    max_drop: Annotated[float, typer.Option("--max-drop", help="Fail (and write nothing) when the artefact's top-1 is more than this many points below its float ancestor's")] = 1.0,
    optimized_copy: Annotated[bool, typer.Option("--optimized-copy", help="ONNX: also write an ORT graph-optimised copy")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show the converter's own progress lines (litert-torch)")] = False,
    weights: WeightsOpt = None,
    data: DataOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    data_dir: DataDirOpt = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing output files")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON summary as the last stdout line")] = False,
) -> None:
    """Export MODEL to OUT in FORMAT and verify it in its runtime: against PyTorch, and against its float ancestor's top-1."""
    import torch

    from edgeslim.exporters import export
    from edgeslim.exporters.onnx import optimized_copy_path

    if max_drop < 0:
        raise typer.BadParameter(f"{max_drop:g} is negative: give the allowed top-1 drop in points (e.g. 1.0)", param_hint="--max-drop")
    if eval_samples < 1:
        raise typer.BadParameter("at least one image is needed", param_hint="--eval-samples")
    outputs = [out.name] + ([optimized_copy_path(out).name] if optimized_copy and format == "onnx" else [])
    refuse_existing_outputs(out.parent, outputs, force)
    ds = resolve_data(data, data_dir=data_dir, input_size=input_size, mean=mean, std=std) if data is not None else None
    arg = resolve_model(model, weights)
    x = ds.example(input_size, batch) if ds is not None else torch.randn(batch, 3, input_size, input_size)
    if ds is not None:
        ds.check_fits(arg.module, x)
        accuracy_kwargs = _data_inputs(arg, ds, tuple(x.shape), eval_samples, calibration_size, verify_samples)
    else:
        accuracy_kwargs = _accuracy_inputs(arg, tuple(x.shape), eval_samples)
    label = quant or ("its own quantization" if arg.kind == "quantized" else "fp32")
    console.print(f"exporting {arg.source} to {format} ({label}) → {out}")
    with stdout_to_stderr():
        result = export(
            arg.obj, format, out, x, quant=quant, verify=verify, overwrite=force, layout=layout, activations=activations,
            io_dtype=io_dtype, method=method, calibration_size=calibration_size, verify_samples=verify_samples,
            optimized_copy=optimized_copy, eval_samples=eval_samples, max_drop=max_drop, verbose=verbose,
            **accuracy_kwargs,
        )
    summary = {"model": arg.source, **result.to_dict()}
    v, acc = result.verification, result.accuracy
    console.print(
        f"[green]wrote[/] {result.path} ({result.bytes / 2**20:.2f} MiB, {result.format} {result.quant}, "
        f"input {result.input['dtype']} {result.input['shape']} {result.layout})"
        + (f"; verified: {v}" if v else "; not verified")
        + (f"; {acc}" if acc else "; top-1 not measured (no labelled data known for this model)"),
        highlight=False,
    )
    if json_:
        emit_json(summary)


def _data_inputs(
    arg: ModelArg, ds: DataArg, shape: tuple[int, ...], eval_samples: int, calibration_size: int, verify_samples: int
) -> dict[str, Any]:
    """Calibration, verification and labelled images from ``--data``; the float ancestor's top-1 from the lineage."""
    from edgeslim.exporters.accuracy import eval_key
    from edgeslim.lineage import float_ancestor

    src = ds.source
    eval_data = src.eval_loader(250, limit=eval_samples)
    out: dict[str, Any] = {
        "calibration": src.calibration(calibration_size, seed=0), "verify_inputs": src.eval_loader(64, limit=verify_samples),
        "eval_data": eval_data, "eval_name": src.eval_name,
    }
    if arg.kind == "quantized":
        ancestor = float_ancestor(arg.lineage) or {}
        known = (ancestor.get("top1") or {}).get(eval_key(src.eval_name, shape, count_images(eval_data)))
        if known is None:
            raise typer.BadParameter(
                f"{arg.source} has no float top-1 on {src.eval_name} in its lineage to compare the artefact with: "
                "quantize it with the same --data (it records the float and quantized top-1), or omit --data",
                param_hint="--data",
            )
        out["float_top1"] = float(known)
    return out


def _accuracy_inputs(arg: ModelArg, shape: tuple[int, ...], eval_samples: int) -> dict[str, Any]:
    """``eval_data`` and the float ancestor (model or top-1 from the lineage) for the accuracy check."""
    from edgeslim import models
    from edgeslim.data import fashion_mnist_loader
    from edgeslim.exporters.accuracy import eval_key
    from edgeslim.lineage import float_ancestor

    if arg.dataset != "fashion-mnist":
        return {}
    name = "fashion-mnist/test"
    out: dict[str, Any] = {"eval_data": fashion_mnist_loader("test", limit=eval_samples, batch_size=250), "eval_name": name}
    if arg.kind != "quantized":
        return out  # a float model is its own ancestor: measured by export()
    ancestor = float_ancestor(arg.lineage) or {}
    known = (ancestor.get("top1") or {}).get(eval_key(name, shape, eval_samples))
    if known is not None:
        out["float_top1"] = float(known)
    elif ancestor.get("source") in models.REFERENCES:
        from edgeslim.io import state_sha256

        ref = models.load(str(ancestor["source"]))
        if state_sha256(ref.state_dict()) == ancestor.get("sha256"):
            out["float_model"] = ref
    return out
