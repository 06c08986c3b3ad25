"""``edgeslim compress``: run a recipe step by step into a folder, resumable after an interruption.

Steps, in order: ``load`` → ``prune`` (``search`` for ``pipeline: joint``, ``alternating`` for
``pipeline: alternating``) → ``finetune`` → ``quantize`` → ``export`` → ``bench`` → ``report``.
Each step writes its files into the output folder atomically and is then recorded in
``state.json`` (outputs with their sha256, seconds, and the numbers it measured). Rerunning the
same recipe into the same folder skips every step whose outputs are intact (status ``resumed``)
and reruns from the first one that is not. A different recipe in a non-empty folder is refused
unless ``force``, which overwrites edgeslim's own files there and touches nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgeslim.pipelines import deploy_steps, search_steps, steps
from edgeslim.pipelines.compress_results import build_results, write_partial_results
from edgeslim.pipelines.recipe import Launcher, Pipeline, Recipe, load_recipe
from edgeslim.pipelines.steps import (
    CompressError,
    Context,
    EventHandler,
    atomic_write_text,
    sha256_file,
    write_json,
)

STATE_FILE = "state.json"
LOCK_FILE = ".edgeslim-compress.lock"
RECIPE_COPY = "recipe.resolved.yaml"
RESULTS_FILE = "results.json"
STATE_VERSION = 1

#: Step name -> the function that runs it (returns the JSON-able data recorded in state.json).
STEP_FUNCS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "load": steps.run_load,
    "prune": steps.run_prune,
    "search": search_steps.run_search,
    "alternating": search_steps.run_alternating,
    "finetune": steps.run_finetune,
    "quantize": steps.run_quantize,
    "export": deploy_steps.run_export,
    "bench": deploy_steps.run_bench,
}


def plan(recipe: Recipe) -> list[str]:
    """The steps ``recipe`` runs, in order."""
    names = ["load"]
    if recipe.pipeline is Pipeline.ALTERNATING:
        names.append("alternating")
    elif recipe.pipeline is Pipeline.JOINT or recipe.prune is not None:
        names.append("search" if recipe.pipeline is Pipeline.JOINT else "prune")
        if recipe.finetune.epochs > 0:
            names.append("finetune")
    if recipe.quantize is not None:
        names.append("quantize")
    if recipe.export.formats and recipe.export.variants:
        names.append("export")
        if recipe.bench is not None and recipe.bench.targets:
            names.append("bench")
    return [*names, "report"]


def recipe_id(recipe: Recipe) -> str:
    """The identity of a run: the recipe's canonical JSON and the bytes of the model file, of the user's model
    code (``FILE.py:build`` / ``package.module:build``) and of ``weights`` (changed bytes at the same path:
    a different run, not a resume)."""
    from edgeslim.user_code import looks_like_spec, parse_spec

    h = hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True).encode())
    model = Path(recipe.model)
    if model.is_file():
        h.update(sha256_file(model).encode())
    elif looks_like_spec(recipe.model):  # the user's model code: a changed file is a different run
        h.update(str(parse_spec(recipe.model, what="model").file_sha256()).encode())
    if recipe.weights and Path(recipe.weights).is_file():
        h.update(sha256_file(Path(recipe.weights)).encode())
    return h.hexdigest()


def _read_state(out: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((out / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("steps"), dict) else None


def _own_names(recipe: Recipe) -> set[str]:
    names = {STATE_FILE, RECIPE_COPY, RESULTS_FILE, "report.html", "report.md", "pruned.pt", "finetuned.pt",
             "search.json", deploy_steps.BENCH_FILE, deploy_steps.BENCH_PARTIAL}
    for v in recipe.variants():
        names.add(f"{v.stem}.pt")
        for fmt in recipe.export.formats:
            names.add(f"{v.stem}.{fmt}")
    return names


def _prepare(recipe: Recipe, out: Path, rid: str, force: bool, inputs: list[Path]) -> dict[str, Any]:
    """Check the output folder before any work; return the state to resume from (empty: a fresh run)."""
    if out.exists() and not out.is_dir():
        raise CompressError(f"{out} is a file, not a folder: choose another --out")
    own = _own_names(recipe)
    for p in inputs:
        if p.is_file() and p.resolve().parent == out.resolve() and (p.name in own or ".latency-only-" in p.name):
            raise CompressError(f"{p} is an input of this run and a file edgeslim writes into {out}: "
                                "move it, or choose another --out")
    fresh: dict[str, Any] = {"version": STATE_VERSION, "recipe_id": rid, "steps": {}}
    state = _read_state(out)
    if force or not out.exists() or not any(out.iterdir()):
        return fresh
    if state is not None and state.get("recipe_id") == rid:
        return state
    what = "a run of a different recipe" if state is not None else "files that are not an edgeslim run"
    raise CompressError(f"{out} is not empty: it holds {what}. Pass --force to run this recipe there anyway "
                        "(edgeslim overwrites only its own files and deletes nothing), or choose another --out")


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the run (a second run into the same folder is refused)."""
    import fcntl

    with (out / LOCK_FILE).open("a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CompressError(f"another edgeslim compress is running into {out}; wait for it or choose another "
                                "--out") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _remove_stale_temporaries(out: Path, own: set[str]) -> None:
    """Remove the temporary files an interrupted run of edgeslim left (``.NAME.*`` of its own outputs)."""
    for p in out.iterdir():
        name = p.name
        if p.is_file() and name.startswith(".") and name != LOCK_FILE and (
                any(name.startswith(f".{n}.") for n in own) or ".latency-only-" in name):
            p.unlink(missing_ok=True)


def _intact(out: Path, record: dict[str, Any] | None) -> bool:
    """Whether a recorded step finished and all its outputs still have their recorded sha256."""
    if not record or record.get("status") != "done":
        return False
    for name, digest in (record.get("outputs") or {}).items():
        p = out / name
        if not p.is_file() or sha256_file(p) != digest:
            return False
    return True


def _commit() -> str:
    """The git revision of the edgeslim sources when they are a checkout, else the package version."""
    import subprocess

    import edgeslim

    try:
        proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(edgeslim.__file__).parent,
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        proc = None
    if proc is not None and proc.returncode == 0 and proc.stdout.strip():
        return proc.stdout.strip()
    return f"edgeslim {edgeslim.__version__}"


def _report(ctx: Context, report: list[dict[str, Any]], command: str, started: float) -> dict[str, Any]:
    from edgeslim.report import render_report

    results = build_results(ctx, [*report, {"name": "report", "status": "done",
                                            "seconds": round(time.perf_counter() - started, 2)}],
                            command=command, commit=_commit())
    write_json(ctx.path(RESULTS_FILE), results)
    paths = render_report(results, ctx.out, overwrite=True)
    for p in paths.values():
        ctx.path(Path(p).name)
    return results


def compress(
    recipe: Recipe | str | Path,
    out_dir: str | Path,
    *,
    force: bool = False,
    on_event: EventHandler | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run ``recipe`` into ``out_dir``, resuming a previous run of the same recipe there.

    Args:
        recipe: A :class:`Recipe` or the path of a recipe file (validated before any work).
        out_dir: The output folder (created if missing).
        force: Run even though ``out_dir`` holds other files or a different recipe's run;
            edgeslim's own files there are overwritten (every step reruns), nothing is deleted.
        on_event: Called with each event: ``{"event": "step", "step", "status": "start" | "done" |
            "resumed" | "failed", "index", "total", "seconds"}``, ``{"event": "progress", "step",
            "what", "completed", "total"}`` and ``{"event": "info", "step", "message"}``.
        command: The command line recorded in the results (default: ``edgeslim compress ...``).

    Returns:
        The results dict (also written to ``out_dir/results.json``; schema in the report package).

    Raises:
        RecipeError: The recipe is invalid (nothing was done).
        CompressError: ``out_dir`` is in use by another run (without ``force``), or an input is
            one of the files the run writes.
        EdgeslimError: A step failed; the steps before it stay recorded, and rerunning resumes.
    """
    source = Path(recipe) if not isinstance(recipe, Recipe) else None
    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    out = Path(out_dir)
    rid = recipe_id(rec)
    inputs = [p for p in (source, Path(rec.model)) if p is not None]
    state = _prepare(rec, out, rid, force, inputs)
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        _remove_stale_temporaries(out, _own_names(rec))
        return _run_steps(rec, out, state, on_event or (lambda _e: None),
                          command or f"edgeslim compress {source or '<recipe>'} --out {out}")


def _run_steps(rec: Recipe, out: Path, state: dict[str, Any], handler: EventHandler, command: str) -> dict[str, Any]:
    """Run (or resume) every step of ``rec`` into ``out``, recording each in ``state.json``."""
    names = plan(rec)
    current = {"step": names[0]}

    def emit(event: dict[str, Any]) -> None:
        handler({"step": current["step"], **event})

    ctx = Context(rec, out, emit)
    report: list[dict[str, Any]] = []
    resuming = bool(state["steps"])
    for index, name in enumerate(names):
        current["step"] = name
        record = state["steps"].get(name)
        if resuming and _intact(out, record):
            assert record is not None
            ctx.data[name] = record.get("data") or {}
            report.append({"name": name, "seconds": record.get("seconds", 0.0), "status": "resumed"})
            emit({"event": "step", "status": "resumed", "index": index, "total": len(names),
                  "seconds": record.get("seconds", 0.0)})
            continue
        resuming = False
        for later in names[index:]:
            state["steps"].pop(later, None)  # stale from now on
        if index == 0:
            atomic_write_text(out / RECIPE_COPY, rec.to_yaml())
        write_json(out / STATE_FILE, state)
        emit({"event": "step", "status": "start", "index": index, "total": len(names)})
        ctx.outputs = []
        t0 = time.perf_counter()
        try:
            data = _report(ctx, report, command, t0) if name == "report" else _run_step(name, ctx)
        except BaseException as exc:
            seconds = round(time.perf_counter() - t0, 2)
            state["steps"][name] = {"status": "failed", "seconds": seconds, "error": f"{type(exc).__name__}: {exc}"}
            write_json(out / STATE_FILE, state)
            report.append({"name": name, "seconds": seconds, "status": "failed"})
            if name != "report":
                write_partial_results(ctx, report, command=command, commit=_commit(), failed=name,
                                      error=f"{type(exc).__name__}: {exc}")
            emit({"event": "step", "status": "failed", "index": index, "total": len(names), "seconds": seconds,
                  "error": f"{type(exc).__name__}: {exc}"})
            raise
        seconds = round(time.perf_counter() - t0, 2)
        outputs = {o: sha256_file(out / o) for o in ctx.outputs if (out / o).is_file()}
        state["steps"][name] = {"status": "done", "seconds": seconds, "outputs": outputs, "data": data}
        ctx.data[name] = data
        write_json(out / STATE_FILE, state)
        report.append({"name": name, "seconds": seconds, "status": "done"})
        emit({"event": "step", "status": "done", "index": index, "total": len(names), "seconds": seconds})
    results = dict(ctx.data["report"])
    results["steps"] = report
    return results


def _run_step(name: str, ctx: Context) -> dict[str, Any]:
    if ctx.recipe.launcher is Launcher.TORCHRUN:
        from edgeslim.pipelines import launcher

        if name == "finetune":
            return launcher.run_finetune_torchrun(ctx)
        if name == "quantize" and ctx.recipe.quantize is not None and ctx.recipe.quantize.method.value == "qat":
            return launcher.run_quantize_torchrun(ctx)
    func = STEP_FUNCS.get(name)
    if func is None:
        raise CompressError(f"pipeline step {name!r} is not available in this edgeslim yet")
    return func(ctx)


__all__ = ["RECIPE_COPY", "RESULTS_FILE", "STATE_FILE", "STEP_FUNCS", "compress", "plan", "recipe_id"]
