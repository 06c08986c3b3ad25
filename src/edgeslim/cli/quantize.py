"""``edgeslim quantize``: PTQ (or QAT) of a model with a scheme, a recipe or a mixed-precision search."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeslim.cli.common import (
    DataArg,
    DataDirOpt,
    DataOpt,
    DeviceOpt,
    ForceOpt,
    JsonOpt,
    MeanOpt,
    SeedOpt,
    StdOpt,
    WeightsOpt,
    console,
    emit_json,
    progress,
    refuse_existing_outputs,
    resolve_data,
    resolve_model,
)

#: The files `edgeslim quantize` writes into --out.
OUTPUTS = ("model.pt", "report.json", "report.md", "sqnr.png")


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command("quantize")(quantize_cmd)


def _fraction(text: str) -> float:
    num, _, den = text.partition("/")
    try:
        return float(num) / float(den) if den else float(num)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not a fraction such as 1/6 or 0.1667", param_hint="--budget") from exc


def quantize_cmd(
    model: Annotated[str, typer.Option(help="Model name (resnet18-fmnist, mobilenet_v2-fmnist, vit-fmnist, torchvision name), an edgeslim .pt file, or your factory FILE.py:build / package.module:build")],
    out: Annotated[Path, typer.Option(help="Output folder (model.pt, report.json, report.md, sqnr.png)")],
    scheme: Annotated[str, typer.Option(help="int8 | int16 | w8a16 | wNaM | log2:BITS | codebook:BITS | pwl:BITS | mixed")] = "int8",
    recipe: Annotated[Path | None, typer.Option(help="A QuantConfig as .json/.yaml (overrides --scheme)")] = None,
    budget: Annotated[str, typer.Option(help="mixed: weight bytes allowed as a fraction of fp32 (1/6, 0.25)")] = "1/6",
    calib: Annotated[int, typer.Option(help="Calibration images drawn (seeded) from the data's training split")] = 512,
    calibrator: Annotated[str, typer.Option(help="mse (default: the clipping range of least error) | minmax | ema | percentile | entropy")] = "mse",
    qat_epochs: Annotated[float, typer.Option("--qat-epochs", help="QAT fine-tuning in epochs (fractions allowed; 0: PTQ)")] = 0.0,
    lr: Annotated[float, typer.Option(help="QAT peak learning rate (SGD, momentum 0.9, cosine decay)")] = 1e-3,
    kd: Annotated[bool, typer.Option("--kd/--no-kd", help="QAT: distil from the float model (half CE, half KL at T=4)")] = True,
    strict: Annotated[bool, typer.Option(help="Fail on ops the quantizer cannot handle instead of leaving them float")] = False,
    eval_: Annotated[bool, typer.Option("--eval", help="Top-1 on the data's whole evaluation split (Fashion-MNIST: test set), fp32 and quantized")] = False,
    weights: WeightsOpt = None,
    data: DataOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    data_dir: DataDirOpt = None,
    input_size: Annotated[int, typer.Option(help="Input resolution for torch.export (and of imagefolder/npz images)")] = 32,
    batch_size: Annotated[int, typer.Option(help="Batch size of calibration/QAT")] = 64,
    eval_samples: Annotated[int, typer.Option("--eval-samples", help="Evaluation images on which the float and quantized top-1 are recorded in the file's lineage (what export compares against)")] = 2000,
    keep_float: Annotated[bool, typer.Option("--keep-float", help="Also store the float weights in model.pt (default: integer weights, scales and structure only)")] = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Quantize MODEL and save it with integer weights (reload with ``edgeslim.load``; export it as it is)."""
    import torch

    from edgeslim import io as es_io
    from edgeslim.data import evaluate
    from edgeslim.lineage import extend
    from edgeslim.plugin.quantization import QuantConfig, convert, prepare_qat, quantize
    from edgeslim.plugin.quantization.qat import train_qat
    from edgeslim.train import resolve_torch_device

    dev = resolve_torch_device(device)  # PTQ calibration, QAT and evaluation run there
    torch.manual_seed(seed)
    dest = out / "model.pt"
    refuse_existing_outputs(out, OUTPUTS, force)
    if calib < 1:
        raise typer.BadParameter("at least one calibration image is needed", param_hint="--calib")
    mixed = recipe is None and scheme.strip().lower() == "mixed"
    config = None
    if recipe is not None:
        config = QuantConfig.from_file(recipe)
    elif not mixed:
        config = QuantConfig.from_spec(scheme, calibrator=calibrator, strict=strict)  # fails before any work
    ds = resolve_data(data, data_dir=data_dir, input_size=input_size, mean=mean, std=std)
    arg = resolve_model(model, weights)
    if arg.kind == "quantized":
        raise typer.BadParameter(f"{model} is already quantized: quantize its float ancestor instead", param_hint="--model")
    net, source = arg.obj, arg.source
    x = ds.example(input_size, 2, random=False)
    ds.check_fits(net, x)
    ds.warn_if_foreign(arg, "calibration" + (" and evaluation" if eval_ else ""))
    cal = ds.source.calibration(calib, batch_size=batch_size, seed=seed)
    summary: dict[str, Any] = {"model": source, "scheme": "recipe" if recipe else scheme, "calib": calib,
                               "data": ds.source.name}
    t0 = time.perf_counter()
    if mixed:
        from edgeslim.plugin.quantization.mixed_precision import search

        console.print(f"mixed-precision search under {budget} of the fp32 weight bytes")
        choice = search(net, x, cal, budget_fraction=_fraction(budget))
        config = choice.config
        summary["mixed_choice"] = choice.choice
        summary["budget_fraction"] = _fraction(budget)
    assert config is not None
    if qat_epochs > 0:
        train = ds.source.train_loader(batch_size, seed=seed)
        steps = max(1, round(qat_epochs * len(train)))
        prepared = prepare_qat(net, x, config)
        with progress() as bar:
            task = bar.add_task("QAT", total=steps)
            teacher = copy.deepcopy(net).eval() if kd else None
            train_qat(prepared, train, steps=steps, lr=lr, teacher=teacher, cosine=True, device=dev,
                      on_step=lambda s, _l: bar.update(task, completed=s))
        result = convert(prepared)
        summary.update(mode="qat", qat_steps=steps, qat_epochs=qat_epochs, qat_lr=lr, qat_kd=kd)
    else:
        console.print(f"PTQ of {source}: {config.name}, {calib} calibration images ({calibrator})")
        result = quantize(net, x, config, calibration=cal, device=dev)
        summary["mode"] = "ptq"
    summary["quantize_seconds"] = round(time.perf_counter() - t0, 2)
    summary["weight_bytes"] = result.weight_bytes
    summary["float_weight_bytes"] = result.report.float_bytes
    sq = result.report.mean_sqnr_db
    summary["mean_sqnr_db"] = sq if sq != float("inf") else None
    summary["left_float"] = result.left_float
    if eval_:
        test = ds.source.eval_loader(500)
        with progress() as bar:
            task = bar.add_task("evaluate fp32 + quantized", total=2)
            summary["top1_fp32"] = evaluate(net, test, device=dev)
            bar.update(task, advance=1)
            summary["top1_quant"] = evaluate(result.model, test, device=dev)
            bar.update(task, advance=1)
        result.report.accuracy = {"top1_fp32": summary["top1_fp32"], "top1_quant": summary["top1_quant"]}
    lineage: list[dict[str, Any]] = arg.lineage
    if ds.measures(arg) and lineage:
        float_top1, quant_top1 = _lineage_top1(net, result.model, x, eval_samples, ds, summary, dev)
        last = lineage[-1]  # the float model quantized here (reference, pruned or fine-tuned)
        lineage = [*lineage[:-1], {**last, "top1": {**last.get("top1", {}), **float_top1}}]
        lineage = extend(lineage, "quantize", scheme=summary["scheme"], mode=summary["mode"], top1=quant_top1)
    out.mkdir(parents=True, exist_ok=True)
    summary["model_path"] = str(es_io.save(result, dest, meta={**summary, "lineage": lineage}, keep_float=keep_float))
    summary["model_bytes"] = dest.stat().st_size
    summary["path"] = summary["model_path"]  # the same key as `edgeslim export --json`
    (out / "report.json").write_text(json.dumps({**summary, "report": result.report.to_dict()}, indent=1, default=str))
    (out / "report.md").write_text(result.report.to_markdown() + "\n")
    result.report.plot(out / "sqnr.png")
    _print_table(summary)
    if json_:
        emit_json(summary)


def _lineage_top1(net: Any, qmodel: Any, x: Any, n: int, ds: DataArg, summary: dict[str, Any],
                  device: Any) -> tuple[dict[str, float], dict[str, float]]:
    """Float and quantized top-1 on the first ``n`` evaluation images, keyed as export keys them (lineage)."""
    from edgeslim.exporters.accuracy import eval_key, labelled_batches
    from edgeslim.train import top1_on

    shape = tuple(x.shape)
    batches = labelled_batches(ds.source.eval_loader(250, limit=n), shape, n)
    key = eval_key(ds.source.eval_name, shape, sum(len(y) for _, y in batches))
    f, q = top1_on(net, batches, device), top1_on(qmodel, batches, device)
    summary.update(eval_key=key, top1_float=f, top1_quantized=q)
    return {key: f}, {key: q}


def _print_table(s: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"edgeslim quantize ({s['scheme']}, {s['mode']})")
    t.add_column("")
    t.add_column("fp32", justify="right")
    t.add_column("quantized", justify="right")
    t.add_row("weight bytes", f"{s['float_weight_bytes'] / 1e6:.2f} MB", f"{s['weight_bytes'] / 1e6:.2f} MB")
    if "top1_fp32" in s:
        t.add_row("top-1", f"{100 * s['top1_fp32']:.2f} %", f"{100 * s['top1_quant']:.2f} %")
    elif "top1_float" in s:
        t.add_row(f"top-1 ({s['eval_key']})", f"{100 * s['top1_float']:.2f} %", f"{100 * s['top1_quantized']:.2f} %")
    if "model_bytes" in s:
        t.add_row("saved file", "", f"{s['model_bytes'] / 1e6:.2f} MB")
    if s['mean_sqnr_db'] is not None:
        t.add_row("mean weight SQNR", "", f"{s['mean_sqnr_db']:.1f} dB")
    console.print(t)
