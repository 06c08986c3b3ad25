"""The results dict of ``edgeslim compress`` (``results.json``), built from the recorded step data.

Schema (what :func:`edgeslim.report.render_report` consumes)::

    {"title", "model", "created", "commit", "command", "recipe": {...},
     "rows": [{"variant", "bytes", "params", "macs", "top1", "latency_ms": {"RUNTIME@TARGET": ms},
               "file", "notes", "files": {name: bytes}, "top1_runtime": {format: top1}}],
     "search": {...} (pipeline joint only),
     "layers": [{"name", "channels_before", "channels_after", "keep_ratio", "bits"}],
     "steps": [{"name", "seconds", "status"}], "status": "complete" | "failed",
     "failed_step", "error" (a failed run only: what finished is kept)}
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from edgeslim.pipelines.recipe import Recipe, Variant
from edgeslim.pipelines.steps import Context, quant_file

#: Steps that produce the pruned float model, newest first.
PRUNED_STEPS = ("finetune", "alternating", "search", "prune")


def _pruned_data(ctx: Context) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for step in reversed(PRUNED_STEPS):  # oldest first; the newest wins
        merged.update({k: v for k, v in ctx.data.get(step, {}).items() if v is not None})
    return merged


def title_of(recipe: Recipe) -> str:
    """The report title: the recipe's own, else model, pipeline, pruning target and scheme."""
    if recipe.title:
        return recipe.title
    parts = [recipe.model, recipe.pipeline.value]
    if recipe.prune is not None:
        parts.append(f"prune {recipe.prune.target}")
    if recipe.search is not None:
        parts.append(f"budget {recipe.search.budget}")
    if recipe.quantize is not None:
        parts.append(f"{recipe.quantize.scheme} {recipe.quantize.method.value}")
    return " · ".join(parts)


def _row(ctx: Context, variant: Variant) -> dict[str, Any]:
    load, pruned = ctx.data.get("load", {}), _pruned_data(ctx)
    quant = ctx.data.get("quantize", {}).get(variant.value) or (
        ctx.data.get("alternating", {}).get("quantized", {}) if variant is Variant.PRUNED_QUANTIZED else {})
    float_stats = load if variant in (Variant.ORIGINAL, Variant.QUANTIZED) else pruned
    exported = ctx.data.get("export", {}).get(variant.value, {})
    latency = ctx.data.get("bench", {}).get("latency_ms", {}).get(variant.value, {})
    files: dict[str, int] = {}
    if variant is Variant.ORIGINAL:
        files[Path(load["file"]).name] = int(load["bytes"])
        top1, notes = load.get("top1"), f"{ctx.recipe.model} as given"
    elif variant is Variant.PRUNED:
        files[str(pruned.get("file"))] = int(pruned.get("bytes", 0))
        top1 = pruned.get("top1")
        summary = pruned.get("summary", {})
        notes = f"{ctx.recipe.pipeline.value}"
        if ctx.recipe.search is not None:
            sec = ctx.recipe.search
            notes += f", widths searched under {sec.budget} ({sec.runtime} on {sec.target} at {sec.input_size or ctx.recipe.input_size}px)"
        elif ctx.recipe.prune is not None:
            notes += f", {ctx.recipe.prune.criterion} {ctx.recipe.prune.target}, {ctx.recipe.prune.allocation.value}"
        if "params_fraction" in summary:
            notes += f" ({100 * summary['params_fraction']:.1f} % of the parameters)"
        if "steps" in ctx.data.get("finetune", {}):
            ft = ctx.recipe.finetune
            notes += f"; fine-tuned {ft.epochs:g} epoch{'s' if ft.epochs != 1 else ''}" + (" (distilled)" if ft.distill else "")
    else:
        files[quant_file(variant)] = int(quant.get("bytes", 0))
        top1 = quant.get("top1")
        notes = f"{quant.get('scheme')} {str(quant.get('mode', '')).upper()}"
        if ctx.recipe.quantize is not None and quant.get("mode") == "ptq":
            notes += f", {ctx.recipe.quantize.calibration} calibration images"
        if quant.get("left_float"):
            notes += f"; left in float: {', '.join(quant['left_float'])}"
    for entry in exported.values():
        files[entry["file"]] = int(entry["bytes"])
    deployed = list(exported.values())
    main = deployed[0]["file"] if deployed else next(iter(files))
    copies = ctx.data.get("bench", {}).get("files", {}).get(variant.value, {})
    if copies and ctx.data["bench"].get("input_size") != ctx.recipe.input_size:
        size = ctx.data["bench"]["input_size"]
        notes += f"; latency at {size}x{size} from latency-only copies ({', '.join(copies.values())})"
    return {
        "variant": variant.value,
        "bytes": files[main],
        "params": float_stats.get("params"),
        "macs": float_stats.get("macs"),
        "top1": top1,
        "latency_ms": dict(latency),
        "file": main,
        "notes": notes,
        "files": files,
        "top1_runtime": {fmt: e.get("top1") for fmt, e in exported.items()},
    }


def _layers(ctx: Context) -> list[dict[str, Any]]:
    pruned = _pruned_data(ctx)
    rows = pruned.get("layers")
    if rows is None:
        from edgeslim.pipelines.steps import layer_rows

        net = ctx.original()
        rows = layer_rows(net, net)
    quant = ctx.data.get("quantize", {})
    pq = quant.get(Variant.PRUNED_QUANTIZED.value) or ctx.data.get("alternating", {}).get("quantized")
    bits = (pq or quant.get(Variant.QUANTIZED.value) or {}).get("bits", {})
    out = []
    for r in rows:
        before, after = int(r["out_before"]), int(r["out_after"])
        out.append({"name": r["layer"], "channels_before": before, "channels_after": after,
                    "keep_ratio": round(after / before, 4) if before else None, "bits": bits.get(r["layer"], 32)})
    return out


def _measured(ctx: Context, variant: Variant) -> bool:
    """Whether the step that makes ``variant`` finished (a failed run reports only those)."""
    if variant is Variant.ORIGINAL:
        return "load" in ctx.data
    if variant is Variant.PRUNED:
        return any(step in ctx.data for step in PRUNED_STEPS)
    quant = ctx.data.get("quantize", {}).get(variant.value) or (
        ctx.data.get("alternating", {}).get("quantized") if variant is Variant.PRUNED_QUANTIZED else None)
    return bool(quant)


def _guarded(fn: Any, partial: bool, *args: Any) -> Any:
    """``fn(*args)``; in a partial run, ``None`` when the data it needs was never recorded."""
    if not partial:
        return fn(*args)
    try:
        return fn(*args)
    except (KeyError, StopIteration, TypeError, ValueError, OSError):
        return None


def build_results(ctx: Context, steps: list[dict[str, Any]], *, command: str, commit: str,
                  partial: bool = False) -> dict[str, Any]:
    """The results dict of a run from the data its steps recorded.

    Args:
        ctx: The run's context (recipe and step data).
        steps: ``{"name", "seconds", "status"}`` of every step of this invocation.
        command: The command line that ran it.
        commit: The edgeslim revision (or version).
        partial: A failed run: rows and layers whose steps did not finish are left out instead of
            raising (the variants that were measured are kept).

    Returns:
        The results dict (schema in the module docstring).
    """
    results: dict[str, Any] = {
        "title": title_of(ctx.recipe),
        "model": ctx.recipe.model,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "command": command,
        "recipe": ctx.recipe.to_dict(),
        "eval": {"key": ctx.eval_key, "images": ctx.recipe.eval_samples},
        "rows": [r for v in ctx.recipe.variants()
                 if (not partial or _measured(ctx, v)) and (r := _guarded(_row, partial, ctx, v)) is not None],
        "layers": _guarded(_layers, partial, ctx) or [],
        "steps": steps,
        "status": "failed" if partial else "complete",
    }
    if "search" in ctx.data and "search" in ctx.data["search"]:
        results["search"] = ctx.data["search"]["search"]
    if "bench" in ctx.data:
        results["bench"] = {"input_size": ctx.data["bench"].get("input_size"), "results": ctx.data["bench"].get("results")}
    return results


def write_partial_results(ctx: Context, steps: list[dict[str, Any]], *, command: str, commit: str, failed: str,
                          error: str) -> Path | None:
    """Write ``results.json`` for a run that failed at step ``failed``; what finished is kept.

    Returns the path written, or ``None`` when nothing could be built (the failure is never masked).
    """
    from edgeslim.pipelines.steps import write_json

    try:
        results = build_results(ctx, steps, command=command, commit=commit, partial=True)
        results.update(failed_step=failed, error=error)
        path = ctx.out / "results.json"
        write_json(path, results)
    except Exception:  # best effort: the step's own error is what the user must see
        return None
    return path


__all__ = ["build_results", "title_of", "write_partial_results"]
