"""Does ``pip install edgeslim`` keep the user's torch? A user's install into environments holding the previous torch minor.

For each scenario a virtual environment outside the repository (``--venv-root``, default ``/work/compat``)
first holds only what the user had (e.g. torch 2.13.0 + torchvision 0.28.0, PyPI's builds, installed with
``pip --isolated`` so that no machine-local wheel is picked); then, as a user would, with no constraints
file and not editable::

    pip install <this repository>

and records: torch / torchvision / torchao / torch-pruning before and after (the user's torch must be
kept), whether ``import edgeslim`` and ``edgeslim --help`` work, and a representative test subset run
against the installed package (``pytest -m "not slow and not device and not gpu"`` on
:data:`TESTS`, under ``nice -n 19``, capped by ``--timeout``): passed / failed / skipped counts and each
failure's name and message. With ``--reference`` the failures are re-run on the pinned stack (this
interpreter, ``src/`` first on the path) to tell what fails only on the older stack.

Re-runnable: an existing venv is reused after being put back to what it held before the install
(packages added since are uninstalled). Writes ``benchmarks/results/compat.{json,md}`` (rows of other
scenarios already there are kept)::

    python benchmarks/compat.py [--scenario torch-2.13 ...] [--timeout 3600] [--reference]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provenance import ROOT, record, runs_lines

RESULTS = ROOT / "benchmarks" / "results"
TRACKED = ("torch", "torchvision", "torchao", "torch-pruning")
#: Quantization first (torchao's PT2E: what differs most between torch minors), then ONNX export, models, pruning.
TESTS = ("tests/plugin/quantization", "tests/exporters/test_onnx.py", "tests/models", "tests/plugin/pruning")
QUANT_TESTS = ("tests/plugin/quantization", "tests/exporters/test_onnx.py")
MARKERS = "not slow and not device and not gpu"
TFLITE_TESTS = ("tests/exporters/test_tflite.py",)


@dataclass(frozen=True)
class Scenario:
    """What the user's environment holds before the install, the extras asked for, the tests run after."""

    base: tuple[str, ...]
    extras: str = ""
    tests: tuple[str, ...] = TESTS
    venv: str = ""  # the venv's name when it shares another scenario's base (default: the scenario's own)


TORCH_213 = ("torch==2.13.0", "torchvision==0.28.0")
SCENARIOS: dict[str, Scenario] = {
    "torch-2.13": Scenario(TORCH_213),
    "torch-2.13-torchao-0.17": Scenario((*TORCH_213, "torchao==0.17.0"), tests=QUANT_TESTS),
    "torch-2.13-tflite": Scenario(TORCH_213, "[tflite]", TFLITE_TESTS, venv="torch-2.13"),
}
#: What a scenario's failures are, found by hand (the test run hit its cap before pytest's summary): shown in the Markdown.
NOTES: dict[str, str] = {
    "torch-2.13-torchao-0.17": (
        "torchao 0.17.0 cannot convert on torch 2.13.0: every `edgeslim.quantize` fails in torchao's "
        "`convert_pt2e` (pass `PortNodeMetaForQDQ`: `AttributeError: The underlying op of 'aten.transpose' has no "
        "overload name 'Dimname'`), so each test using a quantized model fails or errors. The same tests pass with "
        "torchao 0.18.0 on the same torch (row torch-2.13): pyproject requires torchao>=0.18,<0.19."),
}
OUTCOME = re.compile(r"^(tests/\S+::\S+(?:\[.*?\])?) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)")
SUMMARY = re.compile(r"^(FAILED|ERROR) (tests/\S+::\S+(?:\[.*?\])?)(?: - (.*))?$")
DURATION = re.compile(r"^([\d.]+)s (call|setup|teardown) +(tests/\S+)")


def _run(cmd: list[str], *, timeout: float = 1800, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """Return code, stdout+stderr and wall seconds of ``cmd`` (124 when it ran past ``timeout``)."""
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env, check=False)
        return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return 124, out, time.monotonic() - t0


def _pip(venv: Path, *args: str, isolated: bool = False) -> list[str]:
    return ["nice", "-n", "19", str(venv / "bin" / "python"), "-m", "pip", *(["--isolated"] if isolated else []), *args]


def _freeze(venv: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): "
            "d.version for d in m.distributions()}))")
    rc, out, _ = _run([str(venv / "bin" / "python"), "-c", code])
    if rc != 0:
        raise RuntimeError(f"compat: cannot list the packages of {venv}: {out[-2000:]}")
    return dict(json.loads(out.strip().splitlines()[-1]))


def prepare(venv: Path, base: tuple[str, ...]) -> dict[str, Any]:
    """Create ``venv`` holding ``base`` (once), or put an existing one back to that state; what it did."""
    marker = venv / "compat-base.json"
    if marker.is_file() and json.loads(marker.read_text())["base"] == list(base):
        held = json.loads(marker.read_text())["packages"]
        now = _freeze(venv)
        extra = sorted(set(now) - set(held))
        if extra:
            _run(_pip(venv, "uninstall", "-y", *extra))
        changed = [f"{n}=={v}" for n, v in held.items() if _freeze(venv).get(n) != v]
        if changed:
            rc, out, _ = _run(_pip(venv, "install", "-q", "--no-deps", *changed, isolated=True))
            if rc != 0:
                raise RuntimeError(f"compat: cannot restore {venv} ({changed}): {out[-2000:]}")
        return {"venv": str(venv), "created": False, "uninstalled": extra, "restored": changed}
    t0 = time.monotonic()
    _run([sys.executable, "-m", "venv", "--clear", str(venv)])
    steps = (_pip(venv, "install", "-q", "--upgrade", "pip", isolated=True),
             _pip(venv, "install", "-q", *base, isolated=True))
    for cmd in steps:
        rc, out, _ = _run(cmd, timeout=3600)
        if rc != 0:
            raise RuntimeError(f"compat: {' '.join(cmd)} failed: {out[-3000:]}")
    marker.write_text(json.dumps({"base": list(base), "packages": _freeze(venv)}, indent=1))
    return {"venv": str(venv), "created": True, "create_s": round(time.monotonic() - t0, 1)}


def tracked(venv: Path) -> dict[str, str | None]:
    """Versions of :data:`TRACKED` in ``venv`` (``None``: not installed)."""
    now = _freeze(venv)
    return {name: now.get(name) for name in TRACKED}


def parse_pytest(log: str) -> dict[str, Any]:
    """Counts per outcome, the failures (name, message) and the slowest phases from a ``pytest -v -rfE
    --durations`` log."""
    outcomes: dict[str, str] = {}
    for line in log.splitlines():
        m = OUTCOME.match(line)
        if m:
            outcomes[m.group(1)] = m.group(2)
    messages = {m.group(2): (m.group(3) or "").strip() for m in map(SUMMARY.match, log.splitlines()) if m}
    counts = {k: sum(1 for v in outcomes.values() if v == k.upper()) for k in ("passed", "failed", "skipped", "error")}
    failures = [{"test": t, "outcome": o.lower(), "message": messages.get(t, "")[:400]}
                for t, o in outcomes.items() if o in ("FAILED", "ERROR")]
    slowest = [{"s": float(m.group(1)), "phase": m.group(2), "test": m.group(3)}
               for m in map(DURATION.match, log.splitlines()) if m]
    return {**counts, "failures": failures, "slowest": slowest}


def run_tests(python: str, tests: tuple[str, ...] | list[str], timeout: float,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """The test subset (or ``tests``) with ``python`` from the repository root; counts, failures, wall time."""
    cmd = ["nice", "-n", "19", python, "-m", "pytest", "-v", "-rfE", "--tb=line", "--durations=15", "-p", "no:cacheprovider",
           "-m", MARKERS, *tests]
    rc, out, wall = _run(cmd, timeout=timeout, cwd=ROOT, env=env)
    return {"command": " ".join(["python", *cmd[4:]]), "rc": rc, "timed_out": rc == 124,
            "wall_s": round(wall, 1), **parse_pytest(out), "tail": out[-1500:] if rc not in (0, 1) else ""}


def scenario(name: str, sc: Scenario, root: Path, timeout: float) -> dict[str, Any]:
    """One scenario: prepare the venv, the user's install, import / --help, the tests."""
    venv = root / f"venv-{sc.venv or name}"
    prep = prepare(venv, sc.base)
    before = tracked(venv)
    rc, out, wall = _run(_pip(venv, "install", f"{ROOT}{sc.extras}"), timeout=3600)
    installed = next((ln for ln in out.splitlines() if ln.startswith("Successfully installed")), "")
    after = tracked(venv)
    py = str(venv / "bin" / "python")
    imp_rc, imp_out, _ = _run([py, "-c", "import edgeslim; print(edgeslim.__file__)"], cwd=ROOT)
    help_rc, help_out, _ = _run([str(venv / "bin" / "edgeslim"), "--help"])
    row: dict[str, Any] = {
        "scenario": name, "base": list(sc.base), "extras": sc.extras, "prepare": prep, "before": before, "after": after,
        "torch_kept": before["torch"] == after["torch"] and before["torchvision"] == after["torchvision"],
        "install": {"command": f"pip install '{ROOT.name}/{sc.extras}' (no -e, no -c constraints.txt)", "rc": rc,
                    "wall_s": round(wall, 1), "installed": installed.removeprefix("Successfully installed ").split(),
                    "tail": out[-1500:] if rc else ""},
        "import_ok": imp_rc == 0 and str(venv) in imp_out, "import_from": imp_out.strip().splitlines()[-1:],
        "help_ok": help_rc == 0 and "Usage" in help_out,
    }
    _run(_pip(venv, "install", "-q", "pytest"))  # the test tool, after the recorded install
    row["tests_run"] = list(sc.tests)
    row["tests"] = run_tests(py, sc.tests, timeout)
    return row


def reference(rows: list[dict[str, Any]], timeout: float) -> dict[str, Any] | None:
    """Re-run every scenario's failures on the pinned stack (this interpreter, ``src/`` first)."""
    failed = sorted({f["test"] for r in rows for f in r["tests"]["failures"]})
    if not failed:
        return None
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    import torch

    res = run_tests(sys.executable, failed, timeout, env=env)
    return {"torch": torch.__version__, "tests": failed, **res}


def write_markdown(data: dict[str, Any]) -> str:
    lines = ["# Compatibility: `pip install edgeslim` beside the previous torch minor", "",
             "A user's install (`pip install <repo>`, not editable, no constraints file) into a venv that already "
             "holds the scenario's packages (PyPI builds). Tests: `pytest -m \"" + MARKERS + "\" <the scenario's tests>` "
             "from the repository root against the installed package, under `nice -n 19` on the shared 2-core "
             "machine.", "",
             "| scenario | pip install | before: torch / torchvision / torchao / torch-pruning | after | user's torch kept | "
             "import | `edgeslim --help` | install s | passed | failed | skipped | errors | tests wall s |",
             "|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        t = r["tests"]

        def v(d: dict[str, Any]) -> str:
            return " / ".join(str(d[k]) for k in TRACKED)

        lines.append(f"| {r['scenario']} | `edgeslim{r.get('extras', '')}` | {v(r['before'])} | {v(r['after'])} | {'yes' if r['torch_kept'] else 'NO'} | "
                     f"{'ok' if r['import_ok'] else 'FAILS'} | {'ok' if r['help_ok'] else 'FAILS'} | "
                     f"{r['install']['wall_s']} | {t['passed']} | {t['failed']} | {t['skipped']} | {t['error']} | "
                     f"{t['wall_s']}{' (timed out)' if t['timed_out'] else ''} |")
    lines += [""] + [f"- {r['scenario']}: tests `{' '.join(r['tests_run'])}`" for r in data["rows"] if r.get("tests_run")]
    ref = data.get("reference")
    ref_failed = {f["test"] for f in ref["failures"]} if ref else set()
    for r in data["rows"]:
        if r["scenario"] in NOTES:
            lines += ["", f"**{r['scenario']}:** {NOTES[r['scenario']]}"]
        if r["tests"]["failures"]:
            lines += ["", f"Failures on {r['scenario']}:", ""]
            for f in r["tests"]["failures"]:
                where = "" if not ref else (" — fails on the pinned stack too" if f["test"] in ref_failed
                                            else " — passes on the pinned stack: fails only here")
                lines.append(f"- `{f['test']}` ({f['outcome']}){where}: {f['message'] or '(no message)'}")
    for r in data["rows"]:
        slow = r["tests"].get("slowest", [])[:5]
        if slow:
            lines += ["", f"Slowest on {r['scenario']} (shared, loaded machine): "
                      + "; ".join(f"`{d['test']}` {d['phase']} {d['s']:.1f} s" for d in slow) + "."]
    if ref:
        lines += ["", f"Reference: the failures above re-run on the pinned stack (torch {ref['torch']}): "
                      f"{ref['passed']} passed, {ref['failed']} failed, {ref['error']} errors."]
    lines += runs_lines(data["rows"])
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="default: all")
    ap.add_argument("--venv-root", type=Path, default=Path("/work/compat"))
    ap.add_argument("--timeout", type=float, default=3600, help="cap of each test run, seconds")
    ap.add_argument("--reference", action="store_true", help="re-run the failures on the pinned stack")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite compat.md from compat.json, run nothing")
    args = ap.parse_args()
    if args.markdown_only:
        save({})
        return
    names = args.scenario or sorted(SCENARIOS)
    args.venv_root.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict[str, Any]] = {}
    for name in names:
        print(f"compat: {name} ...", file=sys.stderr, flush=True)
        done[name] = {**scenario(name, SCENARIOS[name], args.venv_root, args.timeout), **record("compat.py")}
        t = done[name]["tests"]
        print(f"compat: {name}: torch kept {done[name]['torch_kept']}, {t['passed']} passed, {t['failed']} failed, "
              f"{t['skipped']} skipped, {t['error']} errors in {t['wall_s']} s", file=sys.stderr, flush=True)
        save(done)
    if args.reference:
        save(done, reference(save(done)["rows"], args.timeout))


def save(rows: dict[str, dict[str, Any]], ref: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge ``rows`` (by scenario) and ``ref`` into ``compat.json`` as it is now (another run may have written it
    meanwhile), rewrite ``compat.md``; the merged data."""
    out = RESULTS / "compat.json"
    data: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    merged = {**{r["scenario"]: r for r in data["rows"]}, **rows}
    data["rows"] = [merged[n] for n in sorted(merged)]
    if ref is not None:
        data["reference"] = ref
    out.write_text(json.dumps(data, indent=1) + "\n")
    (RESULTS / "compat.md").write_text(write_markdown(data))
    print(f"wrote {out} and {RESULTS / 'compat.md'}", file=sys.stderr)
    return data


if __name__ == "__main__":
    main()
