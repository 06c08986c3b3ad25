"""Exporters benchmark: every variant exported, then evaluated IN its runtime.

For ResNet-18 and MobileNetV2 (Fashion-MNIST references): fp32, int8 (U8S8 and, for
ResNet-18, S8S8; from ORT/ai-edge-quantizer and from edgeslim's PT2E model), W8A16,
pruned-50 % (sensitivity allocation + quarter-epoch distilled fine-tune, cached) fp32 and
int8, log2:4 and codebook:4 (ONNX), as ONNX (ONNX Runtime) and TFLite (ai-edge-litert), all
10,000 test images (16x8 TFLite: 500, it has no XNNPACK kernels). Each row: top-1 in the
runtime vs top-1 of the PyTorch model it came from (same images), bytes, and the median
latency at 224x224 (batch 1, 2 threads) of all variants of a model timed interleaved.
Writes ``benchmarks/results/export.{json,md}`` and the per-layer report of the int8 ResNet-18
(``export_layerwise.png``).

    nice .venv/bin/python benchmarks/export.py              # everything (long on 2 cores)
    .venv/bin/python benchmarks/export.py --parts layerwise # only the per-layer report
    .venv/bin/python benchmarks/export.py --parts latency report --reps 60  # re-time saved artefacts
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeslim.exporters.onnx import x86_u8s8_overflows
from provenance import record, runs_lines

RESULTS = Path(__file__).resolve().parent / "results"
NOTES = [
    "Each artefact is compared with the PyTorch model it came from on the same images: fp32/pruned rows with the "
    "eager model, int8/w8a16 rows with the float model they were quantized from (ORT quantize_static / "
    "ai-edge-quantizer), edgeslim-int8 and log2/codebook rows with the edgeslim PT2E model (`edgeslim.quantize`).",
    "Pruned rows: 50 % of the parameters removed by `edgeslim.prune` (L1, sensitivity allocation, channel counts "
    "rounded to multiples of 16) and fine-tuned for a quarter epoch with distillation from the fp32 model "
    "(`edgeslim.finetune`).",
    "Every quantized variant is calibrated on the same 512 seeded training images.",
    "ONNX int8 = the default `auto` encoding (u8s8, or u8u8 on x86 without VNNI where ORT's U8S8 kernels saturate; "
    "the machine line says which) unless marked s8s8; W8A16 ONNX runs with ORT_DISABLE_ALL (ORT's optimised int16 graph is wrong). "
    "edgeslim-int8: edgeslim's own PT2E int8 model (MSE calibrator) exported as a QDQ graph.",
    "log2:4 / codebook:4 ONNX: 4-bit codes (UINT4) + per-channel int8 codebook feeding DequantizeLinear; ORT folds "
    "the decode at load time. PT2E graphs (edgeslim-int8, log2, codebook) have a static H/W: their 224x224 latency "
    "is measured on a twin quantized at 224.",
    "TFLite w8a16 (16x8) has no XNNPACK kernels: evaluated on fewer images, latency with fewer reps.",
    "Latency: batch 1, 224x224, 2 threads, median; all variants of a model timed round-robin in one loop "
    "(interleaved), so machine noise hits them alike; compare ratios. ONNX Runtime sessions run with thread "
    "spinning off: with it on, a finished session's spinning threads stole the cores from the next one and "
    "tripled some timings.",
]
THREADS = 2


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pruned_50(model: torch.nn.Module, x: torch.Tensor, allocation: str, finetune_epochs: float, cache: Path,
              round_to: int | None = None) -> tuple[torch.nn.Module, str]:
    """About 50 % of the parameters removed (structured, L1, ``allocation``), then a short distilled fine-tune.

    ``round_to`` keeps channel counts multiples of it (ONNX Runtime's fp32 convs were 2x slower on
    widths such as 204 or 409 than on the unpruned model's).

    The result is cached in ``cache`` (edgeslim's safe format) so reruns skip the training.
    """
    import edgeslim
    from edgeslim.data import fashion_mnist_loader
    from edgeslim.plugin.pruning import Allocation, PruneConfig, Target, prune
    from edgeslim.plugin.pruning.finetune import finetune

    how = f"edgeslim.prune(params=0.5, {allocation} allocation, L1, round_to={round_to})" + (
        f" + {finetune_epochs:g} epoch distilled fine-tune (edgeslim.finetune)" if finetune_epochs > 0 else ", no fine-tuning")
    if cache.exists():
        return edgeslim.load(cache, base=copy.deepcopy(model)).eval(), how
    torch.manual_seed(0)
    data = fashion_mnist_loader("train", batch_size=128, seed=1) if allocation == "sensitivity" else None
    cfg = PruneConfig(criterion="l1", target=Target.parse("params=0.5"), allocation=Allocation(allocation), round_to=round_to)
    res = prune(model, x, cfg, data=data)
    if finetune_epochs > 0:
        finetune(res.model, fashion_mnist_loader("train", batch_size=128, augment=True), epochs=finetune_epochs, teacher=model)
    edgeslim.save(res.model.eval(), cache)
    return res.model.eval(), how


@torch.inference_mode()
def torch_predictions(model: torch.nn.Module, loader: Any) -> np.ndarray:
    return np.concatenate([model(x).argmax(1).numpy() for x, _ in loader])


def runtime_predictions(runner: Any, loader: Any, limit: int) -> np.ndarray:
    out, seen = [], 0
    for x, _ in loader:
        if seen >= limit:
            break
        xb = x[: limit - seen].numpy()
        out.append(np.asarray(runner(xb)).argmax(1))
        seen += len(xb)
    return np.concatenate(out)


def open_runner(fmt: str, path: Path) -> Any:
    from edgeslim.exporters.onnx import OrtRunner
    from edgeslim.exporters.tflite import LiteRTRunner

    return OrtRunner(path, threads=THREADS, spinning=False) if fmt == "onnx" else LiteRTRunner(path, threads=THREADS)


def run_model(name: str, args: argparse.Namespace, rows: list[dict[str, Any]], save: Any) -> None:
    """Export every variant of ``name``, evaluate it in its runtime, then time all of them interleaved."""
    import edgeslim
    from edgeslim.data import calibration_subset, fashion_mnist_loader
    from edgeslim.exporters import export
    from edgeslim.models import load

    art = Path(args.artifacts) / name
    art.mkdir(parents=True, exist_ok=True)
    base = load(name)
    x32, x224 = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 224, 224)
    labels = np.concatenate([y.numpy() for _, y in fashion_mnist_loader("test", batch_size=500)])
    test = fashion_mnist_loader("test", batch_size=250)
    _log(f"{name}: pruning")
    cache = art / f"pruned_{args.prune}_ft{args.finetune_epochs:g}_r{args.round_to}.pt"
    pruned, prune_how = pruned_50(base, x32, args.prune, args.finetune_epochs, cache, args.round_to or None)
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in (("fp32", base), ("pruned", pruned))}
    sources: dict[str, Any] = {"fp32": base, "pruned": pruned}
    coded = [] if args.no_coded or (args.only and not any(":" in o for o in args.only)) else ["log2:4", "codebook:4"]
    calib = calibration_subset("train", args.calibration)
    for spec in coded:
        _log(f"{name}: edgeslim.quantize {spec}")
        sources[spec] = edgeslim.quantize(base, (x32,), spec, calibration=calib)
    _log(f"{name}: edgeslim.quantize int8 (PT2E)")
    sources["edgeslim-int8"] = edgeslim.quantize(base, (x32,), "int8", calibration=calib)
    preds = {}
    for key, src in sources.items():
        _log(f"{name}: torch top-1 of {key}")
        preds[key] = torch_predictions(getattr(src, "model", src), test)

    variants = [
        ("onnx", "fp32", "fp32", {}), ("onnx", "fp32", "int8", {}),
        *([("onnx", "fp32", "int8", {"activations": "s8s8"})] if "resnet" in name else []),
        ("onnx", "edgeslim-int8", "int8", {}),
        ("onnx", "fp32", "w8a16", {}), ("onnx", "pruned", "fp32", {}), ("onnx", "pruned", "int8", {}),
        *[("onnx", spec, spec, {}) for spec in coded],
        ("tflite", "fp32", "fp32", {}), ("tflite", "fp32", "int8", {}), ("tflite", "fp32", "w8a16", {}),
        ("tflite", "pruned", "fp32", {}), ("tflite", "pruned", "int8", {}),
    ]
    timers: list[tuple[dict[str, Any], Any, int]] = []
    for fmt, src_key, quant, kw in variants:
        label = f"{src_key}/{quant}" + ("/s8s8" if kw.get("activations") == "s8s8" else "")
        if args.only and not any(o in f"{fmt}:{label}" for o in args.only):
            continue
        _log(f"{name}: {fmt} {label}")
        src = sources[src_key]
        stem = f"{fmt}_{label.replace('/', '_').replace(':', '')}"
        path = art / f"{stem}.{fmt}"
        t0 = time.perf_counter()
        res = export(src, fmt, path, x32, quant=quant, overwrite=True, verify_samples=64, calibration=calib, **kw)
        export_s = time.perf_counter() - t0
        limit = 10_000 if fmt == "onnx" else (args.tflite_16x8_limit if quant == "w8a16" else args.tflite_limit)
        runner = open_runner(fmt, path)
        t0 = time.perf_counter()
        got = runtime_predictions(runner, test, limit)
        eval_s = time.perf_counter() - t0
        ref = preds[src_key][:limit]
        # latency at 224x224: the same ONNX file when its H/W are dynamic, else a 224 twin
        lat_file = path
        if fmt == "onnx" and res.metadata.get("dynamic_axes", "").endswith("width"):
            lat_runner = runner
        else:
            twin = art / f"{stem}_224.{fmt}"
            tsrc = src
            if src_key in coded or src_key == "edgeslim-int8":
                cal = [(torch.nn.functional.interpolate(b, size=(224, 224), mode="bilinear"), y) for b, y in calibration_subset("train", 32, batch_size=16)]
                tsrc = edgeslim.quantize(base, (x224,), quant, calibration=cal)
            export(tsrc, fmt, twin, x224, quant=quant, overwrite=True, verify=False, calibration_size=32, **kw)
            lat_runner, lat_file = open_runner(fmt, twin), twin
        reps = max(3, args.reps // 10) if (quant == "w8a16" and fmt == "tflite") else args.reps
        row = {
            "model": name, "format": fmt, "source": src_key, "quant": quant, "activations": res.metadata.get("activations"),
            "images": int(limit), "top1_runtime": float((got == labels[:limit]).mean()),
            "top1_torch": float((ref == labels[:limit]).mean()), "agreement": float((got == ref).mean()),
            "bytes": res.bytes, "latency_ms_224": None, "latency_reps": reps, "export_s": export_s, "eval_s": eval_s,
            "params": params.get(src_key, params["fp32"]), "verification": res.verification.to_dict() if res.verification else None,
            "compute_dtypes": res.dtypes.get("compute_dtypes"), "float_compute_ops": res.dtypes.get("float_compute_ops"),
            "route": res.metadata.get("route"), "ort_graph_optimization": res.metadata.get("ort_graph_optimization"),
            "coded": res.metadata.get("coded"), "prune": prune_how if src_key == "pruned" else None,
            "calibration_images": args.calibration, "latency_file": str(lat_file), **args.provenance,
        }
        row["delta_pt"] = 100 * (row["top1_runtime"] - row["top1_torch"])
        rows.append(row)
        timers.append((row, lat_runner, reps))
        save()
        _log(f"  top-1 {row['top1_runtime']:.4f} vs torch {row['top1_torch']:.4f} ({row['delta_pt']:+.2f} pt), "
             f"{res.bytes / 2**20:.2f} MiB")
    interleaved_latency(timers)
    save()


def interleaved_latency(timers: list[tuple[dict[str, Any], Any, int]]) -> None:
    """Median batch-1 224x224 latency of every runner, timed round-robin so machine noise hits all alike."""
    x = torch.randn(1, 3, 224, 224).numpy()
    for _, runner, _ in timers:
        for _ in range(2):
            runner(x)
    times: list[list[float]] = [[] for _ in timers]
    for rep in range(max((r for _, _, r in timers), default=0)):
        for i, (_, runner, reps) in enumerate(timers):
            if rep < reps:
                t = time.perf_counter()
                runner(x)
                times[i].append((time.perf_counter() - t) * 1e3)
    for (row, _, _), ts in zip(timers, times, strict=True):
        row["latency_ms_224"] = statistics.median(ts)
        _log(f"  {row['model']} {row['format']} {row['source']}/{row['quant']}: {row['latency_ms_224']:.2f} ms")


def latency_part(args: argparse.Namespace) -> None:
    """Re-time the artefacts of the saved rows (``latency_file``), all of a model interleaved, ``--reps`` each."""
    for part in sorted(RESULTS.glob(".export_rows_*.json")):
        rows = json.loads(part.read_text())
        timers = []
        for row in rows:
            fmt = row["format"]
            reps = max(3, args.reps // 10) if (row["quant"] == "w8a16" and fmt == "tflite") else args.reps
            row["latency_reps"] = reps
            timers.append((row, open_runner(fmt, Path(row["latency_file"])), reps))
        _log(f"{part.name}: timing {len(timers)} artefacts interleaved, {args.reps} reps")
        interleaved_latency(timers)
        part.write_text(json.dumps(rows, indent=1, default=str))


def layerwise_part(args: argparse.Namespace) -> dict[str, Any]:
    from edgeslim.data import fashion_mnist_loader
    from edgeslim.exporters.layerwise import layerwise_report, plot_report
    from edgeslim.models import load

    art = Path(args.artifacts) / "resnet18-fmnist"
    model = load("resnet18-fmnist")
    x = next(iter(fashion_mnist_loader("test", limit=32, batch_size=32)))[0]
    files = {"ONNX int8 (u8s8)": art / "onnx_fp32_int8.onnx", "TFLite int8": art / "tflite_fp32_int8.tflite"}
    report = layerwise_report(model, files, x)
    png = RESULTS / "export_layerwise.png"
    plot_report(report, png, title="ResNet-18 int8: per-layer error vs PyTorch fp32 (32 test images)")
    _log(f"wrote {png}")
    return {"inputs": 32, "png": png.name, "rows": report.rows()}


def write_markdown(data: dict[str, Any]) -> str:
    lines = [
        "# Exporters benchmark", "",
        f"{data['machine']}. Top-1 measured IN the runtime (ONNX Runtime and LiteRT: all 10,000 test images; "
        "LiteRT 16x8: the first 500) against the PyTorch model each artefact came from, on the same images. "
        f"Latency: batch 1, 224x224, {THREADS} threads, median of the reps shown.", "",
        "| model | format | source | quant | images | top-1 runtime | top-1 torch | Δ pt | agree | MiB | ms @224 | × vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {(r["model"], r["format"]): r["latency_ms_224"] for r in data["rows"] if r["source"] == "fp32" and r["quant"] == "fp32"}
    for r in data["rows"]:
        q = r["quant"] + (f" ({r['activations']})" if r.get("activations") else "")
        how = r.get("prune") or ""
        src = r["source"] + ((" (sensitivity" if "sensitivity" in how else " (uniform") + (", fine-tuned)" if "fine-tune" in how else ")") if how else "")
        ref = base.get((r["model"], r["format"]))
        ratio = f"{ref / r['latency_ms_224']:.2f}" if ref else "–"
        lines.append(
            f"| {r['model']} | {r['format']} | {src} | {q} | {r['images']} | {100 * r['top1_runtime']:.2f} | "
            f"{100 * r['top1_torch']:.2f} | {r['delta_pt']:+.2f} | {100 * r['agreement']:.2f} | {r['bytes'] / 2**20:.2f} | "
            f"{r['latency_ms_224']:.1f} ({r['latency_reps']}) | {ratio} |"
        )
    lines += runs_lines(data["rows"])
    notes = data.get("notes", [])
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    if data.get("layerwise"):
        lines += ["", "## Per-layer error of the int8 ResNet-18 exports", "", f"![per-layer]({data['layerwise']['png']})", "",
                  "| layer | ONNX rel. err | ONNX cosine | TFLite rel. err | TFLite cosine |", "|---|---|---|---|---|"]
        for row in data["layerwise"]["rows"]:
            vals = [row.get(k) for k in ("ONNX int8 (u8s8)", "TFLite int8")]
            cells = " | ".join(f"{v['rel_error']:.4f} | {v['cosine']:.5f}" if v else "– | –" for v in vals)
            lines.append(f"| {row['layer']} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet18-fmnist", "mobilenet_v2-fmnist"])
    ap.add_argument("--parts", nargs="+", default=["export", "layerwise", "report"], choices=["export", "latency", "layerwise", "report"])
    ap.add_argument("--only", nargs="*", default=[], help="substrings of 'fmt:source/quant' to run (default: all)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--tflite-limit", type=int, default=10_000)
    ap.add_argument("--calibration", type=int, default=512, help="calibration images (seeded, train split) for every quantized variant")
    ap.add_argument("--round-to", type=int, default=16, help="pruned channel counts: multiples of this (0: any)")
    ap.add_argument("--finetune-epochs", type=float, default=0.25, help="distilled fine-tune of the pruned model")
    ap.add_argument("--tflite-16x8-limit", type=int, default=500)
    ap.add_argument("--no-coded", action="store_true")
    ap.add_argument("--artifacts", default="/tmp/edgeslim-export-bench")
    ap.add_argument("--prune", default="sensitivity", choices=["uniform", "sensitivity"], help="pruning allocation")
    ap.add_argument("--tag", default="", help="suffix of the per-model rows file (parallel partial runs)")
    args = ap.parse_args()
    args.provenance = record("export.py")
    torch.set_num_threads(THREADS)
    os.environ.setdefault("EDGESLIM_ORT_THREADS", str(THREADS))
    RESULTS.mkdir(parents=True, exist_ok=True)
    jpath = RESULTS / "export.json"
    data: dict[str, Any] = json.loads(jpath.read_text()) if jpath.exists() else {"rows": [], "notes": []}
    data["machine"] = f"{os.cpu_count()} CPU cores, {platform.machine()}; torch {torch.__version__}; " + (
        "x86 without VNNI (ONNX Runtime's U8S8 kernels saturate: the auto ONNX encoding is u8u8)"
        if x86_u8s8_overflows() else "ONNX Runtime's U8S8 kernels exact here (the auto ONNX encoding is u8s8)")

    def save() -> None:
        jpath.write_text(json.dumps(data, indent=1, default=str))
        (RESULTS / "export.md").write_text(write_markdown(data))

    if "export" in args.parts:  # one process per model can run side by side: rows go to a per-model file
        for name in args.models:
            rows: list[dict[str, Any]] = []
            part = RESULTS / f".export_rows_{name}{args.tag}.json"

            def save_part(rows: list[dict[str, Any]] = rows, part: Path = part) -> None:
                part.write_text(json.dumps(rows, indent=1, default=str))

            run_model(name, args, rows, save_part)
    if "latency" in args.parts:
        latency_part(args)
    if "layerwise" in args.parts:
        data["layerwise"] = layerwise_part(args)
        save()
    if "report" in args.parts:
        rows = []
        for name in ("resnet18-fmnist", "mobilenet_v2-fmnist"):
            for part in sorted(RESULTS.glob(f".export_rows_{name}*.json")):
                rows += json.loads(part.read_text())
        data["rows"] = rows
        data["notes"] = NOTES
        save()


if __name__ == "__main__":
    main()
