"""Coverage: every torchvision classifier through prune 50 % → int8 PTQ → ONNX (ONNX Runtime) → TFLite (LiteRT).

For each model of ``torchvision.models.list_models(module=torchvision.models)``, in its own
subprocess with a time and memory limit (a crash or a hang does not stop the sweep):
random weights (``weights=None``, seed 0) at the smallest input size the model runs at
(32, 64, 128, 224 or 299; ViT/Swin/MaxViT need 224), then

1. ``edgeslim.prune``: structured, L1, uniform allocation, ``params=0.5`` (classifier head kept);
2. ``edgeslim.quantize``: int8 PTQ (PT2E), calibrated on 32 Fashion-MNIST training images
   resized to the input size (op coverage, not accuracy: the weights are random);
3. ``edgeslim.export(..., "onnx")`` of the int8 model, verified in ONNX Runtime by the exporter;
4. ``edgeslim.export(..., "tflite")`` of the int8 model, verified in LiteRT by the exporter.

Each step is ``"ok"`` or its one-line error, with its seconds. Rows are written to
``benchmarks/results/coverage.{json,md}`` after every model; models already there are skipped
unless ``--force`` or named with ``--only``. Small models run first, transformers and the huge
models (> 100 M parameters, a longer time limit) last.

    nohup .venv/bin/python benchmarks/coverage.py > /tmp/coverage.log 2>&1 &
    .venv/bin/python benchmarks/coverage.py --only vit_b_16 swin_t --force
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
STEPS = ("prune", "quantize", "onnx", "tflite")
SIZES = (32, 64, 128, 224, 299)
HUGE = 100_000_000  # parameters
TRANSFORMERS = ("vit_", "swin_", "maxvit_")
VERIFY_SAMPLES, HUGE_VERIFY_SAMPLES = 256, 64  # test images each artefact is verified on
NORMS = (  # module class names whose parameters are never re-initialised
    "BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "LocalResponseNorm")
DEGENERATE = 1e-3  # float logit span below which a random network gets BN statistics from calibration images
NOTES = [
    "Random weights (`weights=None`, seed 0): this measures op and architecture coverage, not accuracy.",
    "prune: `edgeslim.prune(model, x, PruneConfig(criterion='l1', target='params=0.5'))` (uniform allocation, "
    "classifier head kept, ±2 % tolerance).",
    "quantize: `edgeslim.quantize(pruned, x, 'int8', calibration=...)` on 32 Fashion-MNIST training images resized "
    "to the input size (a handful of images: calibration quality is not what is measured here).",
    "onnx / tflite: `edgeslim.export(int8_result, fmt, path, x)`, which runs the artefact in ONNX Runtime / LiteRT "
    "on 256 Fashion-MNIST test images and fails unless it agrees with the PyTorch int8 model (cosine, top-1 "
    "agreement); an export that does not verify is an error here.",
    "A random network whose float logits span less than 1e-3 on the calibration images (torchvision's init lets "
    "efficientnet_v2_*'s activations vanish to ~1e-6, leaving int8 only rounding noise to verify) gets its BatchNorm "
    "running statistics from those images (one train-mode pass; weights untouched): `bn_stats_from_calibration` "
    "and `float_logit_span` in the row. torchvision's ViTs initialise their classifier to zero (every logit 0, which "
    "any constant artefact would match) and their class token to zero (it then carries almost nothing of the image; "
    "int8 rounding swamps the trace, unlike a trained ViT's class token): in a network whose logits span < 1e-3, "
    "every all-zero parameter other than a bias or a norm's gets a random value, seed 0 (a Linear's weight "
    "PyTorch's default init, anything else N(0, 1)); `zero_parameters_reinitialised` in the row. Exports are verified only when the float logits then span at least 1e-3 "
    "(`verified_logit_span`); otherwise the step fails with 'nothing to verify'. Rows measured before this check got "
    "their float logit span measured afterwards (`float_logit_span_measured_at`, same seed, size and images); one "
    "below 1e-3 without BN statistics marks the row `verification_vacuous` and it does not count as a pass.",
    "Top-1 agreement sets aside the reference's near-ties (top-1/top-2 margin within the typical output error), "
    "whose arg-max any rounding flips; random networks have many (`edgeslim.exporters.verify.compare`).",
    "Seconds are wall time on a 2-core machine shared with other jobs (two models at a time with one torch thread "
    "each; the first rows ran at load average 12-14): they show where the time goes within a row, not speed.",
    "Models over 100 M parameters run alone, with 2 torch threads, and are verified on 64 test images instead of 256 "
    "(`torch_threads`, `verify_samples` in the row).",
    "A step that failed stops the model's later steps (`not run`). Each model runs in its own process with a time "
    "and memory limit; a limit hit is recorded as that step's error.",
]


def commit() -> str:
    """``git rev-parse --short HEAD``, with the uncommitted files under ``src/`` the run used (a shared tree)."""
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                         check=False).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True,
                           check=False).stdout.split("\n")
    files = [line[3:] for line in dirty if line.strip()]
    return f"{sha}+uncommitted({', '.join(files)})" if files else sha


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, shared with other jobs"


def catalogue() -> list[tuple[str, int]]:
    """``(name, parameters)`` of every torchvision classifier, in run order (small CNNs first)."""
    import torchvision
    from torchvision.models import get_model_weights

    out = []
    for name in torchvision.models.list_models(module=torchvision.models):
        out.append((name, int(next(iter(get_model_weights(name))).meta["num_params"])))
    return sorted(out, key=lambda m: (m[1] > HUGE, m[0].startswith(TRANSFORMERS), m[1], m[0]))


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


# ----------------------------------------------------------------------------------------------- worker
def _fingerprint(model: Any) -> list[tuple[str, tuple[int, ...], float]]:
    return [(k, tuple(v.shape), float(v.double().sum())) for k, v in model.state_dict().items()]


def _smallest_size(model: Any, name: str) -> int:
    import torch

    start = 224 if name.startswith(TRANSFORMERS) else 32
    last: BaseException | None = None
    for s in (s for s in SIZES if s >= start):
        try:
            with torch.no_grad():
                model(torch.randn(1, 3, s, s))
            return s
        except Exception as exc:
            last = exc
    raise RuntimeError(f"runs at none of the sizes {SIZES}: {one_line(last) if last else ''}")


def _span(model: Any, batch: Any) -> float:
    import torch

    with torch.no_grad():
        y = model(batch)
    return float(y.max() - y.min())


def _undegenerate(model: Any, calib: list[Any]) -> tuple[float, bool, list[str], float]:
    """Give a degenerate random network (float logits spanning < DEGENERATE) outputs worth verifying.

    torchvision's random init lets some networks' activations vanish (efficientnet_v2_*: logits
    span ~1e-6), leaving int8 nothing but rounding noise to verify. Such a network gets its
    BatchNorm running statistics from the calibration images (one train-mode pass, weights
    untouched), the scale a trained network has. torchvision's ViTs initialise their classifier
    to zero, so every logit is 0 and any artefact that also prints 0 would "verify", and their
    class token to zero, so it carries almost nothing of the image and the logits are a constant
    plus a trace that int8 rounding swamps (a trained class token has the patch tokens' scale or
    more: vit-fmnist's std 8.6 vs 4.8). Every all-zero parameter other than a bias or a norm's
    gets a random value, seed 0: a Linear's weight ``reset_parameters()`` (PyTorch's default
    init), anything else N(0, 1).
    Returns the original span, whether BN statistics were set, the re-initialised layers and
    the span after both.
    """
    import torch

    batch = torch.cat(list(calib))
    span = _span(model, batch)
    if span >= DEGENERATE:
        return span, False, [], span
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the one pass
    if norms:
        model.train()
        with torch.no_grad():
            model(batch)
        model.eval()
    norm_params = {id(p) for m in model.modules() if any(k in type(m).__name__ for k in NORMS) for p in m.parameters()}
    zeroed = [n for n, p in model.named_parameters()
              if not n.endswith("bias") and id(p) not in norm_params and not bool(p.detach().any())]
    torch.manual_seed(0)
    with torch.no_grad():
        for n in zeroed:
            owner, _, leaf = n.rpartition(".")
            module = model.get_submodule(owner) if owner else model
            if isinstance(module, torch.nn.Linear) and leaf == "weight":
                module.reset_parameters()
            else:
                getattr(module, leaf).normal_()
    return span, bool(norms), zeroed, _span(model, batch)


def fill_spans(rows: list[dict[str, Any]]) -> None:
    """Measure the float logit span of rows that predate it: the same random model, size and images as the worker."""
    import torch

    import edgeslim
    from edgeslim.exporters.base import fashion_inputs

    for row in rows:
        if "float_logit_span" in row or "input_size" not in row:
            continue
        torch.manual_seed(0)
        model = edgeslim.load_model(row["model"])
        size = row["input_size"]
        calib = fashion_inputs((1, 3, size, size), 32, split="train")
        row["float_logit_span"] = _span(model, torch.cat(list(calib)))
        row["float_logit_span_measured_at"] = commit()
        print(f"{row['model']}: float logit span {row['float_logit_span']:.3g}", flush=True)


def worker(name: str, row_path: Path, threads: int) -> None:
    """Run the four steps on one model, writing the row after each step."""
    import torch

    import edgeslim
    from edgeslim import PruneConfig
    from edgeslim.errors import EdgeslimError
    from edgeslim.exporters.base import fashion_inputs

    row: dict[str, Any] = json.loads(row_path.read_text())
    huge = row["torchvision_params"] > HUGE
    # models over HUGE run alone: both cores, and a quarter of the verification images (hours otherwise)
    row["torch_threads"] = threads = max(threads, 2) if huge else threads
    row["verify_samples"] = verify_samples = HUGE_VERIFY_SAMPLES if huge else VERIFY_SAMPLES
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    row.update(dict.fromkeys(STEPS, "not run"))
    row["seconds"], row["clean"] = {}, {}

    def save() -> None:
        row_path.write_text(json.dumps(row))

    model = edgeslim.load_model(name)
    size = row["input_size"] = _smallest_size(model, name)
    x = torch.randn(1, 3, size, size)
    calib = fashion_inputs(tuple(x.shape), 32, split="train")
    (row["float_logit_span"], row["bn_stats_from_calibration"], row["zero_parameters_reinitialised"],
     row["verified_logit_span"]) = _undegenerate(model, calib)
    state: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix=f"coverage-{name}-"))

    def prune() -> str:
        before = _fingerprint(model)
        try:
            res = edgeslim.prune(model, x, PruneConfig(criterion="l1", target="params=0.5"))
        finally:
            row["input_untouched"] = _fingerprint(model) == before
        s = res.summary()
        row.update(params=s["params_before"], params_after=s["params_after"],
                   params_fraction=round(s["params_fraction"], 4), channel_ratio=round(s["channel_ratio"], 4))
        state["pruned"] = res.model
        return "ok"

    def quantize() -> str:
        state["q"] = edgeslim.quantize(state["pruned"], x, "int8", calibration=calib)
        return "ok"

    def export(fmt: str) -> str:
        if row["verified_logit_span"] < DEGENERATE:
            raise RuntimeError(f"nothing to verify: the float logits span only {row['verified_logit_span']:.3g} "
                               "on the calibration images, so any constant output would agree")
        res = edgeslim.export(state["q"], fmt, work / f"model.{fmt}", x, overwrite=True,
                              verify_samples=verify_samples)
        v = res.verification
        row[f"{fmt}_bytes"] = res.bytes
        if v is not None:
            decisive = None if v.decisive_top1_agreement is None else round(v.decisive_top1_agreement, 4)
            row[f"{fmt}_verification"] = {"cosine": round(v.cosine, 5), "top1_agreement": round(v.top1_agreement, 4),
                                          "decisive_samples": v.decisive_samples, "decisive_top1_agreement": decisive}
        (work / f"model.{fmt}").unlink(missing_ok=True)
        return "ok"

    jobs = {"prune": prune, "quantize": quantize, "onnx": lambda: export("onnx"), "tflite": lambda: export("tflite")}
    for step in STEPS:
        row["running"] = step
        save()
        t0 = time.perf_counter()
        try:
            row[step] = jobs[step]()
            row["clean"][step] = True
        except Exception as exc:
            row[step] = one_line(exc)
            row["clean"][step] = isinstance(exc, EdgeslimError)
            if not isinstance(exc, EdgeslimError):
                row.setdefault("tracebacks", {})[step] = traceback.format_exc()[-3000:]
        row["seconds"][step] = round(time.perf_counter() - t0, 1)
        if row[step] != "ok":
            for later in STEPS[STEPS.index(step) + 1:]:
                row[later] = f"not run: {step} failed"
            break
    row.pop("running", None)
    save()


# ----------------------------------------------------------------------------------------------- parent
def _rss_gb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def supervise(cmd: list[str], row_path: Path, limit: float, memory_gb: float) -> tuple[dict[str, Any], str, float, float]:
    """Run a worker ``cmd`` under a time and memory limit; returns its row (``row_path``), why it was stopped or
    crashed (``""`` when it exited cleanly), its peak resident GB and its wall seconds."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        t0, killed, peak = time.monotonic(), "", 0.0
        while proc.poll() is None:
            time.sleep(1)
            peak = max(peak, _rss_gb(proc.pid))
            if time.monotonic() - t0 > limit:
                killed = f"timeout: not finished within the {limit:g} s limit on this machine ({machine()})"
            elif peak > memory_gb:
                killed = f"memory: the process passed {memory_gb:g} GB resident, the limit on this machine ({machine()})"
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        result = json.loads(row_path.read_text())
        if not killed and (proc.returncode != 0 or "running" in result):
            log.seek(0)
            tail = [ln for ln in log.read().splitlines() if ln.strip()][-1:] or [""]
            killed = f"crashed: exit code {proc.returncode}, last output: {tail[0][:300]}"
    return result, killed, round(peak, 2), round(time.monotonic() - t0, 1)


def run_one(name: str, params: int, args: argparse.Namespace) -> dict[str, Any]:
    sha = commit()  # per model: the tree may change between models of a long sweep
    limit = args.huge_timeout if params > HUGE else args.timeout
    row: dict[str, Any] = {
        "model": name, "torchvision_params": params, "commit": sha, "machine": machine(),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "time_limit_s": limit,
        "memory_limit_gb": args.memory_gb, "jobs": args.jobs, "torch_threads": args.threads, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        row_path = Path(tmp) / "row.json"
        row_path.write_text(json.dumps(row))
        cmd = [sys.executable, __file__, "--worker", name, "--row", str(row_path), "--threads", str(args.threads)]
        result, killed, peak, wall = supervise(cmd, row_path, limit, args.memory_gb)
        result["peak_rss_gb"], result["wall_s"] = peak, wall
        mark_stopped(result, killed, wall, STEPS)
    return result


def mark_stopped(result: dict[str, Any], killed: str, wall: float, steps: tuple[str, ...]) -> None:
    """A worker stopped by a limit or a crash: its running step gets why, the later steps ``not run``."""
    if not killed and "running" not in result:
        return
    step = result.pop("running", steps[0])
    result.setdefault("seconds", {})[step] = wall
    for s in steps:
        if s == step:
            result[s] = killed or "crashed"
        elif steps.index(s) > steps.index(step) or s not in result:
            result[s] = f"not run: {step} failed"


def load_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return list(data["rows"] if isinstance(data, dict) else data)


def _cell(v: str) -> str:
    return v.replace("|", "\\|").replace("\n", " ")


def vacuous(row: dict[str, Any]) -> bool:
    """True when the row's exports were "verified" on logits spanning < DEGENERATE (rows from before the check)."""
    if "verified_logit_span" in row:
        return bool(row["verified_logit_span"] < DEGENERATE)
    span = row.get("float_logit_span")
    return span is not None and span < DEGENERATE and not row.get("bn_stats_from_calibration")


def passes(row: dict[str, Any]) -> bool:
    return all(row.get(s) == "ok" for s in STEPS) and not vacuous(row)


def write(rows: list[dict[str, Any]], cat: list[tuple[str, int]], settings: dict[str, Any]) -> None:
    order = {n: i for i, (n, _) in enumerate(cat)}
    rows = sorted(rows, key=lambda r: order.get(r["model"], 1 << 30))
    done = {r["model"] for r in rows}
    for r in rows:
        r["verification_vacuous"] = vacuous(r)
    passed = [r for r in rows if passes(r)]
    missing = [n for n, _ in cat if n not in done]
    summary = {
        "models_total": len(cat), "models_measured": len(rows), "models_passing_every_step": len(passed),
        "pass_rate_of_measured": round(len(passed) / len(rows), 4) if rows else None,
        "pass_rate_of_all": round(len(passed) / len(cat), 4) if cat else None,
        "not_measured_yet": missing,
    }
    data = {"name": "coverage", "notes": NOTES, "settings": settings, **summary, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "coverage.json").write_text(json.dumps(data, indent=1) + "\n")
    lines = [
        "# Coverage: torchvision classifiers through prune 50 % → int8 → ONNX Runtime → LiteRT",
        "",
        f"**{len(passed)} of the {len(cat)} models pass every step ({100 * len(passed) / max(len(cat), 1):.1f} %; "
        f"{len(rows)} measured, an unmeasured model counts as not passing).**"
        + (f" Not measured yet: {', '.join(missing)}." if missing else ""),
        "",
        *[f"- {n}" for n in NOTES],
        "",
        "| model | input | params (M) | kept | prune | s | quantize | s | onnx | s | tflite | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sec = r.get("seconds", {})
        kept = f"{r['params_fraction']:.3f}" if "params_fraction" in r else ""
        shown = {s: str(r.get(s, "")) for s in STEPS}
        if r["verification_vacuous"]:
            for s in ("onnx", "tflite"):
                shown[s] += " (nothing verified: constant logits)"
        cells = [f"{_cell(shown[s])} | {sec.get(s, '')}" for s in STEPS]
        lines.append(f"| {r['model']} | {r.get('input_size', '')} | {r['torchvision_params'] / 1e6:.1f} | {kept} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Per row in the JSON: commit (with the uncommitted files under src/ the run used, in a shared "
              "checkout), machine, date, time and memory limits, peak memory, verification numbers "
              "(cosine, top-1 agreement with the PyTorch int8 model), whether an error was a clean edgeslim error "
              "(`clean`) and, for raw exceptions, the traceback.", ""]
    (RESULTS / "coverage.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", help="run these models (again), whatever the JSON holds")
    ap.add_argument("--force", action="store_true", help="rerun models already in the JSON")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per model")
    ap.add_argument("--huge-timeout", type=int, default=2400, help="seconds per model over 100 M parameters")
    ap.add_argument("--memory-gb", type=float, default=14.0, help="resident memory limit per model")
    ap.add_argument("--jobs", type=int, default=1, help="models run at once (models over 100 M parameters: alone)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per model")
    ap.add_argument("--skip-huge", action="store_true", help="do not start models over 100 M parameters")
    ap.add_argument("--fill-spans", action="store_true",
                    help="measure float_logit_span for rows from before the check (no steps rerun), then report")
    ap.add_argument("--report", action="store_true", help="only rewrite the JSON/Markdown from the rows there")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--row", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.row, args.threads)
        return
    cat = catalogue()
    names = dict(cat)
    unknown = [m for m in args.only or [] if m not in names]
    if unknown:
        sys.exit(f"error: not torchvision classifiers: {', '.join(unknown)}")
    rows = {r["model"]: r for r in load_rows(RESULTS / "coverage.json")}
    settings = {"steps": list(STEPS), "sizes_tried": list(SIZES), "timeout_s": args.timeout, "jobs": args.jobs,
                "torch_threads": args.threads,
                "huge_timeout_s": args.huge_timeout, "memory_gb": args.memory_gb}
    if args.fill_spans:
        fill_spans(list(rows.values()))
    if args.report or args.fill_spans:
        old = json.loads((RESULTS / "coverage.json").read_text())
        write(list(rows.values()), cat, old.get("settings", settings) if isinstance(old, dict) else settings)
        return
    todo = [n for n, _ in cat if (n in (args.only or [])) or (not args.only and (args.force or n not in rows))]
    if args.skip_huge:
        todo = [n for n in todo if names[n] <= HUGE]
    lock = threading.Lock()
    measured: set[str] = set()

    def one(name: str) -> None:
        if not args.only and not args.force and any(r["model"] == name for r in load_rows(RESULTS / "coverage.json")):
            return  # another run measured it meanwhile
        print(f"[{time.strftime('%H:%M:%S')}] start {name}", file=sys.stderr, flush=True)
        r = run_one(name, names[name], args)
        with lock:
            for old in load_rows(RESULTS / "coverage.json"):  # rows another run wrote (or filled) meanwhile
                if old["model"] not in measured:
                    rows[old["model"]] = old
            rows[name] = r
            measured.add(name)
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {' | '.join(f'{s}: {r[s]}' for s in STEPS)}  "
                  f"({r.get('wall_s')} s)", file=sys.stderr, flush=True)
            write(list(rows.values()), cat, settings)

    small = [n for n in todo if names[n] <= HUGE]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # huge models afterwards, one at a time
        list(pool.map(one, small))
    for name in todo:
        if names[name] > HUGE:
            one(name)
    write(list(rows.values()), cat, settings)


if __name__ == "__main__":
    main()
