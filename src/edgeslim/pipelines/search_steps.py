"""The steps of the ``joint`` and ``alternating`` pipelines of ``edgeslim compress``.

``search`` (``pipeline: joint``) runs :func:`edgeslim.pipelines.joint.joint_search` under the
recipe's budget and prunes the original model to the chosen plan (``pruned.pt``, ``search.json``);
the ``finetune`` and ``quantize`` steps follow as in the sequential pipeline. ``alternating``
prunes and trains with QAT in one run (:func:`edgeslim.pipelines.alternating.alternating`): it
writes the pruned float model (``pruned.pt``) and the pruned+quantized one
(``pruned_quantized.pt``); the ``quantize`` step then quantizes only the original.
"""

from __future__ import annotations

from typing import Any

from edgeslim.pipelines.recipe import Variant, parse_budget
from edgeslim.pipelines.steps import Context, layer_rows, quant_file, write_json


def _pruned_record(ctx: Context, result: Any, net: Any, target: str) -> dict[str, Any]:
    """Save a ``PruneResult`` as ``pruned.pt`` with its lineage; the numbers recorded for it."""
    from edgeslim import io as es_io
    from edgeslim.lineage import extend

    top1 = ctx.top1(result.model)
    name = "pruned.pt"
    lineage = extend(ctx.lineage(Variant.ORIGINAL), "prune", source=str(ctx.out / name),
                     sha256=es_io.state_sha256(result.model.state_dict()), target=target, top1={ctx.eval_key: top1})
    summary = {k: v for k, v in result.summary().items() if k != "config"}
    path = es_io.save(result, ctx.path(name), meta={**summary, "lineage": lineage})
    ctx.remember(name, result.model)
    return {"summary": summary, "top1": top1, "params": result.after.params, "macs": result.after.macs,
            "bytes": path.stat().st_size, "layers": layer_rows(net, result.model), "lineage": lineage, "file": name}


def _budget(cls: Any, kind: str, value: float) -> Any:
    """``Budget(speedup=5.0)`` from a parsed ``search.budget``."""
    return cls(latency_ms=value if kind == "latency_ms" else None, speedup=value if kind == "speedup" else None,
               bytes=value if kind == "bytes" else None, macs=value if kind == "macs" else None)


def run_search(ctx: Context) -> dict[str, Any]:
    """Joint search of widths under the recipe's budget; prune the original to the chosen plan."""
    from edgeslim.exporters.accuracy import labelled_batches, torch_top1
    from edgeslim.pipelines.joint import Budget, SearchSpace, joint_search

    sec = ctx.recipe.search
    assert sec is not None
    net = ctx.original()
    kind, value = parse_budget(sec.budget)
    size = sec.input_size or ctx.recipe.input_size
    s = ctx.recipe.input_size
    subset = labelled_batches(ctx.eval_loader(), (1, 3, s, s), min(sec.eval_samples, ctx.recipe.eval_samples))

    def eval_fn(model: Any) -> float:
        return torch_top1(model.eval(), subset)

    def on_event(what: str, data: dict[str, Any]) -> None:
        if what in ("measured", "chosen"):
            shown = {k: v for k, v in data.items() if k in ("measured_ms", "proxy", "step")}
            ctx.emit({"event": "info", "message": f"search {what}: {shown}"})

    ctx.emit({"event": "info", "message": f"joint search under {sec.budget} on {sec.target}/{sec.runtime} at {size}x{size}"})
    result = joint_search(
        net, ctx.example(), data=ctx.train_loader(64, augment=False, seed_offset=1), budget=_budget(Budget, kind, value),
        space=SearchSpace(keep_ratios=sec.keep_ratios, round_to=sec.round_to, bits=sec.bits, groups=sec.groups), device=sec.target,
        runtime=sec.runtime, threads=sec.threads, input_size=(size, size),
        quant="int8" if ctx.recipe.quantize is not None else "fp32", eval_fn=eval_fn, max_front=sec.max_front,
        runs=sec.runs, on_event=on_event,
    )
    found = result.to_dict()
    write_json(ctx.path("search.json"), found)
    record = _pruned_record(ctx, result.apply(net, ctx.example()), net, f"joint {sec.budget}")
    return {**record, "search": found}


def run_alternating(ctx: Context) -> dict[str, Any]:
    """Prune and QAT-train in one run; save the pruned float and the pruned+quantized model."""
    import torch

    from edgeslim import io as es_io
    from edgeslim.lineage import extend
    from edgeslim.pipelines.alternating import AlternatingConfig, alternating

    rec = ctx.recipe
    assert rec.prune is not None and rec.quantize is not None
    torch.manual_seed(rec.seed)
    net = ctx.original()
    train = ctx.train_loader(rec.finetune.batch_size)
    steps = max(3, round(rec.finetune.epochs * len(train)))
    layout = AlternatingConfig.spread(steps, prune_steps=rec.alternating_events)
    config = rec.quantize.config()
    result = alternating(net, ctx.example(batch=2), train, rec.prune, config, steps=steps, schedule=layout,
                         teacher=net if rec.finetune.distill else None, lr=rec.finetune.lr,
                         on_step=lambda r: ctx.progress("prune + QAT", r.step, steps), device=ctx.device)
    float_model = result.float_model.eval()
    top1 = ctx.top1(float_model)
    name = "pruned.pt"
    lineage = extend(ctx.lineage(Variant.ORIGINAL), "prune", source=str(ctx.out / name),
                     sha256=es_io.state_sha256(float_model.state_dict()), target=str(rec.prune.target),
                     criterion=rec.prune.criterion, finetune_epochs=rec.finetune.epochs, top1={ctx.eval_key: top1})
    size = es_io.save(float_model, ctx.path(name), meta={"pipeline": "alternating", "lineage": lineage}).stat().st_size
    ctx.remember(name, float_model)
    qtop1 = ctx.top1(result.quant.model)
    qname = quant_file(Variant.PRUNED_QUANTIZED)
    qlineage = extend(lineage, "quantize", scheme=config.name, mode="qat", top1={ctx.eval_key: qtop1})
    qsize = es_io.save(result.quant, ctx.path(qname), meta={"scheme": config.name, "mode": "qat",
                                                           "lineage": qlineage}).stat().st_size
    ctx.remember(qname, result.quant)
    summary = {"params_before": result.prune.before.params, "params_after": result.prune.after.params,
               "macs_before": result.prune.before.macs, "macs_after": result.prune.after.macs,
               "params_fraction": result.prune.params_fraction, "sparsity": result.prune.sparsity}
    quantized = {"top1": qtop1, "bytes": qsize, "weight_bytes": result.quant.weight_bytes, "scheme": config.name,
                 "mode": "qat", "left_float": list(result.quant.left_float), "file": qname,
                 "bits": {layer.name: layer.weight_bits for layer in result.quant.report.layers}}
    return {"summary": summary, "top1": top1, "params": result.prune.after.params, "macs": result.prune.after.macs,
            "bytes": size, "layers": layer_rows(net, float_model), "lineage": lineage, "file": name,
            "steps": steps, "events": [dict(e) for e in result.prune.events], "quantized": quantized}
