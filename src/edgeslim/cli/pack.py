"""``edgeslim pack`` / ``edgeslim unpack``: Deep Compression storage (``.esz`` files)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeslim.cli.common import (
    DataDirOpt,
    DeviceOpt,
    ForceOpt,
    JsonOpt,
    SeedOpt,
    console,
    emit_json,
    progress,
    refuse_existing_outputs,
    resolve_model,
    stdout_to_stderr,
)


def register(app: typer.Typer) -> None:
    """Add the commands to ``app``."""
    app.command("pack")(pack_cmd)
    app.command("unpack")(unpack_cmd)


def pack_cmd(
    model: Annotated[
        str,
        typer.Option(help="Model name (resnet18-fmnist, mobilenet_v2-fmnist) or an edgeslim .pt file of a float model"),
    ],
    out: Annotated[Path, typer.Option(help="The .esz file to write")],
    sparsity: Annotated[
        float, typer.Option(help="Fraction of conv/linear weights removed (split across layers by sensitivity)")
    ] = 0.9,
    mean_bits: Annotated[
        float,
        typer.Option(
            "--mean-bits", help="Size budget: mean code bits per stored weight (bits per layer chosen under it)"
        ),
    ] = 4.0,
    prune_epochs: Annotated[
        float, typer.Option("--prune-epochs", help="Fine-tuning epochs over all pruning steps (fractions allowed)")
    ] = 0.3,
    prune_steps: Annotated[int, typer.Option("--prune-steps", help="Iterations of prune + fine-tune")] = 3,
    quant_epochs: Annotated[
        float, typer.Option("--quant-epochs", help="Centroid fine-tuning epochs (fractions allowed)")
    ] = 0.1,
    init: Annotated[str, typer.Option(help="Centroid initialisation: linear (Han et al.) | density")] = "linear",
    distill: Annotated[
        bool, typer.Option("--distill/--no-distill", help="Fine-tune against the float model's outputs")
    ] = True,
    eval_samples: Annotated[
        int,
        typer.Option("--eval-samples", help="Fashion-MNIST test images for top-1 (10000: the whole test set; 0: skip)"),
    ] = 10000,
    input_size: Annotated[int, typer.Option("--input-size", help="Input resolution (H = W), recorded for unpack")] = 32,
    data_dir: DataDirOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Prune, quantize with trained codebooks and entropy-code MODEL into one .esz file (Deep Compression)."""
    import torch

    from edgeslim.data import calibration_subset, check_root, evaluate, fashion_mnist_loader
    from edgeslim.deep_compression import Init, PackConfig, pack
    from edgeslim.errors import ConfigError
    from edgeslim.train import resolve_torch_device

    if out.suffix != ".esz":
        raise typer.BadParameter(f"{out} does not end in .esz", param_hint="--out")
    refuse_existing_outputs(out.parent, [out.name], force)
    dev = resolve_torch_device(device)  # fine-tunes, centroid training and evaluation run there
    try:
        init_kind = Init(init)
    except ValueError:
        raise ConfigError(f"--init {init!r} is not a centroid initialisation: use linear or density") from None
    config = PackConfig(
        init=init_kind,
        sparsity=sparsity,
        mean_bits=mean_bits,
        prune_epochs=prune_epochs,
        prune_steps=prune_steps,
        quant_epochs=quant_epochs,
        distill=distill,
    )
    check_root(data_dir)
    arg = resolve_model(model)
    if arg.kind == "quantized":
        raise typer.BadParameter(f"{model} is already quantized: pack its float ancestor instead", param_hint="--model")
    if arg.dataset not in (None, "fashion-mnist"):
        raise typer.BadParameter(
            f"{model} was trained on {arg.dataset}; pack fine-tunes on Fashion-MNIST only", param_hint="--model"
        )
    torch.manual_seed(seed)
    train = fashion_mnist_loader("train", batch_size=config.batch_size, root=data_dir, seed=seed)
    heldout = calibration_subset(
        "train", 128 * config.sensitivity_batches, batch_size=128, root=data_dir, seed=seed + 1
    )
    test = fashion_mnist_loader("test", batch_size=500, limit=eval_samples, root=data_dir) if eval_samples > 0 else None
    meta = {"source": arg.source, "dataset": "fashion-mnist", "input_size": input_size, "eval_samples": eval_samples}
    t0 = time.perf_counter()
    with progress() as bar:
        tasks: dict[str, Any] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        result = pack(
            arg.module,
            config,
            path=out,
            train_data=train,
            heldout=heldout,
            overwrite=force,
            eval_fn=(lambda m: evaluate(m, test, device=dev)) if test is not None else None,
            device=dev,
            meta=meta,
            progress=on_progress,
        )
    stages = {s["stage"]: s for s in result.stages}
    summary: dict[str, Any] = {
        "model": arg.source,
        "path": str(result.path),
        "bytes": result.bytes,
        "fp32_bytes": result.fp32_bytes,
        "ratio": result.ratio,
        "top1": stages["entropy"].get("top1"),
        "top1_fp32": stages["fp32"].get("top1"),
        "eval_samples": eval_samples,
        "seconds": round(time.perf_counter() - t0, 1),
        "stages": result.stages,
        "layers": result.layers,
        "init": result.init,
        "config": config.to_dict(),
    }
    top1 = (
        ""
        if summary["top1"] is None
        else f", top-1 {100 * summary['top1']:.2f} % (fp32 {100 * summary['top1_fp32']:.2f} %)"
    )
    console.print(
        f"[green]wrote[/] {out}: {result.bytes:,} bytes, {result.ratio:.1f}x smaller than fp32 ({result.fp32_bytes:,} bytes){top1}",
        highlight=False,
    )
    if json_:
        emit_json(summary)


def unpack_cmd(
    file: Annotated[Path, typer.Argument(help="The .esz file written by `edgeslim pack`")],
    to: Annotated[Path, typer.Option("--to", help="Output: model.pt (edgeslim file) | model.onnx | model.tflite")],
    quant: Annotated[
        str,
        typer.Option(
            help="Precision of .onnx/.tflite: int8 = the packed integers as int8 weights (4-bit codes in ONNX where a "
            "layer has <= 16 levels per channel) with int8 activations calibrated on 512 training images; fp32 = the "
            "codebook values as float weights; any other export precision re-quantizes the unpacked model"
        ),
    ] = "int8",
    eval_samples: Annotated[
        int,
        typer.Option(
            "--eval-samples", help="Test images on which the artefact's top-1 is compared with the unpacked model's"
        ),
    ] = 2000,
    verify: Annotated[
        bool, typer.Option(help="Verify .onnx/.tflite artefacts in their runtime against PyTorch")
    ] = True,
    force: Annotated[bool, typer.Option(help="Overwrite the output file")] = False,
    json_: JsonOpt = False,
) -> None:
    """Rebuild the codebook model of FILE (bit for bit) and write it as .pt, or as an int8 .onnx / .tflite (verified)."""
    from edgeslim.deep_compression import esz, unpack
    from edgeslim.exporters.base import artifact_suffixes

    suffixes = {".pt": "pt", **artifact_suffixes()}  # an edgeslim file, or any registered exporter's artefact
    kind = suffixes.get(to.suffix.lower())
    if kind is None:
        *first, last = suffixes
        raise typer.BadParameter(f"{to}: the output must end in {', '.join(first)} or {last}", param_hint="--to")
    refuse_existing_outputs(to.parent, [to.name], force, param_hint="--to")
    manifest = esz.read(file).manifest  # checks every checksum before anything is built
    model = unpack(file)
    meta = manifest.get("meta", {})
    summary: dict[str, Any] = {"file": str(file), "path": str(to), "format": kind}
    if kind == "pt":
        summary.update(_save_pt(model, to, file, meta))
    elif quant.strip().lower() == "int8":
        summary.update(_export_int8(model, manifest, kind, to, file, meta, eval_samples, verify, force))
    else:
        summary.update(_export(model, kind, to, quant, meta, eval_samples, verify, force))
    console.print(f"[green]wrote[/] {to} ({summary['bytes']:,} bytes) from {file}", highlight=False)
    if json_:
        emit_json(summary)


def _save_pt(model: Any, to: Path, file: Path, meta: dict[str, Any]) -> dict[str, Any]:
    import torch

    from edgeslim import io as es_io

    es_io.save(model, to, meta={"unpacked_from": str(file), **meta})
    back = es_io.load(to)
    exact = all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())
    if not exact:
        to.unlink(missing_ok=True)
        raise es_io.ModelLoadError(f"{to} did not reload bit for bit; nothing was kept")
    return {"bytes": to.stat().st_size, "bit_exact": True}


def _eval_data(meta: dict[str, Any], eval_samples: int) -> dict[str, Any]:
    """Export keywords measuring the artefact's top-1 on Fashion-MNIST test images (the data the file was packed on)."""
    if meta.get("dataset") != "fashion-mnist" or eval_samples <= 0:
        return {}
    from edgeslim.data import fashion_mnist_loader

    return {
        "eval_data": fashion_mnist_loader("test", limit=eval_samples, batch_size=250),
        "eval_name": "fashion-mnist/test",
        "eval_samples": eval_samples,
    }


def _export_int8(
    model: Any,
    manifest: dict[str, Any],
    kind: str,
    to: Path,
    file: Path,
    meta: dict[str, Any],
    eval_samples: int,
    verify: bool,
    force: bool,
) -> dict[str, Any]:
    import torch

    from edgeslim.data import calibration_subset
    from edgeslim.deep_compression.deploy import CALIBRATION_IMAGES, export_unpacked, grid_modules

    grid_modules(manifest, file)  # a file packed without the grid fails here, before any work
    size = int(meta.get("input_size", 32))
    calib = calibration_subset("train", CALIBRATION_IMAGES, batch_size=64, seed=0)
    with stdout_to_stderr():
        return export_unpacked(
            model,
            manifest,
            kind,
            to,
            torch.zeros(1, 3, size, size),
            calibration=calib,
            verify=verify,
            overwrite=force,
            path=file,
            **_eval_data(meta, eval_samples),
        )


def _export(
    model: Any, kind: str, to: Path, quant: str, meta: dict[str, Any], eval_samples: int, verify: bool, force: bool
) -> dict[str, Any]:
    import torch

    from edgeslim.exporters import export

    size = int(meta.get("input_size", 32))
    x = torch.zeros(1, 3, size, size)
    extra = _eval_data(meta, eval_samples)
    with stdout_to_stderr():
        result = export(model, kind, to, x, quant=quant, verify=verify, overwrite=force, **extra)
    d = result.to_dict()
    return {
        "bytes": result.bytes,
        "quant": result.quant,
        "top1_unpacked": d.get("top1_float"),
        "top1_artefact": d.get("top1_artefact"),
        "verification": d.get("verification"),
    }
