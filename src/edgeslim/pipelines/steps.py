"""The steps of ``edgeslim compress`` and what they share: the recipe, the output folder, data, models.

A step never keeps a model only in memory: every model it makes is saved into the output folder,
and the next step reads it back from there (cached), so a resumed run finds the same objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeslim.errors import EdgeslimError
from edgeslim.pipelines.recipe import Dataset, Pipeline, Recipe, Variant

#: Name of the default evaluation set in top-1 keys (other data: the source's ``eval_name``).
EVAL_NAME = "fashion-mnist/test"

Event = dict[str, Any]
EventHandler = Callable[[Event], None]


class CompressError(EdgeslimError):
    """A compression run cannot start or continue (output folder in use, missing artefact ...)."""


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary file next to ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, data: Any) -> Path:
    """Atomically write ``data`` as indented JSON."""
    return atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")


def float_file(recipe: Recipe) -> str:
    """The file holding the pruned float model (after fine-tune when there is one)."""
    if recipe.pipeline is not Pipeline.ALTERNATING and recipe.finetune.epochs > 0 and (
            recipe.prune is not None or recipe.pipeline is Pipeline.JOINT):
        return "finetuned.pt"
    return "pruned.pt"


def quant_file(variant: Variant) -> str:
    """The saved quantized model of ``variant`` (``quantized.pt``, ``pruned_quantized.pt``)."""
    return f"{variant.stem}.pt"


@dataclass
class Context:
    """The state the steps share.

    Attributes:
        recipe: The recipe being run.
        out: The output folder.
        emit: Progress/event callback.
        data: The recorded data of every finished (or resumed) step, by step name.
        outputs: Files the current step wrote (relative to ``out``).
    """

    recipe: Recipe
    out: Path
    emit: EventHandler
    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    _cache: dict[str, Any] = field(default_factory=dict)

    # ---- files --------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """``out / name``, recorded as an output of the current step."""
        if name not in self.outputs:
            self.outputs.append(name)
        return self.out / name

    def progress(self, what: str, completed: int, total: int) -> None:
        """Report progress inside a step."""
        self.emit({"event": "progress", "what": what, "completed": completed, "total": total})

    # ---- data -------------------------------------------------------------------------------
    def source(self) -> Any:
        """The recipe's :class:`~edgeslim.data.DataSource` (opened and checked once)."""
        if "source" not in self._cache:
            from edgeslim.data import DataOptions, open_data

            sec = self.recipe.data
            options = DataOptions(input_size=self.recipe.input_size, mean=sec.mean, std=sec.std)
            self._cache["source"] = open_data(sec.source, options)
        return self._cache["source"]

    def example(self, size: int | None = None, batch: int = 1) -> Any:
        """A random NCHW example input at ``size`` (default: the recipe's input size), with the data's channels."""
        import torch

        s = size or self.recipe.input_size
        c = self.source().channels()
        return torch.randn(batch, c, s, s, generator=torch.Generator().manual_seed(self.recipe.seed))

    @property
    def device(self) -> Any:
        """The recipe's ``device`` (training and evaluation), resolved once; a GPU it names must exist."""
        from edgeslim.train import resolve_torch_device

        return self._cache.setdefault("device", resolve_torch_device(self.recipe.device, option="device"))

    @property
    def eval_name(self) -> str:
        """The evaluation set's name (``fashion-mnist/test``, ``imagefolder:/abs/dir/val`` ...)."""
        return str(self.source().eval_name)

    @property
    def eval_key(self) -> str:
        """The top-1 key of the evaluation images (``fashion-mnist/test[:N]@HxW``)."""
        from edgeslim.exporters.accuracy import eval_key

        if "eval_count" not in self._cache:
            loader = self.eval_loader()
            dataset = getattr(loader, "dataset", None)
            self._cache["eval_count"] = len(dataset) if dataset is not None else sum(len(y) for _, y in loader)
        s = self.recipe.input_size
        return eval_key(self.eval_name, (1, 3, s, s), min(self.recipe.eval_samples, self._cache["eval_count"]))

    def eval_loader(self) -> Any:
        """The first ``eval_samples`` evaluation images (real data, labelled)."""
        return self.source().eval_loader(250, limit=self.recipe.eval_samples)

    def export_data(self) -> dict[str, Any]:
        """Calibration and verification images for ``export()`` (none: its Fashion-MNIST defaults)."""
        if self.recipe.data.source == Dataset.FASHION_MNIST.value:
            return {}
        return {"calibration": self.source().calibration(256, seed=self.recipe.seed),
                "verify_inputs": self.source().eval_loader(64, limit=self.recipe.export.verify_samples)}

    def top1(self, model: Any) -> float:
        """Top-1 of a PyTorch model on the evaluation images (at the recipe's input size)."""
        from edgeslim.exporters.accuracy import labelled_batches
        from edgeslim.train import top1_on

        if "eval_batches" not in self._cache:
            s = self.recipe.input_size
            self._cache["eval_batches"] = labelled_batches(self.eval_loader(), (1, 3, s, s), self.recipe.eval_samples)
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        try:
            return top1_on(model, self._cache["eval_batches"], self.device)
        finally:
            if was_training:
                model.train()

    def train_loader(self, batch_size: int, *, augment: bool = True, seed_offset: int = 0) -> Any:
        """The training images (shuffled, seeded)."""
        return self.source().train_loader(batch_size, augment=augment, seed=self.recipe.seed + seed_offset)

    def calibration(self) -> Any:
        """``quantize.calibration`` training images drawn (seeded) for calibration."""
        n = self.recipe.quantize.calibration if self.recipe.quantize else 256
        return self.source().calibration(n, batch_size=64, seed=self.recipe.seed)

    # ---- models -----------------------------------------------------------------------------
    def original(self) -> Any:
        """The recipe's model (a fresh copy each call is not needed: callers never modify it)."""
        if "original" not in self._cache:
            from edgeslim import io as es_io
            from edgeslim import models

            if self.recipe.model in models.REFERENCES or not Path(self.recipe.model).is_file():
                net = models.load(self.recipe.model, weights=self.recipe.weights or None).eval()
                self.source().check_labels(int(net(self.example()).shape[-1]))
                self._cache["original"] = net
            else:
                self._cache["original"] = es_io.load(self.recipe.model).eval()
        return self._cache["original"]

    def pruned(self) -> Any:
        """The pruned float model (after fine-tune when there is one), read from the output folder."""
        return self._load_model(float_file(self.recipe))

    def pruned_raw(self) -> tuple[Any, dict[str, Any]]:
        """A fresh copy of the pruned model before fine-tune (``pruned.pt``) and its unstructured masks."""
        import copy

        from edgeslim.plugin.pruning.unstructured import masks_of

        model = self._load_model("pruned.pt")
        return copy.deepcopy(model), masks_of(model)

    @staticmethod
    def float_model_name(variant: Variant) -> str:
        """``original`` or ``pruned``: the float model a variant is (or is quantized from)."""
        return "original" if variant in (Variant.ORIGINAL, Variant.QUANTIZED) else "pruned"

    def float_model(self, variant: Variant) -> Any:
        """The float model of ``variant`` (a quantized variant: its float ancestor)."""
        if variant in (Variant.ORIGINAL, Variant.QUANTIZED):
            return self.original()
        return self.pruned()

    def quantized(self, variant: Variant) -> Any:
        """The ``QuantResult`` of a quantized variant, read from the output folder."""
        key = quant_file(variant)
        if key not in self._cache:
            from edgeslim.plugin.quantization.saved import load_result

            self._cache[key] = load_result(self._existing(key))
        return self._cache[key]

    def remember(self, name: str, obj: Any) -> None:
        """Cache the object just saved as ``name`` (so the next step need not reload it)."""
        self._cache[name] = obj

    def _load_model(self, name: str) -> Any:
        if name not in self._cache:
            from edgeslim import io as es_io

            self._cache[name] = es_io.load(self._existing(name))
        return self._cache[name]

    def _existing(self, name: str) -> Path:
        p = self.out / name
        if not p.is_file():
            raise CompressError(f"{p} is missing: an earlier step's output was removed; rerun with --force "
                                "to start the run over")
        return p

    def lineage(self, variant: Variant) -> list[dict[str, Any]]:
        """The lineage of a float variant's model, oldest step first (what its saved file records)."""
        if variant in (Variant.ORIGINAL, Variant.QUANTIZED):
            return [dict(s) for s in self.data.get("load", {}).get("lineage", [])]
        for step in ("finetune", "prune", "search", "alternating"):
            if "lineage" in self.data.get(step, {}):
                return [dict(s) for s in self.data[step]["lineage"]]
        raise CompressError("no pruned model was recorded by this run")


# ---- the steps -------------------------------------------------------------------------------
def _save(ctx: Context, name: str, obj: Any, meta: dict[str, Any]) -> int:
    """Save a model (or result) as ``name`` with ``meta`` and return the file's size."""
    from edgeslim import io as es_io

    path = es_io.save(obj, ctx.path(name), meta=meta)
    return path.stat().st_size


def run_load(ctx: Context) -> dict[str, Any]:
    """Load the model; measure its params, MACs and top-1 (no file written)."""
    from edgeslim import io as es_io
    from edgeslim import models
    from edgeslim.lineage import lineage_of
    from edgeslim.plugin.pruning.metrics import measure

    net = ctx.original()
    source = ctx.recipe.model
    lineage: list[dict[str, Any]]
    if source in models.REFERENCES:
        file = models.CHECKPOINT_DIR / models.REFERENCES[source].file
        lineage = [{"step": "float", "source": source, "sha256": es_io.state_sha256(net.state_dict()),
                    "dataset": models.REFERENCES[source].dataset}]
    elif not Path(source).is_file():  # your factory or a torchvision name (+ weights)
        from edgeslim.models.user import file_sha256, is_user_spec, load_user

        origin = load_user(source)[1] if is_user_spec(source) else {"source": source}
        weights = ctx.recipe.weights
        if weights:
            origin.update(weights=str(Path(weights).resolve()), weights_sha256=file_sha256(weights))
        file = Path(weights or origin.get("file") or ".")
        lineage = [{"step": "float", **origin, "sha256": es_io.state_sha256(net.state_dict())}]
    else:
        file = Path(source)
        lineage = lineage_of(es_io.load_meta(file)) or [{"step": "float", "source": source, "dataset": "fashion-mnist",
                                                         "sha256": es_io.state_sha256(net.state_dict())}]
    stats = measure(net, ctx.example())
    top1 = ctx.top1(net)
    lineage[-1] = {**lineage[-1], "top1": {**lineage[-1].get("top1", {}), ctx.eval_key: top1}}
    size = file.stat().st_size if file.is_file() else sum(t.numel() * t.element_size() for t in net.state_dict().values())
    return {"source": source, "file": str(file), "bytes": size, "params": stats.params,
            "macs": stats.macs, "top1": top1, "lineage": lineage}


def layer_rows(before: Any, after: Any) -> list[dict[str, Any]]:
    """The conv and linear rows of :func:`~edgeslim.plugin.pruning.metrics.layer_report` (widths before/after)."""
    from edgeslim.plugin.pruning.metrics import layer_report

    return [r for r in layer_report(before, after) if r["type"] in ("Conv2d", "Linear")]


def run_prune(ctx: Context) -> dict[str, Any]:
    """Prune the model to the recipe's target and save ``pruned.pt``."""
    from edgeslim import io as es_io
    from edgeslim.lineage import extend
    from edgeslim.plugin.pruning import prune

    cfg = ctx.recipe.prune
    assert cfg is not None
    net = ctx.original()
    data = ctx.train_loader(128, augment=False, seed_offset=1)  # read only by data-driven criteria / sensitivity
    ctx.emit({"event": "info", "message": f"pruning {ctx.recipe.model}: {cfg.criterion}, {cfg.target}, "
                                          f"{cfg.allocation.value} allocation"})
    result = prune(net, ctx.example(), cfg, data=data)
    top1 = ctx.top1(result.model)
    name = "pruned.pt"
    lineage = extend(ctx.lineage(Variant.ORIGINAL), "prune", source=str(ctx.out / name),
                     sha256=es_io.state_sha256(result.model.state_dict()), target=str(cfg.target),
                     criterion=cfg.criterion, top1={ctx.eval_key: top1})
    summary = {k: v for k, v in result.summary().items() if k != "config"}
    size = _save(ctx, name, result, {**summary, "lineage": lineage})
    ctx.remember(name, result.model)
    return {"summary": summary, "top1": top1, "params": result.after.params, "macs": result.after.macs,
            "bytes": size, "layers": layer_rows(net, result.model), "lineage": lineage, "file": name}


def run_finetune(ctx: Context) -> dict[str, Any]:
    """Fine-tune the pruned model (distilled from the original when asked) and save ``finetuned.pt``."""
    import torch

    from edgeslim import io as es_io
    from edgeslim.lineage import extend
    from edgeslim.plugin.pruning.finetune import finetune
    from edgeslim.plugin.pruning.unstructured import Masks

    sec = ctx.recipe.finetune
    torch.manual_seed(ctx.recipe.seed)
    model, found = ctx.pruned_raw()
    masks = Masks(model, dict(found)) if found else None
    train = ctx.train_loader(sec.batch_size)
    total = max(1, round(sec.epochs * len(train)))
    result = finetune(model, train, epochs=sec.epochs, lr=sec.lr, teacher=ctx.original() if sec.distill else None,
                      masks=masks, device=ctx.device, on_step=lambda s, _t, _l: ctx.progress("fine-tune", s, total))
    if masks is not None:
        masks.make_permanent()
    model.eval()
    top1 = ctx.top1(model)
    name = "finetuned.pt"
    prev = next(ctx.data[s]["lineage"] for s in ("search", "prune") if s in ctx.data)
    lineage = extend(prev, "finetune", source=str(ctx.out / name), sha256=es_io.state_sha256(model.state_dict()),
                     finetune_epochs=sec.epochs, distill=sec.distill, top1={ctx.eval_key: top1})
    size = _save(ctx, name, model, {"finetune_epochs": sec.epochs, "lineage": lineage})
    ctx.remember(name, model)
    return {"top1": top1, "seconds_train": result.seconds, "steps": total, "bytes": size, "lineage": lineage,
            "file": name}


def _quantize_one(ctx: Context, variant: Variant) -> dict[str, Any]:
    import copy

    import torch

    from edgeslim.lineage import extend
    from edgeslim.plugin.quantization import convert, prepare_qat, quantize
    from edgeslim.plugin.quantization.config import Mode
    from edgeslim.plugin.quantization.qat import train_qat

    sec = ctx.recipe.quantize
    assert sec is not None
    net = ctx.float_model(variant)
    config = sec.config()
    x = ctx.example(batch=2)
    torch.manual_seed(ctx.recipe.seed)
    if sec.method is Mode.QAT:
        train = ctx.train_loader(64)
        steps = max(1, round(sec.qat_epochs * len(train)))
        prepared = prepare_qat(copy.deepcopy(net), x, config)
        train_qat(prepared, train, steps=steps, lr=sec.lr, teacher=copy.deepcopy(net).eval(), cosine=True,
                  device=ctx.device, on_step=lambda s, _l: ctx.progress(f"QAT ({variant.value})", s, steps))
        result = convert(prepared)
    else:
        ctx.emit({"event": "info", "message": f"PTQ of the {ctx.float_model_name(variant)} model: {config.name}, "
                                              f"{sec.calibration} calibration images"})
        result = quantize(net, x, config, calibration=ctx.calibration(), device=ctx.device)
    top1 = ctx.top1(result.model)
    float_variant = Variant.ORIGINAL if variant is Variant.QUANTIZED else Variant.PRUNED
    lineage = ctx.lineage(float_variant)
    lineage = extend(lineage, "quantize", scheme=config.name, mode=sec.method.value, top1={ctx.eval_key: top1})
    name = quant_file(variant)
    meta = {"scheme": config.name, "mode": sec.method.value, "calib": sec.calibration, "lineage": lineage}
    size = _save(ctx, name, result, meta)
    ctx.remember(name, result)
    bits = {layer.name: layer.weight_bits for layer in result.report.layers}
    return {"top1": top1, "bytes": size, "weight_bytes": result.weight_bytes, "scheme": config.name,
            "mode": sec.method.value, "left_float": list(result.left_float), "file": name, "bits": bits}


def run_quantize(ctx: Context) -> dict[str, Any]:
    """Quantize the original and the pruned model (PTQ or QAT); save ``quantized.pt`` / ``pruned_quantized.pt``."""
    out: dict[str, Any] = {}
    done_by_alternating = ctx.recipe.pipeline is Pipeline.ALTERNATING
    for variant in (Variant.QUANTIZED, Variant.PRUNED_QUANTIZED):
        if variant in ctx.recipe.variants() and not (done_by_alternating and variant is Variant.PRUNED_QUANTIZED):
            out[variant.value] = _quantize_one(ctx, variant)
    return out
