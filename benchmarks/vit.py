"""The ViT row of the reference models: ``vit-fmnist`` fp32, 50 % pruned (heads + MLP) + fine-tuned, + int8.

``vit-fmnist`` (torchvision ``VisionTransformer``, 6 layers, 6 heads of 32, hidden 192, MLP 384,
32x32 input, 88.80 % fp32) is pruned with ``edgeslim.prune(..., PruneConfig(target="params=0.5"))``
(whole heads and MLP hidden widths; the embedding width is kept), fine-tuned with edgeslim's
``finetune`` (one-cycle SGD, label smoothing, distillation from the fp32 model) for ``--epochs``
on the Fashion-MNIST training set, then quantized int8 (PT2E, 512 calibration images
``calibration_subset("train", 512)``). Each variant is exported to ONNX and TFLite and evaluated
**in its runtime** (ONNX Runtime / LiteRT) on the 10k test set; bytes of each file; batch-1 latency
at 32x32 (the model's own input size), 2 threads, median, all files timed round-robin in one loop.

Resumable: the pruned and fine-tuned models are cached in ``benchmarks/.vit/`` (not committed).
Writes ``benchmarks/results/vit.{json,md}``.

    .venv/bin/python benchmarks/vit.py                     # the real row (2 epochs: ~1 h on a busy 2-core box)
    .venv/bin/python benchmarks/vit.py --smoke             # minutes: a sliver of an epoch, 500 test images
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edgeslim
from case_study import THREADS, interleaved_latency, open_runner
from edgeslim.data import calibration_subset, fashion_mnist_loader
from edgeslim.exporters import export
from edgeslim.plugin.pruning.config import PruneConfig
from edgeslim.plugin.pruning.finetune import finetune
from edgeslim.plugin.pruning.metrics import measure
from provenance import commit

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "vit-fmnist"


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=float, default=2.0, help="fine-tune epochs after pruning (the issue allows <= 2)")
    p.add_argument("--lr", type=float, default=0.02, help="peak LR of edgeslim's one-cycle SGD fine-tune")
    p.add_argument("--target", default="params=0.5")
    p.add_argument("--calibration", type=int, default=512)
    p.add_argument("--eval-images", type=int, default=10_000)
    p.add_argument("--reps", type=int, default=300, help="latency repetitions per file")
    p.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / ".vit")
    p.add_argument("--smoke", action="store_true", help="tiny fine-tune, 500 test images, own work dir and results name")
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.eval_images, args.reps = 0.01, 500, 20
        args.work = args.work.with_name(".vit_smoke")
    return args


def pruned_model(base: nn.Module, x: torch.Tensor, args: argparse.Namespace, info: dict[str, Any]) -> nn.Module:
    """The pruned + fine-tuned model (cached; the pruned-only model is cached too)."""
    ft_path, pr_path = args.work / "pruned_ft.pt", args.work / "pruned.pt"
    if ft_path.is_file():
        info["prune"] = json.loads((args.work / "prune.json").read_text())
        info["finetune"] = json.loads((args.work / "finetune.json").read_text())
        _log(f"loaded the fine-tuned model from {ft_path}")
        return edgeslim.load(ft_path).eval()
    if pr_path.is_file():
        model = edgeslim.load(pr_path).eval()
        info["prune"] = json.loads((args.work / "prune.json").read_text())
    else:
        t0 = time.perf_counter()
        res = edgeslim.prune(base, x, PruneConfig(target=args.target))
        model = res.model
        info["prune"] = {k: v for k, v in res.summary().items() if k != "config"} | {
            "config": res.config.to_dict(), "seconds": round(time.perf_counter() - t0, 1)}
        edgeslim.save(model, pr_path)
        (args.work / "prune.json").write_text(json.dumps(info["prune"], indent=1, default=str))
    blocks = model.encoder.layers
    info["prune"]["heads"] = [int(b.num_heads) for b in blocks]
    info["prune"]["mlp_widths"] = [int(b.mlp[0].out_features) for b in blocks]
    info["prune"]["hidden_dim"] = int(model.hidden_dim)
    (args.work / "prune.json").write_text(json.dumps(info["prune"], indent=1, default=str))
    _log(f"pruned: {info['prune']['params_after']:,} params ({info['prune']['params_fraction']:.3f}), heads "
         f"{info['prune']['heads']}, MLP {info['prune']['mlp_widths']}; fine-tuning {args.epochs} epochs")
    torch.manual_seed(0)
    train = fashion_mnist_loader("train", batch_size=128, augment=True)

    def on_step(step: int, total: int, loss: float) -> None:
        if step % 10 == 0 or step == total:
            _log(f"  fine-tune step {step}/{total} loss {loss:.3f}")

    hist = finetune(model, train, epochs=args.epochs, lr=args.lr, teacher=base, on_step=on_step)
    info["finetune"] = {"epochs": args.epochs, "lr": args.lr, "batch_size": 128, "teacher": MODEL,
                        "seconds": round(hist.seconds, 1), "history": hist.history,
                        "recipe": "edgeslim finetune: one-cycle SGD (Nesterov), label smoothing 0.1, distillation "
                                  "from the fp32 model (alpha 0.7, T 4), flip + crop augmentation"}
    edgeslim.save(model.eval(), ft_path)
    (args.work / "finetune.json").write_text(json.dumps(info["finetune"], indent=1, default=str))
    return model.eval()


def top1(fmt: str, path: Path, test: Any, labels: np.ndarray, limit: int) -> float:
    runner = open_runner(fmt, path)
    preds, seen = [], 0
    for xb, _ in test:
        if seen >= limit:
            break
        batch = xb[: limit - seen]
        preds.append(np.asarray(runner(batch.numpy())).argmax(1))
        seen += len(batch)
    return float((np.concatenate(preds) == labels[:limit]).mean())


def row_for(variant: str, src: Any, quant: str, float_src: nn.Module, x: torch.Tensor, args: argparse.Namespace,
            calib: Any, test: Any, labels: np.ndarray, how: str) -> dict[str, Any]:
    st = measure(float_src, x)
    row: dict[str, Any] = {"model": MODEL, "variant": variant, "how": how, "quant": quant, "params": st.params,
                           "macs": st.macs}
    for fmt in ("onnx", "tflite"):
        path = args.work / f"{variant.replace('+', '_')}.{fmt}"
        t0 = time.perf_counter()
        res = export(src, fmt, path, x, quant=quant if isinstance(src, nn.Module) else None, calibration=calib,
                     overwrite=True, verify_samples=64)
        key = "onnx" if fmt == "onnx" else "litert"
        row[f"{fmt}_file"], row[f"bytes_{fmt}"] = str(path), res.bytes
        row[f"{fmt}_latency_file"] = str(path)  # the model's own input size: the artefact itself is timed
        row[f"top1_{key}"] = top1(fmt, path, test, labels, args.eval_images)
        row[f"{fmt}_seconds"] = round(time.perf_counter() - t0, 1)
        _log(f"{variant} {fmt}: {res.bytes:,} B, top-1 {row[f'top1_{key}']:.4f}")
    return row


def markdown(data: dict[str, Any]) -> str:
    rows = data["rows"]
    fp = next((r for r in rows if r["variant"] == "fp32"), None)
    lines = [
        "# vit-fmnist: heads + MLP pruning, int8, ONNX Runtime and LiteRT", "",
        f"Command: `{data['command']}` · commit `{data['commit']}` · {data['date']}", "",
        f"Settings: {json.dumps(data['settings'])}", "",
        f"Test set: Fashion-MNIST test, {data['settings']['eval_images']:,} images, top-1 measured in the runtime. "
        f"Latency: batch 1, 32x32, {THREADS} threads, median of {data['settings']['reps']} runs, all files timed "
        "round-robin in one loop (ONNX Runtime without thread spinning, LiteRT with XNNPACK).", "",
        "| variant | params | top-1 ORT | top-1 LiteRT | ONNX bytes | TFLite bytes | ORT ms | LiteRT ms | ORT speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sp = (fp["ort_ms"] / r["ort_ms"]) if fp and r.get("ort_ms") and fp.get("ort_ms") else None
        lines.append(
            f"| {r['variant']} | {r['params']:,} | {r['top1_onnx'] * 100:.2f} % | {r['top1_litert'] * 100:.2f} % | "
            f"{r['bytes_onnx']:,} | {r['bytes_tflite']:,} | {r.get('ort_ms') or float('nan'):.2f} | "
            f"{r.get('litert_ms') or float('nan'):.2f} | {'' if sp is None else f'{sp:.2f}x'} |")
    lines += ["", "How each variant was made:", ""] + [f"- `{r['variant']}`: {r['how']}" for r in rows]
    pr = data.get("prune", {})
    if pr:
        lines += ["", f"Pruning: {pr.get('params_before', 0):,} → {pr.get('params_after', 0):,} params "
                  f"({pr.get('params_fraction', 0):.3f}); heads per layer {pr.get('heads')} (of 6, head_dim 32 kept); "
                  f"MLP widths {pr.get('mlp_widths')} (of 384); hidden_dim {pr.get('hidden_dim')} (kept)."]
    ft = data.get("finetune", {})
    if ft:
        lines += [f"Fine-tune: {ft.get('epochs')} epochs, {ft.get('seconds')} s; {ft.get('recipe', '')}."]
    if data.get("goal"):
        g = data["goal"]
        lines += ["", f"Goal (issue 11): pruned + int8 within 1 pt of fp32 top-1. ORT: {-g['drop_onnx_pt']:+.2f} pt, "
                  f"LiteRT: {-g['drop_litert_pt']:+.2f} pt → {'met' if g['met'] else 'NOT met'}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(THREADS)
    base = edgeslim.load_model(MODEL).eval()
    x = torch.randn(1, 3, 32, 32)
    calib = calibration_subset("train", args.calibration)
    test = fashion_mnist_loader("test", batch_size=250, limit=args.eval_images)
    labels = np.concatenate([y.numpy() for _, y in test])
    info: dict[str, Any] = {}
    pruned = pruned_model(base, x, args, info)
    _log("quantizing int8")
    q = edgeslim.quantize(pruned, (x,), "int8", calibration=calib)
    ep = f"{args.epochs:g} epochs"
    rows = [
        row_for("fp32", base, "fp32", base, x, args, calib, test, labels, "the reference model (88.80 % in PyTorch)"),
        row_for("pruned", pruned, "fp32", pruned, x, args, calib, test, labels,
                f"edgeslim.prune {args.target} (whole heads + MLP widths), edgeslim finetune {ep} with distillation"),
        row_for("pruned+int8", q, "int8", pruned, x, args, calib, test, labels,
                f"the pruned model, edgeslim.quantize int8 (PT2E), {args.calibration} calibration images"),
    ]
    _log("latency (interleaved)")
    interleaved_latency(rows, args.reps, 32)
    fp, qi = rows[0], rows[2]
    drop_o, drop_l = (fp["top1_onnx"] - qi["top1_onnx"]) * 100, (fp["top1_litert"] - qi["top1_litert"]) * 100
    data = {
        "command": "python benchmarks/vit.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "settings": {"target": args.target, "epochs": args.epochs, "lr": args.lr, "calibration": args.calibration,
                     "eval_images": args.eval_images, "reps": args.reps, "threads": THREADS, "input": [1, 3, 32, 32],
                     "torch_threads": THREADS},
        "prune": info.get("prune", {}), "finetune": info.get("finetune", {}),
        "goal": {"drop_onnx_pt": drop_o, "drop_litert_pt": drop_l, "met": max(drop_o, drop_l) <= 1.0},
        "rows": rows,
    }
    name = "vit_smoke" if args.smoke else "vit"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(data))
    _log(f"wrote {RESULTS / name}.json/.md")


if __name__ == "__main__":
    main()
