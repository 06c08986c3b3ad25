"""Prune time: ``edgeslim.prune(params=0.5)`` against torch-pruning's own one-shot prune at the same ratio.

For each model (random weights, seed 0), in its own subprocess with a time limit:

1. ``edgeslim.prune(model, x, PruneConfig(target="params=0.5"))`` (L2, uniform allocation, classifier
   head kept, ±2 %): the target search, the real prune and its forward check, timed end to end;
2. torch-pruning 1.6 alone on a fresh copy: ``tp.pruner.BasePruner(model, x, importance=
   GroupMagnitudeImportance(p=2), pruning_ratio=<the channel ratio edgeslim found>, ignored_layers=[head],
   max_pruning_ratio=0.9).step()`` — one graph, one prune, no search.

Rows go to ``benchmarks/results/prune_time.{json,md}`` after each model (models already there are
skipped unless named with ``--only``), each with its command, commit and date.

    .venv/bin/python benchmarks/prune_time.py
    .venv/bin/python benchmarks/prune_time.py --only timm:rexnet_100
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import record, runs_lines

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
#: (model, input size); ``timm:`` names come from timm.
MODELS = [("resnet18", 64), ("mobilenet_v2", 64), ("regnet_y_400mf", 64), ("densenet121", 64),
          ("timm:rexnet_100", 64), ("timm:mobilenetv3_large_100", 64), ("timm:efficientnet_lite0", 64),
          ("timm:convnext_atto", 64)]
LIMIT_S = 2400  # wall seconds per model (a busy shared machine runs a model at a fraction of a core)


def _build(name: str) -> Any:
    import torch

    torch.manual_seed(0)
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name[5:], num_classes=10).eval()
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=10).eval()


def _one(name: str, size: int) -> dict[str, Any]:
    """Runs in the child: both timings for one model."""
    import torch
    import torch_pruning as tp

    import edgeslim
    from edgeslim.plugin.pruning import PruneConfig
    from edgeslim.plugin.pruning.graph import classifier_head

    torch.set_num_threads(1)
    x = torch.randn(1, 3, size, size)
    model = _build(name)
    params = sum(p.numel() for p in model.parameters())
    t0, c0 = time.perf_counter(), time.process_time()
    res = edgeslim.prune(model, x, PruneConfig(target="params=0.5"))
    es, es_cpu = time.perf_counter() - t0, time.process_time() - c0
    s = res.summary()
    ratio = res.plan.ratio
    fresh = _build(name)
    head = [fresh.get_submodule(n) for n in classifier_head(fresh)]
    t0, c0 = time.perf_counter(), time.process_time()
    pruner = tp.pruner.BasePruner(fresh, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=head, max_pruning_ratio=0.9)
    pruner.step()
    tps, tp_cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"model": name, "input": size, "params": params, "edgeslim_s": round(es, 2), "tp_oneshot_s": round(tps, 2),
            "ratio_vs_tp": round(es / tps, 2),
            "edgeslim_cpu_s": round(es_cpu, 2), "tp_oneshot_cpu_s": round(tp_cpu, 2),
            "cpu_ratio_vs_tp": round(es_cpu / tp_cpu, 2), "channel_ratio": round(ratio, 4),
            "params_fraction": round(s["params_fraction"], 4), "target_met": s.get("target_met"),
            "left_whole": [d["module"] for d in s["left_whole"]]}


def _run(name: str, size: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", name, str(size)]
    try:
        out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=LIMIT_S, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"model": name, "input": size, "error": f"over {LIMIT_S} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"model": name, "input": size, "error": tail[:300]}
    row: dict[str, Any] = json.loads(lines[-1])
    return row


def _markdown(rows: list[dict[str, Any]]) -> str:
    ok = [r for r in rows if "error" not in r]
    lines = ["# Prune time: edgeslim.prune(params=0.5) vs torch-pruning one-shot", "",
             "Random weights, seed 0, 1 torch thread, on a shared 2-core machine. CPU seconds (`time.process_time`, "
             "what the process itself used) are the comparable figure; wall seconds depend on the load of the moment. "
             "`tp one-shot` prunes a fresh copy once at the channel ratio edgeslim's search found.", "",
             "| model | input | params | edgeslim CPU s | tp one-shot CPU s | ratio (CPU) | edgeslim wall s | "
             "tp wall s | channel ratio | params kept | target met | left whole |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['input']} | | error: {r['error']} | | | | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['input']} | {r['params'] / 1e6:.2f} M | {r.get('edgeslim_cpu_s', '')} | "
                     f"{r.get('tp_oneshot_cpu_s', '')} | {r.get('cpu_ratio_vs_tp', '')}x | {r['edgeslim_s']} | "
                     f"{r['tp_oneshot_s']} | {r['channel_ratio']} | {r['params_fraction']} | "
                     f"{r['target_met']} | {', '.join(r['left_whole']) or '-'} |")
    cpu = [r for r in ok if "cpu_ratio_vs_tp" in r]
    if cpu:
        lines += ["", f"Median edgeslim / tp one-shot (CPU): {statistics.median(r['cpu_ratio_vs_tp'] for r in cpu):.2f}x "
                  f"over {len(cpu)} models; most CPU in one edgeslim.prune: {max(r['edgeslim_cpu_s'] for r in cpu):.1f} s."]
    lines += runs_lines(rows)
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the sweep (or, with ``--child``, one model) and write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="models to (re)run, e.g. resnet18 timm:rexnet_100")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--markdown", action="store_true", help="only rewrite the Markdown from the JSON")
    ap.add_argument("--merge", help="also take the rows of this JSON file (a second sweep run beside this one)")
    ap.add_argument("--out", default="prune_time", help="results file stem under benchmarks/results")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_one(args.child[0], int(args.child[1]))), flush=True)
        return
    path, md = RESULTS / f"{args.out}.json", RESULTS / f"{args.out}.md"
    rows: list[dict[str, Any]] = json.loads(path.read_text()) if path.exists() else []
    if args.merge:
        extra = json.loads(Path(args.merge).read_text())
        rows = [r for r in rows if r["model"] not in {e["model"] for e in extra}] + extra
        path.write_text(json.dumps(rows, indent=1) + "\n")
    if args.markdown or args.merge:
        md.write_text(_markdown(rows))
        return
    done = {r["model"] for r in rows}
    sizes = dict(MODELS)
    todo = [(m, sizes.get(m, 64)) for m in args.only] if args.only else [(m, s) for m, s in MODELS if m not in done]
    for name, size in todo:
        row = {**_run(name, size), **record("prune_time.py")}
        print(json.dumps(row), flush=True)
        rows = [r for r in rows if r["model"] != name] + [row]
        path.write_text(json.dumps(rows, indent=1) + "\n")
        md.write_text(_markdown(rows))


if __name__ == "__main__":
    main()
