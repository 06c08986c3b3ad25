"""Benchmark of the pruning plugin (issue: "What to show when you close it").

1. Reference ResNet-18 (Fashion-MNIST) pruned to 50 % of its parameters with each structural
   criterion (sensitivity-allocated ratios), fine-tuned with distillation; top-1 on the full 10k
   test set before and after fine-tuning, wall times. Side by side, the torch-pruning-alone peer
   (L2 group magnitude, iterative, classifier ignored, plain SGD fine-tune) at the same budget.
2. The same pruned models at 224x224: params, MACs, fp32 bytes, ONNX Runtime latency (median)
   and its ratio to the unpruned model, measured in one run.
3. Unstructured magnitude sparsity 50/80/90 %: accuracy and the (absent) dense-runtime speed-up.

Writes benchmarks/results/pruning.json (+ .md) after every row, so partial results survive.

    python benchmarks/pruning.py --epochs 0.5            # all criteria, CPU
    python benchmarks/pruning.py --criteria l1 --epochs 2
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from edgeslim import models
from edgeslim.data import evaluate, fashion_mnist_loader
from edgeslim.plugin.pruning import Allocation, Method, PruneConfig, Target, prune
from edgeslim.plugin.pruning.finetune import finetune
from edgeslim.plugin.pruning.metrics import measure
from provenance import record, runs_lines

RESULTS = Path(__file__).resolve().parent / "results"


def ort_latencies(named: dict[str, nn.Module], runs: int, size: int = 224) -> dict[str, float]:
    """Median ONNX Runtime latency (ms, 2 threads, batch 1) of each model at ``size``x``size``.

    All sessions are built first and timed round-robin (one run of each per round), so a change
    in machine load hits every model alike and the ratios stay fair.
    """
    import numpy as np
    import onnxruntime as ort

    x = torch.randn(1, 3, size, size)
    feed_x = x.numpy().astype(np.float32)
    sessions = {}
    with tempfile.TemporaryDirectory() as d:
        for i, (name, model) in enumerate(named.items()):
            path = Path(d) / f"m{i}.onnx"
            torch.onnx.export(model.eval(), (x,), str(path), dynamo=True, external_data=False)
            so = ort.SessionOptions()
            so.intra_op_num_threads = 2
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # timed in turn: no spinning threads
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            sessions[name] = (sess, {sess.get_inputs()[0].name: feed_x})
    times: dict[str, list[float]] = {n: [] for n in sessions}
    for _ in range(3):
        for sess, feed in sessions.values():
            sess.run(None, feed)
    for _ in range(runs):
        for name, (sess, feed) in sessions.items():
            t = time.perf_counter()
            sess.run(None, feed)
            times[name].append((time.perf_counter() - t) * 1e3)
    return {n: statistics.median(v) for n, v in times.items()}


def peer_torch_pruning(model: nn.Module, x: torch.Tensor, steps: int = 5) -> nn.Module:
    """torch-pruning alone: L2 group magnitude, iterative, classifier ignored, ratio for ~48.9 % params."""
    m = copy.deepcopy(model)
    pruner = tp.pruner.BasePruner(
        m, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.2915,
        iterative_steps=steps, ignored_layers=[m.fc],
    )
    for _ in range(steps):
        pruner.step()
    return m


def plain_sgd(model: nn.Module, loader: Any, epochs: float, lr: float = 0.01) -> float:
    """The peer's fine-tune: plain SGD (momentum 0.9, wd 5e-4), constant LR, cross-entropy."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    total = round(epochs * len(loader))
    step = 0
    t0 = time.perf_counter()
    model.train()
    while step < total:
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step >= total:
                break
    model.eval()
    return time.perf_counter() - t0


def write(report: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = report.get("name", "pruning")
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1))
    lines = ["# Pruning benchmark (edgeslim)", "", f"Machine: {report['machine']}; fine-tune on {report['device']}.", ""]
    if report["rows"]:
        lines += ["## 1. ResNet-18 / Fashion-MNIST pruned to 50 % params, top-1 on the 10k test set", "",
                  "| method | criterion | params kept | top-1 before FT | top-1 after FT | FT epochs | prune s | FT s |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['criterion']} | {r['params_fraction']:.3f} | {100 * r['top1_before_finetune']:.2f} % | "
                  f"{100 * r['top1_after_finetune']:.2f} % | {r['finetune_epochs']} | {r['prune_seconds']:.0f} | {r['finetune_seconds']:.0f} |"
                  for r in report["rows"]]
    lines += ["", f"Unpruned: {100 * report['top1_fp32']:.2f} %.", *runs_lines(report["rows"]), ""]
    if report.get("latency"):
        lines += ["## 2. At 224x224: size and ONNX Runtime latency (2 threads, batch 1, median)", "",
                  "| model | params | MACs | fp32 MB | latency ms | speed-up |", "|---|---|---|---|---|---|"]
        for r in report["latency"]:
            lines.append(f"| {r['name']} | {r['params']:,} | {r['macs'] / 1e9:.3f} G | {r['bytes'] / 1e6:.2f} | {r['latency_ms']:.2f} | {r['speedup']:.2f}x |")
        lines += [*runs_lines(report["latency"]), ""]
    if report.get("sparsity"):
        lines += ["## 3. Unstructured magnitude sparsity (no fine-tune), dense ONNX Runtime", "",
                  "| sparsity | top-1 | nonzero params | latency ms | speed-up |", "|---|---|---|---|---|"]
        for r in report["sparsity"]:
            lines.append(f"| {r['sparsity']:.0%} | {100 * r['top1']:.2f} % | {r['nonzero_params']:,} | {r['latency_ms']:.2f} | {r['speedup']:.2f}x |")
        lines.append("")
        lines.append("Zeros are stored and multiplied like any other weight by a dense runtime: no speed-up without a sparse kernel.")
        lines += runs_lines(report["sparsity"])
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--criteria", default="l1,l2,bn_scale,taylor,activation,random")
    ap.add_argument("--epochs", type=float, default=0.5, help="fine-tune epochs per criterion (<= 2)")
    ap.add_argument("--peer-epochs", type=float, default=None, help="peer fine-tune epochs (default: --epochs)")
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--latency-runs", type=int, default=20)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: finetune,peer,rows,latency,sparsity")
    ap.add_argument("--append", action="store_true", help="add rows to the existing results file")
    ap.add_argument("--name", default="pruning", help="results file stem (benchmarks/results/NAME.json|md)")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    prov = record("pruning.py")
    torch.manual_seed(0)
    ref = models.load("resnet18-fmnist")
    x32 = torch.randn(1, 3, 32, 32)
    test = fashion_mnist_loader("test", batch_size=500)
    stats_data = fashion_mnist_loader("train", batch_size=128, seed=1)
    train = fashion_mnist_loader("train", batch_size=128, augment=True)
    old_path = RESULTS / f"{args.name}.json"
    old = json.loads(old_path.read_text()) if args.append and old_path.exists() else {}
    report: dict[str, Any] = {
        "name": args.name,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "device": "cpu", "top1_fp32": evaluate(ref, test), "rows": old.get("rows", []),
        "latency": old.get("latency", []), "sparsity": old.get("sparsity", []),
    }
    pruned: dict[str, nn.Module] = {}
    for crit in filter(None, args.criteria.split(",")):
        torch.manual_seed(0)
        t0 = time.perf_counter()
        res = prune(ref, x32, PruneConfig(criterion=crit, target=Target.parse("params=0.5"),
                                          allocation=Allocation.SENSITIVITY), data=stats_data)
        t_prune = time.perf_counter() - t0
        before = evaluate(res.model, test)
        ft_s, after = 0.0, before
        if "finetune" not in skip:
            ft = finetune(res.model, train, epochs=args.epochs, lr=args.lr, teacher=ref)
            ft_s, after = ft.seconds, evaluate(res.model, test)
        pruned[crit] = res.model
        if "rows" in skip:
            continue
        report["rows"].append({
            "model": "resnet18-fmnist", "method": "edgeslim (sensitivity alloc. + KD fine-tune)", "criterion": crit,
            "params_fraction": res.after.params / res.before.params, "params_after": res.after.params,
            "top1_before_finetune": before, "top1_after_finetune": after, "finetune_epochs": args.epochs if ft_s else 0,
            "prune_seconds": t_prune, "finetune_seconds": ft_s, "device": "cpu", **prov,
        })
        print(json.dumps(report["rows"][-1]), flush=True)
        write(report)
    if "peer" not in skip:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        peer = peer_torch_pruning(ref, x32)
        t_prune = time.perf_counter() - t0
        before = evaluate(peer, test)
        epochs = args.peer_epochs if args.peer_epochs is not None else args.epochs
        ft_s = 0.0 if "finetune" in skip else plain_sgd(peer, train, epochs)
        pruned["peer"] = peer
        row = {
            "model": "resnet18-fmnist", "method": "peer: torch-pruning alone + plain SGD", "criterion": "l2 (group magnitude)",
            "params_fraction": measure(peer, x32).params / measure(ref, x32).params, "params_after": measure(peer, x32).params,
            "top1_before_finetune": before, "top1_after_finetune": evaluate(peer, test) if ft_s else before,
            "finetune_epochs": epochs if ft_s else 0, "prune_seconds": t_prune, "finetune_seconds": ft_s, "device": "cpu",
            **prov,
        }
        if "rows" not in skip:
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
            write(report)
    x224 = torch.randn(1, 3, 224, 224)
    if "latency" not in skip:
        named = {"unpruned": ref, **{f"pruned-50% ({k})": m for k, m in pruned.items()}}
        lat = ort_latencies(named, args.latency_runs)
        report["latency"] = []
        for name, m in named.items():
            st = measure(m, x224)
            report["latency"].append({"name": name, "params": st.params, "macs": st.macs, "bytes": st.bytes,
                                      "latency_ms": lat[name], "speedup": lat["unpruned"] / lat[name], **prov})
        write(report)
    if "sparsity" not in skip:
        sparse: dict[str, nn.Module] = {"0.0": ref}
        for s in (0.5, 0.8, 0.9):
            res = prune(ref, x32, PruneConfig(method=Method.UNSTRUCTURED, target=Target.parse(f"sparsity={s}")))
            assert res.masks is not None
            res.masks.make_permanent()
            sparse[str(s)] = res.model
        lat = ort_latencies(sparse, args.latency_runs)
        report["sparsity"] = [
            {"sparsity": float(k), "top1": report["top1_fp32"] if k == "0.0" else evaluate(m, test),
             "nonzero_params": measure(m, x32).nonzero_params, "latency_ms": lat[k], "speedup": lat["0.0"] / lat[k],
             **prov}
            for k, m in sparse.items()
        ]
    write(report)


if __name__ == "__main__":
    main()
