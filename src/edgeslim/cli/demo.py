"""``edgeslim demo``: the short case study on the bundled ResNet-18 and real Fashion-MNIST data.

The bundled model is pruned to half its parameters, briefly fine-tuned with distillation,
quantized to int8, exported to ONNX and TFLite (each verified in its runtime), timed on this
machine at 224x224 and reported — the same runner as ``edgeslim compress``, on the recipe
:data:`DEMO_RECIPE`. A rerun resumes; ``--force`` redoes it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeslim.cli.common import ForceOpt, JsonOpt, console, emit_json, progress

#: The demo's recipe (``finetune.epochs`` and ``eval_samples`` come from the options).
DEMO_RECIPE: dict[str, Any] = {
    "title": "edgeslim demo: ResNet-18 (Fashion-MNIST) pruned to half its parameters + int8, ONNX and TFLite",
    "model": "resnet18-fmnist",
    "input_size": 32,
    "pipeline": "sequential",
    "prune": {"criterion": "l1", "target": "params=0.5", "allocation": "sensitivity", "round_to": 16},
    "finetune": {"epochs": 0.2, "lr": 0.01, "distill": True},
    "quantize": {"scheme": "int8", "method": "ptq", "calibration": 256, "calibrator": "minmax"},
    "export": {"formats": ["onnx", "tflite"], "variants": ["original", "pruned+quantized"], "max_drop": 1.0,
               "verify_samples": 64},
    "bench": {"targets": ["local"], "input_size": 224, "runs": 15, "warmup": 3, "threads": 2},
}


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command("demo")(demo_cmd)


def demo_recipe(finetune_epochs: float, test_limit: int, bench_size: int = 224) -> Any:
    """The demo's :class:`~edgeslim.pipelines.recipe.Recipe` with the given fine-tune, test and bench sizes."""
    from edgeslim.pipelines.recipe import Recipe

    data = {**DEMO_RECIPE, "eval_samples": test_limit, "bench": {**DEMO_RECIPE["bench"], "input_size": bench_size},
            "finetune": {**DEMO_RECIPE["finetune"], "epochs": finetune_epochs}}
    if finetune_epochs <= 0:
        data.pop("finetune")
    return Recipe.from_dict(data, source="edgeslim demo")


def demo_cmd(
    out: Annotated[Path, typer.Option(help="Output folder: artefacts, report.html, report.md, results.json")] = Path(
        "edgeslim-demo"),
    finetune_epochs: Annotated[float, typer.Option("--finetune-epochs", help="Distilled fine-tune epochs (0: none)")] = 0.2,
    test_limit: Annotated[int, typer.Option(help="Test images every top-1 is measured on (10000 = all)")] = 1000,
    bench_size: Annotated[int, typer.Option(help="Input size (H = W) the artefacts are timed at")] = 224,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """The short case study: prune ResNet-18 to half, fine-tune, int8, ONNX + TFLite, time them, report."""
    from edgeslim.cli.common import stdout_to_stderr
    from edgeslim.cli.compress import Progress, print_table
    from edgeslim.data import check_root
    from edgeslim.pipelines.runner import RESULTS_FILE, compress

    if test_limit < 1 or finetune_epochs < 0 or bench_size < 16:
        raise typer.BadParameter("--test-limit must be >= 1, --finetune-epochs >= 0, --bench-size >= 16")
    check_root()
    rec = demo_recipe(finetune_epochs, test_limit, bench_size)
    console.print("[bold]edgeslim demo[/]: ResNet-18 trained on Fashion-MNIST → half the parameters → int8 → "
                  f"ONNX + TFLite, timed here at {bench_size}x{bench_size}", highlight=False)
    t0 = time.perf_counter()
    command = (f"edgeslim demo --out {out} --finetune-epochs {finetune_epochs:g} --test-limit {test_limit} "
               f"--bench-size {bench_size}")
    with progress() as bar, stdout_to_stderr():
        results = compress(rec, out, force=force, on_event=Progress(bar), command=command)
    print_table(results)
    rows = {r["variant"]: r for r in results["rows"]}
    orig, final = rows.get("original", {}), rows.get("pruned+quantized", {})
    summary: dict[str, Any] = {"out": str(out), "report_html": str(out / "report.html"),
                               "results_json": str(out / RESULTS_FILE), "rows": results["rows"],
                               "seconds": round(time.perf_counter() - t0, 1)}
    if orig.get("bytes") and final.get("bytes"):
        summary["size_ratio"] = orig["bytes"] / final["bytes"]
    for key, lat in (orig.get("latency_ms") or {}).items():
        mine = (final.get("latency_ms") or {}).get(key)
        if lat and mine:
            summary[f"speedup {key}"] = lat / mine
    change = ""
    if orig.get("top1") is not None and final.get("top1") is not None:
        images = int((results.get("eval") or {}).get("images") or test_limit)
        summary["top1_drop_pt"] = 100 * (orig["top1"] - final["top1"])
        summary["top1_interval"] = list(wilson_interval(orig["top1"], images))
        summary["top1_within_noise"] = summary["top1_interval"][0] <= final["top1"] <= summary["top1_interval"][1]
        change = top1_change(orig["top1"], final["top1"], images)
    parts = ([f"{summary['size_ratio']:.1f}x smaller"] if "size_ratio" in summary else []) + [
        f"{v:.2f}x faster in {k.removeprefix('speedup ')}" for k, v in summary.items() if k.startswith("speedup")]
    if change:
        parts.append(change)
    console.print(f"pruned + int8: {', '.join(parts)}; report: {out / 'report.html'} ({summary['seconds']:.0f} s)",
                  highlight=False)
    if json_:
        emit_json(summary)


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95 % for ``z = 1.96``) of an accuracy ``p`` measured on ``n`` images.

    Args:
        p: The measured accuracy in [0, 1].
        n: The number of images it was measured on.
        z: The normal quantile of the confidence level.

    Returns:
        ``(low, high)`` in [0, 1].
    """
    if n <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def top1_change(before: float, after: float, n: int) -> str:
    """Say how top-1 moved from ``before`` to ``after`` on ``n`` images: gained or lost, and whether that is noise.

    The change is within noise when ``after`` lies in the 95 % Wilson interval of ``before`` on
    ``n`` images (0.4 pt on 1,000 images is; 2 pt on 10,000 is not).

    Args:
        before: Top-1 of the original model, in [0, 1].
        after: Top-1 of the compressed model on the same images.
        n: The number of images.

    Returns:
        E.g. ``gained 0.40 pt of top-1 (within noise: 95 % interval 90.62-93.97 % on 1,000 images)``.
    """
    diff = 100 * (after - before)
    low, high = wilson_interval(before, n)
    noise = "within noise" if low <= after <= high else "beyond noise"
    what = ("top-1 unchanged" if round(diff, 2) == 0 else
            f"{'gained' if diff > 0 else 'lost'} {abs(diff):.2f} pt of top-1")
    return f"{what} ({noise}: 95 % interval {100 * low:.2f}-{100 * high:.2f} % on {n:,} images)"
