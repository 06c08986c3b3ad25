"""ONNX int8 encodings in ONNX Runtime on this CPU: u8s8 (default) vs u8u8 (uint8 weights, same values).

ONNX Runtime's U8S8 GEMM/conv kernels on x86 CPUs without VNNI add pairs of u8·s8 products in
int16 (``vpmaddubsw``) and saturate on large neighbouring weights; the U8U8 kernels widen first.
For each reference model (trained, Fashion-MNIST): ``edgeslim.quantize`` int8 on 512 training
images, the same PT2E graph exported twice (``activations="u8s8"`` / ``"u8u8"``, graph
optimisations on as shipped), then in one run, side by side:

- agreement with the PyTorch int8 model on the first 1,000 test images (cosine, top-1 agreement);
- top-1 on the 10k test set in ONNX Runtime;
- latency: batch 1, one ORT thread, the two sessions interleaved, median of ``--runs``.

Writes ``benchmarks/results/onnx_u8u8.{json,md}``::

    python benchmarks/onnx_u8u8.py [--runs 300]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("resnet18-fmnist", "mobilenet_v2-fmnist", "vit-fmnist")
ENCODINGS = ("u8s8", "u8u8")


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    vnni = any(f in info for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    return f"{name}, {'VNNI' if vnni else 'no VNNI'}{', AVX2' if ' avx2' in info else ''}"


def _logits(session: Any, x: np.ndarray, batch: int = 250) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def measure(name: str, runs: int) -> dict[str, Any]:
    import onnxruntime as ort

    import edgeslim
    from edgeslim.data import calibration_subset, fashion_mnist_loader

    model = edgeslim.load_model(name).eval()
    x1 = torch.zeros(1, 3, 32, 32)
    q = edgeslim.quantize(model, x1, "int8", calibration=calibration_subset(n=512, seed=0))
    test = [(x.numpy(), y.numpy()) for x, y in fashion_mnist_loader("test", batch_size=1000)]
    xs, ys = np.concatenate([x for x, _ in test]), np.concatenate([y for _, y in test])
    with torch.no_grad():
        ref = q.model(torch.from_numpy(xs[:1000])).numpy()
    row: dict[str, Any] = {"model": name}
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for enc in ENCODINGS:
            path = Path(tmp) / f"{enc}.onnx"
            res = edgeslim.export(q, "onnx", path, x1, activations=enc, verify=False)
            sessions[enc] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            out = _logits(sessions[enc], xs[:1000])
            cos = np.sum(out * ref, 1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
            row[enc] = {
                "activations_metadata": res.metadata["activations"], "bytes": res.bytes,
                "cosine_vs_pytorch_int8": round(float(cos.mean()), 6),
                "top1_agreement_vs_pytorch_int8": round(float((out.argmax(1) == ref.argmax(1)).mean()), 4),
                "top1_10k": round(float((_logits(sessions[enc], xs).argmax(1) == ys).mean()), 4),
            }
        times: dict[str, list[float]] = {e: [] for e in ENCODINGS}
        feed = xs[:1]
        for s in sessions.values():
            _logits(s, feed)  # warm-up
        for _ in range(runs):
            for enc, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, {s.get_inputs()[0].name: feed})
                times[enc].append(time.perf_counter() - t0)
    for enc in ENCODINGS:
        row[enc]["latency_ms_median"] = round(1000 * float(np.median(times[enc])), 4)
    row["u8u8_latency_ratio"] = round(row["u8u8"]["latency_ms_median"] / row["u8s8"]["latency_ms_median"], 3)
    with torch.no_grad():
        pt = np.concatenate([q.model(torch.from_numpy(xs[i:i + 1000])).numpy().argmax(1) for i in range(0, len(xs), 1000)])
    row["pytorch_int8_top1_10k"] = round(float((pt == ys).mean()), 4)
    return row


def markdown(data: dict[str, Any]) -> str:
    lines = [
        "# ONNX int8: u8s8 vs u8u8 in ONNX Runtime", "",
        f"CPU: {data['cpu']}; commit {data['commit']}; `{data['command']}`; {data['when']}.", "",
        *[f"- {n}" for n in data["notes"]], "",
        "| model | PyTorch int8 top-1 | encoding | cosine vs PyTorch int8 | top-1 agreement | top-1 (10k, ORT) | latency ms (median, 1 thread) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        for enc in ENCODINGS:
            e = r[enc]
            lines.append(f"| {r['model']} | {100 * r['pytorch_int8_top1_10k']:.2f} | {enc} | {e['cosine_vs_pytorch_int8']:.5f} | "
                         f"{100 * e['top1_agreement_vs_pytorch_int8']:.1f} % | {100 * e['top1_10k']:.2f} | "
                         f"{e['latency_ms_median']:.3f} |")
        lines.append(f"| {r['model']} | | u8u8 / u8s8 latency | | | | {r['u8u8_latency_ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=ROOT, capture_output=True, text=True).stdout.strip()
    data = {
        "name": "onnx_u8u8", "cpu": _cpu(), "commit": sha,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "notes": [
            "Same PT2E int8 graph (512 calibration images), two encodings of the same values; graph optimisations on.",
            "Latency: batch 1, one ORT thread, sessions interleaved, median; the machine is shared, compare the ratio.",
        ],
        "rows": [measure(m, args.runs) for m in args.models],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "onnx_u8u8.json").write_text(json.dumps(data, indent=1) + "\n")
    (RESULTS / "onnx_u8u8.md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
