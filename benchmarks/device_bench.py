"""Local bench of ResNet-18 (Fashion-MNIST) fp32 vs int8 QDQ in ONNX Runtime, side by side in one run.

The fp32 model is exported at 224x224 (``torch.onnx.export(..., dynamo=True)``); two int8 variants
come from ``onnxruntime.quantization.quantize_static`` calibrated on 64 real Fashion-MNIST training
images: U8S8 (uint8 activations, int8 per-channel weights) and S8S8. All three are timed by one
``edgeslim.device_bench.bench`` call on the local target (same threads, same process layout), and
top-1 is measured on 64 upsampled test images as a sanity check (the model was trained at 32x32).

Run: ``.venv/bin/python benchmarks/device_bench.py`` → ``benchmarks/results/device_bench.{json,md}``.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgeslim.data import FashionMNIST
from edgeslim.device_bench import bench
from edgeslim.models import load
from provenance import record

OUT = Path(__file__).parent / "results"
SIZE, RUNS, WARMUP, THREADS, N_CALIB, N_EVAL = 224, 30, 5, 2, 64, 64


def images(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` preprocessed Fashion-MNIST images upsampled to SIZE, and their labels."""
    ds = FashionMNIST(split, limit=n)
    x = torch.stack([ds[i][0] for i in range(n)])
    y = np.array([ds[i][1] for i in range(n)])
    x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return x.numpy().astype(np.float32), y


class Calibration(CalibrationDataReader):
    """Feeds real Fashion-MNIST images one at a time."""

    def __init__(self, x: np.ndarray, name: str) -> None:
        self.items = iter([{name: x[i:i + 1]} for i in range(len(x))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def main() -> None:
    torch.manual_seed(0)
    prov = record("device_bench.py")
    work = Path(tempfile.mkdtemp(prefix="edgeslim-devbench-"))
    model = load("resnet18-fmnist").eval()
    fp32 = work / "resnet18_fp32.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, SIZE, SIZE),), str(fp32), dynamo=True, external_data=False)
    pre = work / "resnet18_pre.onnx"
    quant_pre_process(str(fp32), str(pre))
    name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    calib, _ = images("train", N_CALIB)
    variants = {"int8_u8s8": QuantType.QUInt8, "int8_s8s8": QuantType.QInt8}
    paths = [fp32]
    for tag, act in variants.items():
        t0 = time.perf_counter()
        path = work / f"resnet18_{tag}.onnx"
        quantize_static(str(pre), str(path), Calibration(calib, name), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=act, weight_type=QuantType.QInt8)
        print(f"quantized {tag} in {time.perf_counter() - t0:.1f} s")
        paths.append(path)
    x, y = images("test", N_EVAL)
    np.savez(work / "eval.npz", x=x, y=y)
    report = bench(paths, "local", runs=RUNS, warmup=WARMUP, threads=THREADS, inputs=work / "eval.npz",
                   results_file=work / "results.jsonl")
    rows = []
    base = report.results[0].data["p50"]
    for r in report.results:
        d = r.data
        rows.append({"artifact": Path(r.artifact).name, "size_mib": Path(r.artifact).stat().st_size / 2**20,
                     "p50_ms": d["p50"], "p90_ms": d["p90"], "p99_ms": d["p99"], "mean_ms": d["mean"], "std_ms": d["std"],
                     "load_ms": d["load_ms"], "peak_rss_mb": d["peak_rss_mb"], "top1_upsampled": d["top1"],
                     "speedup_vs_fp32": base / d["p50"]})
    first = report.results[0].data
    meta = {"runtime": f"{first['runtime']} {first['runtime_version']}", "machine": first["machine"],
            "cpu_model": first["cpu_model"], "cpu_cores": first["cpu_cores"], "threads": THREADS, "runs": RUNS,
            "warmup": WARMUP, "input": f"1x3x{SIZE}x{SIZE}", "python": platform.python_version(),
            "torch": torch.__version__, "calibration_images": N_CALIB, "eval_images": N_EVAL, **prov}
    OUT.mkdir(exist_ok=True)
    (OUT / "device_bench.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    lines = ["# device_bench: ResNet-18 fp32 vs int8 (ONNX Runtime, local)", "",
             f"{meta['runtime']} on {meta['cpu_model']} ({meta['machine']}, {meta['cpu_cores']} cores), "
             f"{THREADS} threads, input {meta['input']}, {WARMUP} warm-up + {RUNS} timed runs each, one bench call.",
             "", f"Command: `{prov['command']}` at commit `{prov['commit']}` ({prov['date']}).",
             "", "| artefact | size MiB | p50 ms | p90 ms | p99 ms | load ms | peak RSS MiB | top-1 (upsampled) | speed-up vs fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['artifact']} | {r['size_mib']:.1f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} "
                     f"| {r['load_ms']:.0f} | {r['peak_rss_mb']:.0f} | {r['top1_upsampled']:.1%} | {r['speedup_vs_fp32']:.2f}x |")
    lines += ["", "Top-1 is a sanity check on 64 test images upsampled to 224 px (the model was trained at 32 px).",
              "The machine is shared (2 cores), so absolute numbers move between runs; the ratios are measured in one run."]
    (OUT / "device_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
