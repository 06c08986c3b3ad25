"""Exporters benchmark: every variant exported, then evaluated IN its runtime.

For ResNet-18 and MobileNetV2 (Fashion-MNIST references): fp32, int8 (U8S8 and, for
ResNet-18, S8S8), W8A16, pruned-50 % fp32 and int8, log2:4 and codebook:4 (ONNX), as ONNX
(ONNX Runtime, all 10,000 test images) and TFLite (ai-edge-litert, first 2,000 test images;
16x8 on fewer, it has no XNNPACK kernels). Each row: top-1 in the runtime vs top-1 of the
PyTorch model it came from (same images), bytes, median latency at 224x224 (batch 1, 2 threads).
Writes ``benchmarks/results/export.{json,md}`` and the per-layer report of the int8 ResNet-18
(``export_layerwise.png``).

    nice .venv/bin/python benchmarks/export.py              # everything (long on 2 cores)
    .venv/bin/python benchmarks/export.py --parts layerwise # only the per-layer report
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
NOTES = [
    "Each artefact is compared with the PyTorch model it came from on the same images: fp32/pruned rows with the "
    "eager model, int8/w8a16 rows with the float model they were quantized from (ORT quantize_static / "
    "ai-edge-quantizer), log2/codebook rows with the edgeslim PT2E model (`edgeslim.quantize`).",
    "Pruned rows: 50 % of the parameters removed by `edgeslim.prune`, NOT fine-tuned (the export is what is measured "
    "here; see benchmarks/pruning.md for fine-tuned accuracy). Uniform allocation without fine-tuning wrecks both "
    "models; the sensitivity-allocation rows keep a usable model.",
    "ONNX int8 = U8S8 unless marked s8s8; W8A16 ONNX runs with ORT_DISABLE_ALL (ORT's optimised int16 graph is wrong).",
    "log2:4 / codebook:4 ONNX: 4-bit codes (UINT4) + per-channel int8 codebook feeding DequantizeLinear; ORT folds "
    "the decode at load time. Their 224x224 latency is measured on a twin quantized at 224 (the PT2E graph has a "
    "static H/W).",
    "TFLite w8a16 (16x8) has no XNNPACK kernels: evaluated on fewer images, latency with fewer reps.",
    "Latency: batch 1, 224x224, 2 threads, median; measured while other jobs shared the 2 cores (load average ~10), "
    "so absolute ms are inflated and ratios indicative only.",
]
THREADS = 2


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pruned_50(model: torch.nn.Module, x: torch.Tensor, allocation: str = "uniform") -> tuple[torch.nn.Module, str]:
    """About 50 % of the parameters removed (structured, L2, ``allocation``), no fine-tuning."""
    try:
        from edgeslim.data import fashion_mnist_loader
        from edgeslim.plugin.pruning import Allocation, PruneConfig, Target, prune

        data = fashion_mnist_loader("train", batch_size=128, seed=1) if allocation == "sensitivity" else None
        res = prune(model, x, PruneConfig(target=Target.parse("params=0.5"), allocation=Allocation(allocation)), data=data)
        return res.model.eval(), f"edgeslim.prune(params=0.5, {allocation} allocation, L2), no fine-tuning"
    except Exception as exc:  # the pruning plugin is developed in parallel
        import torch_pruning as tp

        _log(f"edgeslim.prune unavailable ({type(exc).__name__}: {exc}); using torch-pruning directly")
        m = copy.deepcopy(model)
        head = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)][-1:]
        tp.pruner.BasePruner(
            m, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.29, ignored_layers=head
        ).step()
        return m.eval(), "torch-pruning BasePruner(ratio=0.29, L2), no fine-tuning"


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


def latency_ms(runner: Any, hw: int, reps: int) -> float:
    x = torch.randn(1, 3, hw, hw).numpy()
    for _ in range(2):
        runner(x)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        runner(x)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def open_runner(fmt: str, path: Path) -> Any:
    from edgeslim.exporters.onnx import OrtRunner
    from edgeslim.exporters.tflite import LiteRTRunner

    return OrtRunner(path, threads=THREADS) if fmt == "onnx" else LiteRTRunner(path, threads=THREADS)


def run_model(name: str, args: argparse.Namespace, rows: list[dict[str, Any]], save: Any) -> None:
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
    pruned, prune_how = pruned_50(base, x32, args.prune)
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in (("fp32", base), ("pruned", pruned))}
    sources: dict[str, Any] = {"fp32": base, "pruned": pruned}
    coded = [] if args.no_coded or (args.only and not any(":" in o for o in args.only)) else ["log2:4", "codebook:4"]
    for spec in coded:
        _log(f"{name}: edgeslim.quantize {spec}")
        sources[spec] = edgeslim.quantize(base, (x32,), spec, calibration=calibration_subset("train", 256))
    preds = {}
    for key, src in sources.items():
        _log(f"{name}: torch top-1 of {key}")
        preds[key] = torch_predictions(getattr(src, "model", src), test)

    variants = [
        ("onnx", "fp32", "fp32", {}), ("onnx", "fp32", "int8", {}),
        *([("onnx", "fp32", "int8", {"activations": "s8s8"})] if "resnet" in name else []),
        ("onnx", "fp32", "w8a16", {}), ("onnx", "pruned", "fp32", {}), ("onnx", "pruned", "int8", {}),
        *[("onnx", spec, spec, {}) for spec in coded],
        ("tflite", "fp32", "fp32", {}), ("tflite", "fp32", "int8", {}), ("tflite", "fp32", "w8a16", {}),
        ("tflite", "pruned", "fp32", {}), ("tflite", "pruned", "int8", {}),
    ]
    for fmt, src_key, quant, kw in variants:
        label = f"{src_key}/{quant}" + ("/s8s8" if kw.get("activations") == "s8s8" else "")
        if args.only and not any(o in f"{fmt}:{label}" for o in args.only):
            continue
        _log(f"{name}: {fmt} {label}")
        src = sources[src_key]
        stem = f"{fmt}_{label.replace('/', '_').replace(':', '')}"
        path = art / f"{stem}.{fmt}"
        t0 = time.perf_counter()
        res = export(src, fmt, path, x32, quant=quant, overwrite=True, verify_samples=64, calibration_size=256, **kw)
        export_s = time.perf_counter() - t0
        limit = 10_000 if fmt == "onnx" else (args.tflite_16x8_limit if quant == "w8a16" else args.tflite_limit)
        runner = open_runner(fmt, path)
        t0 = time.perf_counter()
        got = runtime_predictions(runner, test, limit)
        eval_s = time.perf_counter() - t0
        ref = preds[src_key][:limit]
        # latency at 224x224: the same ONNX file when its H/W are dynamic, else a 224 twin
        if fmt == "onnx" and res.metadata.get("dynamic_axes", "").endswith("width"):
            lat_runner = runner
        else:
            twin = art / f"{stem}_224.{fmt}"
            tsrc = src
            if quant in coded:
                cal = [(torch.nn.functional.interpolate(b, size=(224, 224), mode="bilinear"), y) for b, y in calibration_subset("train", 32, batch_size=16)]
                tsrc = edgeslim.quantize(base, (x224,), quant, calibration=cal)
            export(tsrc, fmt, twin, x224, quant=quant, overwrite=True, verify=False, calibration_size=32, **kw)
            lat_runner = open_runner(fmt, twin)
        reps = max(3, args.reps // 10) if (quant == "w8a16" and fmt == "tflite") else args.reps
        lat = latency_ms(lat_runner, 224, reps)
        row = {
            "model": name, "format": fmt, "source": src_key, "quant": quant, "activations": res.metadata.get("activations"),
            "images": int(limit), "top1_runtime": float((got == labels[:limit]).mean()),
            "top1_torch": float((ref == labels[:limit]).mean()), "agreement": float((got == ref).mean()),
            "bytes": res.bytes, "latency_ms_224": lat, "latency_reps": reps, "export_s": export_s, "eval_s": eval_s,
            "params": params.get(src_key, params["fp32"]), "verification": res.verification.to_dict() if res.verification else None,
            "compute_dtypes": res.dtypes.get("compute_dtypes"), "float_compute_ops": res.dtypes.get("float_compute_ops"),
            "route": res.metadata.get("route"), "ort_graph_optimization": res.metadata.get("ort_graph_optimization"),
            "coded": res.metadata.get("coded"), "prune": prune_how if src_key == "pruned" else None,
        }
        row["delta_pt"] = 100 * (row["top1_runtime"] - row["top1_torch"])
        rows.append(row)
        save()
        _log(f"  top-1 {row['top1_runtime']:.4f} vs torch {row['top1_torch']:.4f} ({row['delta_pt']:+.2f} pt), "
             f"{res.bytes / 2**20:.2f} MiB, {lat:.2f} ms")


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
        f"{data['machine']}. Top-1 measured IN the runtime (ONNX Runtime: all 10,000 test images; LiteRT: "
        "first 2,000, 16x8 fewer) against the PyTorch model each artefact came from, on the same images. "
        f"Latency: batch 1, 224x224, {THREADS} threads, median of the reps shown.", "",
        "| model | format | source | quant | images | top-1 runtime | top-1 torch | Δ pt | agree | MiB | ms @224 | × vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {(r["model"], r["format"]): r["latency_ms_224"] for r in data["rows"] if r["source"] == "fp32" and r["quant"] == "fp32"}
    for r in data["rows"]:
        q = r["quant"] + (f" ({r['activations']})" if r.get("activations") else "")
        src = r["source"] + (" (sensitivity)" if "sensitivity" in (r.get("prune") or "") else " (uniform)" if r.get("prune") else "")
        ref = base.get((r["model"], r["format"]))
        ratio = f"{ref / r['latency_ms_224']:.2f}" if ref else "–"
        lines.append(
            f"| {r['model']} | {r['format']} | {src} | {q} | {r['images']} | {100 * r['top1_runtime']:.2f} | "
            f"{100 * r['top1_torch']:.2f} | {r['delta_pt']:+.2f} | {100 * r['agreement']:.2f} | {r['bytes'] / 2**20:.2f} | "
            f"{r['latency_ms_224']:.1f} ({r['latency_reps']}) | {ratio} |"
        )
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
    ap.add_argument("--parts", nargs="+", default=["export", "layerwise", "report"], choices=["export", "layerwise", "report"])
    ap.add_argument("--only", nargs="*", default=[], help="substrings of 'fmt:source/quant' to run (default: all)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--tflite-limit", type=int, default=2000)
    ap.add_argument("--tflite-16x8-limit", type=int, default=500)
    ap.add_argument("--no-coded", action="store_true")
    ap.add_argument("--artifacts", default="/tmp/edgeslim-export-bench")
    ap.add_argument("--prune", default="uniform", choices=["uniform", "sensitivity"], help="pruning allocation")
    ap.add_argument("--tag", default="", help="suffix of the per-model rows file (parallel partial runs)")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    os.environ.setdefault("EDGESLIM_ORT_THREADS", str(THREADS))
    RESULTS.mkdir(parents=True, exist_ok=True)
    jpath = RESULTS / "export.json"
    data: dict[str, Any] = json.loads(jpath.read_text()) if jpath.exists() else {"rows": [], "notes": []}
    data["machine"] = f"{os.cpu_count()} CPU cores, x86-64, shared with other jobs (nice); torch {torch.__version__}"

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
    if "layerwise" in args.parts:
        data["layerwise"] = layerwise_part(args)
        save()
    if "report" in args.parts:
        rows = []
        for name in ("resnet18-fmnist", "mobilenet_v2-fmnist"):
            for tag in ("", "_sens"):
                part = RESULTS / f".export_rows_{name}{tag}.json"
                if part.exists():
                    rows += json.loads(part.read_text())
        data["rows"] = rows
        data["notes"] = NOTES
        save()


if __name__ == "__main__":
    main()
