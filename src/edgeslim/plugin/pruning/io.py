"""The ``pruned`` saved-model format: a state_dict plus a structure manifest.

The manifest records, for every module, its class name and the structural attributes that
pruning changes (channels, features, groups ...). Loading builds the original architecture
(by torchvision name, or from the ``base`` instance the caller passes), resizes each module
to the recorded shapes and loads the weights — bit-exact, no pickled classes.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from edgeslim.errors import ModelLoadError
from edgeslim.io import FORMATS
from edgeslim.models import ArchInfo, arch_of_module, build_arch, copy_arch, remember_arch
from edgeslim.plugin.pruning.attention import convert_like
from edgeslim.plugin.pruning.unstructured import masks_of, remember_masks

#: Attributes that structural pruning may change, by the modules that carry them.
STRUCT_ATTRS = (
    "in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
    "normalized_shape", "num_channels", "num_groups", "embed_dim", "num_embeddings", "embedding_dim",
    "num_heads", "head_dim", "hidden_dim",
)


def arch_info(model: nn.Module) -> dict[str, Any] | None:
    """The ``{"name", "kwargs"}`` that rebuilds ``model``'s unpruned architecture, if known."""
    info = arch_of_module(model)
    return info.to_dict() if info is not None else None


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


def _size_attr(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value))


def _manifest(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Each module's class name and size attributes: :data:`STRUCT_ATTRS` and every other public int or
    int-tuple attribute (``num_heads``, ``attn_dim``, ``key_dim``, ``shape`` ...: whatever pruning made follow)."""
    out: dict[str, dict[str, Any]] = {}
    for name, mod in model.named_modules():
        attrs = {a: _jsonable(getattr(mod, a)) for a in STRUCT_ATTRS if isinstance(getattr(mod, a, None), int | tuple)}
        attrs.update({a: _jsonable(v) for a, v in vars(mod).items()
                      if not a.startswith("_") and a not in attrs and _size_attr(v)})
        out[name] = {"type": type(mod).__name__, "attrs": attrs}
    return out


class PrunedFormat:
    """State dict + manifest; see the module docstring."""

    def claims(self, obj: Any) -> bool:
        """Whether ``obj`` is a ``PruneResult`` (plain modules are saved as ``pruned`` by default anyway)."""
        return not isinstance(obj, nn.Module) and isinstance(getattr(obj, "model", None), nn.Module) and hasattr(obj, "plan")

    def dump(self, model: Any, *, keep_float: bool = True) -> dict[str, Any]:
        """Payload for :func:`edgeslim.io.save` (a float model always keeps its weights).

        ``model``: an ``nn.Module`` or a ``PruneResult`` (its model is saved); the unstructured
        masks in force on the model (:func:`masks_of`) are saved with it.
        """
        net: nn.Module = model if isinstance(model, nn.Module) else model.model
        if isinstance(net, torch.fx.GraphModule) and any(
            n.op == "call_function" and "quantize" in str(n.target) for n in net.graph.nodes
        ):
            raise ModelLoadError(
                "this is a quantized graph edgeslim has no record of (a copy of the one convert()/load() returned?): "
                "save the QuantResult instead (edgeslim.save(result, path)), or the graph convert()/load() returned"
            )
        full = net.state_dict()
        state = {k: v.detach().clone() for k, v in full.items()}
        return {
            "arch": arch_info(net),
            "manifest": _manifest(net),
            "state_dict": state,
            "state_metadata": state_metadata(full),
            "masks": masks_of(net),
        }

    def restore(self, payload: dict[str, Any], base: nn.Module | None) -> nn.Module:
        """Rebuild the pruned model from the payload."""
        arch = payload.get("arch")
        if base is not None:
            model = copy_arch(base, copy.deepcopy(base))
        elif arch:
            model = build_arch(str(arch["name"]), **dict(arch.get("kwargs", {})))
        else:
            raise ModelLoadError(
                "this pruned model has a custom architecture edgeslim cannot rebuild by name: "
                "call edgeslim.load(path, base=YourModel()) with an instance of the unpruned model"
            )
        manifest: dict[str, dict[str, Any]] = payload["manifest"]
        convert_like(model, {n: str(e["type"]) for n, e in manifest.items()})  # attentions made head-prunable
        modules = dict(model.named_modules())
        for name, entry in manifest.items():
            mod = modules.get(name)
            if mod is None or type(mod).__name__ != entry["type"]:
                found = "nothing" if mod is None else type(mod).__name__
                raise ModelLoadError(
                    f"saved module {name!r} is a {entry['type']} but the architecture has {found} there: "
                    "pass the matching unpruned model as base="
                )
            for attr, value in entry["attrs"].items():
                setattr(mod, attr, tuple(value) if isinstance(value, list) else value)
        state: dict[str, torch.Tensor] = payload["state_dict"]
        _resize_to(model, state)
        model.load_state_dict(with_metadata(state, payload.get("state_metadata"), model), strict=True)
        if arch:
            remember_arch(model, ArchInfo.from_dict(arch))
        remember_masks(model, dict(payload.get("masks") or {}))
        return model


def state_metadata(state: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """The ``_metadata`` of a ``state_dict`` (each module's ``version``) as plain dicts.

    Modules that changed their layout across releases read it when loading (torchvision's MNASNet
    refuses a state without it); a plain dict copy of the state loses it.
    """
    meta = getattr(state, "_metadata", None) or {}
    return {str(k): {str(a): b for a, b in dict(v).items() if isinstance(b, int | float | str | bool)}
            for k, v in meta.items()}


def with_metadata(
    state: dict[str, torch.Tensor], metadata: dict[str, dict[str, Any]] | None, model: nn.Module
) -> OrderedDict[str, torch.Tensor]:
    """``state`` as an ``OrderedDict`` carrying ``metadata`` (files written before it was saved: the
    versions of ``model``'s own modules), ready for ``model.load_state_dict``."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict(state)
    meta = metadata if metadata is not None else state_metadata(model.state_dict())
    out._metadata = OrderedDict((k, dict(v)) for k, v in meta.items())  # type: ignore[attr-defined]
    return out


def _resize_to(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Replace every parameter/buffer whose saved shape differs by an empty tensor of that shape."""
    for key, saved in state.items():
        mod_name, _, leaf = key.rpartition(".")
        mod = model.get_submodule(mod_name) if mod_name else model
        if leaf in mod._parameters and mod._parameters[leaf] is not None:
            cur = mod._parameters[leaf]
            assert cur is not None
            if cur.shape != saved.shape:
                mod._parameters[leaf] = nn.Parameter(torch.empty_like(saved), requires_grad=cur.requires_grad)
        elif leaf in mod._buffers and mod._buffers[leaf] is not None:
            buf = mod._buffers[leaf]
            assert buf is not None
            if buf.shape != saved.shape:
                mod._buffers[leaf] = torch.empty_like(saved)


FORMATS.register("pruned")(PrunedFormat())
