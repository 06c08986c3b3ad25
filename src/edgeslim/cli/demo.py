"""``edgeslim demo``: the whole pipeline on the bundled ResNet-18 and real Fashion-MNIST data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeslim.cli.common import ForceOpt, JsonOpt, console, emit_json, progress, refuse_existing_outputs

#: The one file the demo writes into ``--out``.
MODEL_FILE = "resnet18_pruned.pt"


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command("demo")(demo_cmd)


def demo_cmd(
    out: Annotated[Path, typer.Option(help="Where the pruned model is written")] = Path("edgeslim-demo"),
    finetune_epochs: Annotated[float, typer.Option("--finetune-epochs", help="Fine-tune epochs (fractions allowed)")] = 0.2,
    test_limit: Annotated[int, typer.Option(help="Test images to evaluate on (10000 = all)")] = 10000,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Prune the bundled Fashion-MNIST ResNet-18 to half its parameters, fine-tune briefly, evaluate."""
    import torch
    from rich.table import Table

    from edgeslim import io as es_io
    from edgeslim import models
    from edgeslim.data import check_root, evaluate, fashion_mnist_loader
    from edgeslim.plugin.pruning import Allocation, PruneConfig, Target, prune
    from edgeslim.plugin.pruning.finetune import finetune

    refuse_existing_outputs(out, [MODEL_FILE], force)
    torch.manual_seed(0)
    check_root()
    t_start = time.perf_counter()
    net = models.load("resnet18-fmnist")
    x = torch.randn(1, 3, 32, 32)
    test = fashion_mnist_loader("test", batch_size=500, limit=test_limit)
    stats = fashion_mnist_loader("train", batch_size=128, seed=1)
    train = fashion_mnist_loader("train", batch_size=128, augment=True)
    console.print("[bold]edgeslim demo[/]: ResNet-18 trained on Fashion-MNIST, pruned to 50 % of its parameters")
    top1_before = evaluate(net, test)
    cfg = PruneConfig(criterion="l2", target=Target.parse("params=0.5"), allocation=Allocation.SENSITIVITY)
    result = prune(net, x, cfg, data=stats)
    top1_pruned = evaluate(result.model, test)
    with progress() as bar:
        task = bar.add_task("fine-tune (distilled)", total=round(finetune_epochs * len(train)))
        finetune(result.model, train, epochs=finetune_epochs, teacher=net,
                 on_step=lambda s, _t, _l: bar.update(task, completed=s))
    top1_after = evaluate(result.model, test)
    path = es_io.save(result.model, out / MODEL_FILE)
    reloaded = es_io.load(path)
    same = bool(torch.equal(reloaded(x), result.model(x)))
    b, a = result.before, result.after
    table = Table(title=f"ResNet-18 / Fashion-MNIST ({test_limit} test images)")
    for col in ("", "original", "pruned", "pruned + fine-tuned"):
        table.add_column(col, justify="right")
    table.add_row("params", f"{b.params:,}", f"{a.params:,}", f"{a.params:,}")
    table.add_row("MACs (32x32)", f"{b.macs / 1e6:.1f} M", f"{a.macs / 1e6:.1f} M", f"{a.macs / 1e6:.1f} M")
    table.add_row("fp32 size", f"{b.bytes / 1e6:.1f} MB", f"{a.bytes / 1e6:.1f} MB", f"{a.bytes / 1e6:.1f} MB")
    table.add_row("top-1", f"{100 * top1_before:.2f} %", f"{100 * top1_pruned:.2f} %", f"{100 * top1_after:.2f} %")
    console.print(table)
    console.print(f"saved {path} (weights_only=True reload bit-exact: {same}); {time.perf_counter() - t_start:.0f} s")
    summary: dict[str, Any] = {
        "params_before": b.params, "params_after": a.params, "macs_before": b.macs, "macs_after": a.macs,
        "bytes_before": b.bytes, "bytes_after": a.bytes, "top1_before": top1_before, "top1_pruned": top1_pruned,
        "top1_after": top1_after, "model_path": str(path), "reload_exact": same,
    }
    if json_:
        emit_json(summary)
