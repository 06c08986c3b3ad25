"""Configuration of the pruning plugin: frozen dataclasses with enums, JSON/YAML round-trip."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Any

from edgeslim.config import codec, from_data, serializable, to_data
from edgeslim.errors import ConfigError
from edgeslim.plugin.pruning import hooks


class Method(str, Enum):
    """What is removed: whole channels, single weights, or both (channels first)."""

    STRUCTURED = "structured"
    UNSTRUCTURED = "unstructured"
    HYBRID = "hybrid"


class TargetKind(str, Enum):
    """What a target measures.

    ``ratio``: fraction of channels removed per group; ``params`` / ``macs``: fraction of the
    original parameters / MACs to keep; ``bytes``: fp32 size to reach (bytes);
    ``sparsity``: fraction of weights zeroed (unstructured).
    """

    RATIO = "ratio"
    PARAMS = "params"
    MACS = "macs"
    BYTES = "bytes"
    SPARSITY = "sparsity"


class Allocation(str, Enum):
    """How a global target is split across layers."""

    UNIFORM = "uniform"  # the same channel ratio in every group
    GLOBAL = "global"  # one global ranking of all channels (torch-pruning global_pruning)
    SENSITIVITY = "sensitivity"  # per-group ratios from a sensitivity analysis


_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


@serializable(text=True)
@dataclass(frozen=True)
class Target:
    """A pruning target, e.g. ``Target.parse("params=0.5")`` or ``Target.parse("bytes=20MB")``."""

    kind: TargetKind = TargetKind.RATIO
    value: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", TargetKind(self.kind))
        v = float(self.value)
        if self.kind is TargetKind.BYTES:
            if v <= 0:
                raise ConfigError(f"bytes target must be positive, got {v}")
        elif not 0.0 < v < 1.0:
            raise ConfigError(f"{self.kind.value} target must be in (0, 1), got {v}")
        object.__setattr__(self, "value", v)

    @classmethod
    def parse(cls, spec: str) -> Target:
        """Parse ``KIND=VALUE`` (``ratio=0.3``, ``params=0.5``, ``macs=0.4``, ``bytes=20MB``, ``sparsity=0.8``)."""
        m = re.fullmatch(r"\s*(\w+)\s*=\s*([0-9.eE+-]+)\s*([A-Za-z]*)\s*", spec)
        if not m:
            raise ConfigError(f"target {spec!r} is not KIND=VALUE, e.g. params=0.5, ratio=0.3, bytes=20MB")
        kind, num, unit = m.group(1).lower(), m.group(2), m.group(3).lower()
        try:
            tkind = TargetKind(kind)
        except ValueError:
            raise ConfigError(
                f"unknown target kind {kind!r} in {spec!r}; use one of {[k.value for k in TargetKind]}"
            ) from None
        if unit and (tkind is not TargetKind.BYTES or unit not in _UNITS):
            raise ConfigError(f"unit {unit!r} in {spec!r} is only allowed for bytes (B, KB, MB, GB, KiB, MiB, GiB)")
        try:
            value = float(num) * _UNITS.get(unit, 1)
        except ValueError:
            raise ConfigError(f"target value {num!r} in {spec!r} is not a number") from None
        return cls(tkind, value)

    def __str__(self) -> str:
        return f"{self.kind.value}={self.value:g}"


@serializable(what="layer rule key")
@dataclass(frozen=True)
class LayerRule:
    """A per-layer override (hybrid / layer-wise configs).

    Args:
        pattern: A module name or a regular expression matched against module names.
        ratio: Channel ratio for the matched structural groups (``None``: keep global).
        sparsity: Unstructured sparsity for the matched layers (``None``: keep global).
        skip: Leave matched layers untouched.
    """

    pattern: str
    ratio: float | None = None
    sparsity: float | None = None
    skip: bool = False

    def __post_init__(self) -> None:
        for name in ("ratio", "sparsity"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= float(v) < 1.0:
                raise ConfigError(f"layer rule {self.pattern!r}: {name} must be in [0, 1), got {v}")
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ConfigError(f"layer rule pattern {self.pattern!r} is not a valid regex: {exc}") from None

    def matches(self, name: str) -> bool:
        """Whether module ``name`` is matched (exact name or full regex match)."""
        return name == self.pattern or re.fullmatch(self.pattern, name) is not None


@serializable(what="transformer key")
@dataclass(frozen=True)
class TransformerConfig:
    """What structured pruning removes in transformer blocks (ViT, Swin, attention, MLPs).

    Args:
        heads: Remove whole attention heads (a head's q/k/v rows and its output-projection
            columns), at the plan's channel ratio; ``head_dim`` is kept, ``num_heads`` drops.
        mlp: Narrow the MLP hidden widths (first Linear's outputs, second Linear's inputs).
        embed_dim: Also narrow the embedding (hidden) width shared by all blocks (patch
            embedding, class token, position embedding, norms, residual stream). ``None`` (the default):
            kept whole unless a size target cannot be met without narrowing it (then it is narrowed, and
            the summary says so under ``embed_dim``); ``False``: always whole; ``True``: always narrowed.
    """

    heads: bool = True
    mlp: bool = True
    embed_dim: bool | None = None

    @classmethod
    def coerce(cls, value: Any) -> TransformerConfig:
        """A config from itself or its dict form; unknown keys are an error."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict) or set(value) - {f.name for f in fields(cls)}:
            raise ConfigError(f"transformer must be a dict with keys heads, mlp, embed_dim (booleans; embed_dim may be null: "
                              f"narrowed only when a target needs it), got {value!r}")
        flags = {k: bool(v) for k, v in value.items() if k != "embed_dim"}
        embed = value.get("embed_dim")
        return cls(**flags, embed_dim=None if embed is None else bool(embed))


def _path(obj: Any) -> str | None:
    """An import path (kept as given when already one); None for an object without one (noted in ``_dropped``)."""
    return obj if obj is None or isinstance(obj, str) else hooks.path_of(obj)


def _dropped(cfg: PruneConfig) -> list[str] | None:
    """What the file cannot hold (a lambda, a Parameter object), to pass again in Python; None when nothing."""
    out = [f"{name}: {fn!r} has no import path (lambda or local); pass it again in Python"
           for name, fn in (("forward_fn", cfg.forward_fn), ("output_transform", cfg.output_transform))
           if fn is not None and _path(fn) is None]
    out += [f"customized_pruners[{k.__name__}]: {v!r} has no import path (lambda or local); pass it again in Python"
            for k, v in cfg.customized_pruners if _path(v) is None]
    out += [f"parameter of shape {tuple(p.shape)} given as an object; give its name to keep it"
            for p in [p for p, _ in cfg.unwrapped_parameters] + list(cfg.ignored_params) if not isinstance(p, str)]
    return out or None


#: Files hold hooks as import paths, pruners as ``{layer path: pruner path}`` and parameters by name only.
_HOOK = codec(_path)
_PRUNERS = codec(lambda pairs: {hooks.path_of(k) or k.__name__: _path(v) for k, v in pairs},
                 lambda data: tuple(data.items()) if isinstance(data, dict) else data)
_NAMED_PAIRS = codec(lambda pairs: [[p, dim] for p, dim in pairs if isinstance(p, str)], tuple)
_NAMED = codec(lambda params: [p for p in params if isinstance(p, str)], tuple)


@serializable(what="prune config key", extras={"_dropped": _dropped})
@dataclass(frozen=True)
class PruneConfig:
    """Everything :func:`edgeslim.prune` needs.

    Args:
        method: Structured, unstructured or hybrid.
        criterion: Registered importance name (``l1``, ``l2``, ``bn_scale``, ``taylor``,
            ``activation``, ``apoz``, ``random``; unstructured: ``magnitude``, ``gradient``).
        target: Structural target (channel ratio, params/MACs fraction, bytes).
        allocation: How the target is split across layers.
        sparsity: Unstructured sparsity (fraction of weights zeroed) for unstructured/hybrid.
        sparsity_scope: ``"global"`` or ``"layer"`` ranking for unstructured pruning.
        ignored_layers: Module names (or regexes) never pruned; ``None`` = the classifier head
            (the last Linear), ``()`` = nothing ignored.
        layer_rules: Per-layer overrides.
        round_to: Keep channel counts multiples of this (hardware-friendly widths).
        max_layer_ratio: No group loses more than this fraction of its channels.
        iterative_steps: Prune in this many steps (importance re-estimated each step).
        tolerance: Relative tolerance of a params/MACs/bytes target (0.02 = ±2 %).
        accept_nearest: When the target cannot be met within tolerance, prune to the nearest
            reachable plan (the result reports ``target_met: false`` and ``nearest``) instead of raising.
        data_batches: Batches of data used by data-driven criteria and sensitivity.
        sensitivity_ratios: Ratios probed by the sensitivity analysis.
        inplace: Prune the caller's model in place instead of a copy.
        transformer: What is pruned in transformer blocks (heads, MLP widths, embedding width).
        forward_fn: ``forward_fn(model, example_inputs) -> output`` for models not called as
            ``model(*inputs)`` (torch-pruning's tracing hook); an import path ``"pkg.mod:fn"`` in files.
        output_transform: Maps the model's output to a tensor (or tuple) to trace from, e.g. a dict of
            heads; an import path in files.
        customized_pruners: ``{layer type: torch-pruning pruning function}`` for your own layer types
            (a ``tp.pruner.BasePruningFunc`` instance or class); import paths on both sides in files.
        unwrapped_parameters: ``(parameter name or Parameter, dim)`` pairs: bare ``nn.Parameter`` objects
            torch-pruning must prune along ``dim`` with the channels they follow.
        ignored_params: Parameters (names or objects) never pruned.
    """

    method: Method = Method.STRUCTURED
    criterion: str = "l2"
    target: Target = field(default_factory=Target)
    allocation: Allocation = Allocation.UNIFORM
    sparsity: float = 0.0
    sparsity_scope: str = "global"
    ignored_layers: tuple[str, ...] | None = None
    layer_rules: tuple[LayerRule, ...] = ()
    round_to: int | None = None
    max_layer_ratio: float = 0.9
    iterative_steps: int = 1
    tolerance: float = 0.02
    accept_nearest: bool = False
    data_batches: int = 4
    sensitivity_ratios: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    inplace: bool = False
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    forward_fn: Callable[..., Any] | None = field(default=None, metadata=_HOOK)
    output_transform: Callable[..., Any] | None = field(default=None, metadata=_HOOK)
    customized_pruners: tuple[tuple[type, Any], ...] = field(default=(), metadata=_PRUNERS)
    unwrapped_parameters: tuple[tuple[Any, int], ...] = field(default=(), metadata=_NAMED_PAIRS)
    ignored_params: tuple[Any, ...] = field(default=(), metadata=_NAMED)

    def __post_init__(self) -> None:
        object.__setattr__(self, "transformer", TransformerConfig.coerce(self.transformer))
        self._coerce_hooks()
        object.__setattr__(self, "method", Method(self.method))
        object.__setattr__(self, "allocation", Allocation(self.allocation))
        if isinstance(self.target, str):
            object.__setattr__(self, "target", Target.parse(self.target))
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.method is not Method.STRUCTURED and self.sparsity <= 0 and self.target.kind is not TargetKind.SPARSITY:
            raise ConfigError(f"method {self.method.value} needs sparsity > 0 (e.g. sparsity=0.5)")
        if self.sparsity_scope not in ("global", "layer"):
            raise ConfigError(f"sparsity_scope must be 'global' or 'layer', got {self.sparsity_scope!r}")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"round_to must be >= 1, got {self.round_to}")
        if not 0.0 < self.max_layer_ratio <= 1.0:
            raise ConfigError(f"max_layer_ratio must be in (0, 1], got {self.max_layer_ratio}")
        if self.iterative_steps < 1:
            raise ConfigError(f"iterative_steps must be >= 1, got {self.iterative_steps}")
        if not 0.0 < self.tolerance < 0.5:
            raise ConfigError(f"tolerance must be in (0, 0.5), got {self.tolerance}")
        if not isinstance(self.accept_nearest, bool):
            raise ConfigError(f"accept_nearest must be true or false, got {self.accept_nearest!r}")
        if any(not 0.0 < r < 1.0 for r in self.sensitivity_ratios):
            raise ConfigError(f"sensitivity_ratios must lie in (0, 1), got {self.sensitivity_ratios}")
        if self.ignored_layers is not None:
            object.__setattr__(self, "ignored_layers", tuple(self.ignored_layers))
        object.__setattr__(self, "layer_rules", tuple(
            r if isinstance(r, LayerRule) else LayerRule(**r) for r in self.layer_rules
        ))
        object.__setattr__(self, "sensitivity_ratios", tuple(float(r) for r in self.sensitivity_ratios))

    def _coerce_hooks(self) -> None:
        for name in ("forward_fn", "output_transform"):
            fn = hooks.resolve(getattr(self, name), name)
            if fn is not None and not callable(fn):
                raise ConfigError(f"prune config {name} must be callable or an import path, got {fn!r}")
            object.__setattr__(self, name, fn)
        pairs = self.customized_pruners
        items = pairs.items() if isinstance(pairs, dict) else pairs
        custom = []
        for key, pruner in items:
            layer = hooks.resolve(key, "customized_pruners")
            if not isinstance(layer, type):
                raise ConfigError(f"customized_pruners keys must be layer types (classes), got {layer!r}")
            custom.append((layer, hooks.pruner_instance(pruner, f"customized_pruners[{layer.__name__}]")))
        object.__setattr__(self, "customized_pruners", tuple(custom))
        unwrapped = []
        for pair in self.unwrapped_parameters:
            if not isinstance(pair, list | tuple) or len(pair) != 2 or not isinstance(pair[1], int):
                raise ConfigError(f"unwrapped_parameters entries are (parameter name, dim) pairs, got {pair!r}")
            unwrapped.append((pair[0], int(pair[1])))
        object.__setattr__(self, "unwrapped_parameters", tuple(unwrapped))
        object.__setattr__(self, "ignored_params", tuple(self.ignored_params))

    def with_(self, **changes: Any) -> PruneConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-able dict (:func:`edgeslim.config.to_data`, untagged): enums as their values, the target as
        ``KIND=VALUE``, hooks as import paths; what has none is listed under ``_dropped``."""
        data: dict[str, Any] = to_data(self, tagged=False)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneConfig:
        """Inverse of :meth:`to_dict`; unknown keys and values of the wrong type are refused (a ConfigError)."""
        return from_data(data, cls)

