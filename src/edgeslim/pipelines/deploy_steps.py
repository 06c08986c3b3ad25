"""The deployment steps of ``edgeslim compress``: verified artefacts of every variant, and their latency."""

from __future__ import annotations

import os
from typing import Any

from edgeslim.pipelines.recipe import Variant
from edgeslim.pipelines.steps import Context

#: The JSON-lines file the bench step appends each result to while it runs (renamed when done).
BENCH_PARTIAL = "bench.partial.jsonl"
BENCH_FILE = "bench.jsonl"


def _suffix(fmt: str) -> str:
    from edgeslim.exporters import get_exporter

    return str(get_exporter(fmt).suffix)


def float_top1(ctx: Context, variant: Variant) -> float:
    """The top-1 of a variant's float model (its own, or its float ancestor's) on the evaluation images."""
    if Context.float_model_name(variant) == "original":
        return float(ctx.data["load"]["top1"])
    for step in ("finetune", "prune", "search", "alternating"):
        if "top1" in ctx.data.get(step, {}):
            return float(ctx.data[step]["top1"])
    raise KeyError("no pruned top-1 recorded")


def _export_object(ctx: Context, variant: Variant) -> tuple[Any, dict[str, Any]]:
    """What is exported for ``variant`` and how its float ancestor's top-1 is known."""
    if variant in (Variant.ORIGINAL, Variant.PRUNED):
        return ctx.float_model(variant), {}  # a float model is its own ancestor: export measures it
    return ctx.quantized(variant), {"float_top1": float_top1(ctx, variant)}


def run_export(ctx: Context) -> dict[str, Any]:
    """Export every variant to every format, each verified against PyTorch and its float ancestor's top-1."""
    from edgeslim.exporters import export

    sec = ctx.recipe.export
    variants = [v for v in ctx.recipe.variants() if v in sec.variants]
    total, done = len(variants) * len(sec.formats), 0
    out: dict[str, Any] = {}
    for variant in variants:
        obj, ancestor = _export_object(ctx, variant)
        for fmt in sec.formats:
            name = f"{variant.stem}{_suffix(fmt)}"
            ctx.progress(f"export {name}", done, total)
            res = export(obj, fmt, ctx.path(name), ctx.example(), eval_data=ctx.eval_loader(), eval_name=ctx.eval_name,
                         eval_samples=ctx.recipe.eval_samples, max_drop=sec.max_drop,
                         verify_samples=sec.verify_samples, overwrite=True, **ancestor, **ctx.export_data())
            done += 1
            acc, ver = res.accuracy, res.verification
            out.setdefault(variant.value, {})[fmt] = {
                "file": name, "bytes": res.bytes, "quant": res.quant,
                "top1": acc.top1_artefact if acc else None, "top1_float": acc.top1_float if acc else None,
                "drop_pt": acc.drop_pt if acc else None, "verification": ver.to_dict() if ver else None,
            }
            ctx.progress(f"export {name}", done, total)
    return out


def _latency_copies(ctx: Context, size: int) -> dict[str, dict[str, str]]:
    """Latency-only copies of every exported artefact at ``size`` x ``size`` (not checked for accuracy)."""
    from edgeslim.exporters import export
    from edgeslim.exporters.api import own_label

    exported: dict[str, Any] = ctx.data.get("export", {})
    copies: dict[str, dict[str, str]] = {}
    total = sum(len(v) for v in exported.values())
    for variant in ctx.recipe.variants():
        for fmt in exported.get(variant.value, {}):
            name = f"{variant.stem}.latency-only-{size}x{size}{_suffix(fmt)}"
            ctx.progress(f"latency-only copy {name}", sum(len(c) for c in copies.values()), total)
            quantized = variant in (Variant.QUANTIZED, Variant.PRUNED_QUANTIZED)
            quant = own_label(ctx.quantized(variant).config) if quantized else None
            export(ctx.float_model(variant), fmt, ctx.path(name), ctx.example(size), quant=quant,
                   method="edgeslim" if quantized else "auto", calibration_size=32, verify=False, overwrite=True)
            copies.setdefault(variant.value, {})[fmt] = name
    return copies


def _runtimes_for(suffix: str, wanted: tuple[str, ...]) -> list[str]:
    from edgeslim.device_bench.runtimes import RUNTIMES

    if not wanted:
        return ["auto"]
    return [r for r in wanted if suffix in RUNTIMES.get(r).suffixes]


def run_bench(ctx: Context) -> dict[str, Any]:
    """Time every artefact on every target (at ``bench.input_size``, through latency-only copies if needed)."""
    from edgeslim.device_bench import api as bench_api

    sec = ctx.recipe.bench
    assert sec is not None
    size = sec.input_size or ctx.recipe.input_size
    if size != ctx.recipe.input_size:
        files = _latency_copies(ctx, size)
    else:
        files = {v: {f: e["file"] for f, e in fmts.items()} for v, fmts in ctx.data.get("export", {}).items()}
    partial = ctx.out / BENCH_PARTIAL
    partial.unlink(missing_ok=True)  # edgeslim's own file from an interrupted run
    jobs: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for target in sec.targets:
        for variant, fmts in files.items():
            for name in fmts.values():
                for runtime in _runtimes_for(os.path.splitext(name)[1], sec.runtimes):
                    jobs.setdefault((target, runtime), []).append((variant, name))
    total, done = sum(len(v) for v in jobs.values()), 0
    latency: dict[str, dict[str, float | None]] = {}
    results: list[dict[str, Any]] = []
    for (target, runtime), items in jobs.items():
        ctx.progress(f"bench on {target}", done, total)
        report = bench_api.bench([ctx.out / name for _, name in items], target, runs=sec.runs, warmup=sec.warmup,
                                 threads=sec.threads, runtime=runtime, results_file=partial)
        for (variant, name), res in zip(items, report.results, strict=True):
            key = f"{res.data.get('runtime') or runtime}@{target}"
            latency.setdefault(variant, {})[key] = res.p50
            results.append({"variant": variant, "file": name, **res.summary()})
        done += len(items)
        ctx.progress(f"bench on {target}", done, total)
    if partial.exists():
        os.replace(partial, ctx.path(BENCH_FILE))
    return {"input_size": size, "latency_ms": latency, "results": results, "files": files}
