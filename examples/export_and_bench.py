"""Export a model to ONNX and TFLite (verified, with top-1 on real test images) and benchmark both here.

    python examples/export_and_bench.py                                   # the bundled ResNet-18, int8
    python examples/export_and_bench.py --model drop_in_int8.pt           # a model saved by edgeslim.save

``--model`` is a bundled model name or a saved ``.pt``: a quantized file (``edgeslim.save`` of a
``QuantResult``) is exported as it is (its own int8 scales), a float/pruned file or model name
is quantized with ``--quant`` during export. Each artefact is checked against PyTorch on real
images by ``edgeslim.export`` and its top-1 measured in its own runtime; ``edgeslim.bench`` then
times it on this machine and measures top-1 again through the benchmark agent.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import edgeslim
from edgeslim.data import fashion_mnist_loader
from edgeslim.io import read_header
from edgeslim.plugin.quantization.saved import load_result


def load_any(spec: str) -> tuple[Any, bool]:
    """``(model or QuantResult, already quantized?)`` from a bundled name or a saved file."""
    if spec.endswith(".pt") and Path(spec).is_file():
        if read_header(spec).get("kind") == "quantized":
            return load_result(spec), True
        return edgeslim.load(spec), False
    return edgeslim.load_model(spec).eval(), False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18-fmnist", help="bundled model name or a saved .pt")
    ap.add_argument("--quant", default="int8", help="precision for a float model (fp32, int8 ...)")
    ap.add_argument("--formats", default="onnx,tflite")
    ap.add_argument("--eval-images", type=int, default=500, help="real test images for top-1")
    ap.add_argument("--runs", type=int, default=30, help="timed runs per artefact")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", default=None, help="where the artefacts go (default: a temporary folder)")
    args = ap.parse_args()
    start = time.perf_counter()

    model, quantized = load_any(args.model)
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="edgeslim-export-"))
    x = torch.randn(1, 3, 32, 32)
    test = fashion_mnist_loader("test", batch_size=100, limit=args.eval_images)
    quant = None if quantized else args.quant

    rows: list[dict[str, Any]] = []
    for fmt in args.formats.split(","):
        res = edgeslim.export(model, fmt, out_dir / f"model.{fmt}", x, quant=quant, eval_data=test,
                              eval_name="fashion-mnist/test", overwrite=True, eval_samples=args.eval_images,
                              verify_samples=64, calibration_size=128)
        acc = res.accuracy
        rows.append({"format": fmt, "quant": res.quant, "path": res.path, "mib": res.bytes / 2**20,
                     "export_top1": acc.top1_artefact if acc else None,
                     "float_top1": acc.top1_float if acc else None})
        print(f"exported {res.path} ({res.quant}, verified: {res.verification is not None})", flush=True)

    images, labels = next(iter(fashion_mnist_loader("test", batch_size=args.eval_images, limit=args.eval_images)))
    inputs = out_dir / "inputs.npz"
    np.savez(inputs, x=images.numpy().astype(np.float32), y=labels.numpy().astype(np.int64))
    report = edgeslim.bench([r["path"] for r in rows], "local", runs=args.runs, warmup=3, threads=args.threads,
                            inputs=inputs)
    for row, bench in zip(rows, report.results, strict=True):
        if bench.status != "ok":
            raise SystemExit(f"bench of {row['path']} failed: {bench.error}")
        row["p50"], row["bench_top1"] = bench.p50, bench.data.get("top1")

    def pct(v: float | None) -> str:
        return "   -   " if v is None else f"{100 * v:6.2f}%"

    print(f"\n{'format':<7} {'quant':<6} {'MiB':>6} {'top-1 export':>13} {'top-1 bench':>12} {'p50 ms':>8}")
    for r in rows:
        print(f"{r['format']:<7} {r['quant']:<6} {r['mib']:6.2f} {pct(r['export_top1']):>13} "
              f"{pct(r['bench_top1']):>12} {r['p50']:8.2f}")
    if rows[0]["float_top1"] is not None:
        print(f"float model top-1 on the same {args.eval_images} images: {pct(rows[0]['float_top1']).strip()}")
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
