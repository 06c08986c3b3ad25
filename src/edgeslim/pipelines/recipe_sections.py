"""The sections of a recipe (fine-tune, search, quantize, export, bench), their enums and checks.

Each section is a frozen dataclass whose ``check()`` raises :class:`RecipeError` naming the key
path (``quantize.scheme``) and the allowed values; :mod:`edgeslim.pipelines.recipe` builds them
from YAML.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from edgeslim.config import serializable
from edgeslim.errors import ConfigError
from edgeslim.plugin.quantization.config import Mode


class RecipeError(ConfigError):
    """A recipe is malformed; the message names the file, the key path and the allowed values."""


class Pipeline(str, Enum):
    """How pruning and quantization are combined."""

    SEQUENTIAL = "sequential"  # prune -> fine-tune -> quantize
    ALTERNATING = "alternating"  # prune and quantize-aware training in turns
    JOINT = "joint"  # search channel widths and bits together under a latency/size budget


class Launcher(str, Enum):
    """How the fine-tune step runs: in this process, or re-launched under ``torchrun`` (DDP)."""

    LOCAL = "local"
    TORCHRUN = "torchrun"  # python -m torch.distributed.run ... -m edgeslim.pipelines.torchrun_finetune SPEC.json


class Dataset(str, Enum):
    """The default data set (any registered data source can be named: see :class:`DataSection`)."""

    FASHION_MNIST = "fashion-mnist"


@dataclass(frozen=True)
class DataSection:
    """The data (``data: imagefolder:DIR`` or ``data: {source: npz:FILE, mean: [...], std: [...]}``).

    Attributes:
        source: ``fashion-mnist``, ``imagefolder:DIR``, ``npz:FILE``, ``python:module:function``
            (see :mod:`edgeslim.data.sources`; relative paths: from the current folder).
        mean: Per-channel mean for images read as [0, 1] (ImageFolder, uint8 npz).
        std: Per-channel standard deviation.
    """

    source: str = Dataset.FASHION_MNIST.value
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def check(self) -> None:
        """The kind is registered and its argument well formed (the files are read by the run's first step)."""
        from edgeslim.data import DataOptions, open_data
        from edgeslim.errors import DataError

        try:
            open_data(self.source, DataOptions(mean=self.mean, std=self.std), check=False)
        except DataError as exc:
            raise RecipeError(f"data: {exc}") from None
        if self.std is not None and any(v <= 0 for v in self.std):
            raise RecipeError(f"data.std: values must be positive, got {list(self.std)}")

    def to_plain(self) -> Any:
        """The source string alone when there is no mean/std, else the mapping."""
        if self.mean is None and self.std is None:
            return self.source
        return {"source": self.source, "mean": _listed(self.mean), "std": _listed(self.std)}


def _listed(values: tuple[float, ...] | None) -> list[float] | None:
    return None if values is None else list(values)


class Variant(str, Enum):
    """The four models a run compares (the rows of the report)."""

    ORIGINAL = "original"
    PRUNED = "pruned"
    QUANTIZED = "quantized"
    PRUNED_QUANTIZED = "pruned+quantized"

    @property
    def stem(self) -> str:
        """The file stem of the variant's files in the output folder (``pruned_quantized``)."""
        return self.value.replace("+", "_")


#: Search budget kinds (``speedup=5``, ``latency_ms=4``, ``bytes=5MB``, ``macs=3e8``).
BUDGET_KINDS = ("latency_ms", "speedup", "bytes", "macs")
_UNITS = {"": 1.0, "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024.0, "mib": 1024.0**2, "gib": 1024.0**3}


def parse_budget(text: str, key: str = "search.budget") -> tuple[str, float]:
    """Parse ``KIND=VALUE`` (``speedup=5``, ``latency_ms=4``, ``bytes=5MB``, ``macs=3e8``).

    Raises:
        RecipeError: Unknown kind, bad number, or a unit on anything but bytes.
    """
    m = re.fullmatch(r"\s*(\w+)\s*=\s*([0-9.eE+-]+)\s*([A-Za-z]*)\s*", str(text))
    if not m:
        raise RecipeError(f"{key}: {text!r} is not KIND=VALUE; allowed kinds: {', '.join(BUDGET_KINDS)} "
                          "(e.g. speedup=5, latency_ms=4, bytes=5MB, macs=3e8)")
    kind, num, unit = m[1].lower(), m[2], m[3].lower()
    if kind not in BUDGET_KINDS:
        raise RecipeError(f"{key}: unknown budget kind {kind!r}{_suggest(kind, BUDGET_KINDS)}; "
                          f"allowed: {', '.join(BUDGET_KINDS)}")
    if unit and (kind != "bytes" or unit not in _UNITS):
        raise RecipeError(f"{key}: unit {unit!r} is only allowed for bytes (B, KB, MB, GB, KiB, MiB, GiB)")
    try:
        value = float(num) * _UNITS[unit]
    except ValueError:
        raise RecipeError(f"{key}: {num!r} is not a number") from None
    if value <= 0:
        raise RecipeError(f"{key}: {kind} must be positive, got {value:g}")
    return kind, value


@serializable()
@dataclass(frozen=True)
class FinetuneSection:
    """Fine-tune of the pruned model (SGD, cosine decay).

    Attributes:
        epochs: Epochs over the training set (fractions allowed; 0: none).
        lr: Peak learning rate.
        distill: Distil from the unpruned model.
        batch_size: Training batch size.
    """

    epochs: float = 0.0
    lr: float = 0.01
    distill: bool = True
    batch_size: int = 128

    def check(self) -> None:
        """Raise :class:`RecipeError` on out-of-range values."""
        _at_least("finetune.epochs", self.epochs, 0.0)
        _positive("finetune.lr", self.lr)
        _at_least("finetune.batch_size", self.batch_size, 1)


@serializable()
@dataclass(frozen=True)
class SearchSection:
    """The joint search of channel widths under a latency/size budget (``pipeline: joint``).

    Attributes:
        budget: ``speedup=5``, ``latency_ms=4``, ``bytes=5MB`` or ``macs=3e8``.
        keep_ratios: Channel keep ratios tried per layer group.
        round_to: Channel roundings tried (multiples of these).
        bits: Weight bit-widths tried (compress applies 8-bit weights only).
        input_size: Resolution latency is measured at (default: the recipe's ``input_size``).
        target: Bench target latency is measured on (``local``, ``ssh://...``, a device name).
        runtime: Runtime latency is measured in (``onnxruntime``, ``ai-edge-litert``).
        threads: Runtime threads.
        runs: Timed runs per measured model.
        max_front: Pareto-front members pruned, exported and measured whole.
        eval_samples: Test images the front members' top-1 (no fine-tune) is measured on.
        groups: Channel groups searched (root names or full-match regexes, e.g. ``layer4.*``);
            the others keep their width (default: every group).
    """

    budget: str = "speedup=2"
    keep_ratios: tuple[float, ...] = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
    round_to: tuple[int, ...] = (8, 16)
    bits: tuple[int, ...] = (8,)
    input_size: int | None = None
    target: str = "local"
    runtime: str = "onnxruntime"
    threads: int = 2
    runs: int = 20
    max_front: int = 6
    eval_samples: int = 500
    groups: tuple[str, ...] | None = None

    def check(self) -> None:
        """Raise :class:`RecipeError` on out-of-range values."""
        parse_budget(self.budget)
        if not self.keep_ratios or any(not 0.0 < r <= 1.0 for r in self.keep_ratios):
            raise RecipeError(f"search.keep_ratios: every ratio must be in (0, 1], got {list(self.keep_ratios)}")
        if not self.round_to or any(r < 1 for r in self.round_to):
            raise RecipeError(f"search.round_to: give channel multiples >= 1, got {list(self.round_to)}")
        if tuple(self.bits) != (8,):
            raise RecipeError(f"search.bits: allowed values: [8] (compress applies 8-bit weights), got {list(self.bits)}")
        if self.input_size is not None:
            _at_least("search.input_size", self.input_size, 8)
        _check_target("search.target", self.target)
        # the search times ONNX / TFLite candidates on the CPU runtimes; TensorRT engines are built by export only
        _registered("search.runtime", [self.runtime], [r for r in _runtime_names() if r not in ("tflite-runtime", "tensorrt")])
        _at_least("search.threads", self.threads, 0)
        _at_least("search.runs", self.runs, 1)
        _at_least("search.max_front", self.max_front, 1)
        _at_least("search.eval_samples", self.eval_samples, 1)
        for i, pattern in enumerate(self.groups or ()):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise RecipeError(f"search.groups[{i}]: {pattern!r} is not a valid regular expression ({exc})") from None


@serializable()
@dataclass(frozen=True)
class QuantizeSection:
    """Quantization of the (pruned) model.

    Attributes:
        scheme: A quantization spec (``int8``, ``w8a16``, ``codebook:4`` ...; grammar of
            :mod:`edgeslim.spec`).
        method: ``ptq`` or ``qat``.
        qat_epochs: QAT epochs (``method: qat``).
        lr: QAT peak learning rate.
        calibration: Calibration images drawn (seeded) from the training set.
        calibrator: Activation range calibrator (``mse``, ``minmax``, ``percentile`` ...).
    """

    scheme: str = "int8"
    method: Mode = Mode.PTQ
    qat_epochs: float = 0.0
    lr: float = 1e-3
    calibration: int = 256
    calibrator: str = "mse"

    def check(self) -> None:
        """Raise :class:`RecipeError` on a bad scheme or out-of-range values."""
        from edgeslim.plugin.quantization.config import QuantConfig

        try:
            QuantConfig.from_spec(self.scheme, calibrator=self.calibrator)
        except ConfigError as exc:
            key = "quantize.calibrator" if "calibrator" in str(exc) else "quantize.scheme"
            raise RecipeError(f"{key}: {exc}") from None
        _at_least("quantize.calibration", self.calibration, 1)
        _at_least("quantize.qat_epochs", self.qat_epochs, 0.0)
        _positive("quantize.lr", self.lr)
        if self.method is Mode.QAT and self.qat_epochs <= 0:
            raise RecipeError("quantize.qat_epochs: method qat needs qat_epochs > 0 (e.g. 0.1)")

    def config(self) -> Any:
        """The :class:`~edgeslim.plugin.quantization.config.QuantConfig` of this section."""
        from edgeslim.plugin.quantization.config import QuantConfig

        return QuantConfig.from_spec(self.scheme, calibrator=self.calibrator)


@serializable()
@dataclass(frozen=True)
class ExportSection:
    """Artefacts written for each variant, each verified in its runtime.

    Attributes:
        formats: Registered exporters (``onnx``, ``tflite``).
        max_drop: Fail when an artefact's top-1 is more than this many points below its float
            ancestor's.
        variants: The variants exported (default all four).
        verify_samples: Test images each artefact is compared with PyTorch on.
    """

    formats: tuple[str, ...] = ("onnx",)
    max_drop: float = 1.0
    variants: tuple[Variant, ...] = tuple(Variant)
    verify_samples: int = 256

    def check(self) -> None:
        """Raise :class:`RecipeError` on unknown formats or out-of-range values."""
        import edgeslim.exporters  # noqa: F401  (registers the built-in exporters)
        from edgeslim.exporters.base import EXPORTERS

        _registered("export.formats", self.formats, EXPORTERS.names())
        _at_least("export.max_drop", self.max_drop, 0.0)
        _at_least("export.verify_samples", self.verify_samples, 1)


@serializable()
@dataclass(frozen=True)
class BenchSection:
    """Latency of every artefact on every target.

    Attributes:
        targets: ``local``, ``ssh://user@host:port`` or names from the devices file.
        runtimes: Registered runtimes to time each artefact in (empty: the default one per file).
        input_size: Resolution latency is measured at; a different one than the model's gets a
            latency-only copy of each artefact (``*.latency-only-HxW.onnx``).
        runs: Timed runs per artefact.
        warmup: Untimed runs first.
        threads: Runtime threads (0: the runtime's default).
    """

    targets: tuple[str, ...] = ("local",)
    runtimes: tuple[str, ...] = ()
    input_size: int | None = None
    runs: int = 20
    warmup: int = 3
    threads: int = 0

    def check(self) -> None:
        """Raise :class:`RecipeError` on unknown targets/runtimes or out-of-range values."""
        for i, target in enumerate(self.targets):
            _check_target(f"bench.targets[{i}]", target)
        _registered("bench.runtimes", self.runtimes, _runtime_names())
        if self.input_size is not None:
            _at_least("bench.input_size", self.input_size, 8)
        _at_least("bench.runs", self.runs, 1)
        _at_least("bench.warmup", self.warmup, 0)
        _at_least("bench.threads", self.threads, 0)


def check_launcher(launcher: Launcher, nproc: int, pipeline: Pipeline, finetune: FinetuneSection, *, pruned: bool,
                   qat: bool) -> None:
    """Raise :class:`RecipeError` when ``launcher: torchrun`` has no fine-tune or QAT step to launch, or ``nproc_per_node < 1``."""
    _at_least("nproc_per_node", nproc, 1)
    if launcher is not Launcher.TORCHRUN:
        return
    if pipeline is Pipeline.ALTERNATING:
        raise RecipeError("launcher: torchrun re-launches the fine-tune and QAT steps; pipeline 'alternating' trains "
                          "inside its own step: use launcher: local")
    if (finetune.epochs <= 0 or not pruned) and not qat:
        raise RecipeError("launcher: torchrun re-launches the fine-tune and QAT steps, which this recipe does not have; "
                          "give a prune section and finetune.epochs > 0, or quantize.method qat, or use launcher: local")


# ---- validation helpers --------------------------------------------------------------------
def _suggest(word: str, allowed: Any) -> str:
    close = difflib.get_close_matches(word, [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _at_least(key: str, value: float, low: float) -> None:
    if value < low:
        raise RecipeError(f"{key}: must be >= {low:g}, got {value!r}")


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise RecipeError(f"{key}: must be > 0, got {value!r}")


def _registered(key: str, values: Any, allowed: list[str]) -> None:
    for v in values:
        if v.lower() not in allowed:
            raise RecipeError(f"{key}: unknown value {v!r}{_suggest(v.lower(), allowed)}; allowed: {', '.join(allowed)}")


def _check_target(key: str, target: str) -> None:
    from edgeslim.device_bench.targets import resolve_device

    try:
        resolve_device(target)
    except ConfigError as exc:
        raise RecipeError(f"{key}: {exc}") from None


def _runtime_names() -> list[str]:
    from edgeslim.device_bench.runtimes import RUNTIMES

    return RUNTIMES.names()


#: The recipe key ``device``'s pattern: where training, calibration and evaluation run (not a bench target).
_TORCH_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_torch_device(value: Any) -> str:
    """The recipe key ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``); whether the GPU exists is checked at run time.

    Raises:
        RecipeError: Any other value (the message names the key and the allowed values).
    """
    text = str(value).strip().lower()
    if not isinstance(value, str) or not _TORCH_DEVICE.match(text):
        raise RecipeError(f"device: {value!r} is not a torch device; allowed: auto, cpu, cuda, cuda:N "
                          "(where training, calibration and evaluation run; bench targets go in bench.targets)")
    return text
