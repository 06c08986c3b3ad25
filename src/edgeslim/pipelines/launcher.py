"""``launcher: torchrun``: the fine-tune and QAT steps of ``edgeslim compress`` re-launched on several processes.

The step runs::

    python -m torch.distributed.run --standalone --nproc_per_node N \\
        -m edgeslim.pipelines.torchrun_finetune OUT/.torchrun-finetune-*/spec.json

(the spec names ``OUT/pruned.pt``, the data, the epochs ... and the teacher; every worker runs
:func:`~edgeslim.pipelines.finetune_job.finetune_job`, the same Python as ``edgeslim finetune``),
reads rank 0's JSON line back (``world_size`` must be N and ``ranks_agree`` true), and saves the
fine-tuned model as ``finetuned.pt`` with the run's lineage, like the in-process step. With
``quantize: {method: qat}`` the quantize step does the same per quantized variant
(QAT with the recipe's scheme on the variant's float model, distilled from it as the in-process
QAT is) and saves ``quantized.pt`` / ``pruned_quantized.pt``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgeslim.pipelines.recipe import Pipeline, Recipe, Variant
from edgeslim.pipelines.steps import CompressError, Context

#: The file the fine-tune step writes (the same name as the in-process step's).
FINETUNED = "finetuned.pt"


def finetune_spec(recipe: Recipe, model: Path, out: Path) -> dict[str, Any]:
    """The :mod:`~edgeslim.pipelines.torchrun_finetune` spec of ``recipe``'s fine-tune (model ``model``, into ``out``)."""
    sec = recipe.finetune
    teacher = recipe.model if sec.distill else None
    return _spec(recipe, model=str(model), weights=None, qat=None, epochs=sec.epochs, lr=sec.lr,
                 batch_size=sec.batch_size, teacher=teacher, teacher_weights=recipe.weights if teacher else None,
                 out=out)


def qat_spec(recipe: Recipe, model: str, weights: str, out: Path) -> dict[str, Any]:
    """The spec of ``recipe``'s QAT of ``model`` (distilled from itself), into ``out``."""
    sec = recipe.quantize
    assert sec is not None
    return _spec(recipe, model=model, weights=weights or None, qat=sec.scheme, epochs=sec.qat_epochs, lr=sec.lr,
                 batch_size=64, teacher=model, teacher_weights=weights or None, out=out)


def _spec(recipe: Recipe, *, model: str, weights: str | None, qat: str | None, epochs: float, lr: float,
          batch_size: int, teacher: str | None, teacher_weights: str | None, out: Path) -> dict[str, Any]:
    data = recipe.data
    return {"model": model, "weights": weights, "data": data.source, "mean": list(data.mean) if data.mean else None,
            "std": list(data.std) if data.std else None, "input_size": recipe.input_size, "epochs": float(epochs),
            "lr": float(lr), "batch_size": batch_size, "teacher": teacher, "teacher_weights": teacher_weights or None,
            "qat": qat, "eval_limit": recipe.eval_samples, "seed": recipe.seed, "device": recipe.device,
            "out": str(out)}


def torchrun_command(spec: dict[str, Any], folder: Path, nproc: int) -> list[str]:
    """Write ``spec`` to ``folder/spec.json``; return ``python -m torch.distributed.run --standalone
    --nproc_per_node N -m edgeslim.pipelines.torchrun_finetune folder/spec.json``."""
    path = folder / "spec.json"
    path.write_text(json.dumps(spec, indent=1))
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "edgeslim.pipelines.torchrun_finetune", str(path)]


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
    # a rank's line may follow another process's unfinished line (a C++ warning): cut at each "[rank i/n]"
    summary["rank_log"] = [m.group(0).strip() for m in re.finditer(r"\[rank \d+/\d+\] [^\n]*?(?=\[rank \d+/\d+\] |\n|$)",
                                                                   proc.stderr)]
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
        cmd = torchrun_command(finetune_spec(recipe, source, Path(tmp)), Path(tmp), nproc)
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
        cmd = torchrun_command(qat_spec(ctx.recipe, model, weights, Path(tmp)), Path(tmp), nproc)
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


__all__ = ["finetune_spec", "qat_spec", "run_command", "run_finetune_torchrun", "run_quantize_torchrun",
           "torchrun_command"]
