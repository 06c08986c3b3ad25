"""Attention / token-mixer timm models pruned to half their parameters, then int8 PTQ and ONNX (issue 22).

For each model (timm 1.0.31, ``timm.create_model(name, num_classes=10)``, random weights, seed 0) at its
default input size, in its own subprocess with a time limit:

1. ``edgeslim.prune(model, x, PruneConfig(criterion="l2", target="params=0.5"))`` (uniform allocation);
   the pruned model must run on a batch of 2 and give the original output shape. Recorded: the params
   fraction reached, the heads of every attention before → after (attentions found from the traced
   forward, :mod:`edgeslim.plugin.pruning.heads`), and every layer left whole with why
   (``summary()['left_whole']``: the heads analysis, groups torch-pruning cannot map, degrade);
2. ``edgeslim.quantize(pruned, x, "int8", calibration=...)`` on 4 random batches (op coverage: the weights
   are random);
3. ``edgeslim.export(int8, "onnx", ...)``, verified in ONNX Runtime by the exporter.

Results: ``benchmarks/results/timm_attention.{json,md}`` (rewritten after every model).

    PYTHONPATH=src .venv/bin/python benchmarks/timm_attention.py [--only NAME ...] [--skip-quant]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import record, runs_lines

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("deit_tiny_patch16_224", "mobilevit_xxs", "efficientvit_b0", "fastvit_t8", "levit_128s",
          "edgenext_xx_small", "tiny_vit_5m_224", "poolformer_s12")


def run_one(name: str, quant: bool) -> dict[str, Any]:
    """Prune (and quantize, export) one model in this process; returns its row."""
    import timm
    import torch

    import edgeslim
    from edgeslim.plugin.pruning import PruneConfig, Target
    from edgeslim.plugin.pruning.heads import analyse

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    size = int(model.pretrained_cfg["input_size"][-1])
    x = torch.randn(1, 3, size, size)
    row: dict[str, Any] = {"model": name, "input": size}
    names = {m: n for n, m in model.named_modules()}
    found = analyse(model, x)
    row["attentions"] = len(found.attentions)
    t = time.perf_counter()
    res = edgeslim.prune(model, x, PruneConfig(criterion="l2", target=Target.parse("params=0.5")))
    row["prune_s"] = round(time.perf_counter() - t, 1)
    summary = res.summary()
    row["target_met"] = summary.get("target_met")
    row["left_whole"] = summary["left_whole"]  # analysis (heads, unmappable groups) and degrade, with reasons
    pruned = res.model
    with torch.no_grad():
        x2 = torch.randn(2, 3, size, size)
        row["output_shape_kept"] = tuple(pruned(x2).shape) == tuple(model(x2).shape)
    row["params_before"], row["params_after"] = res.before.params, res.after.params
    row["params_fraction"] = round(res.after.params / res.before.params, 4)
    mods = dict(pruned.named_modules())
    heads = []
    for att in found.attentions:
        layer = mods[names[att.layers[0]]]
        width = layer.out_features // (3 if att.fused else 1)
        heads.append((names[att.owner], att.heads, width // att.head_dim))
    row["heads"] = heads
    if not quant:
        return row
    t = time.perf_counter()
    calib = [torch.randn(2, 3, size, size) for _ in range(4)]
    q = edgeslim.quantize(pruned, (x,), "int8", calibration=calib)
    row["quantize_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = edgeslim.export(q, "onnx", Path(tmp) / f"{name}.onnx", x, verify_inputs=[torch.randn(4, 3, size, size)])
        row["onnx_verified"] = bool(out.verification is not None and out.verification.passed)
    row["onnx_s"] = round(time.perf_counter() - t, 1)
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    """The results table."""
    lines = ["# timm attention / token-mixer models: prune params=0.5 → int8 → ONNX", "",
             "Random weights (seed 0), default input size, `PruneConfig(criterion='l2', target='params=0.5')`; "
             "int8 PTQ calibrated on 4 random batches, ONNX verified in ONNX Runtime by the exporter "
             "(coverage, not accuracy).", "",
             "| model | input | prune | params kept | output shape | heads before → after | left whole | int8 | ONNX |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r and "params_fraction" not in r:
            lines.append(f"| {r['model']} | | **failed**: {r['error']} | | | | | | |")
            continue
        hs = sorted({f"{b}→{a}" for _, b, a in r.get("heads", [])})
        heads = f"{len(r['heads'])} attn: {', '.join(hs)}" if r.get("heads") else "no prunable heads"
        whole = f"{len(r['left_whole'])} layers" if r.get("left_whole") else "none"
        met = "" if r.get("target_met", True) else " (target missed)"
        quant = "ok" if "quantize_s" in r else r.get("error", "not run")
        onnx = "verified" if r.get("onnx_verified") else ("-" if "quantize_s" not in r else "NOT verified")
        lines.append(f"| {r['model']} | {r['input']} | ok ({r['prune_s']} s) | {r['params_fraction']:.3f}{met} | "
                     f"{'kept' if r['output_shape_kept'] else 'CHANGED'} | {heads} | {whole} | {quant} | {onnx} |")
    whole = [r for r in rows if r.get("left_whole") and isinstance(r["left_whole"][0], dict)]  # older rows: names only
    if whole:
        lines += ["", "Left whole (layer: why):", ""]
        for r in whole:
            lines += [f"- {r['model']}: " + "; ".join(f"`{d['module']}`: {d['reason']}" for d in r["left_whole"])]
    lines += runs_lines(rows)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--skip-quant", action="store_true")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        try:
            row = run_one(args.child, not args.skip_quant)
        except Exception as exc:
            row = {"model": args.child, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print("ROW " + json.dumps(row))
        return
    path = RESULTS / "timm_attention.json"
    rows: list[dict[str, Any]] = json.loads(path.read_text())["rows"] if path.exists() else []
    prov = record("timm_attention.py", argv)
    for name in args.only or MODELS:
        cmd = [sys.executable, __file__, "--child", name] + (["--skip-quant"] if args.skip_quant else [])
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=args.timeout)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")), None)
            row = json.loads(line[4:]) if line else {"model": name, "error": (proc.stderr or "no output")[-300:]}
        except subprocess.TimeoutExpired:
            row = {"model": name, "error": f"timed out after {args.timeout:g} s"}
        row.update(prov)
        rows = [r for r in rows if r["model"] != name] + [row]
        rows.sort(key=lambda r: MODELS.index(r["model"]) if r["model"] in MODELS else len(MODELS))
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
        (RESULTS / "timm_attention.md").write_text(markdown(rows))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
