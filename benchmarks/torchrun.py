"""Distributed fine-tune: the issue's contract command run for real with two CPU processes.

Runs::

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m edgeslim.cli finetune \\
        --model resnet18-fmnist --data fashion-mnist --epochs 0.02 --out WORK/ft --json

and (``--qat int8``) the same with quantization-aware training, and records for each the JSON line rank 0 printed (world size, top-1 before/after on the first
``--eval-limit`` test images, the final weights' sha256, ``ranks_agree``), every rank's log lines
(``[rank R/W] ...`` on stderr: the same input sha256, the same final weights), the command, the
commit and the settings, in ``benchmarks/results/torchrun.{json,md}``. The saved model is reloaded
and its sha256 compared with the one the ranks agreed on.

Reproduce::

    nice .venv/bin/python benchmarks/torchrun.py                    # a few minutes on a 2-core box
    .venv/bin/python benchmarks/torchrun.py --epochs 0.005 --eval-limit 500 --results /tmp/r   # quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return proc.stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18-fmnist")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--epochs", type=float, default=0.02)
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--eval-limit", type=int, default=10000)
    ap.add_argument("--qat", nargs="*", default=["int8"], help="Also a QAT row per scheme (none: --qat)")
    ap.add_argument("--qat-epochs", type=float, default=0.005)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="Folder for the fine-tuned model (default: a temporary one)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="edgeslim-torchrun-"))
    runs = [("ft", args.epochs, [])] + [(f"qat_{q.replace(':', '_')}", args.qat_epochs, ["--qat", q]) for q in args.qat]
    rows = [_run(args, work / name, epochs, extra) for name, epochs, extra in runs]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "torchrun.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    (args.results / "torchrun.md").write_text(_markdown(rows))
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


def _run(args: argparse.Namespace, out: Path, epochs: float, extra: list[str]) -> dict[str, Any]:
    """One torchrun command; its row."""
    cli = ["finetune", "--model", args.model, "--data", args.data, "--epochs", str(epochs), "--lr", str(args.lr),
           "--batch-size", str(args.batch_size), "--eval-limit", str(args.eval_limit), *extra, "--out", str(out),
           "--json", "--force"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
           "-m", "edgeslim.cli", *cli]
    shown = " ".join(["torchrun", "--standalone", "--nproc_per_node", str(args.nproc), "-m", "edgeslim.cli",
                      *map(shlex.quote, cli)]).replace(str(out.parent), "WORK")
    print(f"running: {shown}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False,
                          env={**os.environ, "COLUMNS": "200"})
    wall = time.perf_counter() - t0
    stdout_lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    row: dict[str, Any] = {
        "command": shown, "commit": _git("rev-parse", "--short", "HEAD"),
        "src_modified_uncommitted": bool(_git("status", "--porcelain", "--", "src/edgeslim")),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": f"{platform.machine()}, {os.cpu_count()} cores",
        "settings": {"model": args.model, "data": args.data, "epochs": epochs, "lr": args.lr,
                     "batch_size": args.batch_size, "eval_limit": args.eval_limit, "nproc": args.nproc,
                     "qat": extra[1] if extra else None},
        "returncode": proc.returncode, "wall_seconds": round(wall, 1), "stdout_lines": len(stdout_lines),
        "rank_log": [ln.strip() for ln in proc.stderr.splitlines() if ln.startswith("[rank ")],
    }
    if proc.returncode == 0 and stdout_lines:
        summary = json.loads(stdout_lines[-1])
        row["summary"] = summary
        import edgeslim
        from edgeslim.io import state_sha256

        reloaded = edgeslim.load(out / "model.pt")
        # a QAT file stores integer weights: its reloaded graph's state_dict is not the converted graph's
        row["reloaded_sha256_matches"] = (state_sha256(reloaded.state_dict()) == summary["weights_sha256"]
                                          if summary["mode"] == "float" else "n/a (integer file)")
    else:
        row["error"] = proc.stderr.strip().splitlines()[-20:]
    print(json.dumps(row.get("summary", row.get("error")), indent=1), file=sys.stderr)
    return row


def _markdown(rows: list[dict[str, Any]]) -> str:
    first = rows[0]
    lines = ["# Distributed fine-tune and QAT under torchrun (2 CPU processes, gloo)", "",
             f"Produced by `python benchmarks/torchrun.py` (commit {first['commit']}, {first['date']}; {first['host']}). "
             "Each row is one `torchrun` command (WORK: a temporary folder); top-1 on the first `eval images` of the "
             "Fashion-MNIST test set, before (the float model) and after (the fine-tuned or QAT-converted one); "
             "`seconds` is the training (and QAT convert) time, `wall s` the whole command.", "",
             "| mode | world size | backend | epochs | steps per rank | batch per rank | eval images | top-1 before | "
             "top-1 after | ranks agree | rank 0 saved | reloaded sha256 matches | stdout lines | seconds | wall s |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|---|---:|---:|---:|"]
    for row in rows:
        s = row.get("summary")
        if s:
            mode = f"QAT {s['scheme']}" if s["mode"] == "qat" else "fine-tune"
            lines.append(
                f"| {mode} | {s['world_size']} | {s['backend']} | {s['epochs']} | {s['steps']} | {s['batch_size']} | "
                f"{s['eval_images']} | {100 * s['top1_before']:.2f} % | {100 * s['top1_after']:.2f} % | "
                f"{s['ranks_agree']} | {s['rank0_saved']} | {row['reloaded_sha256_matches']} | {row['stdout_lines']} | "
                f"{s['seconds']} | {row['wall_seconds']} |")
        else:
            lines.append(f"| {row['settings']['qat'] or 'fine-tune'} | failed (exit {row['returncode']}) |"
                         + " |" * 13)
    for row in rows:
        lines += ["", "```", row["command"], "```", ""]
        if row.get("summary"):
            lines += [f"Final weights sha256 `{row['summary']['weights_sha256']}`. Rank log lines (stderr):", ""]
        else:
            lines += ["It failed:", "", "```", *row.get("error", []), "```", "", "Rank log lines:", ""]
        lines += ["```", *row["rank_log"], "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
