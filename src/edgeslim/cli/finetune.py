"""``edgeslim finetune``: fine-tune a (pruned) model, or train it with QAT, on one process or under ``torchrun``.

Single process::

    edgeslim finetune --model pruned/model.pt --epochs 1 --teacher ancestor --out ft --json

Several processes / machines (DDP; gloo on the CPU, NCCL on GPUs; ``DistributedSampler``)::

    torchrun --standalone --nproc_per_node 2 -m edgeslim.cli finetune --model M --data D --epochs E --out OUT --json

Every rank loads the input and the check that all ranks hold the same model (structure and
weights sha256) runs before training; DDP keeps the weights in sync and a second check proves
the final weights agree. Rank 0 evaluates with the others (the evaluation split is sharded),
saves ``OUT/model.pt`` and prints the JSON line; the other ranks print only their log lines
(on stderr). ``weights_sha256`` is :func:`edgeslim.io.state_sha256` of the final model's
state_dict: with ``--qat``, of the converted graph the ranks agree on (the saved file stores its
integer weights, so a reloaded file hashes differently).

The work is :func:`edgeslim.pipelines.finetune_job.finetune_job` (callable from Python, and what
``launcher: torchrun`` recipes run); this command resolves its arguments, saves and prints.
"""

from __future__ import annotations

import copy
import json
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
    ModelArg,
    SeedOpt,
    StdOpt,
    WeightsOpt,
    console,
    emit_json,
    progress,
    refuse_existing_outputs,
    resolve_data,
    resolve_model,
    stdout_to_stderr,
)

MODEL_FILE = "model.pt"
SUMMARY_FILE = "summary.json"
#: ``--teacher ancestor``: the first float model of the input's lineage.
ANCESTOR = "ancestor"


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command("finetune")(finetune_cmd)


def finetune_cmd(
    model: Annotated[str, typer.Option(help="An edgeslim .pt (from prune, or a float model), a bundled name, a torchvision name, or your factory FILE.py:build / package.module:build")],
    out: Annotated[Path, typer.Option(help="Output folder (model.pt, summary.json)")],
    epochs: Annotated[float, typer.Option(help="Epochs over the training split (fractions allowed)")] = 1.0,
    lr: Annotated[float, typer.Option(help="Peak learning rate (one-cycle SGD; QAT: cosine decay)")] = 0.01,
    batch_size: Annotated[int, typer.Option(help="Batch size per process")] = 64,
    teacher: Annotated[str | None, typer.Option(help=f"Distil from this model: '{ANCESTOR}' (the input's float ancestor, from its lineage) or any --model value")] = None,
    teacher_weights: Annotated[Path | None, typer.Option("--teacher-weights", help="A state_dict for a --teacher factory/torchvision name")] = None,
    qat: Annotated[str | None, typer.Option(help="Quantization-aware training with this scheme (int8, w8a16 ...): saves a quantized model")] = None,
    target: Annotated[str | None, typer.Option(help="Prune on every rank first (ratio=0.5, params=0.5 ...; uniform allocation), checked identical across ranks")] = None,
    criterion: Annotated[str, typer.Option(help="Importance criterion of --target (l1, l2, taylor ...)")] = "l1",
    eval_limit: Annotated[int, typer.Option(help="Evaluate top-1 before/after on the first N evaluation images")] = 10000,
    weights: WeightsOpt = None,
    data: DataOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    data_dir: DataDirOpt = None,
    input_size: Annotated[int, typer.Option(help="Input resolution (and of imagefolder/npz images)")] = 32,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Fine-tune MODEL (or train it with --qat); under torchrun on every process with DDP."""
    from edgeslim import distributed

    if epochs <= 0:
        raise typer.BadParameter(f"must be > 0, got {epochs}", param_hint="--epochs")
    if batch_size < 1:
        raise typer.BadParameter(f"must be >= 1, got {batch_size}", param_hint="--batch-size")
    refuse_existing_outputs(out, [MODEL_FILE, SUMMARY_FILE], force)
    distributed.init_from_env()
    try:
        with stdout_to_stderr():  # stdout carries only rank 0's JSON line
            summary = _run(model, out, epochs=epochs, lr=lr, batch_size=batch_size, teacher=teacher,
                           teacher_weights=teacher_weights, qat=qat, target=target, criterion=criterion,
                           eval_limit=eval_limit, weights=weights,
                           data=data, mean=mean, std=std, data_dir=data_dir, input_size=input_size, seed=seed,
                           device=device)
        distributed.barrier()
    finally:
        distributed.destroy()
    if summary is not None and json_:
        emit_json(summary)


def _run(model: str, out: Path, *, epochs: float, lr: float, batch_size: int, teacher: str | None,
         teacher_weights: Path | None, qat: str | None, target: str | None, criterion: str, eval_limit: int,
         weights: Path | None, data: str | None, mean: str | None, std: str | None, data_dir: Path | None,
         input_size: int, seed: int, device: str) -> dict[str, Any] | None:
    """Resolve the arguments, run :func:`~edgeslim.pipelines.finetune_job.finetune_job`; rank 0 saves and returns the summary."""
    import torch

    from edgeslim import distributed
    from edgeslim.exporters.accuracy import eval_key
    from edgeslim.lineage import extend
    from edgeslim.pipelines.finetune_job import finetune_job
    from edgeslim.train import resolve_torch_device

    dev = resolve_torch_device(device)  # fails before any work
    config = prune_config = None
    if qat is not None:
        from edgeslim.plugin.quantization import QuantConfig

        config = QuantConfig.from_spec(qat)
    if target is not None:
        prune_config = _prune_config(target, criterion)
    torch.manual_seed(seed)
    ds = resolve_data(data, data_dir=data_dir, input_size=input_size, mean=mean, std=std)
    arg = resolve_model(model, weights)
    if arg.kind == "quantized":
        raise typer.BadParameter(f"{model} is a quantized model (integer weights): fine-tune its float ancestor, "
                                 "with --qat SCHEME for quantization-aware training", param_hint="--model")
    net = arg.obj
    x = ds.example(input_size, 2, random=False)
    ds.check_fits(net, x)
    ds.warn_if_foreign(arg, "fine-tune and evaluation")
    tnet = _teacher(teacher, teacher_weights, arg, net)
    shown: Any = progress() if distributed.is_rank0() else _Quiet()
    with shown as bar:
        task = bar.add_task("QAT" if qat else "fine-tune", total=None)
        run = finetune_job(net, ds.source, x, epochs=epochs, lr=lr, batch_size=batch_size, teacher=tnet, qat=config,
                           prune=prune_config, eval_limit=eval_limit, seed=seed, device=dev, name=arg.source,
                           on_step=lambda s, total: bar.update(task, completed=s, total=total))
    lineage = arg.lineage
    if target is not None:
        lineage = extend(lineage, "prune", sha256=run.pruned_sha256, target=target, criterion=criterion,
                         world_size=run.world_size)
    if not distributed.is_rank0():
        return None
    key = eval_key(ds.source.eval_name, tuple(ds.example(input_size).shape), run.eval_images)
    summary: dict[str, Any] = {
        "model": arg.source, "data": ds.source.name, "mode": "qat" if qat else "float", "scheme": qat,
        **run.summary(), "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "teacher": teacher if tnet is not None else None, "eval_key": key,
    }
    if target is not None:
        summary.update(target=target, criterion=criterion, params_after_prune=run.params_after_prune)
    summary.update(_save(run.final, out, arg, lineage, ds, summary, qat is not None))
    _print_table(summary)
    return summary


class _Quiet:
    """The progress bar of ranks other than 0: nothing shown."""

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def add_task(self, *_: object, **__: object) -> int:
        return 0

    def update(self, *_: object, **__: object) -> None:
        return None


def _prune_config(target: str, criterion: str) -> Any:
    """``--target`` / ``--criterion`` as a uniform-allocation PruneConfig (a bad value names the option)."""
    from edgeslim.errors import ConfigError
    from edgeslim.plugin.pruning import PruneConfig, Target

    try:
        return PruneConfig(criterion=criterion, target=Target.parse(target))
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--target") from None


def _save(final: Any, out: Path, arg: ModelArg, base: list[dict[str, Any]], ds: DataArg, summary: dict[str, Any],
          quantized: bool) -> dict[str, Any]:
    """Rank 0 writes ``OUT/model.pt`` (with lineage) and ``OUT/summary.json``."""
    from edgeslim import io as es_io
    from edgeslim.lineage import extend

    dest = out / MODEL_FILE
    top1 = {summary["eval_key"]: summary["top1_after"]} if ds.measures(arg) else None
    info = {"finetune_epochs": summary["epochs"], "world_size": summary["world_size"], "top1": top1,
            "teacher": summary["teacher"] or None}
    if quantized:
        lineage = extend(base, "quantize", scheme=summary["scheme"], mode="qat", **info)
    else:
        lineage = extend(base, "finetune", source=str(dest), sha256=summary["weights_sha256"], **info)
    out.mkdir(parents=True, exist_ok=True)
    path = es_io.save(final, dest, meta={**summary, "lineage": lineage})
    extra = {"out": str(out), "model_path": str(path), "model_bytes": path.stat().st_size, "rank0_saved": True}
    (out / SUMMARY_FILE).write_text(json.dumps({**summary, **extra, "lineage": lineage}, indent=1, default=str))
    return extra


def _teacher(spec: str | None, weights: Path | None, arg: ModelArg, student: Any) -> Any:
    """The distillation teacher: ``ancestor`` (the input's first float model, sha256-checked) or any --model value."""
    from edgeslim import io as es_io
    from edgeslim.errors import ModelLoadError

    if spec is None:
        return None
    if spec != ANCESTOR:
        return resolve_model(spec, weights).module.eval()
    first = arg.lineage[0] if arg.lineage else None
    if first is None or first.get("step") != "float":
        raise typer.BadParameter(f"{arg.source} records no float ancestor in its lineage; name the teacher "
                                 "(--teacher resnet18-fmnist, --teacher FILE.py:build --teacher-weights W.pt)",
                                 param_hint="--teacher")
    if len(arg.lineage) == 1:
        return copy.deepcopy(student).eval()  # the input is its own float ancestor
    w = first.get("weights")
    anc = resolve_model(str(first["source"]), Path(w) if w else None).module
    if first.get("sha256") and es_io.state_sha256(anc.state_dict()) != first["sha256"]:
        raise ModelLoadError(f"the float ancestor {first['source']} of {arg.source} no longer has the weights its "
                             "lineage records (sha256 differs); name the teacher with --teacher")
    return anc.eval()


def _print_table(s: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"edgeslim finetune ({s['mode']}, world size {s['world_size']})")
    t.add_column("")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    t.add_row(f"top-1 ({s['eval_images']} images)", f"{100 * s['top1_before']:.2f} %", f"{100 * s['top1_after']:.2f} %")
    t.add_row("saved", "", str(s.get("model_path", "")))
    console.print(t)
