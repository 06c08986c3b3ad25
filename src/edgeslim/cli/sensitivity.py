"""``edgeslim sensitivity``: per-group pruning sensitivity table, plot and allocation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgeslim.cli.common import (
    DataDirOpt,
    DataOpt,
    DeviceOpt,
    ForceOpt,
    JsonOpt,
    MeanOpt,
    StdOpt,
    WeightsOpt,
    console,
    emit_json,
    progress,
    refuse_existing_outputs,
    resolve_data,
    resolve_model,
)

#: Every file ``edgeslim sensitivity`` writes into ``--out``: the table (JSON, Markdown) and its plot.
OUTPUT_FILES = ("sensitivity.json", "sensitivity.md", "sensitivity.png")


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command("sensitivity")(sensitivity_cmd)


def sensitivity_cmd(
    model: Annotated[str, typer.Option(help="Model name, edgeslim .pt file, or your factory FILE.py:build / package.module:build")],
    out: Annotated[Path, typer.Option(help="Output folder (sensitivity.json/.md/.png)")],
    criterion: Annotated[str, typer.Option(help="Importance criterion")] = "l2",
    ratios: Annotated[str, typer.Option(help="Comma-separated channel ratios to probe")] = "0.2,0.4,0.6,0.8",
    batches: Annotated[int, typer.Option(help="Held-out batches per measurement")] = 4,
    batch_size: Annotated[int, typer.Option(help="Images per batch")] = 128,
    target: Annotated[str, typer.Option(help="Also allocate per-group ratios for this target (e.g. params=0.5)")] = "",
    weights: WeightsOpt = None,
    data: DataOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    data_dir: DataDirOpt = None,
    input_size: Annotated[int, typer.Option(help="Input resolution (and of imagefolder/npz images)")] = 32,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Measure how much each channel group of MODEL can lose, and where to prune for a target."""

    from edgeslim.errors import ConfigError
    from edgeslim.plugin.pruning import Allocation, PruneConfig, Target, prune, sensitivity
    from edgeslim.plugin.pruning.metrics import measure
    from edgeslim.train import resolve_torch_device

    try:
        probe = tuple(float(r) for r in ratios.split(","))
    except ValueError:
        raise ConfigError(f"--ratios must be comma-separated numbers, got {ratios!r}") from None
    config = PruneConfig(criterion=criterion, sensitivity_ratios=probe, data_batches=batches)
    dev = resolve_torch_device(device)  # the measurements' forward passes run there
    refuse_existing_outputs(out, OUTPUT_FILES, force)
    ds = resolve_data(data, data_dir=data_dir, input_size=input_size, mean=mean, std=std)
    arg = resolve_model(model, weights)
    net, source = arg.module, arg.source
    x = ds.example(input_size)
    ds.check_fits(net, x)
    ds.warn_if_foreign(arg, "sensitivity")
    # scored on training images (shuffled, not augmented): the test set stays for the final evaluation
    held = ds.source.train_loader(batch_size, shuffle=True, seed=1)
    with progress() as bar:
        task = bar.add_task("sensitivity", total=None)
        table = sensitivity(net, x, held, config, device=dev,
                            on_progress=lambda d, t: bar.update(task, completed=d, total=t))
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (out / name for name in OUTPUT_FILES)
    table.save(json_path)
    md_path.write_text(table.markdown() + "\n")
    table.plot(png_path)
    console.print(table.markdown())
    summary: dict[str, Any] = {
        "model": source, "data": ds.source.name, "criterion": criterion, "groups": len(table.groups()), "base_accuracy": table.base_accuracy,
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
