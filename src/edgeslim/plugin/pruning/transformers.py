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

How attentions are found (:mod:`.heads`, no class names): one forward is traced; an attention is a
module whose forward multiplies tensors and splits a projection's output channels into
``(3, heads, head_dim)`` (fused qkv: torch-pruning removes its heads) or ``(heads, per_head)`` per
projection (separate q/k/v, LeViT's ``(heads, 2·key_dim + val_dim)``: edgeslim removes them after
torch-pruning's step, with the norms over those channels). Removing one head is
tried on a copy of that module first; where its forward cannot follow (head_dim derived from the
embedding width, another qkv layout, channels merged into the batch), the projection stays whole.
After each step every size attribute the forward READ follows (``num_heads``, ``attn_dim``, ``dh``,
``self.shape`` ...), and head-indexed tables (attention biases, temperatures) lose the removed heads.

``nn.MultiheadAttention`` (self-attention) is first replaced by :class:`HeadAttention`, the same
computation with a fused ``qkv`` and a ``proj`` Linear whose inner width is ``num_heads * head_dim``
(saved pruned models record this and reload it, :func:`convert_like`); it is then found like any
other attention. Parameters outside layers (class token, position embedding, LayerScale ``gamma``,
``[C, 1, 1]`` scales) are pruned with their channels along their last non-singleton dimension.
Two adapters (:data:`ADAPTERS`) only refine: MLP widths (``fc1``/``fc2`` or torchvision ``MLP``) and
the unread ``num_heads`` / ``embed_dim`` of torchvision ``EncoderBlock`` / :class:`HeadAttention`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch_pruning as tp
from torch import nn

from edgeslim.plugin.pruning import extraparams
from edgeslim.plugin.pruning.attention import HeadAttention, convert_attention
from edgeslim.plugin.pruning.config import TransformerConfig
from edgeslim.plugin.pruning.groupcheck import stream_producers, unmappable_reasons
from edgeslim.plugin.pruning.heads import (
    STREAM_KEPT,
    Analysis,
    Attention,
    analyse,
    follow_head_layers,
    follow_sizes,
    remove_heads,
    set_sizes,
    size_snapshot,
    slice_out,
)
from edgeslim.plugin.pruning.streamheads import Stream, stream_cut, stream_groups
from edgeslim.plugin.pruning.tokenmix import mixers_pass_through
from edgeslim.registry import Registry

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


class Adapter(Protocol):
    """What a refining adapter knows about one kind of module (see the module docstring)."""

    def matches(self, module: Any) -> bool:
        """Whether this adapter handles ``module``."""

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


class _Base:
    def keep(self, module: Any, config: TransformerConfig) -> list[nn.Module]:
        return []

    def fix(self, module: Any, num_heads: Mapping[nn.Module, int]) -> None:
        return None


class _HeadAttentionAdapter(_Base):
    """:class:`HeadAttention`: ``embed_dim`` (not read by its forward) follows ``proj``."""

    def matches(self, module: Any) -> bool:
        return isinstance(module, HeadAttention)

    def fix(self, module: Any, num_heads: Mapping[nn.Module, int]) -> None:
        module.embed_dim = module.proj.out_features


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
ADAPTERS.register("torchvision_vit")(_TorchvisionViTAdapter())
ADAPTERS.register("mlp")(_MlpAdapter())


def _first_adapter(module: nn.Module) -> tuple[str, Adapter] | None:
    for name, adapter in ADAPTERS.loaded().items():
        if adapter.matches(module):
            return name, adapter
    return None


@dataclass
class TransformerSpec:
    """What torch-pruning needs to prune a model with attention: heads, kept layers, unwrapped parameters.

    Attributes:
        attentions: The attentions whose heads are removed whole (found by :func:`.heads.analyse`).
        tables: Head-indexed parameters torch-pruning must not touch (sliced here with the heads).
        reads: The size attributes each module's forward read (they follow the pruning).
    """

    config: TransformerConfig
    blocks: list[tuple[nn.Module, Adapter]] = field(default_factory=list)
    num_heads: dict[nn.Module, int] = field(default_factory=dict)
    keep: list[nn.Module] = field(default_factory=list)
    unwrapped: list[tuple[nn.Parameter, int]] = field(default_factory=list)
    mlps: list[nn.Linear] = field(default_factory=list)
    attentions: list[Attention] = field(default_factory=list)
    tables: list[nn.Parameter] = field(default_factory=list)
    reads: dict[nn.Module, dict[str, Any]] = field(default_factory=dict)
    entries: list[nn.Module] = field(default_factory=list)
    why: dict[nn.Module, str] = field(default_factory=dict)  # layers of ``keep`` the trace decided to leave whole
    mixers: list[nn.Module] = field(default_factory=list)  # token-mixing layers: channels pass through (tokenmix.py)

    def ratios(
        self, ratio: float, given: Mapping[nn.Module, float] | None = None,
        stream_cut: Mapping[nn.Module, float] | None = None,
    ) -> tuple[dict[nn.Module, float], dict[nn.Module, float]]:
        """Head and MLP ratios for a plan ratio, so that heads + MLPs lose ``ratio`` of their parameters.

        Heads go in whole steps (``floor(ratio * heads)``, at least one kept); the MLP widths make up
        the rest, so the parameter count falls continuously with ``ratio`` (the target search needs that).
        ``given``: per-layer ratios of the plan (sensitivity allocation, layer rules): a qkv layer's
        ratio there sets its heads' ratio, and an MLP listed there keeps its own ratio.
        ``stream_cut``: the fraction of the embedding width that goes, by the first projection of each attention
        whose heads go with it (its heads go by that fraction too) and by the first layer of each MLP reading
        that width: their parameters shrink along it as well, and the MLP widths make up the difference.
        """
        given, stream_cut = given or {}, stream_cut or {}
        heads: dict[nn.Module, float] = {}
        attn_total = attn_removed = 0.0
        for att in self.attentions if self.config.heads else []:
            h = att.heads
            r = given.get(att.layers[0], ratio)
            k = min(math.floor(r * h + 1e-9), h - 1)
            size = float(sum(_numel(m) for m in [*att.layers, att.consumer] if m is not None))
            attn_total += size * r  # q, k, v (fused or separate) and the consumer's columns
            if att.layers[0] in stream_cut:  # both dimensions of q, k, v and the consumer lose that fraction
                cut = stream_cut[att.layers[0]]
                heads.update(dict.fromkeys(att.layers, max(cut - 1e-6, 0.0)))
                attn_removed += size * (1 - (1 - cut) ** 2)
                continue
            heads.update(dict.fromkeys(att.layers, max(k / h - 1e-6, 0.0)))
            attn_removed += size * k / h
        mlps = {m: 2.0 * m.weight.numel() for m in self.mlps if m not in given}
        if not mlps:
            return heads, {}
        goal = attn_total + ratio * sum(mlps.values()) - attn_removed - sum(n * stream_cut.get(m, 0.0)
                                                                             for m, n in mlps.items())
        m_ratio = goal / sum(n * (1 - stream_cut.get(m, 0.0)) for m, n in mlps.items())
        return heads, dict.fromkeys(mlps, min(max(m_ratio, 0.0), 0.95))

    def fix(self, num_heads: Mapping[nn.Module, int]) -> None:
        """Update every attention's and block's size attributes after a pruning step."""
        for att in self.attentions:
            left = int(num_heads.get(att.layers[0], att.heads))
            if left != att.heads:
                set_sizes(att.owner, self.reads.get(att.owner, {}), att.sizes(left))
                follow_head_layers(att, att.owner, self.reads, left)
                att.heads = left
        for module, adapter in reversed(self.blocks):  # inner modules first (a block reads its attention's)
            adapter.fix(module, num_heads)


_OWNED = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding, nn.PReLU, nn.MultiheadAttention, *_NORMS)


def transformer_spec(
    model: nn.Module, config: TransformerConfig, keep: Iterable[nn.Module] = (), *, example_inputs: Any = None,
    forward_fn: Any = None,
) -> TransformerSpec | None:
    """Prepare ``model`` (converting its ``nn.MultiheadAttention``) and describe its attentions and blocks.

    Args:
        model: Modified in place: self-attention ``nn.MultiheadAttention`` become :class:`HeadAttention`.
        config: What may be pruned.
        keep: Layers the caller ignores (never converted).
        example_inputs: Inputs for the one traced forward that finds attentions and size attributes
            (``None``: nothing is traced and only the adapters apply).
        forward_fn: ``forward_fn(model, inputs)`` runs the model for that trace, if given.

    Returns:
        ``None`` without ``example_inputs`` when ``model`` has no :class:`HeadAttention` (plain pruner); with
        them always a spec (its size fix-ups and unmappable-group check serve CNNs too).
    """
    keep = list(keep)
    convert_attention(model, keep)
    found = analyse(model, example_inputs, forward_fn) if example_inputs is not None else Analysis()
    spec = TransformerSpec(config, keep=list(found.keep), tables=list(found.tables), reads=found.reads,
                           entries=[] if config.embed_dim else list(found.entries), why=dict(found.why),
                           mixers=list(found.mixers))
    spec.keep.extend(m for m in found.mixers if m not in spec.keep)  # token counts: never cut
    for att in found.attentions:
        if any(m in keep for m in att.layers):
            continue
        if att.stream and not config.embed_dim:  # its heads go only with the embedding width, kept whole here
            spec.why.update({m: STREAM_KEPT for m in att.layers if m not in spec.keep})
            spec.keep.extend(m for m in att.layers if m not in spec.keep)
            continue
        spec.attentions.append(att)
        if config.heads and not att.direct:
            spec.num_heads.update(dict.fromkeys(att.layers, att.heads))
        else:  # heads kept, or removed by edgeslim after torch-pruning's step: torch-pruning leaves them
            spec.keep.extend(m for m in att.layers if m not in spec.keep)
    for module in model.modules():
        hit = _first_adapter(module)
        if hit is None:
            continue
        name, adapter = hit
        spec.blocks.append((module, adapter))
        spec.keep.extend(m for m in adapter.keep(module, config) if m not in spec.keep)
        first = mlp_first(module) if name == "mlp" and config.mlp else None
        if first is not None and found.transformer:
            spec.mlps.append(first)
    if example_inputs is None and not any(isinstance(m, HeadAttention) for m in model.modules()):
        return None
    if found.transformer and not config.embed_dim:
        spec.keep.extend(m for m in embedding_layers(model) if m not in spec.keep)
    tables = {id(t) for t in spec.tables}
    for module in model.modules():
        if isinstance(module, _OWNED):
            continue
        for p in module.parameters(recurse=False):
            dims = [i for i, s in enumerate(p.shape) if s > 1]
            if dims and id(p) not in tables:  # class token, position embedding, [C, 1, 1] scales: the channel dim
                spec.unwrapped.append((p, dims[-1]))
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
        caller = list(kwargs.pop("ignored_layers", None) or [])
        ignored = caller + spec.keep
        given = kwargs.pop("pruning_ratio_dict", None) or {}
        self.spec, self._ignored = spec, ignored
        self._streams: list[Stream] = []  # set once the graph exists
        head_ratios, ratio_dict = self._ratios(head_ratio, given)
        with mixers_pass_through(spec.mixers):
            super().__init__(
                model, example_inputs, ignored_layers=[*ignored, *spec.tables], num_heads=dict(spec.num_heads),
                prune_num_heads=bool(spec.num_heads), prune_head_dims=False, head_pruning_ratio=head_ratio,
                unwrapped_parameters=list(spec.unwrapped) or None, in_channel_groups={}, out_channel_groups={},
                head_pruning_ratio_dict=head_ratios, pruning_ratio_dict=ratio_dict or None, **kwargs,
            )
        unmappable = unmappable_reasons(self)
        #: Root layers of the groups whose channel indices torch-pruning cannot map (left whole).
        self.unfollowed = list(unmappable)
        #: Layers left whole by edgeslim's own analysis (not by the caller), with why.
        self.left_whole = {**{m: r for m, r in spec.why.items() if m in spec.keep and m not in caller}, **unmappable}
        self.ignored_layers.extend(self.unfollowed + stream_producers(self, spec.entries))
        # what a step changes (torch-pruning counts removed heads down in these): retarget starts from here
        self._initial = (dict(self.num_heads), dict(self.out_channel_groups), dict(self.in_channel_groups))
        self._streams = stream_groups(self, self.spec.attentions, self.spec.mlps)
        if self._streams:  # the stream groups' ratios follow the heads: derived again now that they are known
            self.__dict__.update(self.retarget(head_ratio, given, self.global_pruning).__dict__)

    def _ratios(self, head_ratio: float, given: dict[nn.Module, float]) -> tuple[dict[nn.Module, float],
                                                                                 dict[nn.Module, float]]:
        """Head ratios torch-pruning applies and the per-layer ratio dict (MLPs, then ``given``); sets
        ``direct_ratios`` (heads edgeslim removes itself)."""
        cut = stream_cut(self._streams, head_ratio, given, heads=self.spec.config.heads, kept=self._ignored)
        head_ratios, mlp_ratios = self.spec.ratios(head_ratio, given, cut)
        direct = {m for a in self.spec.attentions if a.direct for m in a.layers}
        self.direct_ratios = {m: r for m, r in head_ratios.items() if m in direct}
        head_ratios = {m: r for m, r in head_ratios.items() if m not in direct}
        ratio_dict = {**{m: r for m, r in mlp_ratios.items() if m not in self._ignored}, **given}
        for atts, outs, _ in self._streams:  # k heads of every attention on a stream go with k·head_dim channels
            share = cut.get(atts[0].layers[0], 0.0)
            ratio_dict.update(dict.fromkeys(outs, max(share - 0.25 / atts[0].stream, 0.0)))  # exactly k·head_dim
        return head_ratios, ratio_dict

    def retarget(self, pruning_ratio: float, pruning_ratio_dict: dict[nn.Module, float] | None,
                 global_pruning: bool) -> TransformerPruner:
        """A pruner like this one (same graph, ignored layers, groups and checks; nothing pruned yet) for other
        ratios: what torch-pruning's constructor derives from the ratios is derived again, the rest is shared.
        Many plans of one model are evaluated this way without building a pruner per plan."""
        new = copy.copy(self)
        head_ratios, ratio_dict = new._ratios(pruning_ratio, dict(pruning_ratio_dict or {}))
        sched, steps = new.iterative_pruning_ratio_scheduler, new.iterative_steps
        new.pruning_ratio, new.head_pruning_ratio, new.global_pruning = pruning_ratio, pruning_ratio, global_pruning
        new.per_step_pruning_ratio = sched(pruning_ratio, steps)
        new.per_step_head_pruning_ratio = sched(pruning_ratio, steps)
        new.current_step, new._layer_to_scope, new._scope_initial_channels = 0, {}, {}
        new.num_heads, new.out_channel_groups, new.in_channel_groups = (dict(d) for d in self._initial)
        prunable = tuple(tp.ops.type2class(t) for t in new.DG.REGISTERED_PRUNERS)
        new.pruning_ratio_dict = {}
        for i, (module, ratio) in enumerate(ratio_dict.items()):  # torch-pruning's scopes (one module per key)
            local = 0
            for sub in module.modules():
                if isinstance(sub, prunable):
                    if isinstance(sub, nn.Module):
                        if not global_pruning:
                            new._layer_to_scope[sub] = (f"_User_Defined_Scope_{i}_{local}", [module])
                            local += 1
                        else:
                            new._layer_to_scope[sub] = (f"_User_Defined_Scope_{i}", [module])
                    new.pruning_ratio_dict[sub] = sched(ratio, steps)
        new.head_pruning_ratio_dict = {sub: sched(ratio, steps) for module, ratio in head_ratios.items()
                                       for sub in module.modules() if isinstance(sub, prunable)}
        return new

    def step(self, interactive: bool = False) -> Any:
        """One pruning step; then head tables lose the removed heads and every read size attribute follows.

        With ``interactive=True`` the groups are yielded for the caller to prune (``group.prune()``), as in
        torch-pruning; the fix-ups run when the caller has taken the last group.
        """
        if interactive:
            return self._groups()
        for group in self._groups():
            group.prune()
        return None

    def _groups(self) -> Iterator[Any]:
        before = size_snapshot(self.spec.reads)
        by_layer = {m: att for att in self.spec.attentions for m in att.layers}
        removed: dict[int, set[int]] = {}
        for group in super().step(interactive=True) or ():
            for dep, idxs in group:
                att = by_layer.get(dep.target.module)
                if att is not None and self.DG.is_out_channel_pruning_fn(dep.handler):
                    removed.setdefault(id(att), set()).update(att.head_of(int(i)) for i in idxs)
            todo = extraparams.pending(group, self.DG.is_out_channel_pruning_fn)
            yield group
            extraparams.cut(todo)  # a layer's own per-channel parameters beside weight/bias (NFNet gain)
        direct = {id(a): d for a, d in self.direct_heads()} if self.current_step == 1 else {}  # scored first
        for att in self.spec.attentions:
            if att.direct and direct.get(id(att)):
                remove_heads(att, att.owner, direct[id(att)])
                self.num_heads.update(dict.fromkeys(att.layers, att.heads - len(direct[id(att)])))
            elif not att.direct:
                _slice_tables(att, sorted(removed.get(id(att), set())))
        self.spec.fix(self.num_heads)
        follow_sizes(before, self.spec.reads, skip={a.owner for a in self.spec.attentions})

    def direct_heads(self) -> list[tuple[Attention, list[int]]]:
        """The heads edgeslim removes itself from each attention torch-pruning cannot cut (least important first)."""
        out = []
        for att in self.spec.attentions:
            ratio = self.direct_ratios.get(att.layers[0], 0.0)
            if att.direct and ratio > 0:
                k = min(math.ceil(ratio * att.heads), att.heads - 1)
                out.append((att, sorted(int(i) for i in torch.topk(_head_scores(att), k, largest=False).indices)))
        return out


def _numel(m: Any) -> int:
    return int(m.weight.numel())


def _head_scores(att: Attention) -> torch.Tensor:
    """L2 norm of each head's projection rows and consumer columns."""
    score = torch.zeros(att.heads)
    for h in range(att.heads):
        for layer in att.layers:
            weight: Any = layer.weight
            score[h] += weight.detach()[att.rows(layer, [h])].pow(2).sum()
        if att.consumer is not None:
            w: Any = att.consumer.weight
            score[h] += w.detach()[:, h * att.head_dim:(h + 1) * att.head_dim].pow(2).sum()
    return score.sqrt()


def _slice_tables(att: Attention, heads: list[int]) -> None:
    if not heads:
        return
    for name, dim in att.tables:
        t = getattr(att.owner, name)
        idx = torch.tensor([i for i in range(t.shape[dim]) if i not in heads], device=t.device)
        with torch.no_grad():
            setattr(att.owner, name, nn.Parameter(t.index_select(dim, idx), requires_grad=t.requires_grad))
    with torch.no_grad():
        for name in att.head_layers:
            slice_out(att.owner.get_submodule(name), [i for i in range(att.heads) if i not in heads])


def heads_left(ratio: float, heads: int) -> int:
    """Heads kept by torch-pruning's local head pruning at ``ratio`` (it removes ``ceil(ratio * heads)``)."""
    return heads - math.ceil(ratio * heads)
