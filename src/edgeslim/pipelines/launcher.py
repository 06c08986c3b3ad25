"""``launcher: torchrun``: the fine-tune and QAT steps of ``edgeslim compress`` re-launched on several processes.

The step runs::

    python -m torch.distributed.run --standalone --nproc_per_node N -m edgeslim.cli finetune \\
        --model OUT/pruned.pt --data D --epochs E ... --teacher MODEL --out OUT/.torchrun-finetune-* --json

reads rank 0's JSON line back (``world_size`` must be N and ``ranks_agree`` true), and saves the
fine-tuned model as ``finetuned.pt`` with the run's lineage, like the in-process step. With
``quantize: {method: qat}`` the quantize step does the same per quantized variant
(``edgeslim finetune --qat SCHEME`` on the variant's float model, distilled from it as the
in-process QAT is) and saves ``quantized.pt`` / ``pruned_quantized.pt``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgeslim.pipelines.recipe import Pipeline, Recipe, Variant
from edgeslim.pipelines.steps import CompressError, Context

#: The file the fine-tune step writes (the same name as the in-process step's).
FINETUNED = "finetuned.pt"


def _floats(values: tuple[float, ...] | None) -> str:
    return ",".join(repr(float(v)) for v in values or ())


def finetune_args(recipe: Recipe, model: Path, out: Path) -> list[str]:
    """The ``edgeslim finetune`` arguments of ``recipe``'s fine-tune (model ``model``, into ``out``)."""
    sec, data = recipe.finetune, recipe.data
    args = ["finetune", "--model", str(model), "--data", data.source, "--input-size", str(recipe.input_size),
            "--epochs", repr(float(sec.epochs)), "--lr", repr(float(sec.lr)), "--batch-size", str(sec.batch_size),
            "--eval-limit", str(recipe.eval_samples), "--seed", str(recipe.seed), "--out", str(out), "--json", "--force"]
    if data.mean is not None:
        args += ["--mean", _floats(data.mean)]
    if data.std is not None:
        args += ["--std", _floats(data.std)]
    if sec.distill:
        args += ["--teacher", recipe.model]
        if recipe.weights:
            args += ["--teacher-weights", recipe.weights]
    return args


def qat_args(recipe: Recipe, model: str, weights: str, out: Path) -> list[str]:
    """The ``edgeslim finetune --qat`` arguments of ``recipe``'s QAT of ``model`` (its own teacher), into ``out``."""
    sec, data = recipe.quantize, recipe.data
    assert sec is not None
    args = ["finetune", "--model", model, "--data", data.source, "--input-size", str(recipe.input_size),
            "--qat", sec.scheme, "--epochs", repr(float(sec.qat_epochs)), "--lr", repr(float(sec.lr)),
            "--batch-size", "64", "--eval-limit", str(recipe.eval_samples), "--seed", str(recipe.seed),
            "--teacher", model, "--out", str(out), "--json", "--force"]
    if weights:
        args += ["--weights", weights, "--teacher-weights", weights]
    if data.mean is not None:
        args += ["--mean", _floats(data.mean)]
    if data.std is not None:
        args += ["--std", _floats(data.std)]
    return args


def torchrun_command(args: list[str], nproc: int) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m edgeslim.cli ARGS``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "edgeslim.cli", *args]


def run_command(cmd: list[str], nproc: int) -> dict[str, Any]:
    """Run a torchrun command line; return rank 0's JSON summary, checked.

    Raises:
        CompressError: The command failed (its last error line is quoted), printed no JSON line, or
            its summary does not say that ``nproc`` ranks agreed on the final weights.
    """
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    shown = " ".join(cmd)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        errors = [ln.strip() for ln in proc.stderr.splitlines() if "error" in ln.lower()]
        last = errors[0] if errors else (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CompressError(f"the fine-tune under torchrun failed (exit code {proc.returncode}): {last[:300]}; "
                            f"command: {shown}")
    try:
        summary = json.loads(lines[-1])
    except ValueError:
        raise CompressError(f"the fine-tune under torchrun printed no JSON summary (last line {lines[-1][:200]!r}); "
                            f"command: {shown}") from None
    if summary.get("world_size") != nproc or summary.get("ranks_agree") is not True:
        raise CompressError(f"the fine-tune under torchrun ran on {summary.get('world_size')} of {nproc} processes "
                            f"(ranks_agree: {summary.get('ranks_agree')}); command: {shown}")
    summary["rank_log"] = [ln.strip() for ln in proc.stderr.splitlines() if ln.startswith("[rank ")]
    return summary


def run_finetune_torchrun(ctx: Context) -> dict[str, Any]:
    """The ``finetune`` step under ``launcher: torchrun``: fine-tune ``pruned.pt`` on N processes, save ``finetuned.pt``."""
    from edgeslim import io as es_io
    from edgeslim.lineage import extend

    recipe = ctx.recipe
    nproc = recipe.nproc_per_node
    source = ctx.out / "pruned.pt"
    if not source.is_file():
        raise CompressError(f"{source} is missing: an earlier step's output was removed; rerun with --force to start "
                            "the run over")
    with tempfile.TemporaryDirectory(prefix=".torchrun-finetune-", dir=ctx.out) as tmp:
        cmd = torchrun_command(finetune_args(recipe, source, Path(tmp)), nproc)
        ctx.emit({"event": "info", "message": f"fine-tune on {nproc} processes: {' '.join(cmd)}"})
        summary = run_command(cmd, nproc)
        model = es_io.load(Path(tmp) / "model.pt")
    if es_io.state_sha256(model.state_dict()) != summary["weights_sha256"]:
        raise CompressError("the model the torchrun fine-tune saved does not have the weights its ranks agreed on")
    model.eval()
    top1 = ctx.top1(model)
    prev = next(ctx.data[s]["lineage"] for s in ("search", "prune") if s in ctx.data)
    sec = recipe.finetune
    lineage = extend(prev, "finetune", source=str(ctx.out / FINETUNED), sha256=summary["weights_sha256"],
                     finetune_epochs=sec.epochs, distill=sec.distill, world_size=nproc, launcher="torchrun",
                     top1={ctx.eval_key: top1})
    size = es_io.save(model, ctx.path(FINETUNED), meta={"finetune_epochs": sec.epochs, "lineage": lineage}).stat().st_size
    ctx.remember(FINETUNED, model)
    return {"top1": top1, "seconds_train": summary["seconds"], "steps": summary["steps"], "bytes": size,
            "lineage": lineage, "file": FINETUNED,
            "torchrun": {k: summary[k] for k in ("world_size", "backend", "ranks_agree", "weights_sha256", "rank_log")}}


def run_quantize_torchrun(ctx: Context) -> dict[str, Any]:
    """The ``quantize`` step with ``method: qat`` under ``launcher: torchrun``: QAT of each variant on N processes."""
    from edgeslim.pipelines.steps import float_file, quant_file

    recipe = ctx.recipe
    out: dict[str, Any] = {}
    for variant in (Variant.QUANTIZED, Variant.PRUNED_QUANTIZED):
        if variant not in recipe.variants() or (recipe.pipeline is Pipeline.ALTERNATING
                                                and variant is Variant.PRUNED_QUANTIZED):
            continue
        if variant is Variant.QUANTIZED:
            model, weights = recipe.model, recipe.weights
        else:
            model, weights = str(ctx.out / float_file(recipe)), ""
        out[variant.value] = _qat_one(ctx, variant, model, weights, quant_file(variant))
    return out


def _qat_one(ctx: Context, variant: Variant, model: str, weights: str, name: str) -> dict[str, Any]:
    from edgeslim import io as es_io
    from edgeslim.lineage import extend
    from edgeslim.plugin.quantization.saved import load_result

    sec = ctx.recipe.quantize
    assert sec is not None
    nproc = ctx.recipe.nproc_per_node
    with tempfile.TemporaryDirectory(prefix=".torchrun-qat-", dir=ctx.out) as tmp:
        cmd = torchrun_command(qat_args(ctx.recipe, model, weights, Path(tmp)), nproc)
        ctx.emit({"event": "info", "message": f"QAT ({variant.value}) on {nproc} processes: {' '.join(cmd)}"})
        summary = run_command(cmd, nproc)
        result = load_result(Path(tmp) / "model.pt")
    top1 = ctx.top1(result.model)
    float_variant = Variant.ORIGINAL if variant is Variant.QUANTIZED else Variant.PRUNED
    lineage = extend(ctx.lineage(float_variant), "quantize", scheme=result.config.name, mode="qat",
                     world_size=nproc, launcher="torchrun", top1={ctx.eval_key: top1})
    meta = {"scheme": result.config.name, "mode": "qat", "calib": sec.calibration, "lineage": lineage}
    size = es_io.save(result, ctx.path(name), meta=meta).stat().st_size
    ctx.remember(name, result)
    bits = {layer.name: layer.weight_bits for layer in result.report.layers}
    return {"top1": top1, "bytes": size, "weight_bytes": result.weight_bytes, "scheme": result.config.name,
            "mode": "qat", "left_float": list(result.left_float), "file": name, "bits": bits,
            "torchrun": {k: summary[k] for k in ("world_size", "backend", "ranks_agree", "weights_sha256", "rank_log")}}


__all__ = ["finetune_args", "qat_args", "run_command", "run_finetune_torchrun", "run_quantize_torchrun",
           "torchrun_command"]
