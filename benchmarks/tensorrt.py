"""ResNet-18 (Fashion-MNIST) as TensorRT engines vs ONNX Runtime's CUDA execution provider, on one NVIDIA GPU.

Variants: fp32, fp16, int8 (edgeslim's QDQ ONNX, signed symmetric activations: explicit quantization)
and pruned 50 % + int8 (the export benchmark's pruned model, ``round_to=16``). Each is exported with
``edgeslim.export(..., "tensorrt")`` (engine built on this GPU and verified against PyTorch) and the
peer runs ONNX Runtime's ``CUDAExecutionProvider`` on the ONNX files edgeslim writes for the same
precision. In one process, interleaved rounds: latency p50/p99 at batch 1 and 64 (224x224), top-1
on the 10,000 Fashion-MNIST test images (upsampled from 32x32, as the reference model was trained),
and GPU energy per inference (NVML, idle baseline subtracted: :mod:`edgeslim.device_bench.energy`).

Run on a machine with an NVIDIA GPU, its driver, ``tensorrt`` and ``onnxruntime-gpu``::

    .venv/bin/python benchmarks/tensorrt.py   # -> benchmarks/results/tensorrt.{json,md}

Without them it refuses (exit 2), names what is missing and writes nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path.pop(0)  # this file is named tensorrt.py: from its own folder it would shadow NVIDIA's `tensorrt`

import numpy as np  # noqa: E402
import torch  # noqa: E402

OUT = HERE / "results"
SIZE, ROUNDS, RUNS_PER_ROUND, WARMUP = 224, 5, 20, 10
VARIANTS = ("fp32", "fp16", "int8", "pruned50-int8")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def missing() -> list[str]:
    """What this machine lacks for the benchmark (empty when it can run)."""
    from edgeslim.exporters.tensorrt import missing_backend

    out = missing_backend()
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            out.append("ONNX Runtime's CUDAExecutionProvider (pip install onnxruntime-gpu in place of onnxruntime)")
    except ImportError:
        out.append("onnxruntime")
    return out


def test_batches(limit: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST test images upsampled to SIZE, in batches of 64."""
    from edgeslim.data import fashion_mnist_loader

    out = []
    for images, labels in fashion_mnist_loader("test", batch_size=64, limit=limit):
        x = torch.nn.functional.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        out.append((x.numpy().astype(np.float32), labels.numpy()))
    return out


class OrtCuda:
    """An ONNX file in ONNX Runtime with the CUDA execution provider (the peer)."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
        if self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"ONNX Runtime fell back to {self.session.get_providers()} for {path.name}")
        self.name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.name: x})[0])


class Trt:
    """A TensorRT engine through the bench runner."""

    def __init__(self, path: Path) -> None:
        from edgeslim.device_bench.runtimes.tensorrt import TensorRtRunner

        self.runner = TensorRtRunner(path)

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.runner.run({self.runner.inputs[0]: x})[0])


def build(work: Path, eval_limit: int, finetune_epochs: float) -> list[dict[str, Any]]:
    """Engines and peer ONNX files of every variant: ``[{variant, runtime, path, runner, build facts}]``."""
    from edgeslim.exporters import export
    from edgeslim.exporters.onnx import torch_to_onnx
    from edgeslim.exporters.tensorrt import Fp16Model
    from edgeslim.models import load

    spec = importlib.util.spec_from_file_location("export_benchmark", HERE / "export.py")
    assert spec is not None and spec.loader is not None
    export_benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_benchmark)  # its pruned model (and cache file naming)
    base = load("resnet18-fmnist").eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    cache = OUT / "artifacts" / f"pruned_uniform_ft{finetune_epochs:g}_r16.pt"
    cache.parent.mkdir(parents=True, exist_ok=True)
    pruned, how = export_benchmark.pruned_50(base, torch.randn(1, 3, 32, 32), "uniform", finetune_epochs, cache, 16)
    _log(f"pruned model: {how}")
    entries = []
    for variant in VARIANTS:
        model, quant = (pruned, "int8") if variant.startswith("pruned") else (base, variant)
        engine = work / f"{variant}.engine"
        res = export(model, "tensorrt", engine, x, quant=quant, eval_samples=eval_limit)
        facts = res.metadata.get("engine", {})
        _log(
            f"{variant}: engine {res.bytes / 2**20:.2f} MiB built in {facts.get('build_s', 0):.1f} s; {res.verification}"
        )
        onnx_path = work / f"{variant}.onnx"
        if quant == "fp16":
            torch_to_onnx(Fp16Model(load("resnet18-fmnist").eval()), x, onnx_path)
        else:
            export(model, "onnx", onnx_path, x, quant=quant, activations="s8s8", verify=False)
        entries.append(
            {
                "variant": variant,
                "runtime": "tensorrt",
                "path": engine,
                "runner": Trt(engine),
                "build_s": facts.get("build_s"),
                "tensorrt": facts.get("tensorrt"),
            }
        )
        entries.append(
            {"variant": variant, "runtime": "onnxruntime-cuda", "path": onnx_path, "runner": OrtCuda(onnx_path)}
        )
    return entries


def top1(runner: Any, batches: list[tuple[np.ndarray, np.ndarray]]) -> float:
    correct = sum(int((runner.run(x).argmax(1) == y).sum()) for x, y in batches)
    return correct / sum(len(y) for _, y in batches)


def timed(entries: list[dict[str, Any]], batch: int) -> None:
    """p50/p99 ms at ``batch``, ROUNDS interleaved rounds of RUNS_PER_ROUND runs per entry."""
    x = np.random.default_rng(0).standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)
    times: dict[int, list[float]] = {i: [] for i in range(len(entries))}
    for e in entries:
        for _ in range(WARMUP):
            e["runner"].run(x)
    for _ in range(ROUNDS):
        for i, e in enumerate(entries):
            for _ in range(RUNS_PER_ROUND):
                t = time.perf_counter_ns()
                e["runner"].run(x)
                times[i].append((time.perf_counter_ns() - t) / 1e6)
    for i, e in enumerate(entries):
        p50, p99 = np.percentile(times[i], [50, 99])
        suffix = "" if batch == 1 else f"_b{batch}"
        e[f"p50_ms{suffix}"], e[f"p99_ms{suffix}"] = float(p50), float(p99)


def energy(entries: list[dict[str, Any]], seconds: float) -> None:
    """GPU joules per inference (batch 1) of every entry, idle baseline subtracted."""
    from edgeslim.device_bench.energy import detect_sensor, measure_energy

    sensor, reason = detect_sensor("/", prefer=("nvml", "nvidia-smi"))
    x = np.random.default_rng(1).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    for e in entries:
        if sensor is None:
            e.update(joules_per_inference=None, avg_watts=None, energy_sensor=None, energy_unavailable_reason=reason)
            continue
        m = measure_energy(sensor, lambda e=e: e["runner"].run(x), idle_s=seconds, active_s=seconds)
        e.update({k: m[k] for k in ("joules_per_inference", "avg_watts", "idle_watts", "energy_sensor", "energy_runs")})
        e["energy_unavailable_reason"] = None


def markdown(data: dict[str, Any]) -> str:
    lines = [
        f"# TensorRT vs ONNX Runtime CUDA EP: ResNet-18 (Fashion-MNIST), {SIZE}x{SIZE}",
        "",
        f"Device: {data['device']}; TensorRT {data['tensorrt']}; onnxruntime {data['onnxruntime']}; "
        f"top-1 on {data['eval_images']} test images; energy: {data['energy_sensor'] or data['energy_reason']}.",
        "",
        "| variant | runtime | MiB | top-1 % | p50 ms b1 | p99 ms b1 | p50 ms b64 | p99 ms b64 | mJ/inf b1 | W above idle |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in data["rows"]:
        mj = "-" if r["joules_per_inference"] is None else f"{1e3 * r['joules_per_inference']:.3f}"
        w = "-" if r["avg_watts"] is None else f"{r['avg_watts']:.1f}"
        lines.append(
            f"| {r['variant']} | {r['runtime']} | {r['bytes'] / 2**20:.2f} | {100 * r['top1']:.2f} | "
            f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['p50_ms_b64']:.2f} | {r['p99_ms_b64']:.2f} | {mj} | {w} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eval-images", type=int, default=10000)
    parser.add_argument("--finetune-epochs", type=float, default=1.0, help="of the pruned model (cached)")
    parser.add_argument("--energy-seconds", type=float, default=5.0)
    args = parser.parse_args()
    lacking = missing()
    if lacking:
        print(
            "benchmarks/tensorrt.py needs an NVIDIA GPU; missing on this machine: "
            + "; ".join(lacking)
            + ". Nothing was measured and nothing was written.",
            file=sys.stderr,
        )
        sys.exit(2)
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgeslim-trt-") as tmp:
        entries = build(Path(tmp), min(args.eval_images, 2000), args.finetune_epochs)
        batches = test_batches(args.eval_images)
        for e in entries:
            e["top1"] = top1(e["runner"], batches)
            e["bytes"] = e["path"].stat().st_size
            _log(f"{e['variant']} {e['runtime']}: top-1 {e['top1']:.4f}")
        timed(entries, 1)
        timed(entries, 64)
        energy(entries, args.energy_seconds)
        device = torch.cuda.get_device_name(0)
        rows = [
            {
                "device": device,
                "images": sum(len(y) for _, y in batches),
                **{k: v for k, v in e.items() if k not in ("runner", "path")},
            }
            for e in entries
        ]
    trt_version = next((r["tensorrt"] for r in rows if r.get("tensorrt")), None)
    data = {
        "benchmark": "tensorrt",
        "device": device,
        "tensorrt": trt_version,
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "size": SIZE,
        "eval_images": rows[0]["images"],
        "energy_sensor": rows[0].get("energy_sensor"),
        "energy_reason": rows[0].get("energy_unavailable_reason"),
        "rows": rows,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "tensorrt.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    (OUT / "tensorrt.md").write_text(markdown(data))
    _log(f"wrote {OUT / 'tensorrt.json'} and {OUT / 'tensorrt.md'}")


if __name__ == "__main__":
    main()
