"""Chain benchmark: reference model → (prune) → quantize → export → bench, each step run from the previous step's file.

For ResNet-18 and MobileNetV2 (the bundled Fashion-MNIST references), every quantization chain
(``int8``, ``w8a16``, ``log2:4``, ``codebook:4``, ``pwl:4``, ``mixed`` under 1/6 of the fp32 weight
bytes, QAT ``log2:4`` for 0.1 epoch, and ``pruned+int8``: 50 % of the parameters pruned with a short
distilled fine-tune, then int8) × {ONNX, TFLite}. Every step is the real ``edgeslim`` command run as
a subprocess with ``--json`` (the last stdout line is parsed), reading the file the previous step
wrote: ``prune`` → ``DIR/pruned/model.pt`` → ``quantize`` → ``DIR/q_<chain>/model.pt`` → ``export``
→ ``DIR/<chain>.<format>`` → ``bench --inputs DIR/eval_<N>.npz`` (the first N test images and
labels). A quantized file is made once per (model, chain) and exported to both formats.

Each row records per step the bytes and top-1, the commands run, the commit, the settings and the
wall time of each step; a failed step is recorded with its error (the last ``error:`` line of
its stderr) and the run goes on. Results go to ``OUT/chain.json`` (written atomically after every
row) and ``OUT/chain.md``; rows already there for the same commit and settings are skipped
(``--fresh`` redoes everything). Intermediate files stay in ``--work`` (nothing outside it is deleted;
each command's output is in ``WORK/logs/``).

Reproduce::

    nice .venv/bin/python benchmarks/chain.py            # everything: long on 2 cores, resumable
    .venv/bin/python benchmarks/chain.py --smoke         # quick check (one model, int8 + codebook:4,
                                                         # 200 images, 3 runs; writes to /tmp)
    .venv/bin/python benchmarks/chain.py --models mobilenet_v2-fmnist --schemes int8 pruned:int8 --formats onnx

Chains (``--schemes``): a scheme (``int8``, ``w8a16``, ``log2:4``, ``codebook:4``, ``pwl:4``, ``mixed``),
``qat:SCHEME`` (QAT for ``--qat-epochs``) or ``pruned:SCHEME`` (prune, then quantize the pruned file).
With ``--eval-images`` below 10,000 the quantize step runs without ``--eval`` (which always uses the
full test set) and the torch top-1 is the one ``quantize`` records on the first N images.
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
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from provenance import commit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("resnet18-fmnist", "mobilenet_v2-fmnist")
CHAINS = ("int8", "w8a16", "log2:4", "codebook:4", "pwl:4", "mixed", "qat:log2:4", "pruned:int8")
FORMATS = ("onnx", "tflite")
FULL_TEST = 10_000


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Chain:
    """One chain of steps, parsed from a ``--schemes`` token.

    Attributes:
        token: The token as given (``int8``, ``qat:log2:4``, ``pruned:int8``).
        label: The row's chain label (``int8``, ``qat log2:4``, ``pruned+int8``).
        scheme: The ``--scheme`` passed to ``edgeslim quantize``.
        pruned: Whether the chain starts with ``edgeslim prune``.
        qat: Whether quantization is QAT (``--qat-epochs``).
    """

    token: str
    label: str
    scheme: str
    pruned: bool
    qat: bool

    @property
    def slug(self) -> str:
        """The token as a file-name part."""
        return self.token.replace(":", "-").replace("/", "_")

    @classmethod
    def parse(cls, token: str) -> Chain:
        """The chain of a ``--schemes`` token."""
        head, _, rest = token.partition(":")
        if head == "pruned" and rest:
            return cls(token, f"pruned+{rest}", rest, pruned=True, qat=False)
        if head == "qat" and rest:
            return cls(token, f"qat {rest}", rest, pruned=False, qat=True)
        return cls(token, token, token, pruned=False, qat=False)


@dataclass
class Step:
    """One CLI command run: its command line, exit status, parsed JSON, error and wall time."""

    command: list[str]
    rc: int
    out: dict[str, Any] | None
    error: str | None
    seconds: float
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {"command": self.command, "rc": self.rc, "out": self.out, "error": self.error,
                "seconds": round(self.seconds, 2), "reused": self.reused}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _error_line(stderr: str) -> str:
    """The last ``error:`` line of a command's stderr, else its last non-empty line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["(no output on stderr)"])[-1]


class Runner:
    """Runs ``edgeslim`` commands, logs their output under ``WORK/logs`` and caches finished steps.

    Args:
        exe: The ``edgeslim`` executable.
        work: The work folder.
        commit: The commit label a cached step must match.
        fresh: Ignore cached steps.
    """

    def __init__(self, exe: str, work: Path, commit: str, fresh: bool) -> None:
        self.exe, self.work, self.commit, self.fresh = exe, work, commit, fresh
        self.env = {**os.environ, "COLUMNS": "400", "PYTHONUNBUFFERED": "1"}  # one-line rich errors

    def run(self, args: list[str], name: str, cache: Path | None = None, product: Path | None = None) -> Step:
        """Run ``edgeslim ARGS``; reuse the step cached in ``cache`` when its commit and command match.

        Args:
            args: The command's arguments (after ``edgeslim``).
            name: The log file's name (``WORK/logs/NAME.log``).
            cache: A JSON file keeping the finished step (None: never cached).
            product: The file the step writes; a cached step is reused only while it exists.

        Returns:
            The step; ``out`` is the parsed last stdout line when the command succeeded.
        """
        command = ["edgeslim", *args]
        if cache is not None and cache.is_file() and not self.fresh and (product is None or product.is_file()):
            saved = json.loads(cache.read_text())
            if saved.get("commit") == self.commit and saved.get("command") == command and saved.get("rc") == 0:
                _log(f"  reusing {name} ({cache})")
                return Step(command, 0, saved["out"], None, float(saved["seconds"]), reused=True)
        _log(f"  $ {shlex.join(command)}")
        t0 = time.perf_counter()
        proc = subprocess.run([self.exe, *args], capture_output=True, text=True, env=self.env, check=False)
        seconds = time.perf_counter() - t0
        log = self.work / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ {shlex.join(command)}\n# rc={proc.returncode} {seconds:.1f} s\n"
                       f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        out: dict[str, Any] | None = None
        error: str | None = None
        if proc.returncode != 0:
            error = _error_line(proc.stderr)
        else:
            last = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.strip()), "")
            try:
                out = json.loads(last)
            except json.JSONDecodeError:
                error = f"no JSON on the last stdout line: {last[:200]!r}"
        step = Step(command, proc.returncode, out, error, seconds)
        _log(f"    rc={proc.returncode}, {seconds:.1f} s" + (f": {error}" if error else ""))
        if cache is not None and error is None:
            atomic_write(cache, json.dumps({"commit": self.commit, **step.to_dict()}, indent=1))
        return step


def float_record(name: str, images: int) -> dict[str, Any]:
    """Checkpoint bytes and top-1 of reference ``name`` on the first ``images`` test images."""
    import edgeslim
    from edgeslim.data import evaluate, fashion_mnist_loader
    from edgeslim.models import CHECKPOINT_DIR, REFERENCES

    t0 = time.perf_counter()
    top1 = evaluate(edgeslim.load_model(name), fashion_mnist_loader("test", batch_size=500, limit=images))
    return {"bytes": (CHECKPOINT_DIR / REFERENCES[name].file).stat().st_size, "top1": top1, "images": images,
            "seconds": round(time.perf_counter() - t0, 2)}


def eval_npz(work: Path, images: int) -> Path:
    """``WORK/eval_N.npz``: ``x`` (float32 N×3×32×32, the reference preprocessing) and ``y`` (int64) of the test set."""
    import numpy as np

    from edgeslim.data import fashion_mnist_loader

    path = work / f"eval_{images}.npz"
    if not path.is_file():
        xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in fashion_mnist_loader("test", batch_size=500, limit=images)),
                     strict=True)
        tmp = work / f".eval_{images}.tmp.npz"
        np.savez(tmp, x=np.concatenate(xs).astype(np.float32), y=np.concatenate(ys).astype(np.int64))
        os.replace(tmp, path)
    return path


def file_split(path: Path, model_bytes: int, weight_bytes: int) -> dict[str, Any]:
    """What a quantized ``model.pt`` holds: packed weights vs. constants left float/aux (scales, zero points, biases).

    Weights are the integer constants with two or more dimensions (raw int8 or lut-packed codes);
    everything else in ``constants`` is counted in ``float_rest_bytes``. ``pt_overhead`` is
    ``model_bytes / (weight_bytes + float_rest_bytes)``, with ``weight_bytes`` as ``quantize`` reports it.
    """
    import torch

    from edgeslim.plugin.quantization.packing import packed_bytes

    obj = torch.load(path, map_location="cpu", weights_only=True)
    weights = rest = 0
    for entry in obj.get("constants", {}).values():
        if not isinstance(entry, dict):  # a bare tensor
            n, is_weight = int(entry.numel() * entry.element_size()), entry.dim() >= 2 and not entry.is_floating_point()
        else:
            enc, n = entry.get("enc"), packed_bytes(entry)
            if enc == "raw":
                t = entry["tensor"]
                is_weight = t.dim() >= 2 and not t.is_floating_point()
            else:  # lut-packed codes, or one repeated integer (fill)
                is_weight = len(entry.get("shape", [])) >= 2 and "int" in str(entry.get("dtype", ""))
        if is_weight:
            weights += n
        else:
            rest += n
    ratio = model_bytes / (weight_bytes + rest) if weight_bytes + rest else None
    return {"file_weight_bytes": weights, "float_rest_bytes": rest, "constant_bytes": weights + rest,
            "container_bytes": model_bytes - weights - rest, "pt_overhead": ratio,
            "within_15pct": ratio is not None and ratio <= 1.15}


class Bench:
    """The whole run: settings, the results file and the rows.

    Args:
        args: The parsed command line.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work: Path = args.work
        self.out: Path = args.out
        self.commit = commit()
        self.runner = Runner(args.edgeslim, self.work, self.commit, args.fresh)
        self.settings = {"calib": args.calib, "eval_images": args.eval_images, "threads": args.threads,
                         "runs": args.runs, "qat_epochs": args.qat_epochs, "budget": args.budget,
                         "prune_target": "params=0.5", "prune_criterion": "l1", "prune_finetune": args.prune_finetune,
                         "prune_round_to": args.prune_round_to, "prune_allocation": args.prune_allocation or "cli default",
                         "max_drop": args.max_drop}
        path = self.out / "chain.json"
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        self.data.setdefault("rows", [])
        self.data.setdefault("float", {})
        self.data["header"] = {
            "date": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.machine(),
            "cores": os.cpu_count(), "python": platform.python_version(), "torch": _version("torch"),
            "onnxruntime": _version("onnxruntime"), "ai-edge-litert": _version("ai-edge-litert"),
            "edgeslim": _version("edgeslim"), "commit": self.commit, "settings": self.settings,
            "command": shlex.join(["python", "benchmarks/chain.py", *sys.argv[1:]]),
        }

    def save(self) -> None:
        """Write ``chain.json`` and ``chain.md`` (atomically)."""
        atomic_write(self.out / "chain.json", json.dumps(self.data, indent=1, default=str) + "\n")
        atomic_write(self.out / "chain.md", markdown(self.data))

    def done(self, model: str, chain: Chain, fmt: str) -> bool:
        """Whether the row is already in the results for this commit and these settings."""
        if self.args.fresh:
            return False
        return any(r["model"] == model and r["chain"] == chain.label and r["format"] == fmt
                   and r["commit"] == self.commit and r["settings"] == self.settings
                   and not (self.args.retry_failed and r.get("error")) for r in self.data["rows"])

    def put(self, row: dict[str, Any]) -> None:
        """Replace the row of the same (model, chain, format) and save."""
        key = (row["model"], row["chain"], row["format"])
        rows = [r for r in self.data["rows"] if (r["model"], r["chain"], r["format"]) != key] + [row]
        self.data["rows"] = sorted(rows, key=_order)
        self.save()

    def run(self) -> None:
        """Every model × chain × format."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.save()
        n = self.args.eval_images
        npz = eval_npz(self.work, n)
        for model in self.args.models:
            fl = self.data["float"].get(model)
            if self.args.fresh or not fl or fl.get("commit") != self.commit or fl.get("images") != n:
                _log(f"{model}: float top-1 on {n} test images")
                self.data["float"][model] = {**float_record(model, n), "commit": self.commit}
                self.save()
            for token in self.args.schemes:
                chain = Chain.parse(token)
                todo = [f for f in self.args.formats if not self.done(model, chain, f)]
                if not todo:
                    _log(f"{model} {chain.label}: done for {self.commit}, skipped")
                    continue
                _log(f"{model} {chain.label}: {', '.join(todo)}")
                self.run_chain(model, chain, todo, npz)

    def run_chain(self, model: str, chain: Chain, formats: list[str], npz: Path) -> None:
        """Prune (if the chain does), quantize once, then export and bench each format."""
        a, n = self.args, self.args.eval_images
        mdir = self.work / model
        steps: dict[str, Step] = {}
        source = model
        if chain.pruned:
            pdir = mdir / "pruned"
            cmd = ["prune", "--model", model, "--criterion", "l1", "--target", "params=0.5", "--out", str(pdir),
                   "--finetune-epochs", f"{a.prune_finetune:g}", "--round-to", str(a.prune_round_to),
                   *(["--allocation", a.prune_allocation] if a.prune_allocation else []),
                   "--eval", "--test-limit", str(n), "--force", "--json"]
            steps["prune"] = self.runner.run(cmd, f"{model}_prune", cache=pdir / "step.json", product=pdir / "model.pt")
            source = str(pdir / "model.pt")
        qdir = mdir / f"q_{chain.slug}"
        if "prune" not in steps or steps["prune"].error is None:
            cmd = ["quantize", "--model", source, "--scheme", chain.scheme, "--calib", str(a.calib),
                   *(["--budget", a.budget] if chain.scheme == "mixed" else []),
                   *(["--qat-epochs", f"{a.qat_epochs:g}"] if chain.qat else []),
                   "--eval-samples", str(n),  # float + quantized top-1 on the first n test images (lineage)
                   "--out", str(qdir), "--force", "--json"]
            steps["quantize"] = self.runner.run(cmd, f"{model}_q_{chain.slug}", cache=qdir / "step.json", product=qdir / "model.pt")
        quant = self.quant_record(steps.get("quantize"), qdir)
        for fmt in formats:
            row_steps = dict(steps)
            art = mdir / f"{chain.slug}.{fmt}"
            if all(s.error is None for s in steps.values()):
                cmd = ["export", "--model", str(qdir / "model.pt"), "--format", fmt, "--out", str(art),
                       "--eval-samples", str(n), *(["--max-drop", f"{a.max_drop:g}"] if a.max_drop is not None else []),
                       "--force", "--json"]
                row_steps["export"] = self.runner.run(cmd, f"{model}_{chain.slug}_{fmt}_export")
            if all(s.error is None for s in row_steps.values()):
                cmd = ["bench", str(art), "--target", "local", "--runs", str(a.runs), "--threads", str(a.threads),
                       "--inputs", str(npz), "--results", str(mdir / "bench.jsonl"), "--json"]
                row_steps["bench"] = self.runner.run(cmd, f"{model}_{chain.slug}_{fmt}_bench")
            self.put(self.row(model, chain, fmt, row_steps, quant))

    def quant_record(self, step: Step | None, qdir: Path) -> dict[str, Any] | None:
        """The quantize step's numbers, with the split of ``model.pt`` into weights and what stays float."""
        if step is None or step.out is None:
            return None
        o = step.out
        rec = {k: o.get(k) for k in ("model_bytes", "weight_bytes", "float_weight_bytes", "left_float", "mean_sqnr_db",
                                     "top1_fp32", "top1_quant", "top1_float", "top1_quantized", "eval_key", "mode",
                                     "qat_steps", "mixed_choice", "quantize_seconds")}
        if o.get("top1_quant") is not None:
            rec["torch_top1"], rec["torch_top1_images"] = o["top1_quant"], FULL_TEST
        else:
            rec["torch_top1"], rec["torch_top1_images"] = o.get("top1_quantized"), self.args.eval_images
        rec.update(file_split(qdir / "model.pt", int(o["model_bytes"]), int(o["weight_bytes"])))
        return rec

    def row(self, model: str, chain: Chain, fmt: str, steps: dict[str, Step], quant: dict[str, Any] | None) -> dict[str, Any]:
        """One result row from the steps run for it."""
        failed = next(((name, s) for name, s in steps.items() if s.error is not None), None)
        row: dict[str, Any] = {
            "model": model, "chain": chain.label, "scheme": chain.scheme, "format": fmt,
            "commit": self.commit, "settings": self.settings, "date": dt.datetime.now().isoformat(timespec="seconds"),
            "command": [shlex.join(s.command) for s in steps.values()],
            "wall_s": {name: round(s.seconds, 1) for name, s in steps.items()},
            "reused": [name for name, s in steps.items() if s.reused],
            "float": self.data["float"].get(model), "pruned": None, "quant": quant, "export": None, "bench": None,
            "error": {"step": failed[0], "message": failed[1].error, "rc": failed[1].rc} if failed else None,
        }
        if "prune" in steps and steps["prune"].out:
            p = steps["prune"].out
            row["pruned"] = {"bytes": Path(p["model_path"]).stat().st_size, "images": self.args.eval_images,
                             **{k: p.get(k) for k in ("top1_before", "top1_pruned", "top1_after", "params_before",
                                                      "params_after", "macs_after", "finetune_epochs")}}
        if "export" in steps and steps["export"].out:
            e = steps["export"].out
            v, acc = e.get("verification") or {}, e.get("accuracy") or {}
            row["export"] = {"bytes": e.get("bytes"), "quant": e.get("quant"), "top1_artefact": e.get("top1_artefact"),
                             "top1_float": e.get("top1_float"), "images": acc.get("images"),
                             "float_source": acc.get("float_source"), "accuracy_passed": acc.get("passed"),
                             "verification": {k: v.get(k) for k in ("samples", "cosine", "top1_agreement", "passed")}}
        if "bench" in steps and steps["bench"].out:
            b = (steps["bench"].out.get("results") or [{}])[0]
            row["bench"] = {"top1": b.get("top1"), "p50_ms": b.get("p50"), "p90_ms": b.get("p90"),
                            "runtime": f"{b.get('runtime')} {b.get('runtime_version')}", "runs": b.get("runs"),
                            "threads": b.get("threads"), "input": "1x3x32x32", "status": b.get("status")}
            if b.get("error") and not row["error"]:
                row["error"] = {"step": "bench", "message": str(b["error"]), "rc": 0}
        return row


def _order(r: dict[str, Any]) -> tuple[int, str, int, str, str]:
    """Rows sorted by model, then chain, in the order of :data:`MODELS` and :data:`CHAINS`."""
    labels = [Chain.parse(t).label for t in CHAINS]
    m, c = r["model"], r["chain"]
    return (MODELS.index(m) if m in MODELS else len(MODELS), m, labels.index(c) if c in labels else len(labels),
            c, r["format"])


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * float(v):.2f}"


def _mb(v: Any) -> str:
    return "–" if v is None else f"{float(v) / 1e6:.2f}"


def markdown(data: dict[str, Any]) -> str:
    """The Markdown report: how it was produced, one table per model, the failures."""
    h = data.get("header", {})
    s = h.get("settings", {})
    lines = [
        "# Chain benchmark: reference → (prune) → quantize → export → bench", "",
        f"Produced by `{h.get('command')}` (commit {h.get('commit')}, {h.get('date')}; {h.get('machine')}, "
        f"{h.get('cores')} cores; torch {h.get('torch')}, onnxruntime {h.get('onnxruntime')}, "
        f"ai-edge-litert {h.get('ai-edge-litert')}). Every step is the `edgeslim` CLI run on the previous step's "
        "file (each row's commands are in chain.json).", "",
        f"- Calibration: {s.get('calib')} training images; top-1 on the first {s.get('eval_images')} test images "
        f"(torch top-1: `quantize --eval`, the full 10,000, when that is the setting); bench: batch 1, 32x32, "
        f"{s.get('threads')} threads, {s.get('runs')} runs, top-1 over the same images in the runtime.",
        f"- mixed: `--budget {s.get('budget')}`; QAT: `--qat-epochs {s.get('qat_epochs')}`; pruned: l1, params=0.5, "
        f"allocation {s.get('prune_allocation')}, round-to {s.get('prune_round_to')}, {s.get('prune_finetune')} "
        "epoch distilled fine-tune (pruned top-1: after pruning → after fine-tuning).",
        "- pt/(w+f): saved .pt bytes over (quantized weight bytes + bytes of the constants left float: scales, zero "
        "points, biases); ✗ when the file is more than 15 % larger. Below 1 means the file is smaller than "
        "`weight_bytes` says: the report counts a float32 codebook per channel for grid schemes, the file stores "
        "int8 lookup tables (MobileNetV2's depthwise layers have 9 weights per channel, so that difference shows).",
        "- float top-1 same images: the float ancestor's top-1 that `export` compares the artefact with.", "",
    ]
    rows = sorted(data.get("rows", []), key=_order)
    for model in dict.fromkeys([*data.get("float", {}), *(r["model"] for r in rows)]):
        fl = data.get("float", {}).get(model) or {}
        lines += [f"## {model}", "", f"Float reference: {_mb(fl.get('bytes'))} MB checkpoint, top-1 "
                  f"{_pct(fl.get('top1'))} % on {fl.get('images')} test images.", "",
                  "| chain | scheme | format | float top-1 | (pruned top-1) | quant .pt MB | pt/(weights+float) | "
                  "torch top-1 | artefact MB | artefact top-1 (runtime) | float top-1 same images | bench top-1 | "
                  "p50 ms | note |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in (r for r in rows if r["model"] == model):
            q, e, b, p = r.get("quant") or {}, r.get("export") or {}, r.get("bench") or {}, r.get("pruned")
            pruned = f"{_pct(p.get('top1_pruned'))} → {_pct(p.get('top1_after'))}" if p else "–"
            ratio = q.get("pt_overhead")
            ratio_s = "–" if ratio is None else f"{ratio:.3f}" + ("" if ratio <= 1.15 else " ✗")
            notes = []
            if r.get("error"):
                notes.append(f"{r['error']['step']} failed")
            if q.get("left_float"):
                notes.append(f"{len(q['left_float'])} ops left float")
            if e and e.get("accuracy_passed") is False:
                notes.append("accuracy check failed")
            if e and (e.get("verification") or {}).get("passed") is False:
                notes.append("verification failed")
            if e and e.get("top1_artefact") is None:
                notes.append("export measured no top-1")
            if e.get("quant") and e["quant"] != r["scheme"]:
                notes.append(f"exported as {e['quant']}")
            if r.get("commit") != h.get("commit"):
                notes.append(f"commit {r.get('commit')}")
            p50 = b.get("p50_ms")
            lines.append(
                f"| {r['chain']} | {r['scheme']} | {r['format']} | {_pct((r.get('float') or {}).get('top1'))} | {pruned} "
                f"| {_mb(q.get('model_bytes'))} | {ratio_s} | {_pct(q.get('torch_top1'))} | {_mb(e.get('bytes'))} "
                f"| {_pct(e.get('top1_artefact'))} | {_pct(e.get('top1_float'))} | {_pct(b.get('top1'))} "
                f"| {'–' if p50 is None else f'{p50:.2f}'} | {'; '.join(notes)} |")
        lines.append("")
    failures = [r for r in rows if r.get("error")]
    if failures:
        lines += ["## Failures", ""]
        lines += [f"- {r['model']} {r['chain']} {r['format']}: `{r['error']['step']}` (exit {r['error']['rc']}): "
                  f"{r['error']['message']}" for r in failures]
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--smoke`` fills in the quick-check settings not given explicitly)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(MODELS)}")
    ap.add_argument("--schemes", nargs="+", default=None, help=f"chains; default: {' '.join(CHAINS)}")
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    ap.add_argument("--eval-images", type=int, default=None, help="test images for every top-1 (default 10000; smoke 200)")
    ap.add_argument("--calib", type=int, default=256, help="calibration images (quantize --calib)")
    ap.add_argument("--runs", type=int, default=None, help="timed bench runs (default 20; smoke 3)")
    ap.add_argument("--threads", type=int, default=2, help="bench --threads")
    ap.add_argument("--qat-epochs", type=float, default=0.1)
    ap.add_argument("--budget", default="1/6", help="mixed: quantize --budget")
    ap.add_argument("--prune-finetune", type=float, default=0.25, help="prune --finetune-epochs (distilled)")
    ap.add_argument("--prune-round-to", type=int, default=16, help="prune --round-to (0: off)")
    ap.add_argument("--prune-allocation", default="", help="prune --allocation (default: the CLI's)")
    ap.add_argument("--max-drop", type=float, default=None, help="export --max-drop (default: the CLI's)")
    ap.add_argument("--smoke", action="store_true", help="one model, int8 + codebook:4, 200 images, 3 runs, to /tmp")
    ap.add_argument("--work", type=Path, default=None, help="intermediate files (default /tmp/edgeslim-chain)")
    ap.add_argument("--out", type=Path, default=None, help="chain.json/.md folder (default benchmarks/results)")
    ap.add_argument("--fresh", action="store_true", help="redo every step and row")
    ap.add_argument("--render", action="store_true", help="only rewrite chain.md from chain.json")
    ap.add_argument("--retry-failed", action="store_true", help="redo rows recorded with an error")
    ap.add_argument("--edgeslim", default=str(Path(sys.executable).parent / "edgeslim"), help="the edgeslim executable")
    args = ap.parse_args(argv)
    smoke = args.smoke
    args.models = args.models or (list(MODELS[:1]) if smoke else list(MODELS))
    args.schemes = args.schemes or (["int8", "codebook:4"] if smoke else list(CHAINS))
    args.eval_images = args.eval_images or (200 if smoke else FULL_TEST)
    args.runs = args.runs or (3 if smoke else 20)
    args.work = (args.work or Path("/tmp/edgeslim-chain" + ("-smoke" if smoke else ""))).resolve()
    args.out = (args.out or (args.work / "results" if smoke else RESULTS)).resolve()
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark."""
    args = parse_args(argv)
    if args.render:
        out = args.out or Path(__file__).resolve().parent / "results"
        atomic_write(out / "chain.md", markdown(json.loads((out / "chain.json").read_text())))
        return
    bench = Bench(args)
    _log(f"commit {bench.commit}; work {args.work}; results {args.out}")
    t0 = time.perf_counter()
    bench.run()
    _log(f"finished in {time.perf_counter() - t0:.0f} s: {args.out / 'chain.md'}")


if __name__ == "__main__":
    main()
