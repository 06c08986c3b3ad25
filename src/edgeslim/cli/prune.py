"""``edgeslim prune``: prune a model (optionally fine-tune and evaluate) and save it safely."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgeslim.cli.common import (
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
    count_images,
    emit_json,
    progress,
    refuse_existing_outputs,
    resolve_data,
    resolve_model,
)

if TYPE_CHECKING:
    from edgeslim.plugin.pruning import PruneConfig

MODEL_FILE = "model.pt"
SUMMARY_FILE = "summary.json"
#: Written when the allocation used a sensitivity table.
SENSITIVITY_FILES = ("sensitivity.json", "sensitivity.png")


def output_names(config: PruneConfig) -> list[str]:
    """Every file ``edgeslim prune`` writes into ``--out`` for ``config``.

    Args:
        config: The pruning config the command will run.

    Returns:
        File names relative to ``--out``.
    """
    from edgeslim.plugin.pruning import Allocation, Method, TargetKind

    names = [MODEL_FILE, SUMMARY_FILE]
    if (config.method is not Method.UNSTRUCTURED and config.allocation is Allocation.SENSITIVITY
            and config.target.kind is not TargetKind.RATIO):
        names += SENSITIVITY_FILES
    return names


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command("prune")(prune_cmd)


def prune_cmd(
    model: Annotated[str, typer.Option(help="Model name (resnet18-fmnist, mobilenet_v2-fmnist, vit-fmnist, any torchvision name), an edgeslim .pt file, or your factory FILE.py:build / package.module:build")],
    out: Annotated[Path, typer.Option(help="Output folder (model.pt, summary.json, ...)")],
    criterion: Annotated[str, typer.Option(help="Importance: l1, l2, bn_scale, taylor, activation, apoz, random")] = "l2",
    target: Annotated[str, typer.Option(help="ratio=0.3 | params=0.5 | macs=0.4 | bytes=20MB | sparsity=0.8")] = "params=0.5",
    allocation: Annotated[str, typer.Option(help="uniform | global | sensitivity (default: sensitivity for the Fashion-MNIST models)")] = "",
    method: Annotated[str, typer.Option(help="structured | unstructured | hybrid")] = "structured",
    sparsity: Annotated[float, typer.Option(help="Unstructured sparsity for hybrid/unstructured")] = 0.0,
    round_to: Annotated[int, typer.Option(help="Keep channel counts multiples of this (0: off)")] = 0,
    ignore: Annotated[list[str] | None, typer.Option(help="Module name/regex never pruned (repeatable; default: classifier head)")] = None,
    steps: Annotated[int, typer.Option(help="Iterative pruning steps")] = 1,
    accept_nearest: Annotated[bool, typer.Option(
        "--accept-nearest", help="If the target cannot be met within tolerance, prune to the nearest reachable plan "
                                 "(the summary says target_met: false and nearest) instead of failing")] = False,
    finetune_epochs: Annotated[float, typer.Option("--finetune-epochs", help="Fine-tune epochs after pruning (0: none)")] = 0.0,
    lr: Annotated[float, typer.Option(help="Peak fine-tune learning rate")] = 0.02,
    distill: Annotated[bool, typer.Option(help="Distil from the unpruned model while fine-tuning")] = True,
    eval_: Annotated[bool, typer.Option("--eval", help="Top-1 on the data's evaluation split (Fashion-MNIST: test set) before/after")] = False,
    test_limit: Annotated[int, typer.Option(help="Evaluate on the first N evaluation images (10000 = all of Fashion-MNIST's)")] = 10000,
    weights: WeightsOpt = None,
    data: DataOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    data_dir: DataDirOpt = None,
    input_size: Annotated[int, typer.Option(help="Input resolution for tracing/MACs (and of imagefolder/npz images)")] = 32,
    batch_size: Annotated[int, typer.Option(help="Batch size for data passes")] = 128,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Prune MODEL to a target and save it (reload with ``edgeslim.load``)."""
    import torch

    from edgeslim import io as es_io
    from edgeslim.data import evaluate
    from edgeslim.exporters.accuracy import eval_key
    from edgeslim.lineage import extend
    from edgeslim.plugin.pruning import Allocation, Method, PruneConfig, Target, prune
    from edgeslim.plugin.pruning.finetune import finetune
    from edgeslim.train import resolve_torch_device

    dev = resolve_torch_device(device)  # evaluation and fine-tuning run there; fails before any work
    torch.manual_seed(seed)
    dest = out / MODEL_FILE
    is_reference = model.endswith("-fmnist")
    alloc = allocation or ("sensitivity" if is_reference else "uniform")
    config = PruneConfig(
        method=Method(method), criterion=criterion, target=Target.parse(target), allocation=Allocation(alloc),
        sparsity=sparsity, round_to=round_to or None, iterative_steps=steps,
        ignored_layers=tuple(ignore) if ignore else None, accept_nearest=accept_nearest,
    )
    refuse_existing_outputs(out, output_names(config), force)
    needs_data = eval_ or finetune_epochs > 0 or alloc == "sensitivity" or criterion in ("taylor", "activation", "apoz", "gradient")
    # given --data is checked (and sets the example's channels) even when no step reads it
    use_data = needs_data or data is not None
    ds = resolve_data(data, data_dir=data_dir, input_size=input_size, mean=mean, std=std) if use_data else None
    arg = resolve_model(model, weights)
    if arg.kind == "quantized":
        raise typer.BadParameter(f"{model} is a quantized model: prune its float ancestor instead", param_hint="--model")
    net, source = arg.obj, arg.source
    x = ds.example(input_size) if ds is not None else torch.randn(1, 3, input_size, input_size)
    if ds is not None:
        ds.check_fits(net, x)
        ds.warn_if_foreign(arg, "data-driven steps")
    summary: dict[str, Any] = {"model": source}
    if ds is not None:
        summary["data"] = ds.source.name
    train = ds.source.train_loader(batch_size, augment=True, seed=seed) if ds is not None and needs_data else None
    test = ds.source.eval_loader(500, limit=test_limit) if eval_ and ds is not None else None
    if test is not None:
        summary["top1_before"] = evaluate(net, test, device=dev)
    t0 = time.perf_counter()
    console.print(f"pruning {source}: {criterion}, {target}, {alloc} allocation, {method}")
    stats_data = ds.source.train_loader(batch_size, seed=seed + 1) if ds is not None and needs_data else None
    result = prune(net, x, config, data=stats_data)
    summary["prune_seconds"] = time.perf_counter() - t0
    summary.update(result.summary())
    if summary["left_whole"]:
        names = [d["module"] for d in summary["left_whole"]]
        console.print(f"left whole: {len(names)} layers ({', '.join(names[:6])}{' ...' if len(names) > 6 else ''}); "
                      "reasons in summary.json", highlight=False)
    widened = summary.get("embed_dim")
    if widened is not None:
        console.print(f"embedding width narrowed too: {target} is out of reach with it whole (nearest "
                      f"{widened['nearest_whole']:.3f}); transformer.embed_dim=false keeps it whole", highlight=False)
    nearest = summary.get("nearest")
    if nearest is not None:
        kept = (f"{nearest['value'] / 1e6:.2f} MB" if nearest["kind"] == "bytes"
                else f"{nearest['value']:.3f} of the original {nearest['kind']}")
        console.print(f"target {target} not met: pruned to the nearest reachable plan, which keeps {kept} "
                      "(--accept-nearest)", highlight=False)
    if test is not None:
        summary["top1_pruned"] = evaluate(result.model, test, device=dev)
    if finetune_epochs > 0 and train is not None:
        with progress() as bar:
            task = bar.add_task("fine-tune", total=round(finetune_epochs * len(train)))
            ft = finetune(
                result.model, train, epochs=finetune_epochs, lr=lr, teacher=net if distill else None,
                masks=result.masks, device=dev, on_step=lambda s, _t, _l: bar.update(task, completed=s),
            )
        summary["finetune_seconds"] = ft.seconds
        summary["finetune_epochs"] = finetune_epochs
    if result.masks is not None:
        result.masks.make_permanent()
    if test is not None:
        summary["top1_after"] = evaluate(result.model, test, device=dev)
    out.mkdir(parents=True, exist_ok=True)
    top1 = {}
    if test is not None and ds is not None and ds.measures(arg):
        top1[eval_key(ds.source.eval_name, tuple(x.shape), count_images(test))] = summary["top1_after"]
    lineage = extend(arg.lineage, "prune", source=str(dest), sha256=es_io.state_sha256(result.model.state_dict()),
                     target=target, criterion=criterion, finetune_epochs=finetune_epochs or None, top1=top1 or None)
    meta = {**{k: v for k, v in summary.items() if k != "config"}, "lineage": lineage}
    summary["model_path"] = str(es_io.save(result.model, dest, meta=meta))
    if result.sensitivity is not None:
        result.sensitivity.save(out / SENSITIVITY_FILES[0])
        result.sensitivity.plot(out / SENSITIVITY_FILES[1])
    (out / SUMMARY_FILE).write_text(json.dumps({**summary, "layers": result.layers}, indent=1, default=str))
    _print_table(summary)
    if json_:
        emit_json(summary)


def _print_table(s: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title="edgeslim prune")
    t.add_column("")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    t.add_row("params", f"{s['params_before']:,}", f"{s['params_after']:,}")
    t.add_row("MACs", f"{s['macs_before']:,}", f"{s['macs_after']:,}")
    t.add_row("fp32 bytes", f"{s['bytes_before'] / 1e6:.2f} MB", f"{s['bytes_after'] / 1e6:.2f} MB")
    if "top1_before" in s:
        t.add_row("top-1", f"{100 * s['top1_before']:.2f} %", f"{100 * s['top1_after']:.2f} %")
    console.print(t)
