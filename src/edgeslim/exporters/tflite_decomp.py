"""Graph rewrites applied while litert-torch converts a model.

A resize to the size it already has is the identity (bilinear and bicubic, with or without
antialias, align_corners either way: every output pixel samples its own input pixel with weight 1).
Models whose size adapts to the input (timm's ``dynamic_img_size``: position embeddings resampled to
the input's grid on every forward, with the early return skipped under ``torch.export``) put such a
resize in the exported graph; litert-torch has no lowering for the antialiased ones. While
:func:`same_size_resize_is_identity` is active, litert-torch's decomposition tables turn a same-size
resize into a copy and leave every other resize as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

_aten = torch.ops.aten
#: Resize ops with the signature ``(input, output_size, align_corners, scales_h=None, scales_w=None)``.
RESIZE_OPS = (_aten._upsample_bicubic2d_aa.default, _aten._upsample_bilinear2d_aa.default,
              _aten.upsample_bicubic2d.default, _aten.upsample_bilinear2d.default)


def _unit(scale: float | None) -> bool:
    return scale is None or scale == 1.0


def _identity_or(previous: Callable[..., Any] | None) -> Callable[..., Any]:
    def decomp(x: torch.Tensor, output_size: Sequence[int], align_corners: bool,
               scales_h: float | None = None, scales_w: float | None = None) -> Any:
        if list(output_size) == list(x.shape[-2:]) and _unit(scales_h) and _unit(scales_w):
            return x.clone()
        if previous is not None:
            return previous(x, output_size, align_corners, scales_h, scales_w)
        return NotImplemented  # the op stays in the graph as it was

    return decomp


@contextlib.contextmanager
def same_size_resize_is_identity() -> Iterator[None]:
    """While active, litert-torch's pre-convert and pre-lower decompositions turn same-size resizes into copies."""
    from litert_torch.fx_infra import decomp

    tables = [decomp._pre_convert_decomp, decomp._pre_lower_decomp]
    saved = [{op: table.get(op) for op in RESIZE_OPS} for table in tables]
    try:
        for table in tables:
            for op in RESIZE_OPS:
                table[op] = _identity_or(table.get(op))
        yield
    finally:
        for table, before in zip(tables, saved, strict=True):
            for op, fn in before.items():
                if fn is None:
                    table.pop(op, None)
                else:
                    table[op] = fn


__all__ = ["RESIZE_OPS", "same_size_resize_is_identity"]
