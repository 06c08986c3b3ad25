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
"""

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
#: When this process started (log lines give the seconds since).
_START = time.perf_counter()


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command("finetune")(finetune_cmd)


def log(message: str) -> None:
    """A log line on stderr, prefixed with this process's rank (``[rank 1/2]``), ending with the seconds since start."""
    from edgeslim import distributed

    console.print(f"[rank {distributed.rank()}/{distributed.world_size()}] {message} "
                  f"(at {time.perf_counter() - _START:.1f} s)", highlight=False, markup=False, soft_wrap=True)


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
                           data=data, mean=mean, std=std, data_dir=data_dir, input_size=input_size, seed=seed)
        distributed.barrier()
    finally:
        distributed.destroy()
    if summary is not None and json_:
        emit_json(summary)


def _run(model: str, out: Path, *, epochs: float, lr: float, batch_size: int, teacher: str | None,
         teacher_weights: Path | None, qat: str | None, target: str | None, criterion: str, eval_limit: int,
         weights: Path | None, data: str | None,
         mean: str | None, std: str | None, data_dir: Path | None, input_size: int, seed: int) -> dict[str, Any] | None:
    """The work of every rank; returns rank 0's summary (``None`` on the other ranks)."""
    import torch

    from edgeslim import distributed
    from edgeslim.exporters.accuracy import eval_key
    from edgeslim.plugin.pruning.finetune import finetune
    from edgeslim.plugin.pruning.unstructured import Masks, masks_of

    config = None
    if qat is not None:
        from edgeslim.plugin.quantization import QuantConfig

        config = QuantConfig.from_spec(qat)  # fails before any work
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
    world = distributed.world_size()
    digest = distributed.check_same(net, "the input model")  # every rank loaded (pruned) the same model
    log(f"{arg.source}: {sum(p.numel() for p in net.parameters()):,} parameters, sha256 {digest[:16]}"
        + (f"; the same on all {world} ranks" if world > 1 else ""))
    tnet = _teacher(teacher, teacher_weights, arg, net)
    lineage = arg.lineage
    if target is not None:  # every rank prunes; the check proves they pruned identically
        net, lineage = _prune(net, ds, target, criterion, input_size, batch_size, seed, lineage)
    test = ds.source.eval_loader(250, limit=eval_limit)
    top1_before, n_eval = _top1(net, test)
    log(f"top-1 before: {100 * top1_before:.2f} % on {n_eval} evaluation images")
    train = distributed.distributed_sampler(ds.source.train_loader(batch_size, augment=True, seed=seed), seed=seed)
    steps = max(1, round(epochs * len(train)))
    log(f"training {steps} steps of {len(train)} per epoch, batch {batch_size} per rank, world size {world}"
        + (f", QAT {qat}" if qat else ""))
    t0 = time.perf_counter()
    shown: Any = progress() if distributed.is_rank0() else _Quiet()
    with shown as bar:
        task = bar.add_task("QAT" if qat else "fine-tune", total=steps)
        if config is not None:
            from edgeslim.plugin.quantization import convert, prepare_qat
            from edgeslim.plugin.quantization.qat import train_qat

            prepared = prepare_qat(net, x, config)  # net itself: the saved file records its architecture
            train_qat(prepared, train, steps=steps, lr=lr, teacher=tnet, cosine=True, seed=seed,
                      on_step=lambda s, _l: bar.update(task, completed=s))
            final: Any = convert(prepared)
            trained = final.model
        else:
            found = masks_of(net)
            masks = Masks(net, dict(found)) if found else None
            finetune(net, train, epochs=epochs, lr=lr, teacher=tnet, masks=masks, seed=seed,
                     on_step=lambda s, _t, _l: bar.update(task, completed=s))
            if masks is not None:
                masks.make_permanent()
            final = trained = net
    seconds = time.perf_counter() - t0
    sha = distributed.check_same(trained, "the final weights")  # raises, naming the ranks, if they disagree
    log(f"final weights sha256 {sha[:16]}" + (f"; ranks agree ({world} of {world})" if world > 1 else ""))
    top1_after, _ = _top1(trained, test)
    log(f"top-1 after: {100 * top1_after:.2f} % on {n_eval} evaluation images")
    if not distributed.is_rank0():
        return None
    key = eval_key(ds.source.eval_name, tuple(ds.example(input_size).shape), n_eval)
    summary: dict[str, Any] = {
        "model": arg.source, "data": ds.source.name, "mode": "qat" if qat else "float", "scheme": qat,
        "world_size": world, "backend": _backend(), "epochs": epochs, "steps": steps, "batch_size": batch_size,
        "lr": lr, "teacher": teacher if tnet is not None else None, "seconds": round(seconds, 2),
        "eval_images": n_eval, "eval_key": key, "top1_before": top1_before, "top1_after": top1_after,
        "weights_sha256": sha, "ranks_agree": True,
    }
    if target is not None:
        summary.update(target=target, criterion=criterion, params_after_prune=sum(p.numel() for p in trained.parameters()))
    summary.update(_save(final, out, arg, lineage, ds, summary, qat is not None))
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


def _backend() -> str | None:
    from torch import distributed as dist

    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else None


def _prune(net: Any, ds: DataArg, target: str, criterion: str, input_size: int, batch_size: int, seed: int,
           lineage: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    """Prune ``net`` on this rank (the same seeded data on every rank) and check that all ranks hold the same result."""
    from edgeslim import distributed
    from edgeslim.errors import ConfigError
    from edgeslim.lineage import extend
    from edgeslim.plugin.pruning import PruneConfig, Target, prune

    try:
        config = PruneConfig(criterion=criterion, target=Target.parse(target))
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--target") from None
    stats = ds.source.train_loader(batch_size, seed=seed + 1)  # read by data-driven criteria only
    result = prune(net, ds.example(input_size, random=False), config, data=stats)
    digest = distributed.check_same(result.model, "the pruned model")
    world = distributed.world_size()
    log(f"pruned to {target} ({criterion}): {result.after.params:,} parameters, sha256 {digest[:16]}"
        + (f"; the same on all {world} ranks" if world > 1 else ""))
    return result.model, extend(lineage, "prune", sha256=digest, target=target, criterion=criterion, world_size=world)


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


def _top1(net: Any, loader: Any) -> tuple[float, int]:
    """Top-1 (a fraction) and the image count; under torchrun each rank evaluates its share of the images."""
    from torch.utils.data import DataLoader, Subset

    from edgeslim import distributed
    from edgeslim.data import evaluate

    net = distributed.unwrap(net).to(distributed.device())
    dataset = getattr(loader, "dataset", None)
    if distributed.active() and isinstance(loader, DataLoader) and dataset is not None and hasattr(dataset, "__len__"):
        n = len(dataset)
        mine = range(distributed.rank(), n, distributed.world_size())
        part = DataLoader(Subset(dataset, mine), batch_size=loader.batch_size, shuffle=False)
        acc = evaluate(net, part, device=distributed.device()) if mine else 0.0
        correct, total = distributed.all_sum([round(acc * len(mine)), len(mine)])
        return correct / total, int(total)
    acc = evaluate(net, loader, device=distributed.device())
    total = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else sum(len(y) for _, y in loader)
    return acc, int(total)


def _print_table(s: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"edgeslim finetune ({s['mode']}, world size {s['world_size']})")
    t.add_column("")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    t.add_row(f"top-1 ({s['eval_images']} images)", f"{100 * s['top1_before']:.2f} %", f"{100 * s['top1_after']:.2f} %")
    t.add_row("saved", "", str(s.get("model_path", "")))
    console.print(t)
