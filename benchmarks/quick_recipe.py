"""Wall time of the quick recipe: ``edgeslim compress examples/quick.yaml --out DIR`` from scratch.

The issue's promise is "the whole flow in at most 3 minutes on 2 cores". This runs the real CLI in a
fresh output folder ``--repeats`` times (each from scratch, no resume), records each wall time, the
median, the machine's load average before each run, the steps the run reports and the top-1 /
bytes / latency it wrote into ``results.json``, and writes ``benchmarks/results/quick_recipe.{json,md}``.

    .venv/bin/python benchmarks/quick_recipe.py               # 3 runs, a quiet machine
    .venv/bin/python benchmarks/quick_recipe.py --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RECIPE = ROOT / "examples" / "quick.yaml"
LIMIT_S = 180.0


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()


def commit() -> str:
    head = _git("rev-parse", "--short", "HEAD")
    return head + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


def one_run(out: Path) -> dict[str, Any]:
    """Run the recipe once into ``out`` (must not exist) and summarise what it wrote."""
    load = os.getloadavg()[0]
    cmd = [sys.executable, "-m", "edgeslim.cli", "compress", str(RECIPE), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    row: dict[str, Any] = {"seconds": round(seconds, 1), "load_before": round(load, 2), "rc": proc.returncode}
    if proc.returncode != 0:
        row["error"] = (proc.stderr or proc.stdout)[-2000:]
        return row
    results = json.loads((out / "results.json").read_text())
    row["files"] = sorted(p.name for p in out.iterdir())
    row["report_html_bytes"] = (out / "report.html").stat().st_size
    row["results_keys"] = sorted(results)
    row["variants"] = _variants(results)
    row["steps"] = [{k: st.get(k) for k in ("name", "seconds", "status")} for st in results.get("steps", [])]
    return row


def _variants(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-variant figures from results.json: bytes, params, top-1, latency per runtime@target."""
    out: list[dict[str, Any]] = []
    for r in results.get("rows", []):
        row = {k: r.get(k) for k in ("variant", "bytes", "params", "top1")}
        row.update({f"{k} ms": round(v, 2) for k, v in (r.get("latency_ms") or {}).items() if v is not None})
        out.append(row)
    return out


def write(data: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "quick_recipe.json").write_text(json.dumps(data, indent=1) + "\n")
    runs = data["runs"]
    lines = ["# Quick recipe: wall time of `edgeslim compress examples/quick.yaml`", "",
             f"Commit `{data['commit']}`, `{data['command']}`; {data['machine']}. Each run starts from an empty "
             "output folder (nothing resumed). The machine is shared: the load average before each run is shown.", "",
             "| run | seconds | load before | rc |", "|---|---|---|---|"]
    lines += [f"| {i + 1} | {r['seconds']} | {r['load_before']} | {r['rc']} |" for i, r in enumerate(runs)]
    lines += ["", f"**Median: {data['median_s']} s** (limit {LIMIT_S:.0f} s: "
                  f"{'met' if data['met'] else '**not met**'}).", ""]
    ok = next((r for r in runs if r["rc"] == 0), None)
    if ok:
        lines += ["Files written: " + ", ".join(f"`{f}`" for f in ok["files"]), ""]
        if ok["variants"]:
            keys = list(dict.fromkeys(k for v in ok["variants"] for k in v))
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(str(v.get(k, "")) for k in keys) + " |" for v in ok["variants"]]
            lines.append("")
        if ok["steps"]:
            lines += ["Steps (seconds, first successful run): "
                      + ", ".join(f"{st['name']} {st['seconds']}" for st in ok["steps"]), ""]
    (folder / "quick_recipe.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="edgeslim-quick-") as tmp:
        for i in range(args.repeats):
            row = one_run(Path(tmp) / f"run{i}")
            print(json.dumps({k: row[k] for k in ("seconds", "load_before", "rc")}), flush=True)
            runs.append(row)
    good = [r["seconds"] for r in runs if r["rc"] == 0]
    median = round(statistics.median(good), 1) if good else None
    data = {"command": "python benchmarks/quick_recipe.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "commit": commit(), "at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
            "recipe": str(RECIPE.relative_to(ROOT)), "limit_s": LIMIT_S, "runs": runs, "median_s": median,
            "met": median is not None and median <= LIMIT_S and len(good) == len(runs)}
    write(data, args.results)
    return 0 if data["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
