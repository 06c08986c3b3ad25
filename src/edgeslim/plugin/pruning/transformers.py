"""Structured pruning of transformer blocks: whole attention heads and MLP hidden widths.

What ``params=0.5`` removes in a ViT-style model (see :class:`~edgeslim.plugin.pruning.config.TransformerConfig`):

- **heads** — whole heads: a head's q, k and v rows of the qkv projection and the matching
  columns of the output projection. ``head_dim`` never changes; ``num_heads`` drops. Heads go
  at the plan's channel ratio (``ratio=0.5`` of 6 heads leaves 3).
- **MLP widths** — the hidden width of each block's MLP (first Linear's rows, second's columns).
- **the embedding (hidden) width** — only with ``embed_dim=True``: the residual stream shared by
  the patch embedding, class token, position embedding, every LayerNorm and block output.
  Off by default (most parameters of a small ViT sit in heads and MLPs, and exporters and
  fixed-size code such as ``VisionTransformer._process_input`` depend on it); when on,
  ``VisionTransformer.hidden_dim`` follows.

How blocks are recognised (one adapter each, registered by name in :data:`ADAPTERS`):

- ``nn.MultiheadAttention`` (self-attention: torchvision ``vit_*``, hand-written blocks): its
  inner width is tied to ``embed_dim``, so it is first replaced by :class:`HeadAttention`, the
  same computation (same weights, same call signature) with a fused ``qkv`` and a ``proj``
  Linear whose inner width is ``num_heads * head_dim``. Saved pruned models record this and
  reload it (:func:`convert_like`).
- blocks with an int ``num_heads`` and a fused ``qkv`` Linear (timm-style), or separate
  ``q``/``k``/``v`` (or ``q_proj``/``k_proj``/``v_proj``) Linears: their forward must reshape
  by ``num_heads`` / ``head_dim`` and merge heads with ``reshape(B, N, -1)``; ``num_heads``
  (and ``head_dim`` when the block has one) are updated after pruning.
- torchvision ``swin_*`` (``ShiftedWindowAttention``): its functional forward derives
  ``head_dim`` from the embedding width, so its heads are kept; MLP widths are pruned.
- torchvision ``VisionTransformer`` / ``Encoder`` / ``EncoderBlock``: ``class_token`` and
  ``pos_embedding`` are declared to torch-pruning; ``hidden_dim`` and ``num_heads`` follow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch_pruning as tp
from torch import nn

from edgeslim.plugin.pruning.attention import HeadAttention, convert_attention
from edgeslim.plugin.pruning.config import TransformerConfig
from edgeslim.registry import Registry

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


class Adapter(Protocol):
    """How one kind of transformer module is pruned (see the module docstring)."""

    def matches(self, module: Any) -> bool:
        """Whether this adapter handles ``module``."""

    def heads(self, module: Any) -> dict[nn.Module, int]:
        """The qkv Linear(s) of ``module`` and their number of heads ({} if its heads cannot be pruned)."""

    def keep(self, module: Any, config: TransformerConfig) -> list[nn.Module]:
        """Layers that must not lose output channels under ``config``."""

    def fix(self, module: Any, num_heads: Mapping[nn.Module, int]) -> None:
        """Update ``module``'s size attributes after pruning (``num_heads``: heads left per qkv layer)."""


ADAPTERS: Registry[Adapter] = Registry("transformer adapter")


def _linear(module: nn.Module, *names: str) -> nn.Linear | None:
    for n in names:
        m = getattr(module, n, None)
        if isinstance(m, nn.Linear):
            return m
    return None


def _qkv_triplet(module: nn.Module) -> list[nn.Linear] | None:
    for names in (("q", "k", "v"), ("q_proj", "k_proj", "v_proj"), ("query", "key", "value")):
        found = [_linear(module, n) for n in names]
        if all(found):
            return [f for f in found if f is not None]
    return None


class _Base:
    def heads(self, module: Any) -> dict[nn.Module, int]:
        return {}

    def keep(self, module: Any, config: TransformerConfig) -> list[nn.Module]:
        return []

    def fix(self, module: Any, num_heads: Mapping[nn.Module, int]) -> None:
        return None


class _HeadAttentionAdapter(_Base):
    def matches(self, module: Any) -> bool:
        return isinstance(module, HeadAttention)

    def heads(self, module: Any) -> dict[nn.Module, int]:
        return {module.qkv: int(module.num_heads)}

    def keep(self, module: Any, config: TransformerConfig) -> list[nn.Module]:
        return [] if config.heads else [module.qkv]

    def fix(self, module: Any, num_heads: Mapping[nn.Module, int]) -> None:
        module.num_heads = module.qkv.out_features // (3 * module.head_dim)
        module.embed_dim = module.proj.out_features


class _SwinAdapter(_Base):
    """torchvision swin: heads kept (its functional attention derives head_dim from the width)."""

    def matches(self, module: Any) -> bool:
        from torchvision.models.swin_transformer import ShiftedWindowAttention

        return isinstance(module, ShiftedWindowAttention)

    def keep(self, module: Any, config: TransformerConfig) -> list[nn.Module]:
        return [module.qkv]


class _FusedQkvAdapter(_Base):
    """A block with an int ``num_heads`` and a fused ``qkv`` Linear (timm style)."""

    def matches(self, module: Any) -> bool:
        return isinstance(getattr(module, "num_heads", None), int) and _linear(module, "qkv") is not None

    def heads(self, module: Any) -> dict[nn.Module, int]:
        return {module.qkv: int(module.num_heads)}

    def keep(self, module: Any, config: TransformerConfig) -> list[nn.Module]:
        return [] if config.heads else [module.qkv]

    def fix(self, module: Any, num_heads: Mapping[nn.Module, int]) -> None:
        module.num_heads = int(num_heads.get(module.qkv, module.num_heads))


class _SeparateQkvAdapter(_Base):
    """A block with an int ``num_heads`` and separate q/k/v Linears."""

    def matches(self, module: Any) -> bool:
        return isinstance(getattr(module, "num_heads", None), int) and _qkv_triplet(module) is not None

    def heads(self, module: Any) -> dict[nn.Module, int]:
        return dict.fromkeys(_qkv_triplet(module) or [], int(module.num_heads))

    def keep(self, module: Any, config: TransformerConfig) -> list[nn.Module]:
        return [] if config.heads else list(_qkv_triplet(module) or [])

    def fix(self, module: Any, num_heads: Mapping[nn.Module, int]) -> None:
        q = (_qkv_triplet(module) or [])[:1]
        module.num_heads = int(num_heads.get(q[0], module.num_heads)) if q else module.num_heads


class _TorchvisionViTAdapter(_Base):
    """torchvision ``VisionTransformer`` / ``EncoderBlock``: ``hidden_dim`` and ``num_heads`` follow the layers."""

    def matches(self, module: Any) -> bool:
        from torchvision.models.vision_transformer import EncoderBlock, VisionTransformer

        return isinstance(module, VisionTransformer | EncoderBlock)

    def fix(self, module: Any, num_heads: Mapping[nn.Module, int]) -> None:
        if hasattr(module, "conv_proj"):
            module.hidden_dim = int(module.conv_proj.out_channels)
        elif hasattr(module, "self_attention"):
            module.num_heads = int(module.self_attention.num_heads)


class _MlpAdapter(_Base):
    """MLP blocks (torchvision ``MLPBlock``/``ops.MLP``, or ``fc1``/``fc2`` children): keep the width when ``mlp=False``."""

    def matches(self, module: Any) -> bool:
        from torchvision.ops import MLP

        return isinstance(module, MLP) or (_linear(module, "fc1") is not None and _linear(module, "fc2") is not None)

    def keep(self, module: Any, config: TransformerConfig) -> list[nn.Module]:
        first = mlp_first(module)
        return [first] if first is not None and not config.mlp else []


def mlp_first(module: nn.Module) -> nn.Linear | None:
    """The first Linear of an MLP block (its hidden width is that layer's outputs)."""
    return _linear(module, "fc1") or next((m for m in module.modules() if isinstance(m, nn.Linear)), None)


ADAPTERS.register("head_attention")(_HeadAttentionAdapter())
ADAPTERS.register("swin_attention")(_SwinAdapter())
ADAPTERS.register("fused_qkv")(_FusedQkvAdapter())
ADAPTERS.register("separate_qkv")(_SeparateQkvAdapter())
ADAPTERS.register("torchvision_vit")(_TorchvisionViTAdapter())
ADAPTERS.register("mlp")(_MlpAdapter())

#: Adapters whose presence makes a model a transformer for edgeslim (the others only refine).
_ATTENTION_ADAPTERS = ("head_attention", "swin_attention", "fused_qkv", "separate_qkv")


def _first_adapter(module: nn.Module) -> tuple[str, Adapter] | None:
    for name, adapter in ADAPTERS.loaded().items():
        if adapter.matches(module):
            return name, adapter
    return None


@dataclass
class TransformerSpec:
    """What torch-pruning needs to prune a transformer: heads, kept layers, unwrapped parameters."""

    config: TransformerConfig
    blocks: list[tuple[nn.Module, Adapter]] = field(default_factory=list)
    num_heads: dict[nn.Module, int] = field(default_factory=dict)
    keep: list[nn.Module] = field(default_factory=list)
    unwrapped: list[tuple[nn.Parameter, int]] = field(default_factory=list)
    mlps: list[nn.Linear] = field(default_factory=list)

    def ratios(
        self, ratio: float, given: Mapping[nn.Module, float] | None = None
    ) -> tuple[dict[nn.Module, float], dict[nn.Module, float]]:
        """Head and MLP ratios for a plan ratio, so that heads + MLPs lose ``ratio`` of their parameters.

        Heads go in whole steps (``floor(ratio * heads)``, at least one kept); the MLP widths make up
        the rest, so the parameter count falls continuously with ``ratio`` (the target search needs that).
        ``given``: per-layer ratios of the plan (sensitivity allocation, layer rules): a qkv layer's
        ratio there sets its heads' ratio, and an MLP listed there keeps its own ratio.
        """
        given = given or {}
        heads: dict[nn.Module, float] = {}
        attn_total = attn_removed = 0.0
        qkv: Any
        for qkv, h in self.num_heads.items():
            r = given.get(qkv, ratio)
            k = min(math.floor(r * h + 1e-9), h - 1)
            heads[qkv] = max(k / h - 1e-6, 0.0)
            size = qkv.weight.numel() * 4 / 3  # q, k, v (fused or each of three) + their share of the output projection
            attn_total += size * r
            attn_removed += size * k / h
        mlp_total = sum(2.0 * m.weight.numel() for m in self.mlps if m not in given)
        if not mlp_total:
            return heads, {}
        m_ratio = ratio + (attn_total - attn_removed) / mlp_total
        return heads, dict.fromkeys((m for m in self.mlps if m not in given), min(max(m_ratio, 0.0), 0.95))

    def fix(self, num_heads: Mapping[nn.Module, int]) -> None:
        """Update every block's size attributes after a pruning step."""
        for module, adapter in reversed(self.blocks):  # inner modules first (a block reads its attention's)
            adapter.fix(module, num_heads)


_OWNED = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding, nn.PReLU, nn.MultiheadAttention, *_NORMS)


def transformer_spec(model: nn.Module, config: TransformerConfig, keep: Iterable[nn.Module] = ()) -> TransformerSpec | None:
    """Prepare ``model`` (converting its ``nn.MultiheadAttention``) and describe its transformer blocks.

    Args:
        model: Modified in place: self-attention ``nn.MultiheadAttention`` become :class:`HeadAttention`.
        config: What may be pruned.
        keep: Layers the caller ignores (never converted).

    Returns:
        ``None`` if ``model`` has no attention block edgeslim recognises (plain CNN path).
    """
    convert_attention(model, keep)
    spec = TransformerSpec(config)
    found = False
    for module in model.modules():
        hit = _first_adapter(module)
        if hit is None:
            continue
        name, adapter = hit
        found = found or name in _ATTENTION_ADAPTERS
        spec.blocks.append((module, adapter))
        if config.heads:
            spec.num_heads.update(adapter.heads(module))
        spec.keep.extend(m for m in adapter.keep(module, config) if m not in spec.keep)
        first = mlp_first(module) if name == "mlp" and config.mlp else None
        if first is not None:
            spec.mlps.append(first)
    if not found:
        return None
    if not config.embed_dim:
        spec.keep.extend(m for m in embedding_layers(model) if m not in spec.keep)
    for module in model.modules():
        if isinstance(module, _OWNED):
            continue
        for p in module.parameters(recurse=False):
            if p.dim() >= 1:  # class token, position embedding, relative position bias ...: the last dim is the width
                spec.unwrapped.append((p, p.dim() - 1))
    return spec


def embedding_layers(model: nn.Module) -> list[nn.Module]:
    """One producer of each embedding (residual) width: the first conv/linear (patch embedding) and every
    patch-merging ``reduction`` (swin). torch-pruning skips a group when any of its layers is ignored, so
    keeping these keeps the whole residual stream (norms, class token, position embedding, block outputs)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)), None)
    out: list[nn.Module] = [first] if first is not None else []
    reductions = [getattr(m, "reduction", None) for m in model.modules()]
    out += [r for r in reductions if isinstance(r, nn.Linear)]
    return out


class TransformerPruner(tp.pruner.BasePruner):
    """torch-pruning's pruner with whole-head pruning and the size-attribute fix-ups of :class:`TransformerSpec`.

    Args:
        model: The model (already prepared by :func:`transformer_spec`).
        example_inputs: Inputs for tracing.
        spec: The transformer description.
        head_ratio: Fraction of each attention's heads to remove.
        **kwargs: Passed to ``tp.pruner.BasePruner`` (importance, pruning_ratio, ignored_layers ...).
    """

    def __init__(
        self, model: nn.Module, example_inputs: Any, *, spec: TransformerSpec, head_ratio: float, **kwargs: Any
    ) -> None:
        ignored = list(kwargs.pop("ignored_layers", None) or []) + spec.keep
        given = kwargs.pop("pruning_ratio_dict", None) or {}
        head_ratios, mlp_ratios = spec.ratios(head_ratio, given)
        ratio_dict = {**{m: r for m, r in mlp_ratios.items() if m not in ignored}, **given}
        super().__init__(
            model, example_inputs, ignored_layers=ignored, num_heads=dict(spec.num_heads),
            prune_num_heads=bool(spec.num_heads), prune_head_dims=False, head_pruning_ratio=head_ratio,
            unwrapped_parameters=list(spec.unwrapped) or None, in_channel_groups={}, out_channel_groups={},
            head_pruning_ratio_dict=head_ratios, pruning_ratio_dict=ratio_dict or None, **kwargs,
        )
        self.spec = spec

    def step(self, interactive: bool = False) -> Any:
        """One pruning step, then every block's ``num_heads`` / ``hidden_dim`` / ``embed_dim`` is updated."""
        if interactive:
            raise ValueError("interactive pruning of transformer blocks is not supported (the size attributes "
                             "are fixed after each step); call step()")
        super().step()
        self.spec.fix(self.num_heads)
        return None


def heads_left(ratio: float, heads: int) -> int:
    """Heads kept by torch-pruning's local head pruning at ``ratio`` (it removes ``ceil(ratio * heads)``)."""
    return heads - math.ceil(ratio * heads)
