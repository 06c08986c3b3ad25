"""Recipes: one YAML file that describes a whole ``edgeslim compress`` run, validated before any work.

A recipe names the model, the data, the pruning, the fine-tune, the quantization, the export
formats and the bench targets (every section but ``model`` is optional)::

    title: ResNet-18, half the parameters, int8
    model: resnet18-fmnist            # a bundled model, an edgeslim-saved .pt file, or net.py:build
    weights: ""                       # with net.py:build (or a torchvision name): a state_dict .pt
    data: fashion-mnist               # or imagefolder:DIR, npz:FILE, python:module:function,
                                      # or {source: imagefolder:DIR, mean: [...], std: [...]}
    input_size: 32                    # the model's input resolution (H = W)
    eval_samples: 1000                # test images every top-1 is measured on
    pipeline: sequential              # sequential | alternating | joint
    prune: {criterion: l1, target: params=0.5, allocation: uniform, round_to: 16}
    finetune: {epochs: 0.05, lr: 0.01, distill: true}
    launcher: local                   # or torchrun: fine-tune and QAT run on nproc_per_node processes (DDP)
    nproc_per_node: 2
    quantize: {scheme: int8, method: ptq, calibration: 256}
    export: {formats: [onnx, tflite], max_drop: 1.0}
    bench: {targets: [local], input_size: 64, runs: 10, threads: 2}

:func:`load_recipe` checks everything first: an unknown key is named with its path
(``prune.critrion``), the closest known key and the allowed ones; a bad value is named with the
allowed values (enum values, registered criteria, exporters, runtimes); a YAML syntax error names
the file and line. :meth:`Recipe.to_dict` round-trips through :meth:`Recipe.from_dict`.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from edgeslim.config import to_data
from edgeslim.errors import ConfigError, EdgeslimError
from edgeslim.pipelines.recipe_sections import (
    BUDGET_KINDS,
    BenchSection,
    DataSection,
    Dataset,
    ExportSection,
    FinetuneSection,
    Launcher,
    Pipeline,
    QuantizeSection,
    RecipeError,
    SearchSection,
    Variant,
    _at_least,
    _registered,
    _suggest,
    check_launcher,
    check_torch_device,
    parse_budget,
)
from edgeslim.plugin.pruning.config import PruneConfig
from edgeslim.plugin.quantization.config import Mode


@dataclass(frozen=True)
class Recipe:
    """A whole compression run.

    Attributes:
        model: A bundled model name (``resnet18-fmnist``, ``mobilenet_v2-fmnist``, ``vit-fmnist``),
            an edgeslim-saved ``.pt`` file (relative paths: from the current folder), your factory
            ``path/to/file.py:build`` / ``package.module:build``, or a torchvision name.
        weights: A ``state_dict`` file for a factory or torchvision model (``""``: none).
        data: The data (:class:`DataSection`; default Fashion-MNIST).
        title: The report's title (default: derived from the model and steps).
        input_size: The model's input resolution (H = W).
        eval_samples: First test images every top-1 is measured on.
        seed: Random seed.
        pipeline: ``sequential``, ``alternating`` or ``joint``.
        alternating_events: Pruning events of ``pipeline: alternating``, interleaved with QAT over
            the ``finetune`` epochs.
        prune: The pruning config (``None``: no pruning).
        finetune: Fine-tune after pruning.
        launcher: ``local`` (in this process) or ``torchrun``: the fine-tune step (and a QAT
            quantize step) is re-launched as ``python -m torch.distributed.run --standalone
            --nproc_per_node N -m edgeslim.pipelines.torchrun_finetune SPEC.json``.
        nproc_per_node: Processes of ``launcher: torchrun`` (on the CPU each uses one thread).
        device: Where training, calibration and evaluation run: ``auto`` (CUDA when present), ``cpu``,
            ``cuda``, ``cuda:N``.
        search: The joint search (``pipeline: joint``).
        quantize: The quantization (``None``: none).
        export: Artefacts written.
        bench: Targets the artefacts are timed on (``None``: no bench).
    """

    model: str
    weights: str = ""
    data: DataSection = field(default_factory=DataSection)
    title: str = ""
    input_size: int = 32
    eval_samples: int = 1000
    seed: int = 0
    pipeline: Pipeline = Pipeline.SEQUENTIAL
    alternating_events: int = 4
    prune: PruneConfig | None = None
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    launcher: Launcher = Launcher.LOCAL
    nproc_per_node: int = 2
    device: str = "auto"
    search: SearchSection | None = None
    quantize: QuantizeSection | None = None
    export: ExportSection = field(default_factory=ExportSection)
    bench: BenchSection | None = None

    # ---- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-able dict (enums as values, every field written); :meth:`from_dict` inverts it."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_plain() if isinstance(value, DataSection) else to_data(value, tagged=False)
        return out

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_dict`."""
        import yaml

        return str(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "recipe") -> Recipe:
        """Build and validate a recipe.

        Args:
            data: The parsed YAML mapping.
            source: The file name used in error messages.

        Raises:
            RecipeError: Unknown key (named with its path and the closest known key), bad value
                (named with the allowed values), or a missing ``model``.
        """
        try:
            return _recipe_from(data)
        except RecipeError as exc:
            raise RecipeError(f"{source}: {exc}") from None

    def variants(self) -> list[Variant]:
        """The variants this recipe produces (rows of the report)."""
        out = [Variant.ORIGINAL]
        pruned = self.prune is not None or self.pipeline is Pipeline.JOINT
        if pruned:
            out.append(Variant.PRUNED)
        if self.quantize is not None:
            out.append(Variant.QUANTIZED)
            if pruned:
                out.append(Variant.PRUNED_QUANTIZED)
        return out


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "one of " + ", ".join(str(m.value) for m in tp)
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _convert(key: str, value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (bool, int, float, str, an Enum, tuples and optionals of them)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(key, value, next(a for a in args if a is not type(None)))
    if origin is tuple:
        items = value if isinstance(value, list) else [value]
        return tuple(_convert(f"{key}[{i}]", v, args[0]) for i, v in enumerate(items))
    if isinstance(tp, type) and issubclass(tp, Enum):
        allowed = [str(m.value) for m in tp]
        if str(value) not in allowed:
            raise RecipeError(f"{key}: {value!r} is not allowed{_suggest(str(value), allowed)}; allowed: {', '.join(allowed)}")
        return tp(str(value))
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, (str, int, float)) and not isinstance(value, bool))
    )
    if not ok:
        raise RecipeError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return tp(value)


def _check_keys(key: str, data: Any, allowed: list[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RecipeError(f"{key or 'the recipe'}: expected a mapping of keys ({', '.join(allowed)}), got {data!r}")
    for k in data:
        if str(k) not in allowed:
            path = f"{key}.{k}" if key else str(k)
            raise RecipeError(f"unknown key {path!r}{_suggest(str(k), allowed)}; allowed keys"
                              f"{' of ' + key if key else ''}: {', '.join(allowed)}")
    return {str(k): v for k, v in data.items()}


def _section(cls: Any, key: str, data: Any) -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    d = _check_keys(key, {} if data is None else data, names)
    obj = cls(**{k: _convert(f"{key}.{k}", v, hints[k]) for k, v in d.items()})
    obj.check()
    return obj


def _prune_from(data: Any) -> PruneConfig:
    from edgeslim.plugin.pruning.config import Allocation, Method
    from edgeslim.plugin.pruning.importance import IMPORTANCE

    names = [f.name for f in fields(PruneConfig)]
    d = _check_keys("prune", data, names)
    if "method" in d:
        _convert("prune.method", d["method"], Method)
    if "allocation" in d:
        _convert("prune.allocation", d["allocation"], Allocation)
    if "criterion" in d:
        allowed = [*IMPORTANCE.names(), "magnitude", "gradient"]  # the last two: unstructured scores
        _registered("prune.criterion", [str(d["criterion"])], allowed)
    if "target" in d:
        from edgeslim.plugin.pruning.config import Target

        try:
            Target.parse(str(d["target"]))
        except ConfigError as exc:
            raise RecipeError(f"prune.target: {exc}") from None
        d["target"] = str(d["target"])
    try:
        return PruneConfig.from_dict(d)
    except ConfigError as exc:
        raise RecipeError(f"prune: {exc}") from None
    except TypeError as exc:
        raise RecipeError(f"prune: a value has the wrong type ({exc}); see edgeslim.PruneConfig") from None


def _model_check(model: Any) -> str:
    from edgeslim.models import REFERENCES
    from edgeslim.models.user import is_user_spec

    if not isinstance(model, str) or not model:
        raise RecipeError(f"model: expected a bundled model name ({', '.join(REFERENCES)}) or an edgeslim .pt file")
    if model in REFERENCES:
        return model
    path = Path(model)
    if is_user_spec(model) and not path.is_file():
        where = model.rpartition(":")[0]
        if where.endswith(".py") and not Path(where).is_file():
            raise RecipeError(f"model: file {where!r} of {model!r} does not exist (relative paths are read from the "
                              "current folder)")
        return model
    if path.suffix in {".pt", ".pth", ".edgeslim"} or "/" in model:
        if not path.is_file():
            raise RecipeError(f"model: file {model!r} does not exist (relative paths are read from the current folder)")
        from edgeslim.io import read_header

        try:
            kind = read_header(path).get("kind")
        except EdgeslimError as exc:
            raise RecipeError(f"model: {exc}") from None
        if kind == "quantized":
            raise RecipeError(f"model: {model!r} is already quantized; give its float ancestor (the model before "
                              "edgeslim quantize)")
        return model
    from edgeslim.models import torchvision_names

    if model in torchvision_names():
        return model
    raise RecipeError(f"model: unknown model {model!r}{_suggest(model, REFERENCES)}; allowed: "
                      f"{', '.join(REFERENCES)}, an edgeslim-saved .pt file, your factory path/to/file.py:build or "
                      "package.module:build, or a torchvision name")


def _weights_check(model: str, weights: Any) -> str:
    from edgeslim.models import REFERENCES

    if not isinstance(weights, str):
        raise RecipeError(f"weights: expected a state_dict file path, got {weights!r}")
    if not weights:
        return weights
    if model in REFERENCES or Path(model).is_file():
        raise RecipeError(f"weights: {model!r} carries its own weights; weights are for a factory "
                          "(path/to/file.py:build) or a torchvision name")
    if not Path(weights).is_file():
        raise RecipeError(f"weights: file {weights!r} does not exist (relative paths are read from the current folder)")
    return weights


def _data_from(data: Any) -> DataSection:
    if isinstance(data, str):
        data = {"source": data}
    return _section(DataSection, "data", data)


def _recipe_from(data: Any) -> Recipe:
    hints = get_type_hints(Recipe)
    d = _check_keys("", data, [f.name for f in fields(Recipe)])
    if "model" not in d:
        raise RecipeError("model: missing; give a bundled model name or an edgeslim .pt file")
    kw: dict[str, Any] = {"model": _model_check(d["model"])}
    if "weights" in d:
        kw["weights"] = _weights_check(kw["model"], d["weights"])
    if "data" in d:
        kw["data"] = _data_from(d["data"])
    if "device" in d:
        kw["device"] = check_torch_device(d["device"])
    for key in ("title", "input_size", "eval_samples", "seed", "pipeline", "alternating_events", "launcher",
                "nproc_per_node"):
        if key in d:
            kw[key] = _convert(key, d[key], hints[key])
    sections = {"finetune": FinetuneSection, "search": SearchSection, "quantize": QuantizeSection,
                "export": ExportSection, "bench": BenchSection}
    for key, cls in sections.items():
        if key in d and (d[key] is not None or key in ("finetune", "export")):
            kw[key] = _section(cls, key, d[key])
    if d.get("prune") is not None:
        kw["prune"] = _prune_from(d["prune"])
    recipe = Recipe(**kw)
    _at_least("input_size", recipe.input_size, 8)
    if not 1 <= recipe.eval_samples <= 10000:
        raise RecipeError(f"eval_samples: must be in 1..10000 (the Fashion-MNIST test set), got {recipe.eval_samples}")
    _at_least("alternating_events", recipe.alternating_events, 1)
    _available(recipe.pipeline)
    check_launcher(recipe.launcher, recipe.nproc_per_node, recipe.pipeline, recipe.finetune,
                   pruned=recipe.prune is not None or recipe.pipeline is Pipeline.JOINT,
                   qat=recipe.quantize is not None and recipe.quantize.method is Mode.QAT)
    if recipe.pipeline is Pipeline.JOINT and recipe.search is None:
        raise RecipeError("search: pipeline 'joint' needs a search section (budget: speedup=5, ...)")
    if recipe.pipeline is not Pipeline.JOINT and recipe.search is not None:
        raise RecipeError(f"search: only used by pipeline 'joint' (this recipe's pipeline is {recipe.pipeline.value!r})")
    if recipe.pipeline is not Pipeline.JOINT and recipe.prune is None and recipe.pipeline is Pipeline.ALTERNATING:
        raise RecipeError("prune: pipeline 'alternating' needs a prune section")
    if recipe.pipeline is Pipeline.ALTERNATING and recipe.quantize is None:
        raise RecipeError("quantize: pipeline 'alternating' needs a quantize section")
    if recipe.pipeline is Pipeline.ALTERNATING and recipe.finetune.epochs <= 0:
        raise RecipeError("finetune.epochs: pipeline 'alternating' prunes and trains with QAT over the fine-tune; "
                          "give epochs > 0 (e.g. 0.1)")
    return recipe


def _available(pipeline: Pipeline) -> None:
    """Refuse a pipeline whose module is not in this edgeslim (before any work)."""
    import importlib.util

    if pipeline is not Pipeline.SEQUENTIAL and importlib.util.find_spec(f"edgeslim.pipelines.{pipeline.value}") is None:
        raise RecipeError(f"pipeline: {pipeline.value!r} is not available yet in this edgeslim; "
                          "use pipeline: sequential")


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (YAML or JSON) before any work.

    Raises:
        RecipeError: Missing file, YAML syntax error (file and line), unknown key or bad value.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{where}: YAML syntax error: {problem}; fix the recipe at that line") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{p} is not a text file ({exc.reason})") from None
    return Recipe.from_dict(data, source=str(p))


__all__ = [
    "BUDGET_KINDS",
    "BenchSection",
    "DataSection",
    "Dataset",
    "ExportSection",
    "FinetuneSection",
    "Launcher",
    "Pipeline",
    "QuantizeSection",
    "Recipe",
    "RecipeError",
    "SearchSection",
    "Variant",
    "load_recipe",
    "parse_budget",
]
