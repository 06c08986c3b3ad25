"""What a model's forward does with its channels, recorded in one forward (no class names).

One forward of the model under a ``TorchFunctionMode`` follows every Linear/conv output's channel
dimension through the ops of the forward (elementwise ops, norms, permutes, reshapes) and records:

- **splits**: a reshape/view/unflatten that splits a layer's channels into factors, e.g.
  ``qkv(x).reshape(B, N, 3, num_heads, head_dim)`` → factors ``(3, num_heads, head_dim)``, with the
  module whose forward made it (the *owner*) and whether that module computes attention
  (``matmul``/``@``/``einsum``/``scaled_dot_product_attention`` while it runs);
- **lost** layers: their channels are merged with a leading dimension (``B*C``): the dependency
  graph cannot follow them;
- **reads**: the int / int-tuple attributes each module's forward reads (``self.num_heads``,
  ``self.attn_dim``, ``self.shape`` ...), found by instrumenting attribute access;
- **calls**: per owner, the layers run inside it, in order, with their input width.

The forward runs on a batch of 2 (the example repeated) so that a channel merged into the batch
dimension is told apart from a channel flattened with the spatial dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
_RESHAPES = {"reshape", "view", "unflatten", "flatten", "_reshape_alias", "reshape_as", "view_as"}
_PIECES = {"split", "chunk", "tensor_split", "unbind", "narrow", "split_with_sizes", "__getitem__", "select"}
_ATTENTION_OPS = {"matmul", "__matmul__", "bmm", "einsum", "scaled_dot_product_attention", "baddbmm", "__rmatmul__"}


@dataclass
class Split:
    """A layer's output channels split into factors by its owner's forward."""

    layer: nn.Module
    owner: nn.Module
    factors: tuple[int, ...]


@dataclass
class Trace:
    """What one forward recorded (see the module docstring)."""

    splits: list[Split] = field(default_factory=list)
    lost: list[nn.Module] = field(default_factory=list)
    attention_owners: list[nn.Module] = field(default_factory=list)
    reads: dict[nn.Module, dict[str, Any]] = field(default_factory=dict)
    calls: dict[nn.Module, list[tuple[nn.Module, int]]] = field(default_factory=dict)
    inputs: dict[nn.Module, tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=dict)
    followers: dict[nn.Module, list[nn.Module]] = field(default_factory=dict)
    #: Linear layers run along a dimension that is not their input's channels (token-mixing MLPs: MLP-Mixer, gMLP).
    mixers: list[nn.Module] = field(default_factory=list)


def _channels_in(layer: Any) -> int:
    return int(layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels)


class _Recorder(TorchFunctionMode):
    def __init__(self, trace: Trace, layer_of: dict[int, nn.Module], stack: list[nn.Module],
                 norm_of: dict[int, nn.Module]) -> None:
        super().__init__()
        self.trace, self.layer_of, self.stack, self.norm_of = trace, layer_of, stack, norm_of
        self.label: dict[int, tuple[tuple[nn.Module, ...], int]] = {}
        self.chan: dict[int, int] = {}  # id(tensor) -> its channel dimension (of whatever layer made it)
        self.alive: list[torch.Tensor] = []  # keeps labelled tensors alive so their ids stay unique

    def _set(self, t: Any, layer: tuple[nn.Module, ...], dim: int) -> None:
        if isinstance(t, torch.Tensor):
            self.label[id(t)] = (layer, dim)
            self.alive.append(t)

    def _lose(self, layer: tuple[nn.Module, ...]) -> None:
        self.trace.lost.extend(m for m in layer if m not in self.trace.lost)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        self._channels(name, args, kwargs, out)
        owner = self.stack[-1] if self.stack else None
        if name in _ATTENTION_OPS and owner is not None and owner not in self.trace.attention_owners:
            self.trace.attention_owners.append(owner)
        if name in ("linear", "conv1d", "conv2d", "conv3d") and len(args) > 1:
            hit = self.layer_of.get(id(args[1]))
            if hit is not None and isinstance(out, torch.Tensor):
                self._set(out, (hit,), out.dim() - 1 if name == "linear" else 1)
                if owner is not None:
                    for o in self.stack:
                        self.trace.calls.setdefault(o, []).append((hit, _channels_in(hit)))
                return out
        flat = [t for a in [*args, *kwargs.values()] for t in (a if isinstance(a, list | tuple) else (a,))]
        src = next((a for a in flat if isinstance(a, torch.Tensor) and id(a) in self.label), None)
        if src is None:
            return out
        layer, dim = self.label[id(src)]
        norm = next((self.norm_of[id(a)] for a in flat if id(a) in self.norm_of), None)
        if norm is not None and len(layer) == 1:  # a norm over the layer's channels (LinearNorm, ConvNorm ...)
            known = self.trace.followers.setdefault(layer[0], [])
            if norm not in known:
                known.append(norm)
        if name in ("cat", "concat", "concatenate") and isinstance(out, torch.Tensor):
            self._cat(args, kwargs, out, dim)
        elif name in _RESHAPES and isinstance(out, torch.Tensor):
            self._reshaped(src, out, layer, dim, owner)
        elif name in ("permute", "transpose", "swapaxes", "transpose_", "movedim"):
            self._permuted(name, src, out, args, kwargs, layer, dim)
        elif name in _PIECES:
            self._pieces(name, src, out, args, kwargs, layer, dim)
        elif isinstance(out, torch.Tensor) and out.shape == src.shape:
            self._set(out, layer, dim)
        return out

    def _chan(self, t: Any, dim: int) -> None:
        if isinstance(t, torch.Tensor):
            self.chan[id(t)] = dim
            self.alive.append(t)

    def _channels(self, name: str, args: Any, kwargs: Any, out: Any) -> None:
        """Follow the channel dimension of every layer output; a Linear run along another dimension mixes tokens
        (it carries the channels through unchanged)."""
        if name in ("linear", "conv1d", "conv2d", "conv3d") and args and isinstance(args[0], torch.Tensor):
            d = self.chan.get(id(args[0]))
            if name == "linear" and d is not None and d != args[0].dim() - 1:
                hit = self.layer_of.get(id(args[1])) if len(args) > 1 else None
                if hit is not None and hit not in self.trace.mixers:
                    self.trace.mixers.append(hit)
                self._chan(out, d)
            elif isinstance(out, torch.Tensor):
                self._chan(out, out.dim() - 1 if name == "linear" else 1)
            return
        flat = [t for a in [*args, *kwargs.values()] for t in (a if isinstance(a, list | tuple) else (a,))]
        src = next((a for a in flat if isinstance(a, torch.Tensor) and id(a) in self.chan), None)
        if src is None:
            return
        d = self.chan[id(src)]
        if name in ("permute", "transpose", "swapaxes") and isinstance(out, torch.Tensor):
            n = src.dim()
            if name == "permute":
                dims = args[1:] if len(args) > 2 or isinstance(args[1], int) else args[1]
                order = [int(x) % n for x in dims]
            else:
                d0, d1 = (int(x) % n for x in args[1:3])
                order = list(range(n))
                order[d0], order[d1] = order[d1], order[d0]
            self._chan(out, order.index(d))
        elif name in _RESHAPES and isinstance(out, torch.Tensor):
            pre, c = math.prod(src.shape[:d]), src.shape[d]
            at = [i for i in range(out.dim()) if math.prod(out.shape[:i]) == pre and out.shape[i] == c]
            if at:
                self._chan(out, at[0])
        elif name in _PIECES:
            for p in out if isinstance(out, list | tuple) else [out]:
                if isinstance(p, torch.Tensor) and p.dim() == src.dim():
                    self._chan(p, d)
        elif isinstance(out, torch.Tensor) and out.dim() == src.dim():
            self._chan(out, d)

    def _cat(self, args: Any, kwargs: Any, out: torch.Tensor, dim: int) -> None:
        parts = args[0] if args else kwargs.get("tensors", ())
        along = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
        labels = [self.label.get(id(p)) for p in parts]
        layers = tuple(m for lab in labels if lab is not None for m in lab[0])
        if along == dim and all(lab is not None and lab[1] == dim for lab in labels):
            self._set(out, layers, dim)  # channels of several layers side by side: followed, never split into heads
        elif along != dim:
            self._set(out, layers, dim)

    def _reshaped(self, src: torch.Tensor, out: torch.Tensor, layer: tuple[nn.Module, ...], dim: int,
                  owner: Any) -> None:
        shape_in, shape_out = list(src.shape), list(out.shape)
        pre, c = math.prod(shape_in[:dim]), shape_in[dim]
        prods = [math.prod(shape_out[:i]) for i in range(len(shape_out) + 1)]
        if pre not in prods:
            self._lose(layer)  # channels merged into a leading (batch) dimension
            return
        a = prods.index(pre)
        while a < len(shape_out) and shape_out[a] == 1 and prods[a + 1] != pre * c:
            a += 1
        if pre * c not in prods[a:]:
            if a < len(shape_out) and shape_out[a] % c == 0:
                return  # flattened with the following dimensions (e.g. before a classifier): the graph follows it
            self._lose(layer)
            return
        b = a + prods[a:].index(pre * c)
        factors = tuple(s for s in shape_out[a:b] if s != 1)
        if len(factors) <= 1:
            kept = next((i for i in range(a, b) if shape_out[i] == c), a)
            self._set(out, layer, kept)
        elif len(layer) > 1:
            self._lose(layer)  # heads over concatenated layers: not a layout whole heads can be cut from
        elif owner is not None:
            self.trace.splits.append(Split(layer[0], owner, factors))

    def _permuted(self, name: str, src: torch.Tensor, out: Any, args: Any, kwargs: Any,
                  layer: tuple[nn.Module, ...], dim: int) -> None:
        if not isinstance(out, torch.Tensor):
            return
        n = src.dim()
        if name == "permute":
            dims = args[1:] if len(args) > 2 or isinstance(args[1], int) else args[1]
            order = [d % n for d in dims]
        elif name == "movedim":
            return
        else:
            d0, d1 = (int(x) % n for x in args[1:3])
            order = list(range(n))
            order[d0], order[d1] = order[d1], order[d0]
        self._set(out, layer, order.index(dim))

    def _pieces(self, name: str, src: torch.Tensor, out: Any, args: Any, kwargs: Any,
                layer: tuple[nn.Module, ...], dim: int) -> None:
        """Pieces (split, chunk, indexing) along other dimensions keep the channel; along it, the label ends."""
        pieces = out if isinstance(out, list | tuple) else [out]
        if all(isinstance(p, torch.Tensor) and p.dim() == src.dim() and p.shape[dim] == src.shape[dim]
               for p in pieces):
            for p in pieces:
                self._set(p, layer, dim)


def _is_size(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, tuple) and bool(v) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in v))


@contextmanager
def _reading(model: nn.Module, reads: dict[nn.Module, dict[str, Any]]) -> Iterator[None]:
    """Record the int / int-tuple attributes each module reads while the block runs."""
    swapped: list[tuple[nn.Module, type]] = []
    cache: dict[type, type] = {}
    for mod in model.modules():
        cls = type(mod)
        if cls not in cache:
            def getattribute(self: Any, name: str, _cls: type = cls) -> Any:
                value = _cls.__getattribute__(self, name)  # type: ignore[call-arg]
                if not name.startswith("_") and _is_size(value) and name in object.__getattribute__(self, "__dict__"):
                    reads.setdefault(self, {})[name] = value
                return value
            try:
                cache[cls] = type(cls.__name__, (cls,), {"__getattribute__": getattribute, "__module__": cls.__module__})
            except TypeError:
                continue
        try:
            mod.__class__ = cache[cls]
        except TypeError:
            continue
        swapped.append((mod, cls))
    try:
        yield
    finally:
        for mod, cls in swapped:
            mod.__class__ = cls


def _doubled(example_inputs: Any) -> Any:
    if isinstance(example_inputs, torch.Tensor):
        return torch.cat([example_inputs, example_inputs])
    if isinstance(example_inputs, tuple | list) and all(isinstance(x, torch.Tensor) for x in example_inputs):
        return type(example_inputs)(torch.cat([x, x]) for x in example_inputs)
    return example_inputs


def trace(model: nn.Module, example_inputs: Any, owners_to_capture: bool = True, forward_fn: Any = None) -> Trace:
    """Run ``model`` once on ``example_inputs`` (batch doubled) and record what its forward does.

    Args:
        model: The model (not modified; run in eval mode, no gradients).
        example_inputs: A tensor, a tuple/list of tensors, or a dict of keyword inputs.
        owners_to_capture: Keep each attention owner's inputs (for local checks of head removal).
        forward_fn: ``forward_fn(model, inputs)`` runs the model (the prune config's hook), if given.

    Returns:
        The :class:`Trace`.
    """
    out = Trace()
    layer_of: dict[int, nn.Module] = {id(m.weight): m for m in model.modules() if isinstance(m, LAYERS)}
    stack: list[nn.Module] = []

    def pre(mod: nn.Module, args: Any, kwargs: Any) -> None:
        stack.append(mod)
        if owners_to_capture and not isinstance(mod, LAYERS) and mod not in out.inputs:
            out.inputs[mod] = (args, kwargs)

    def post(mod: nn.Module, args: Any, kwargs: Any, result: Any) -> None:
        if stack and stack[-1] is mod:
            stack.pop()

    hooks = [m.register_forward_pre_hook(pre, with_kwargs=True) for m in model.modules()]
    hooks += [m.register_forward_hook(post, with_kwargs=True) for m in model.modules()]
    x = _doubled(example_inputs)
    was_training = model.training
    model.eval()
    try:
        norm_of: dict[int, nn.Module] = {id(p): m for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
        with torch.no_grad(), _reading(model, out.reads), _Recorder(out, layer_of, stack, norm_of):
            if forward_fn is not None:
                forward_fn(model, x)
            elif isinstance(x, dict):
                model(**x)
            elif isinstance(x, tuple | list):
                model(*x)
            else:
                model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    keep = set(out.attention_owners)
    out.inputs = {m: v for m, v in out.inputs.items() if m in keep}
    return out
