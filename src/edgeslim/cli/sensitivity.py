"""``edgeslim sensitivity``: per-group pruning sensitivity table, plot and allocation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgeslim.cli.common import (
    DataDirOpt,
    ForceOpt,
    JsonOpt,
    console,
    emit_json,
    progress,
    refuse_existing_outputs,
    resolve_model,
)

#: Every file ``edgeslim sensitivity`` writes into ``--out``: the table (JSON, Markdown) and its plot.
OUTPUT_FILES = ("sensitivity.json", "sensitivity.md", "sensitivity.png")


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command("sensitivity")(sensitivity_cmd)


def sensitivity_cmd(
    model: Annotated[str, typer.Option(help="Model name or edgeslim .pt file")],
    out: Annotated[Path, typer.Option(help="Output folder (sensitivity.json/.md/.png)")],
    criterion: Annotated[str, typer.Option(help="Importance criterion")] = "l2",
    ratios: Annotated[str, typer.Option(help="Comma-separated channel ratios to probe")] = "0.2,0.4,0.6,0.8",
    batches: Annotated[int, typer.Option(help="Held-out batches per measurement")] = 4,
    batch_size: Annotated[int, typer.Option(help="Images per batch")] = 128,
    target: Annotated[str, typer.Option(help="Also allocate per-group ratios for this target (e.g. params=0.5)")] = "",
    data_dir: DataDirOpt = None,
    input_size: Annotated[int, typer.Option(help="Input resolution")] = 32,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Measure how much each channel group of MODEL can lose, and where to prune for a target."""
    import torch

    from edgeslim.data import check_root, fashion_mnist_loader
    from edgeslim.errors import ConfigError
    from edgeslim.plugin.pruning import Allocation, PruneConfig, Target, prune, sensitivity
    from edgeslim.plugin.pruning.metrics import measure

    try:
        probe = tuple(float(r) for r in ratios.split(","))
    except ValueError:
        raise ConfigError(f"--ratios must be comma-separated numbers, got {ratios!r}") from None
    config = PruneConfig(criterion=criterion, sensitivity_ratios=probe, data_batches=batches)
    refuse_existing_outputs(out, OUTPUT_FILES, force)
    check_root(data_dir)
    arg = resolve_model(model)
    net, source = arg.module, arg.source
    x = torch.randn(1, 3, input_size, input_size)
    # scored on training images (shuffled, not augmented): the test set stays for the final evaluation
    held = fashion_mnist_loader("train", batch_size=batch_size, root=data_dir, shuffle=True, seed=1)
    with progress() as bar:
        task = bar.add_task("sensitivity", total=None)
        table = sensitivity(net, x, held, config, on_progress=lambda d, t: bar.update(task, completed=d, total=t))
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (out / name for name in OUTPUT_FILES)
    table.save(json_path)
    md_path.write_text(table.markdown() + "\n")
    table.plot(png_path)
    console.print(table.markdown())
    summary: dict[str, Any] = {
        "model": source, "criterion": criterion, "groups": len(table.groups()), "base_accuracy": table.base_accuracy,
        "table": str(json_path), "plot": str(png_path),
    }
    if target:
        cfg = config.with_(target=Target.parse(target), allocation=Allocation.SENSITIVITY)
        res = prune(net, x, cfg, data=held, sensitivity_table=table)
        after = measure(res.model, x)
        summary.update({"target": target, "allocation": res.plan.group_ratios,
                        "params_before": res.before.params, "params_after": after.params})
    if json_:
        emit_json(summary)
