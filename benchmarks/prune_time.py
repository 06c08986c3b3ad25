"""Prune time: ``edgeslim.prune(params=0.5)`` against torch-pruning's own one-shot prune at the same ratio.

For each model (random weights, seed 0), each step in its own subprocess with a time limit:

1. ``edgeslim.prune(model, x, PruneConfig(target="params=0.5"))`` (L2, uniform allocation, classifier
   head kept, ±2 %): the target search, the real prune and its forward check, timed end to end;
2. torch-pruning 1.6 alone (its own ``get_pruning_group``, not edgeslim's bounded walk) on a fresh copy: ``tp.pruner.BasePruner(model, x, importance=
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
#: (model, input size); ``timm:`` names come from timm. The torchvision classification models of
#: ``coverage.py`` up to ~30 M parameters (input 64, or the smallest size they run at) and the smallest model
#: of timm families (attention models at the input size their position tables are made for).
TORCHVISION = ["squeezenet1_1", "squeezenet1_0", "shufflenet_v2_x0_5", "mnasnet0_5", "shufflenet_v2_x1_0",
               "mobilenet_v3_small", "mnasnet0_75", "shufflenet_v2_x1_5", "mobilenet_v2", "regnet_y_400mf",
               "mnasnet1_0", "efficientnet_b0", "mobilenet_v3_large", "regnet_x_400mf", "mnasnet1_3",
               "regnet_y_800mf", "googlenet", "regnet_x_800mf", "shufflenet_v2_x2_0", "efficientnet_b1",
               "densenet121", "efficientnet_b2", "regnet_x_1_6gf", "regnet_y_1_6gf", "resnet18", "efficientnet_b3",
               "densenet169", "regnet_x_3_2gf", "efficientnet_b4", "regnet_y_3_2gf", "densenet201",
               "efficientnet_v2_s", "resnet34", "resnext50_32x4d", "resnet50", "convnext_tiny", "densenet161"]
TIMM = ["rexnet_100", "mobilenetv3_large_100", "efficientnet_lite0", "convnext_atto", "regnetx_002",
        "ghostnet_100", "repvit_m0_9", "resnet10t", "mobileone_s0", "tinynet_e", "lcnet_050", "mixnet_s",
        "hgnetv2_b0", "edgenext_xx_small", "mobilevit_xxs", "efficientvit_b0", "fastvit_t8"]
MODELS = ([(m, 64) for m in TORCHVISION] + [("inception_v3", 128), ("swin_t", 224)]
          + [(f"timm:{m}", 64) for m in TIMM] + [("timm:deit_tiny_patch16_224", 224), ("timm:levit_128s", 224)])
LIMIT_S = 1200  # wall seconds per model (a busy shared machine runs a model at a fraction of a core)
TP_LIMIT_S = 600  # wall seconds for torch-pruning alone (its group walk is exponential on rexnet-like graphs)


def _build(name: str) -> Any:
    import torch

    torch.manual_seed(0)
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name[5:], num_classes=10).eval()
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=10).eval()


def _one(name: str, size: int) -> dict[str, Any]:
    """Runs in the first child: ``edgeslim.prune`` timed."""
    import torch

    import edgeslim
    from edgeslim.plugin.pruning import PruneConfig

    torch.set_num_threads(1)
    x = torch.randn(1, 3, size, size)
    model = _build(name)
    params = sum(p.numel() for p in model.parameters())
    t0, c0 = time.perf_counter(), time.process_time()
    res = edgeslim.prune(model, x, PruneConfig(target="params=0.5"))
    es, es_cpu = time.perf_counter() - t0, time.process_time() - c0
    s = res.summary()
    return {"model": name, "input": size, "params": params, "edgeslim_s": round(es, 2),
            "edgeslim_cpu_s": round(es_cpu, 2), "channel_ratio": res.plan.ratio,
            "params_fraction": round(s["params_fraction"], 4), "target_met": s.get("target_met"),
            "left_whole": [d["module"] for d in s["left_whole"]]}


def _tp_one(name: str, size: int, ratio: float) -> dict[str, Any]:
    """Runs in the second child: torch-pruning alone (its own ``get_pruning_group``), one-shot at ``ratio``."""
    import torch
    import torch_pruning as tp

    from edgeslim.plugin.pruning import grouping
    from edgeslim.plugin.pruning.graph import classifier_head

    tp.DependencyGraph.get_pruning_group = grouping.ORIGINAL  # torch-pruning as released, not edgeslim's walk
    torch.set_num_threads(1)
    x = torch.randn(1, 3, size, size)
    fresh = _build(name)
    head = [fresh.get_submodule(n) for n in classifier_head(fresh)]
    t0, c0 = time.perf_counter(), time.process_time()
    pruner = tp.pruner.BasePruner(fresh, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=head, max_pruning_ratio=0.9)
    pruner.step()
    return {"tp_oneshot_s": round(time.perf_counter() - t0, 2), "tp_oneshot_cpu_s": round(time.process_time() - c0, 2)}


def _child(args: list[str], limit: int) -> dict[str, Any]:
    try:
        out = subprocess.run([sys.executable, __file__, *args], check=False, capture_output=True, text=True,
                             timeout=limit, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"over {limit} s wall"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail[:300]}
    row: dict[str, Any] = json.loads(lines[-1])
    return row


def _run(name: str, size: int) -> dict[str, Any]:
    row = {"model": name, "input": size, **_child(["--child", name, str(size)], LIMIT_S)}
    if "error" in row:
        return row
    tp_row = _child(["--child-tp", name, str(size), str(row["channel_ratio"])], TP_LIMIT_S)
    if "error" in tp_row:
        return {**row, "tp_error": tp_row["error"]}
    return {**row, **tp_row, "ratio_vs_tp": round(row["edgeslim_s"] / tp_row["tp_oneshot_s"], 2),
            "cpu_ratio_vs_tp": round(row["edgeslim_cpu_s"] / max(tp_row["tp_oneshot_cpu_s"], 0.01), 2)}


def _markdown(rows: list[dict[str, Any]]) -> str:
    ok = [r for r in rows if "error" not in r]
    lines = ["# Prune time: edgeslim.prune(params=0.5) vs torch-pruning one-shot", "",
             "Random weights, seed 0, 1 torch thread, on a shared 2-core machine. CPU seconds (`time.process_time`, "
             "what the process itself used) are the comparable figure; wall seconds depend on the load of the moment. "
             "`tp one-shot` prunes a fresh copy once at the channel ratio edgeslim's search found, in a process of its own "
             "with torch-pruning's own group walk (edgeslim bounds that walk, see "
             "`src/edgeslim/plugin/pruning/grouping.py`); `fails: over 600 s wall` means torch-pruning alone did not "
             "finish.", "",
             "| model | input | params | edgeslim CPU s | tp one-shot CPU s | ratio (CPU) | edgeslim wall s | "
             "tp wall s | channel ratio | params kept | target met | left whole |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['input']} | | error: {r['error']} | | | | | | | | |")
            continue
        tp_cpu = r.get("tp_oneshot_cpu_s", f"fails: {r.get('tp_error', '')}")
        ratio = f"{r['cpu_ratio_vs_tp']}x" if "cpu_ratio_vs_tp" in r else ""
        lines.append(f"| {r['model']} | {r['input']} | {r['params'] / 1e6:.2f} M | {r.get('edgeslim_cpu_s', '')} | "
                     f"{tp_cpu} | {ratio} | {r['edgeslim_s']} | "
                     f"{r.get('tp_oneshot_s', '')} | {round(r['channel_ratio'], 4)} | {r['params_fraction']} | "
                     f"{r['target_met']} | {', '.join(r['left_whole']) or '-'} |")
    cpu = [r for r in ok if "cpu_ratio_vs_tp" in r]
    if cpu:
        worst = max(ok, key=lambda r: r["edgeslim_cpu_s"])
        lines += ["", f"Median edgeslim / tp one-shot (CPU): {statistics.median(r['cpu_ratio_vs_tp'] for r in cpu):.2f}x "
                  f"over {len(cpu)} models; most CPU in one edgeslim.prune: {worst['edgeslim_cpu_s']:.1f} s "
                  f"({worst['model']}); most wall: {max(r['edgeslim_s'] for r in ok):.1f} s; "
                  f"{len(rows) - len(ok)} models failed."]
    lines += runs_lines(rows)
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the sweep (or, with ``--child``, one model) and write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="models to (re)run, e.g. resnet18 timm:rexnet_100")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--child-tp", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--markdown", action="store_true", help="only rewrite the Markdown from the JSON")
    ap.add_argument("--merge", help="also take the rows of this JSON file (a second sweep run beside this one)")
    ap.add_argument("--out", default="prune_time", help="results file stem under benchmarks/results")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_one(args.child[0], int(args.child[1]))), flush=True)
        return
    if args.child_tp:
        print(json.dumps(_tp_one(args.child_tp[0], int(args.child_tp[1]), float(args.child_tp[2]))), flush=True)
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
