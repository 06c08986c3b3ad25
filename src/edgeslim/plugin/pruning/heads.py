"""Attention heads found from what the forward does (see :mod:`.headtrace`), and the sizes that follow them.

An attention is a module whose forward multiplies tensors (``@``, ``einsum``, SDPA) and splits a
projection's output channels into heads:

- one layer split ``(3, heads, head_dim)`` (fused qkv), or
- three or more layers each split ``(heads, head_dim)`` the same way (separate q, k, v).

Those are the layouts torch-pruning's head pruning removes whole heads from. Removing one head is
first tried on a copy of the attention module alone (its q/k/v rows, the consuming layer's columns,
its head-indexed tables sliced, its size attributes updated): when that copy's forward fails or
changes its output shape (the forward derives ``head_dim`` from the embedding width, as torchvision's
swin or an XCA does), or the layout is another one (LeViT's ``(heads, 2·key_dim + val_dim)``),
the projection is left whole. Layers whose channels the forward merges into the batch dimension
are left whole too.

Size attributes follow from the values the forward READ (:attr:`.headtrace.Trace.reads`): in an
attention, a value equal to ``heads`` becomes the new head count and one equal to
``heads·head_dim`` (or ``3·heads·head_dim``) the new width; elsewhere, a value equal to a size of the
module's own parameters or direct layers that changed one way only follows it (``self.shape =
(C, 1, 1)`` of a scale).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgeslim.models import clone
from edgeslim.plugin.pruning.headtrace import LAYERS, Trace, trace
from edgeslim.plugin.pruning.streamheads import narrow, narrow_stream, slice_in, slice_out, stream_layers

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


@dataclass
class Attention:
    """One attention whose heads can be removed whole.

    Attributes:
        owner: The module whose forward splits the heads.
        layers: Its q/k/v projection(s) (one fused layer, or separate ones).
        heads: Number of heads.
        head_dim: Width of one head at the consumer (the merged output).
        consumer: The layer that takes the merged heads (its input columns go with them).
        tables: Head-indexed parameters of ``owner`` (attribute name, head dimension).
        layout: Per projection, ``(parts, per_head)``: its channels are ``(parts, heads, per_head)``.
        direct: Removed by edgeslim after torch-pruning's step (separate q/k/v, whose einsum torch-pruning
            does not always follow, or a layout it does not know, e.g. LeViT's ``(heads, 2·key_dim + val_dim)``);
            else (one fused ``(3, heads, head_dim)`` qkv) by torch-pruning.
        followers: Norm layers over a projection's output channels (sliced with it when ``direct``).
        widths: Per-head widths an attribute may multiply by the head count (``key_dim``, ``val_dim`` ...).
        head_layers: Layers inside ``owner`` (names relative to it) with one output per head, e.g. the MLP
            that computes a per-head position bias (timm RelPosMlp, Swin v2's cpb_mlp): they lose the removed
            heads' outputs, and the size attributes of the modules between them and ``owner`` follow.
        stream: When its heads can only go with its input (embedding) width (see :mod:`.streamheads`): that
            width, else 0. Each head removed takes ``head_dim`` channels of that stream with it.
        inner: With ``stream``: layers inside ``owner`` (relative names) whose output has the stream width.
    """

    owner: nn.Module
    layers: list[nn.Module]
    heads: int
    head_dim: int
    consumer: nn.Module | None = None
    tables: list[tuple[str, int]] = field(default_factory=list)
    layout: dict[nn.Module, tuple[int, int]] = field(default_factory=dict)
    direct: bool = False
    followers: list[nn.Module] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    head_layers: list[str] = field(default_factory=list)
    stream: int = 0
    inner: list[str] = field(default_factory=list)

    @property
    def fused(self) -> bool:
        """One qkv layer (layout ``(3, heads, head_dim)``)."""
        return len(self.layers) == 1

    def head_of(self, channel: int, layer: nn.Module | None = None) -> int:
        """The head an output channel of a projection belongs to."""
        per = self.layout.get(layer, (1, self.head_dim))[1] if layer is not None else self.head_dim
        return (channel // per) % self.heads

    def rows(self, layer: nn.Module, heads: list[int]) -> list[int]:
        """Output channels of ``layer`` that belong to ``heads``."""
        parts, per = self.layout.get(layer, (3 if self.fused else 1, self.head_dim))
        return [p * self.heads * per + h * per + j for p in range(parts) for h in heads for j in range(per)]

    def sizes(self, heads_left: int) -> dict[int, int]:
        """Old -> new values of the size attributes when ``heads_left`` heads stay."""
        h = self.heads
        structural = {self.head_dim, *(per for _, per in self.layout.values())}
        out = {h: heads_left}
        for w in sorted(structural | set(self.widths)):
            for parts in (1, 3):
                if parts * h * w not in structural:  # a per-head width is never a total
                    out.setdefault(parts * h * w, parts * heads_left * w)
        return {k: v for k, v in out.items() if k != v}


def remove_heads(att: Attention, owner: nn.Module, heads: list[int]) -> None:
    """Remove ``heads`` from ``owner`` (``att.owner`` or a copy of it): projection rows and their norms,
    consumer columns, head tables; then clear caches (``owner.train(owner.training)``)."""
    if not heads:
        return
    names = {m: n for n, m in att.owner.named_modules()}
    kept_heads = [i for i in range(att.heads) if i not in heads]
    sliced: set[nn.Module] = set()
    with torch.no_grad():
        for layer in att.layers:
            drop, width = set(att.rows(layer, heads)), _width(layer, out=True)
            keep = [i for i in range(width) if i not in drop]
            for norm in att.followers:
                if norm in names and norm not in sliced and _norm_width(norm) == width:
                    slice_out(owner.get_submodule(names[norm]), keep)
                    sliced.add(norm)
            slice_out(owner.get_submodule(names[layer]), keep)
        if att.consumer is not None:
            c: Any = owner.get_submodule(names[att.consumer])
            d = att.head_dim
            slice_in(c, [h * d + j for h in kept_heads for j in range(d)])
        for name, dim in att.tables:
            t = getattr(owner, name)
            idx = torch.tensor(kept_heads, device=t.device)
            setattr(owner, name, nn.Parameter(t.index_select(dim, idx).detach(), requires_grad=t.requires_grad))
        for name in att.head_layers:
            slice_out(owner.get_submodule(name), kept_heads)
    owner.train(owner.training)  # modules that cache per-head tables (LeViT) clear them here


def _norm_width(norm: Any) -> int:
    w = getattr(norm, "weight", None)
    return int(w.shape[0]) if isinstance(w, torch.Tensor) else -1


@dataclass
class Analysis:
    """What :func:`analyse` found in a model."""

    attentions: list[Attention] = field(default_factory=list)
    keep: list[nn.Module] = field(default_factory=list)
    tables: list[nn.Parameter] = field(default_factory=list)
    reads: dict[nn.Module, dict[str, Any]] = field(default_factory=dict)
    transformer: bool = False  # some module splits channels into heads and multiplies them (attention)
    entries: list[nn.Module] = field(default_factory=list)  # the first layer each attention runs (its input width)
    why: dict[nn.Module, str] = field(default_factory=dict)  # why each layer of ``keep`` is left whole
    mixers: list[nn.Module] = field(default_factory=list)  # token-mixing layers (see tokenmix.py)


def _width(layer: Any, out: bool) -> int:
    if isinstance(layer, nn.Linear):
        return int(layer.out_features if out else layer.in_features)
    return int(layer.out_channels if out else layer.in_channels)


def _head_tables(owner: nn.Module, heads: int) -> list[tuple[str, int]]:
    out = []
    for name, p in owner._parameters.items():
        if p is not None and heads in p.shape:
            out.append((name, list(p.shape).index(heads)))
    return out


def _candidates(tr: Trace) -> tuple[list[Attention], list[Any]]:
    """Attentions whose heads can be cut, and the layers/tables of other head splits (left whole)."""
    by_owner: dict[nn.Module, list[Any]] = {}
    for s in tr.splits:
        if s.owner in tr.attention_owners:
            by_owner.setdefault(s.owner, []).append(s)
    found: list[Attention] = []
    other: list[Any] = []
    for owner, splits in by_owner.items():
        att = _attention(owner, splits, tr)
        if att is None:
            other += list(dict.fromkeys(s.layer for s in splits))
            heads = {s.factors[1] if len(s.factors) == 3 else s.factors[0] for s in splits}
            for h in heads:
                other += [owner._parameters[name] for name, _ in _head_tables(owner, h)]
            continue
        found.append(att)
    return found, other


def _attention(owner: nn.Module, splits: list[Any], tr: Trace) -> Attention | None:
    layers = list(dict.fromkeys(s.layer for s in splits))
    if not all(isinstance(m, nn.Linear) for m in layers):
        return None
    layout: dict[nn.Module, tuple[int, int]] = {}
    heads = set()
    for s in splits:
        f = s.factors
        if len(f) == 3 and f[0] in (2, 3):
            parts, h, per = f
        elif len(f) == 2:
            parts, (h, per) = 1, f
        else:
            return None
        if layout.get(s.layer, (parts, per)) != (parts, per):
            return None
        layout[s.layer] = (parts, per)
        heads.add(h)
    if len(heads) != 1:
        return None
    (h,) = heads
    calls = tr.calls.get(owner, [])
    last = max((i for i, (m, _) in enumerate(calls) if m in layers), default=-1)
    producers = _head_producers(owner, h, layers)  # a per-head bias MLP is not where the heads merge
    consumer = next((m for m, w in calls[last + 1:] if w % h == 0 and m not in layers and m not in producers), None)
    if consumer is None:
        return None
    d = _width(consumer, out=False) // h
    tp_fused = len(layers) == 1 and layout[layers[0]] == (3, d)  # torch-pruning follows it (einsum q/k/v: not always)
    ints = {v for v in tr.reads.get(owner, {}).values() if isinstance(v, int) and not isinstance(v, bool) and v > 1}
    widths = sorted(v for v in ints if v != h and v * h in ints)  # key_dim where key_dim * heads is read too
    att = Attention(owner, layers, h, d, consumer, _head_tables(owner, h), layout,
                    direct=not tp_fused, widths=widths)
    att.head_layers = [n for n, m in owner.named_modules() if n and isinstance(m, LAYERS) and m not in layers
                       and m is not consumer and _width(m, out=True) == h]
    att.direct = att.direct or bool(att.head_layers)  # torch-pruning would couple the heads with that layer's rows
    att.followers = [n for m in layers for n in tr.followers.get(m, [])]
    if att.direct and any(not isinstance(n, _NORMS) or isinstance(n, nn.GroupNorm) for n in att.followers):
        return None
    return att


def _head_producers(owner: nn.Module, h: int, layers: list[nn.Module]) -> set[nn.Module]:
    """Layers of ``owner``'s children that hold a layer with one output per head (a per-head bias MLP)."""
    out: set[nn.Module] = set()
    for child in owner.children():
        inner = [m for m in child.modules() if isinstance(m, LAYERS) and m not in layers]
        if any(_width(m, out=True) == h for m in inner):
            out.update(inner)
    return out


def removable(att: Attention, tr: Trace) -> bool:
    """Whether removing one head (on a copy of the attention module) keeps its forward running, same shape."""
    args, kwargs = tr.inputs.get(att.owner, ((), {}))
    if not args and not kwargs:
        return False
    with torch.no_grad():
        ref = att.owner(*args, **kwargs)
        work = clone(att.owner)
        try:  # a layout read wrongly can fail while slicing already (timm MViTv2's pooled attention)
            remove_heads(att, work, [0])
            set_sizes(work, tr.reads.get(att.owner, {}), att.sizes(att.heads - 1))
            follow_head_layers(att, work, tr.reads, att.heads - 1)
            got = work(*args, **kwargs)
        except (RuntimeError, ValueError, IndexError):
            return False
    return _shapes(got) == _shapes(ref)


def stream_removable(att: Attention, tr: Trace) -> bool:
    """Whether removing one head together with ``head_dim`` channels of the attention's input width keeps its
    forward running with the output narrowed the same way; if so sets ``att.stream`` and ``att.inner``."""
    args, kwargs = tr.inputs.get(att.owner, ((), {}))
    found = stream_layers(att) if args else None
    if found is None:
        return False
    width, inner = found
    with torch.no_grad():
        ref = att.owner(*args, **kwargs)
        work = clone(att.owner)
        try:  # slicing itself can fail on a layout read wrongly (see removable)
            remove_heads(att, work, [0])
            set_sizes(work, tr.reads.get(att.owner, {}), att.sizes(att.heads - 1))
            follow_head_layers(att, work, tr.reads, att.heads - 1)
            keep = narrow_stream(att, work, inner, width)
            got = work(*(narrow(a, width, keep) for a in args), **kwargs)
        except (RuntimeError, ValueError, IndexError):
            return False
    if not isinstance(ref, torch.Tensor) or _shapes(got) != _shapes(narrow(ref, width, keep)):
        return False
    att.stream, att.inner, att.direct = width, inner, True
    return True


def _shapes(x: Any) -> Any:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else [_shapes(v) for v in x] if isinstance(x, list | tuple) else None


def set_sizes(module: nn.Module, read: Mapping[str, Any], mapping: Mapping[int, int]) -> dict[str, Any]:
    """Set each attribute ``module``'s forward read to its mapped value (ints and int tuples).

    Returns:
        The attributes changed and their new values.
    """
    changed: dict[str, Any] = {}
    for name, old in read.items():
        if getattr(module, name, None) != old:
            continue
        new: Any = mapping.get(old, old) if isinstance(old, int) else tuple(mapping.get(v, v) for v in old)
        if new != old:
            setattr(module, name, new)
            changed[name] = new
    return changed


#: Analyses of the models seen last, by structure (the target search prunes many copies of one model).
_CACHE: dict[Any, dict[str, Any]] = {}


def _key(model: nn.Module, example_inputs: Any) -> Any:
    params = tuple((n, type(m).__name__, tuple(t.shape)) for n, m in model.named_modules()
                   for t in [*m._parameters.values(), *m._buffers.values()] if t is not None)
    xs = example_inputs if isinstance(example_inputs, tuple | list) else (example_inputs,)
    return params, tuple(tuple(x.shape) if isinstance(x, torch.Tensor) else repr(x) for x in xs)


def _named(found: Analysis, model: nn.Module) -> dict[str, Any]:
    names = {m: n for n, m in model.named_modules()}
    pnames = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    return {
        "attentions": [(names[a.owner], [names[m] for m in a.layers], a.heads, a.head_dim,
                        None if a.consumer is None else names[a.consumer], list(a.tables),
                        {names[m]: v for m, v in a.layout.items()}, a.direct, [names[m] for m in a.followers],
                        list(a.widths), list(a.head_layers), a.stream, list(a.inner)) for a in found.attentions],
        "keep": [names[m] for m in found.keep if m in names],
        "tables": [pnames[id(p)] for p in found.tables if id(p) in pnames],
        "reads": {names[m]: dict(r) for m, r in found.reads.items() if m in names},
        "transformer": found.transformer,
        "entries": [names[m] for m in found.entries],
        "why": {names[m]: r for m, r in found.why.items() if m in names},
        "mixers": [names[m] for m in found.mixers if m in names],
    }


def _resolve(named: Mapping[str, Any], model: nn.Module) -> Analysis:
    mods = dict(model.named_modules())
    return Analysis(
        attentions=[Attention(mods[o], [mods[n] for n in ls], h, d, None if c is None else mods[c], list(t),
                              {mods[n]: v for n, v in lay.items()}, direct, [mods[n] for n in fol], list(w), list(hl),
                              st, list(inner))
                    for o, ls, h, d, c, t, lay, direct, fol, w, hl, st, inner in named["attentions"]],
        keep=[mods[n] for n in named["keep"]],
        tables=[model.get_parameter(n) for n in named["tables"]],
        reads={mods[n]: dict(r) for n, r in named["reads"].items()},
        transformer=bool(named["transformer"]),
        entries=[mods[n] for n in named["entries"]],
        why={mods[n]: r for n, r in named["why"].items()},
        mixers=[mods[n] for n in named["mixers"]],
    )


def analyse(model: nn.Module, example_inputs: Any, forward_fn: Any = None) -> Analysis:
    """Trace ``model`` once and find its prunable attentions, the layers to leave whole and the tables to hide.

    The result is remembered by the model's structure (names, types and shapes) and inputs' shapes, so
    the copies a target search prunes are traced once.

    Args:
        model: The model (not modified).
        example_inputs: Its example inputs.
        forward_fn: ``forward_fn(model, inputs)`` runs the model, if given (the prune config's hook).

    Returns:
        The :class:`Analysis`.
    """
    key = _key(model, example_inputs)
    if key not in _CACHE:
        if len(_CACHE) >= 4:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _named(_analyse(model, example_inputs, forward_fn), model)
    return _resolve(_CACHE[key], model)


#: Why a stream-coupled attention (see :mod:`.streamheads`) keeps its heads when the embedding width stays whole.
STREAM_KEPT = ("its attention's heads can only go with the embedding width, which is kept whole "
               "(transformer.embed_dim false)")
_WHY = {"lost": "its channels are merged into the batch dimension (fold/unfold): the graph cannot follow them",
        "layout": "its output is split into heads by an attention whose heads cannot be removed whole",
        "head": "removing one head of its attention breaks that attention's forward"}


def _analyse(model: nn.Module, example_inputs: Any, forward_fn: Any = None) -> Analysis:
    tr = trace(model, example_inputs, forward_fn=forward_fn)
    found, other = _candidates(tr)
    out = Analysis(reads=tr.reads, transformer=any(s.owner in tr.attention_owners for s in tr.splits),
                   mixers=list(tr.mixers))
    out.entries = list(dict.fromkeys(tr.calls[o][0][0] for o in tr.attention_owners if tr.calls.get(o)))
    lost = set(tr.lost)
    for m in [*tr.lost, *other]:
        if isinstance(m, nn.Parameter):
            if all(m is not t for t in out.tables):
                out.tables.append(m)
        elif m not in out.keep:
            out.keep.append(m)
            out.why[m] = _WHY["lost" if m in lost else "layout"]
    for att in found:
        if removable(att, tr) or stream_removable(att, tr):  # the latter only with the embedding width narrowed
            out.attentions.append(att)
            out.tables += [getattr(att.owner, n) for n, _ in att.tables]
            out.keep += [m for m in map(att.owner.get_submodule, att.head_layers) if m not in out.keep]  # cut here
        else:
            out.why.update({m: _WHY["head"] for m in att.layers if m not in out.keep})
            out.keep += [m for m in att.layers if m not in out.keep]
            out.tables += [getattr(att.owner, n) for n, _ in att.tables]
    return out


def follow_head_layers(att: Attention, owner: nn.Module, reads: Mapping[nn.Module, Mapping[str, Any]],
                       heads_left: int) -> None:
    """The modules between ``owner`` (``att.owner`` or a copy) and each head layer: read head counts follow."""
    prefixes = {".".join(n.split(".")[:i]) for n in att.head_layers for i in range(1, n.count(".") + 1)}
    for prefix in sorted(prefixes):
        read = reads.get(att.owner.get_submodule(prefix), {})
        if read:
            set_sizes(owner.get_submodule(prefix), read, {att.heads: heads_left})


def size_snapshot(modules: Any) -> dict[nn.Module, list[int]]:
    """The sizes a module's attributes may stand for: its own parameters' dims and its direct layers' widths."""
    out: dict[nn.Module, list[int]] = {}
    for mod in modules:
        if isinstance(mod, (*LAYERS, *_NORMS)):
            continue
        sizes = [int(s) for p in [*mod._parameters.values(), *mod._buffers.values()] if p is not None for s in p.shape]
        for child in mod.children():
            if isinstance(child, LAYERS):
                sizes += [_width(child, out=False), _width(child, out=True)]
        out[mod] = sizes
    return out


def follow_sizes(before: Mapping[nn.Module, list[int]], reads: Mapping[nn.Module, Mapping[str, Any]],
                 skip: Any = ()) -> dict[nn.Module, dict[str, Any]]:
    """After a pruning step: each module's read size attributes follow its own sizes that changed one way only."""
    after = size_snapshot(before.keys())
    changed: dict[nn.Module, dict[str, Any]] = {}
    for mod, old_sizes in before.items():
        if mod in skip or mod not in reads or len(after.get(mod, [])) != len(old_sizes):
            continue
        pairs: dict[int, set[int]] = {}
        for o, n in zip(old_sizes, after[mod], strict=True):
            pairs.setdefault(o, set()).add(n)
        mapping = {o: next(iter(ns)) for o, ns in pairs.items() if len(ns) == 1 and o not in ns and o > 1}
        if mapping:
            done = set_sizes(mod, reads[mod], mapping)
            if done:
                changed[mod] = done
    return changed


def reads_sizes(reads: Mapping[nn.Module, Mapping[str, Any]]) -> bool:
    """Whether some module (not a layer) read an attribute equal to one of its sizes (it may have to follow)."""
    for mod, sizes in size_snapshot(reads.keys()).items():
        known = set(sizes) - {0, 1}
        for v in reads[mod].values():
            if (v in known) if isinstance(v, int) else bool(known.intersection(v)):
                return True
    return False
