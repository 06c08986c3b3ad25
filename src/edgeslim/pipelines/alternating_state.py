"""Moving a model between its eager and PT2E-prepared forms in the middle of training: the
optimizer's parameters (and their state) swapped by name, weights copied, fake-quant ranges carried.
"""

from __future__ import annotations

import torch
from torch import nn
from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

from edgeslim.pipelines.alternating_config import AlternatingError


def rebind_optimizer(optimizer: torch.optim.Optimizer, old: nn.Module, new: nn.Module) -> None:
    """Swap ``optimizer``'s parameters from ``old``'s to ``new``'s by name, moving their state."""
    names = {id(p): n for n, p in old.named_parameters()}
    targets = dict(new.named_parameters())
    for group in optimizer.param_groups:
        moved = []
        for p in group["params"]:
            name = names.get(id(p))
            q = targets.get(name) if name is not None else None
            if q is None:
                raise AlternatingError(f"alternating: an optimizer parameter ({name or 'unnamed'}) has no "
                                       f"counterpart in {type(new).__name__}; build the optimizer over model.parameters()")
            state = optimizer.state.pop(p, None)
            if state:
                optimizer.state[q] = {k: v for k, v in state.items()
                                      if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape == q.shape}
            moved.append(q)
        group["params"] = moved


@torch.no_grad()
def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy every parameter/buffer of ``dst`` that ``src`` has under the same name and shape."""
    have = src.state_dict()
    for name, t in dst.state_dict().items():
        s = have.get(name)
        if s is not None and s.shape == t.shape:
            t.copy_(s)
        elif name.endswith(("weight", "bias")):
            raise AlternatingError(f"alternating: {name} is missing or reshaped in the prepared graph; please report this model")


def carry_fake_quant(old: nn.Module, new: nn.Module) -> None:
    """Copy fake-quant state (ranges, enabled flags) from ``old`` to ``new`` where names and shapes match."""
    before = dict(old.named_modules())
    for name, mod in new.named_modules():
        prev = before.get(name)
        if not isinstance(mod, FakeQuantizeBase) or prev is None or type(prev) is not type(mod):
            continue
        sd, want = prev.state_dict(), mod.state_dict()
        if sd.keys() == want.keys() and all(sd[k].shape == want[k].shape for k in sd):
            mod.load_state_dict(sd)


__all__ = ["carry_fake_quant", "copy_weights", "rebind_optimizer"]
