"""Attention with prunable heads: ``nn.MultiheadAttention``'s computation, inner width not tied to the embedding."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class HeadAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` and an output ``proj`` Linear.

    The computation of ``nn.MultiheadAttention`` for ``attn(x, x, x)``, with the same call
    signature and return value ``(output, weights or None)``, but an inner width
    ``num_heads * head_dim`` that need not equal ``embed_dim`` (so whole heads can be removed).

    Args:
        embed_dim: Width of the input and output.
        num_heads: Number of heads.
        head_dim: Width of one head.
        bias: Whether the projections have biases.
        batch_first: Inputs are ``(batch, seq, embed)`` (else ``(seq, batch, embed)``).
        dropout: Dropout on the attention weights (training only).
    """

    def __init__(
        self, embed_dim: int, num_heads: int, head_dim: int, *, bias: bool = True, batch_first: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.batch_first = batch_first
        self.dropout = dropout
        self.qkv = nn.Linear(embed_dim, 3 * num_heads * head_dim, bias=bias)
        self.proj = nn.Linear(num_heads * head_dim, embed_dim, bias=bias)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> HeadAttention:
        """The same attention as ``mha`` (weights copied)."""
        out = cls(mha.embed_dim, mha.num_heads, mha.head_dim, bias=mha.in_proj_bias is not None,
                  batch_first=mha.batch_first, dropout=mha.dropout)
        out.to(device=mha.out_proj.weight.device, dtype=mha.out_proj.weight.dtype)
        with torch.no_grad():
            out.qkv.weight.copy_(mha.in_proj_weight)
            out.proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                out.qkv.bias.copy_(mha.in_proj_bias)
                out.proj.bias.copy_(mha.out_proj.bias)
        out.train(mha.training)
        return out

    def forward(
        self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None, need_weights: bool = True, attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True, is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``nn.MultiheadAttention.forward`` for self-attention (``key`` and ``value`` are ``query`` or None)."""
        for other in (key, value):
            if other is not None and other is not query:
                raise ValueError("HeadAttention is self-attention only (key and value must be the query tensor); "
                                 "list this attention in ignored_layers to keep it as nn.MultiheadAttention")
        x = query if self.batch_first else query.transpose(0, 1)
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dim() == 2 else attn_mask.view(b, self.num_heads, n, n)
            attn = attn.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else attn + mask
        if key_padding_mask is not None:
            kpm = key_padding_mask[:, None, None, :]
            attn = attn.masked_fill(kpm, float("-inf")) if kpm.dtype == torch.bool else attn + kpm
        attn = attn.softmax(dim=-1)
        weights = attn
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, p=self.dropout)
        out = self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights


def _convertible(mha: nn.MultiheadAttention) -> bool:
    return bool(mha._qkv_same_embed_dim) and mha.bias_k is None and not mha.add_zero_attn


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, new)


def convert_attention(model: nn.Module, keep: Iterable[nn.Module] = ()) -> list[str]:
    """Replace every self-attention ``nn.MultiheadAttention`` of ``model`` by :class:`HeadAttention`, in place.

    Args:
        model: The model (modified in place; outputs unchanged up to float rounding).
        keep: Modules left as they are (e.g. ignored layers, cross-attention).

    Returns:
        The names of the replaced modules.
    """
    kept = set(map(id, keep))
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.MultiheadAttention) and id(m) not in kept and _convertible(m)]
    for name in names:
        mha: Any = model.get_submodule(name)
        _swap(model, name, HeadAttention.from_mha(mha))
    return names


def convert_like(model: nn.Module, types: Mapping[str, str]) -> None:
    """Convert the attentions a saved manifest (module name -> class name) records as ``HeadAttention``."""
    for name, type_name in types.items():
        if type_name != HeadAttention.__name__ or not name:
            continue
        mod = dict(model.named_modules()).get(name)
        if isinstance(mod, nn.MultiheadAttention):
            _swap(model, name, HeadAttention.from_mha(mod))
