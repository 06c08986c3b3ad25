"""Coverage of timm: one model per family through prune 50 % → run → int8 → ONNX Runtime → fp32 LiteRT.

For every model family (module) of timm (the version pinned in ``constraints.txt``), its smallest
model by parameter count, random weights (seed 0, ``num_classes=10``), at its default input size
(``pretrained_cfg["input_size"]``, or the smallest of 32/64/.../224 it runs at when the default
does not run), each model in its own subprocess with a time and memory limit:

1. ``prune``: ``edgeslim.prune(model, x, PruneConfig(criterion="l2", target="params=0.5"))``
   (uniform allocation, classifier head kept); the pruned model is then run on ``x`` and must give
   the original output shape;
2. ``int8``: ``edgeslim.quantize(pruned, x, "int8", calibration=...)`` (PT2E PTQ on 32
   Fashion-MNIST training images resized to the input size);
3. ``onnx``: ``edgeslim.export(int8, "onnx", ...)``, verified in ONNX Runtime by the exporter;
4. ``tflite``: ``edgeslim.export(pruned, "tflite", ..., quant="fp32")``, verified in LiteRT.

Each step is ``"ok"`` or its one-line error; ``clean`` says whether the error was an edgeslim
error (a message naming the module and what to do) rather than a raw exception. Rows are written
to ``benchmarks/results/coverage_timm.{json,md}`` after every family; families already there are
skipped unless ``--force`` or named with ``--only``.

    nohup .venv/bin/python benchmarks/coverage_timm.py > /tmp/coverage_timm.log 2>&1 &
    .venv/bin/python benchmarks/coverage_timm.py --only levit deit --force
"""

from __future__ import annotations

import argparse
import importlib.util
import json
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
STEPS = ("prune", "int8", "onnx", "tflite")
SIZES = (32, 64, 96, 128, 160, 192, 224, 256)
TOO_LARGE = 1_000_000_000  # parameters: not built on a 24 GB machine (fp32 weights + a pruned copy + export)
sys.path.insert(0, str(ROOT / "benchmarks"))
import provenance  # noqa: E402


def _tv_coverage() -> Any:
    """benchmarks/coverage.py (torchvision's sweep) loaded under another name (``coverage`` is a PyPI package)."""
    spec = importlib.util.spec_from_file_location("tv_coverage", ROOT / "benchmarks" / "coverage.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["tv_coverage"] = mod
    spec.loader.exec_module(mod)
    return mod


TV = _tv_coverage()
NOTES = [
    "Random weights (seed 0, `num_classes=10`): op and architecture coverage, not accuracy.",
    "The model of a family is its smallest registered model by parameter count (counted on the meta device); for "
    "some families that is timm's own small `test_*` configuration, which runs the family's code at a small width.",
    "prune: `edgeslim.prune(model, x, PruneConfig(criterion='l2', target='params=0.5'))` (uniform allocation, "
    "classifier head kept, ±2 % tolerance); then the pruned model runs on `x` and must keep the output shape. "
    "`left_whole`: how many modules edgeslim left unpruned because pruning them broke the forward.",
    "int8: `edgeslim.quantize(pruned, x, 'int8', calibration=...)` on 32 Fashion-MNIST training images resized to "
    "the input size.",
    "onnx: the int8 model exported and verified in ONNX Runtime on 64 Fashion-MNIST test images (cosine and top-1 "
    "agreement with the PyTorch int8 model); tflite: the pruned fp32 model exported and verified in LiteRT the same way.",
    "timm initialises some parameters at a scale no trained network has: LayerScale gammas 1e-5/1e-6 (EVA, CaiT, "
    "ConvNeXt), class/register tokens std 1e-6 (DeiT, ViT), classifier heads scaled to 1e-5 or zero. A head reading a "
    "1e-6 class token sees only int8 rounding of the patch tokens (DeiT: ONNX Runtime vs PyTorch int8 cosine 0.992, "
    "top-1 80 %; with the token at N(0, 1) 0.99988 and 100 %), and 1e-5 LayerScales with a 1e-5 head leave logits "
    "spanning 4e-4 (EVA). So every parameter other than a bias (leaf name containing 'bias') or a norm's whose values all lie "
    "below 1e-3 in magnitude (all-zero included) is re-initialised, seed 0: a Linear's weight PyTorch's default init, anything "
    "else N(0, 1) (`tiny_parameters_reinitialised` in the row), before anything else.",
    "A random network whose logits then span < 1e-3 gets BatchNorm statistics from the calibration images and its "
    "all-zero weights re-initialised (as in coverage.md), so verification has something to compare; one still below "
    "1e-3 fails the export steps with `NothingToVerify` (an edgeslim error raised by this benchmark).",
    "Seconds are wall time on a 2-core machine shared with other jobs: where the time goes within a row, not speed.",
    "A step that failed stops the later ones (`not run`). A family whose smallest model has over 1 G parameters is "
    "not built (too large for this 24 GB machine) and counts as failing.",
]


def catalogue() -> list[dict[str, Any]]:
    """One entry per timm family: its smallest model (parameters counted on the meta device)."""
    import timm
    import torch
    from timm.models import list_modules

    out = []
    for family in list_modules():
        best: tuple[int, str] | None = None
        errors = []
        for name in timm.list_models(module=family):
            try:
                with torch.device("meta"):
                    m = timm.create_model(name, pretrained=False, num_classes=10)
                n = sum(p.numel() for p in m.parameters())
            except Exception as exc:
                errors.append(f"{name}: {TV.one_line(exc)}")
                continue
            if best is None or (n, name) < best:
                best = (n, name)
        if best is None:
            out.append({"family": family, "model": None, "params": None,
                        "error": "no model of this family builds: " + "; ".join(errors[:2])})
        else:
            out.append({"family": family, "model": best[1], "params": best[0]})
    return sorted(out, key=lambda r: (r["params"] is None, r["params"] or 0, r["family"]))


def _input_size(model: Any, name: str) -> int:
    import timm
    import torch

    cfg = timm.get_pretrained_cfg(name)
    default = int((cfg.input_size if cfg is not None and cfg.input_size else (3, 224, 224))[-1])
    for s in (default, *(s for s in SIZES if s != default)):
        try:
            with torch.no_grad():
                model(torch.randn(1, 3, s, s))
            return s
        except Exception:
            continue
    raise RuntimeError(f"{name} runs at none of the sizes {(default, *SIZES)}")


TINY = 1e-3  # a parameter whose values all lie below this in magnitude is re-initialised (see NOTES)


def _trained_scale(model: Any) -> list[str]:
    """Re-initialise (seed 0) every parameter whose values all lie below ``TINY``; returns their names.

    Left alone: biases (any leaf name containing "bias": attention-bias tables too) and the parameters of norm layers.

    A Linear's weight gets ``reset_parameters()`` (PyTorch's default init; the Linear's bias is left as it is),
    anything else N(0, 1): timm's 1e-6 class tokens, 1e-5 LayerScales and 1e-5-scaled or zero heads.
    """
    import torch

    norm_params = {id(p) for m in model.modules() if any(k in type(m).__name__ for k in TV.NORMS) for p in m.parameters()}
    tiny = [n for n, p in model.named_parameters()
            if "bias" not in n.rpartition(".")[2] and id(p) not in norm_params and float(p.detach().abs().max()) < TINY]
    torch.manual_seed(0)
    with torch.no_grad():
        for n in tiny:
            owner, _, leaf = n.rpartition(".")
            module = model.get_submodule(owner) if owner else model
            if isinstance(module, torch.nn.Linear) and leaf == "weight":
                bias = None if module.bias is None else module.bias.detach().clone()
                module.reset_parameters()
                if bias is not None:
                    module.bias.copy_(bias)
            else:
                getattr(module, leaf).normal_()
    return tiny


def worker(family: str, name: str, row_path: Path, threads: int) -> None:
    """Run the four steps on one model, writing the row after each step."""
    import timm
    import torch

    import edgeslim
    from edgeslim import PruneConfig
    from edgeslim.errors import EdgeslimError
    from edgeslim.exporters.base import fashion_inputs

    class NothingToVerify(EdgeslimError):
        """The float model's logits barely depend on the input: an export's verification would be vacuous."""

    row: dict[str, Any] = json.loads(row_path.read_text())
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    row.update(dict.fromkeys(STEPS, "not run"))
    row["seconds"], row["clean"] = {}, {}

    def save() -> None:
        row_path.write_text(json.dumps(row))

    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    size = row["input_size"] = _input_size(model, name)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        shape = tuple(model(x).shape)
    calib = fashion_inputs(tuple(x.shape), 32, split="train")
    row["tiny_parameters_reinitialised"] = _trained_scale(model)
    (row["float_logit_span"], row["bn_stats_from_calibration"], row["zero_parameters_reinitialised"],
     row["verified_logit_span"]) = TV._undegenerate(model, calib)
    state: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix=f"coverage-timm-{family}-"))

    def prune() -> str:
        before = TV._fingerprint(model)
        try:
            res = edgeslim.prune(model, x, PruneConfig(criterion="l2", target="params=0.5"))
        finally:
            row["input_untouched"] = TV._fingerprint(model) == before
        s = res.summary()
        row.update(params_after=s["params_after"], ratio=round(s["params_fraction"], 4),
                   left_whole=len(s["left_whole"]) if "left_whole" in s else None,
                   left_whole_modules=s.get("left_whole", []), target_met=s.get("target_met"))
        with torch.no_grad():
            got = tuple(res.model.eval()(x).shape)
        if got != shape:
            raise RuntimeError(f"the pruned model's output has shape {got}, the original's {shape}")
        state["pruned"] = res.model
        return "ok"

    def int8() -> str:
        state["q"] = edgeslim.quantize(state["pruned"], x, "int8", calibration=calib)
        return "ok"

    def export(fmt: str, what: Any, quant: str | None) -> str:
        if row["verified_logit_span"] < TV.DEGENERATE:
            raise NothingToVerify(f"nothing to verify: the float logits span only {row['verified_logit_span']:.3g} on "
                                  "the calibration images (< 1e-3) after the random-weight preparation; give the model "
                                  "weights whose outputs depend on the input (trained ones) to verify its exports")
        res = edgeslim.export(what, fmt, work / f"model.{fmt}", x, overwrite=True, verify_samples=64, quant=quant)
        v = res.verification
        row[f"{fmt}_bytes"] = res.bytes
        if v is not None:
            row[f"{fmt}_verification"] = {"cosine": round(v.cosine, 5), "top1_agreement": round(v.top1_agreement, 4)}
        (work / f"model.{fmt}").unlink(missing_ok=True)
        return "ok"

    jobs = {"prune": prune, "int8": int8, "onnx": lambda: export("onnx", state["q"], None),
            "tflite": lambda: export("tflite", state["pruned"], "fp32")}
    for step in STEPS:
        row["running"] = step
        save()
        t0 = time.perf_counter()
        try:
            row[step] = jobs[step]()
            row["clean"][step] = True
        except Exception as exc:
            row[step] = TV.one_line(exc)
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


def run_one(entry: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One family's row: the worker in a subprocess under the time and memory limits."""
    row: dict[str, Any] = {"family": entry["family"], "model": entry["model"], "params": entry["params"],
                           "machine": TV.machine(), "time_limit_s": args.timeout, "memory_limit_gb": args.memory_gb,
                           "torch_threads": args.threads, **provenance.record("coverage_timm.py")}
    if entry["model"] is None or entry["params"] > TOO_LARGE:
        why = entry.get("error") or (f"too large for this machine: {entry['params'] / 1e9:.1f} G parameters "
                                     f"(limit {TOO_LARGE / 1e9:.0f} G on 24 GB)")
        row.update({s: (why if s == "prune" else "not run: prune failed") for s in STEPS}, seconds={}, clean={})
        row.update(input_size=None, ratio=None, left_whole=None, excluded=True)
        return row
    with tempfile.TemporaryDirectory() as tmp:
        row_path = Path(tmp) / "row.json"
        row_path.write_text(json.dumps(row))
        cmd = [sys.executable, __file__, "--worker", entry["family"], entry["model"], "--row", str(row_path),
               "--threads", str(args.threads)]
        result, killed, peak, wall = TV.supervise(cmd, row_path, args.timeout, args.memory_gb)
        result["peak_rss_gb"], result["wall_s"] = peak, wall
        TV.mark_stopped(result, killed, wall, STEPS)
    result.setdefault("ratio", None)
    result.setdefault("left_whole", None)
    result.setdefault("input_size", None)
    return result


def passes(row: dict[str, Any]) -> bool:
    return all(row.get(s) == "ok" for s in STEPS)


def raw_error(row: dict[str, Any]) -> bool:
    """A failed step whose error is a raw exception (not an edgeslim error, a limit or an exclusion)."""
    return any(row.get(s) not in ("ok", None) and not str(row.get(s)).startswith("not run")
               and row.get("clean", {}).get(s) is False for s in STEPS)


def write(rows: list[dict[str, Any]], cat: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    import timm

    order = {e["family"]: i for i, e in enumerate(cat)}
    rows = sorted(rows, key=lambda r: order.get(r["family"], 1 << 30))
    done = {r["family"] for r in rows}
    passed = [r for r in rows if passes(r)]
    missing = [e["family"] for e in cat if e["family"] not in done]
    summary = {
        "timm_version": timm.__version__, "families_total": len(cat), "families_measured": len(rows),
        "families_passing_every_step": len(passed),
        "pass_rate_of_all": round(len(passed) / len(cat), 4) if cat else None,
        "raw_errors": [r["family"] for r in rows if raw_error(r)], "not_measured_yet": missing,
    }
    data = {"name": "coverage_timm", "notes": NOTES, "settings": settings, **summary, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "coverage_timm.json").write_text(json.dumps(data, indent=1) + "\n")
    lines = [
        f"# Coverage: timm {timm.__version__} families through prune 50 % → int8 → ONNX Runtime → fp32 LiteRT", "",
        f"**{len(passed)} of the {len(cat)} families pass every step ({100 * len(passed) / max(len(cat), 1):.1f} %; "
        f"{len(rows)} measured, an unmeasured family counts as not passing).**"
        + (f" Not measured yet: {', '.join(missing)}." if missing else "")
        + (f" Raw (non-edgeslim) errors: {', '.join(summary['raw_errors'])}." if summary["raw_errors"] else ""),
        "", *[f"- {n}" for n in NOTES], "",
        "| family | model | input | params (M) | kept | left whole | prune | s | int8 | s | onnx | s | tflite | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sec = r.get("seconds", {})
        kept = f"{r['ratio']:.3f}" if r.get("ratio") is not None else ""
        params = f"{r['params'] / 1e6:.1f}" if r.get("params") else ""
        cells = [f"{TV._cell(str(r.get(s, '')))} | {sec.get(s, '')}" for s in STEPS]
        lw = "" if r.get("left_whole") is None else str(r["left_whole"])
        lines.append(f"| {r['family']} | {r['model']} | {r.get('input_size') or ''} | {params} | {kept} | {lw} | "
                     + " | ".join(cells) + " |")
    lines += ["", *provenance.runs_lines(rows), ""]
    (RESULTS / "coverage_timm.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", help="run these families (again), whatever the JSON holds")
    ap.add_argument("--force", action="store_true", help="rerun families already in the JSON")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per family")
    ap.add_argument("--memory-gb", type=float, default=14.0, help="resident memory limit per family")
    ap.add_argument("--jobs", type=int, default=1, help="families run at once")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per family")
    ap.add_argument("--report", action="store_true", help="only rewrite the JSON/Markdown from the rows there")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--row", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.row, args.threads)
        return
    cache = RESULTS / "coverage_timm_catalogue.json"
    import timm

    if cache.exists() and json.loads(cache.read_text()).get("timm_version") == timm.__version__:
        cat = json.loads(cache.read_text())["families"]
    else:
        cat = catalogue()
        RESULTS.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"timm_version": timm.__version__, "families": cat}, indent=1) + "\n")
    by_family = {e["family"]: e for e in cat}
    unknown = [f for f in args.only or [] if f not in by_family]
    if unknown:
        sys.exit(f"error: not timm families: {', '.join(unknown)} (families: {', '.join(by_family)})")
    path = RESULTS / "coverage_timm.json"
    rows = {r["family"]: r for r in TV.load_rows(path)}
    settings = {"steps": list(STEPS), "sizes_tried": list(SIZES), "timeout_s": args.timeout, "jobs": args.jobs,
                "torch_threads": args.threads, "memory_gb": args.memory_gb}
    if args.report:
        write(list(rows.values()), cat, settings)
        return
    todo = [e for e in cat if e["family"] in (args.only or [])
            or (not args.only and (args.force or e["family"] not in rows))]
    lock = threading.Lock()

    def one(entry: dict[str, Any]) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] start {entry['family']} ({entry['model']})", file=sys.stderr, flush=True)
        r = run_one(entry, args)
        with lock:
            rows.update({o["family"]: o for o in TV.load_rows(path) if o["family"] != entry["family"]})
            rows[entry["family"]] = r
            print(f"[{time.strftime('%H:%M:%S')}] {entry['family']}: "
                  f"{' | '.join(f'{s}: {r[s]}' for s in STEPS)} ({r.get('wall_s')} s)", file=sys.stderr, flush=True)
            write(list(rows.values()), cat, settings)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(one, todo))
    write(list(rows.values()), cat, settings)


if __name__ == "__main__":
    main()
