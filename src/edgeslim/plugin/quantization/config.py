"""Quantization configs: frozen dataclasses with enums, JSON/YAML round-trip, per-layer overrides.

A :class:`QuantConfig` holds a default :class:`LayerConfig` and ordered overrides keyed by
module-name globs (``"layer4.*"``, ``"fc"``). A layer config says how the weight is quantized
(a registered scheme and its bits) and how activations are quantized (bits and calibrator),
or that the layer stays in float. ``QuantConfig.from_spec("int8")`` parses the CLI spelling.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from edgeslim.config import SerializationError, from_data, serializable, to_data
from edgeslim.errors import SpecError
from edgeslim.plugin.quantization.errors import QuantConfigError, QuantSpecError
from edgeslim.spec import ACTIVATION_SCHEMES, MAX_BITS, MIN_BITS, WEIGHT_SCHEMES, SchemeInfo, parse_spec


class Granularity(str, Enum):
    """Weight quantization granularity."""

    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"


class Mode(str, Enum):
    """Post-training quantization or quantization-aware training."""

    PTQ = "ptq"
    QAT = "qat"


def _check_bits(bits: int, what: str, low: int = MIN_BITS, high: int = MAX_BITS) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or not low <= bits <= high:
        raise QuantConfigError(f"{what} bits must be an integer in {low}..{high}, got {bits!r}")
    return bits


def _scheme(name: str, what: str) -> SchemeInfo:
    """The declared scheme ``name`` of the weight or activation registry (the plugin's schemes registered first)."""
    import edgeslim.plugin.quantization.schemes  # noqa: F401  (registers the built-in schemes)

    registry = WEIGHT_SCHEMES if what == "weight" else ACTIVATION_SCHEMES
    if not isinstance(name, str) or name not in registry.names():
        raise QuantConfigError(f"unknown {what} scheme {name!r}; known: {', '.join(registry.names())}")
    return registry.get(name)


@serializable()
@dataclass(frozen=True)
class WeightSpec:
    """How a weight tensor is quantized.

    Attributes:
        scheme: A registered scheme name (``affine``, ``log2``, ``codebook``, ``pwl`` ...).
        bits: Bits per weight, 2–16.
        granularity: Per output channel (default) or per tensor.
        symmetric: Symmetric range (affine only; the others are symmetric by construction).
        options: Scheme-specific options (e.g. ``{"base": "sqrt2"}`` for log2).
    """

    scheme: str = "affine"
    bits: int = 8
    granularity: Granularity = Granularity.PER_CHANNEL
    symmetric: bool = True
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        info = _scheme(self.scheme, "weight")
        _check_bits(self.bits, f"weight ({self.scheme})", info.min_bits, info.max_bits)
        object.__setattr__(self, "granularity", Granularity(self.granularity))


@serializable()
@dataclass(frozen=True)
class ActivationSpec:
    """How activations are quantized (per tensor).

    Attributes:
        bits: 8 or 16 (any 2–16 is accepted; int8 storage up to 8 bits, int16 above); the scheme's
            declared range otherwise (2–5 for log2).
        calibrator: A registered calibrator name (``minmax``, ``ema``, ``percentile``, ``mse``, ``entropy``);
            affine only (log2 picks its top level by MSE).
        symmetric: Symmetric range around zero instead of an asymmetric min/max range (affine).
        scheme: A registered activation scheme: ``affine`` (uniform) or ``log2`` (power-of-two
            levels, see :mod:`edgeslim.plugin.quantization.log_act`) built in.
    """

    bits: int = 8
    calibrator: str = "mse"
    symmetric: bool = False
    scheme: str = "affine"

    def __post_init__(self) -> None:
        info = _scheme(self.scheme, "activation")
        _check_bits(self.bits, "activation" if self.scheme == "affine" else f"{self.scheme} activation", info.min_bits, info.max_bits)
        from edgeslim.plugin.quantization.calibration import CALIBRATORS

        if self.calibrator not in CALIBRATORS:
            raise QuantConfigError(
                f"unknown calibrator {self.calibrator!r}; known: {', '.join(CALIBRATORS.names())}"
            )


@serializable()
@dataclass(frozen=True)
class LayerConfig:
    """Weight and activation quantization of one layer; ``None`` keeps that part in float."""

    weight: WeightSpec | None = field(default_factory=WeightSpec)
    activation: ActivationSpec | None = field(default_factory=ActivationSpec)

    @property
    def is_float(self) -> bool:
        """True when neither weights nor activations are quantized."""
        return self.weight is None and self.activation is None


FLOAT = LayerConfig(weight=None, activation=None)


@serializable()
@dataclass(frozen=True)
class QuantConfig:
    """A whole-model quantization config.

    Attributes:
        default: The config of every layer no override matches.
        overrides: ``(glob, LayerConfig)`` pairs over module names; the first match wins.
        strict: Raise :class:`UnsupportedOpError` on ops the quantizer cannot handle
            (default: leave them in float and warn, listing them).
        name: A label for reports (e.g. the CLI spec ``"int8"``).
        bias_correction: In PTQ, correct the bias of grid-scheme layers (log2, codebook, pwl) for
            the mean output shift their weight error causes (measured on the calibration data).
    """

    default: LayerConfig = field(default_factory=LayerConfig)
    overrides: tuple[tuple[str, LayerConfig], ...] = ()
    strict: bool = False
    name: str = "custom"
    bias_correction: bool = True

    def for_layer(self, module_name: str) -> LayerConfig:
        """The config of module ``module_name`` (first matching override, else the default)."""
        for pattern, cfg in self.overrides:
            if fnmatch.fnmatchcase(module_name, pattern):
                return cfg
        return self.default

    def with_overrides(self, overrides: dict[str, LayerConfig]) -> QuantConfig:
        """A copy whose overrides are ``overrides`` followed by the existing ones."""
        return replace(self, overrides=tuple(overrides.items()) + self.overrides)

    # ---- construction from the CLI spelling -------------------------------------------------
    @classmethod
    def from_spec(cls, spec: str, *, calibrator: str = "mse", strict: bool = False) -> QuantConfig:
        """Parse ``int8``, ``int16``, ``w8a16``, ``w4a8``, ``log2:4``, ``codebook:4``, ``pwl:4``.

        The grammar is :func:`edgeslim.spec.parse_spec`'s (shared with the exporters). A ``/``
        suffix sets the activations: ``log2:4/log2:5`` (log2 weights and 5-bit log2
        activations), ``codebook:4/a16`` (int16 activations). ``SCHEME:BITS`` quantizes weights
        with the named registered scheme and activations to int8. The config's ``name`` is the
        canonical label (``16x8`` -> ``w8a16``). ``mixed`` is not a fixed config: use
        :func:`~edgeslim.plugin.quantization.mixed_precision.search`; ``fp32``/``fp16``/``dynamic``
        are export-only precisions.

        Raises:
            QuantSpecError: Unknown spelling or scheme, bits out of range, export-only precision
                (a :class:`QuantConfigError` and an :class:`~edgeslim.errors.SpecError`).
        """
        import edgeslim.plugin.quantization.schemes  # noqa: F401  (registers the built-in schemes)

        if spec.strip().lower() == "mixed":
            raise QuantSpecError(
                "'mixed' is chosen by a search, not a fixed config: use "
                "edgeslim.plugin.quantization.mixed_precision.search(..., budget_fraction=1/6).config"
            )
        try:
            p = parse_spec(spec)
        except SpecError as exc:
            raise QuantSpecError(str(exc)) from exc
        if p.export_only or p.weight_scheme is None or p.weight_bits is None or p.activation_bits is None:
            raise QuantSpecError(
                f"{spec!r} is an export-only precision: pass it to edgeslim.export(..., quant={p.label!r}); "
                "edgeslim.quantize takes int8, int16, w8a16, wNaM or SCHEME:BITS (optionally /aBITS or /log2:BITS)"
            )
        weight = WeightSpec(p.weight_scheme, p.weight_bits)
        act = ActivationSpec(p.activation_bits, calibrator, scheme=p.activation_scheme or "affine")
        return cls(default=LayerConfig(weight, act), strict=strict, name=p.label)

    # ---- serialisation (edgeslim.config, the one serializer) ---------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-able data tagged with ``_type``/``_version`` (:func:`edgeslim.config.to_data`)."""
        data: dict[str, Any] = to_data(self)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        """Inverse of :meth:`to_dict`; also reads the untagged shape older edgeslim versions wrote.

        Raises:
            QuantConfigError: Malformed data (the message names the key).
        """
        try:
            return from_data(data, cls)
        except SerializationError as exc:
            raise QuantConfigError(f"malformed quantization config: {exc}") from exc

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> QuantConfig:
        """Parse :meth:`to_json` output."""
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_dict` (for recipes)."""
        import yaml

        return str(yaml.safe_dump(self.to_dict(), sort_keys=True))

    @classmethod
    def from_yaml(cls, text: str) -> QuantConfig:
        """Parse YAML (a recipe's ``quantize:`` section)."""
        import yaml

        return cls.from_dict(yaml.safe_load(text) or {})

    @classmethod
    def from_file(cls, path: str | Path) -> QuantConfig:
        """Load a ``.json`` or ``.yaml``/``.yml`` config file."""
        p = Path(path)
        text = p.read_text()
        return cls.from_json(text) if p.suffix == ".json" else cls.from_yaml(text)


__all__ = [
    "ACTIVATION_SCHEMES",
    "FLOAT",
    "MAX_BITS",
    "MIN_BITS",
    "ActivationSpec",
    "Granularity",
    "LayerConfig",
    "Mode",
    "QuantConfig",
    "WeightSpec",
]
