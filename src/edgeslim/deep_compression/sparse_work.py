"""What the unstructured sparsity of a packed model would save with a sparse kernel: MACs per layer.

A dense kernel multiplies every weight, zero or not: ``H_out·W_out·numel(weight)`` multiply-
accumulates per image for a conv (``numel(weight)`` for a linear layer). A sparse kernel would do
only the non-zeros: ``H_out·W_out·nnz``. The runtimes edgeslim targets run the dense count
(see the Deep Compression benchmark for what each offers); this table is the upper bound of
what sparsity could buy in compute, before the overheads of a sparse format.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


@torch.no_grad()
def mac_table(model: nn.Module, example: torch.Tensor) -> list[dict[str, Any]]:
    """Per conv/linear layer of ``model`` on one image shaped like ``example``: dense and non-zero MACs.

    Returns:
        Rows ``{name, kind, kernel, dense_macs, sparse_macs, sparsity}`` in forward order
        (``kind``: ``conv1x1``, ``conv``, ``depthwise`` or ``linear``; ``name`` is the weight's name).
    """
    rows: list[dict[str, Any]] = []
    hooks = []

    def hook(name: str, mod: nn.Module, out: torch.Tensor) -> None:
        w: torch.Tensor = mod.get_parameter("weight").detach()
        positions = out[0].numel() // out.shape[1] if isinstance(mod, nn.Conv2d) else 1
        nnz = int(torch.count_nonzero(w))
        if isinstance(mod, nn.Conv2d):
            k = tuple(mod.kernel_size)
            kind = "depthwise" if mod.groups > 1 and mod.groups == mod.in_channels else (
                "conv1x1" if k == (1, 1) else "conv")
        else:
            k, kind = (), "linear"
        rows.append({
            "name": f"{name}.weight", "kind": kind, "kernel": list(k), "dense_macs": positions * int(w.numel()),
            "sparse_macs": positions * nnz, "sparsity": 1 - nnz / max(int(w.numel()), 1),
        })

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d | nn.Linear):
            hooks.append(mod.register_forward_hook(lambda m, _i, o, n=name: hook(n, m, o)))
    try:
        model.eval()(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals of :func:`mac_table` rows: dense and sparse MACs, their ratio, and the share in 1x1 convs."""
    dense = sum(r["dense_macs"] for r in rows)
    sparse = sum(r["sparse_macs"] for r in rows)
    one = [r for r in rows if r["kind"] == "conv1x1"]
    return {
        "dense_macs": dense,
        "sparse_macs": sparse,
        "mac_reduction": dense / max(sparse, 1),
        "conv1x1_dense_macs": sum(r["dense_macs"] for r in one),
        "conv1x1_sparse_macs": sum(r["sparse_macs"] for r in one),
    }


__all__ = ["mac_table", "summarize"]
