"""Quantization benchmark: scheme x {PTQ, QAT} x {top-1, weight bytes, mean weight SQNR}.

Reference ResNet-18 and MobileNetV2 (Fashion-MNIST, full 10k test set, calibration: 512
seeded training images, MSE calibrator), plus ONNX Runtime's ``quantize_static`` on the fp32 ONNX with the same
calibration images, evaluated in ONNX Runtime. Writes ``benchmarks/results/quantization.json``
(``{"rows": [...]}``) and ``.md``. Rows already in the JSON are kept (``--force`` redoes them),
so sections can run separately::

    nice python benchmarks/quantization.py --section ptq
    nice python benchmarks/quantization.py --section qat --qat-steps 300
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeslim.data import calibration_subset, evaluate, fashion_mnist_loader
from edgeslim.models import load
from edgeslim.plugin.quantization.api import convert, prepare_qat, quantize
from edgeslim.plugin.quantization.qat import train_qat
from provenance import record, runs_lines

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("resnet18-fmnist", "mobilenet_v2-fmnist")
PTQ_SCHEMES = ("int8", "w8a16", "log2:4", "codebook:4", "pwl:4", "log2:4/log2:5")
#: (model, scheme, peak lr) of the QAT rows: KD from the fp32 model, SGD momentum 0.9, cosine decay.
QAT_RUNS = (("resnet18-fmnist", "int8", 1e-3), ("resnet18-fmnist", "log2:4", 3e-3),
            ("mobilenet_v2-fmnist", "int8", 1e-3), ("mobilenet_v2-fmnist", "log2:4", 3e-3))
X = torch.zeros(2, 3, 32, 32)


def _load_rows(path: Path) -> list[dict[str, Any]]:
    return list(json.loads(path.read_text())["rows"]) if path.is_file() else []


def _save(rows: list[dict[str, Any]], path: Path) -> None:
    order = {m: i for i, m in enumerate(MODELS)}
    rows.sort(key=lambda r: (order.get(r["model"], 9), r["mode"] != "fp32", r["mode"], r["scheme"]))
    path.write_text(json.dumps({"rows": rows}, indent=2, sort_keys=True) + "\n")
    path.with_suffix(".md").write_text(markdown(rows))


def markdown(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of the rows."""
    fp = {r["model"]: r["top1"] for r in rows if r["mode"] == "fp32"}
    out = ["# Quantization benchmark (Fashion-MNIST 10k test set, calibration: 512 train images, MSE calibrator unless noted)", "",
           "| model | scheme | mode | top-1 % | Δ vs fp32 (pt) | weight MiB | mean weight SQNR dB | notes |",
           "|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        delta = (r["top1"] - fp.get(r["model"], r["top1"])) * 100
        sq = "" if r.get("sqnr_db") is None or not math.isfinite(r["sqnr_db"]) else f"{r['sqnr_db']:.1f}"
        out.append(f"| {r['model']} | {r['scheme']} | {r['mode']} | {r['top1'] * 100:.2f} | {delta:+.2f} | "
                   f"{r['weight_bytes'] / 2**20:.2f} | {sq} | {r.get('notes', '')} |")
    out += runs_lines(rows)
    return "\n".join(out) + "\n"


def _row(model: str, scheme: str, mode: str, top1: float, wbytes: int, sqnr: float | None, **extra: Any) -> dict[str, Any]:
    return {"model": model, "scheme": scheme, "mode": mode, "top1": round(top1, 4), "weight_bytes": int(wbytes),
            "sqnr_db": None if sqnr is None or not math.isfinite(sqnr) else round(sqnr, 2), **extra}


def ort_static(model_name: str, test: Any, calib: Any) -> dict[str, Any]:
    """fp32 ONNX -> onnxruntime.quantization.quantize_static (QDQ, S8S8, per-channel, MinMax) -> top-1 in ORT."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = load(model_name)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, q8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        torch.onnx.export(model, (X,), str(fp32), dynamo=True, external_data=False,
                          dynamic_shapes=({0: torch.export.Dim("b")},))
        name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter([{name: x.numpy()} for x, _ in calib])

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.it, None)

        quantize_static(str(fp32), str(q8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = 2
        sess = ort.InferenceSession(str(q8), opts, providers=["CPUExecutionProvider"])
        correct = total = 0
        for x, y in test:
            pred = sess.run(None, {name: x.numpy()})[0].argmax(1)
            correct += int((torch.from_numpy(pred) == y).sum())
            total += int(y.numel())
        nbytes = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1)
    return _row(model_name, "ort-quantize_static-int8", "ptq", correct / total, nbytes, None,
                notes="ONNX Runtime QDQ S8S8 per-channel MinMax, run in ORT (ORT_DISABLE_ALL)")


def main() -> None:
    """Run the requested sections and update the result files."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--section", choices=["fp32", "ptq", "mixed", "ort", "qat", "all"], default="all")
    ap.add_argument("--qat-steps", type=int, default=300)
    ap.add_argument("--qat-batch", type=int, default=64)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--only", nargs="*", default=None, help="Only these schemes (e.g. log2:4 codebook:4)")
    ap.add_argument("--out", type=Path, default=RESULTS / "quantization.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = _load_rows(args.out)
    have = {(r["model"], r["scheme"], r["mode"]) for r in rows}
    test = fashion_mnist_loader("test", batch_size=500)
    calib = calibration_subset("train", 512)

    prov = record("quantization.py")

    def add(row: dict[str, Any]) -> None:
        row.update(prov)
        with open(Path(tempfile.gettempdir()) / "edgeslim-quantization-bench.lock", "w") as lock:  # parallel sections
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = [r for r in _load_rows(args.out)
                       if (r["model"], r["scheme"], r["mode"]) != (row["model"], row["scheme"], row["mode"])]
            _save([*current, row], args.out)
        print(json.dumps(row), flush=True)

    def todo(model: str, scheme: str, mode: str) -> bool:
        if args.only is not None and scheme not in args.only:
            return False
        return args.force or (model, scheme, mode) not in have

    sec = args.section
    for name in MODELS:
        if sec in {"fp32", "all"} and todo(name, "fp32", "fp32"):
            m = load(name)
            n = sum(p.numel() for k, p in m.named_parameters() if k.endswith("weight") and p.dim() > 1)
            add(_row(name, "fp32", "fp32", evaluate(m, test), n * 4, None))
        if sec in {"ptq", "all"}:
            for spec in PTQ_SCHEMES:
                if todo(name, spec, "ptq"):
                    t = time.time()
                    r = quantize(load(name), X, spec, calibration=calib)
                    add(_row(name, spec, "ptq", evaluate(r.model, test), r.weight_bytes, r.report.mean_sqnr_db,
                             seconds=round(time.time() - t, 1)))
        if sec in {"mixed", "all"} and todo(name, "mixed", "ptq"):
            from edgeslim.plugin.quantization.mixed_precision import search

            m = load(name)
            choice = search(m, X, calib, budget_fraction=1 / 6, eval_batches=4)
            r = quantize(m, X, choice.config, calibration=calib)
            add(_row(name, "mixed", "ptq", evaluate(r.model, test), r.weight_bytes, r.report.mean_sqnr_db,
                     notes=f"budget 1/6 of fp32 weights; bits {choice.summary()}"))
        if sec in {"ort", "all"} and todo(name, "ort-quantize_static-int8", "ptq"):
            add(ort_static(name, test, calib))
    if sec in {"qat", "all"}:
        train = fashion_mnist_loader("train", batch_size=args.qat_batch, augment=False)
        for name, spec, lr in QAT_RUNS:
            if todo(name, spec, "qat"):
                t = time.time()
                p = prepare_qat(load(name), X, spec)
                train_qat(p, train, steps=args.qat_steps, lr=lr, teacher=load(name), cosine=True)
                r = convert(p)
                frac = args.qat_steps * args.qat_batch / 60000
                add(_row(name, spec, "qat", evaluate(r.model, test), r.weight_bytes, r.report.mean_sqnr_db,
                         seconds=round(time.time() - t, 1),
                         notes=f"QAT {args.qat_steps} steps x {args.qat_batch} = {frac:.2f} epoch, KD from fp32, "
                               f"SGD lr {lr:g} cosine"))

if __name__ == "__main__":
    main()
