"""Transformer pruning: whole heads, MLP widths, size attributes, export and reload (small models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torchvision.models.swin_transformer import ShiftedWindowAttention, SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

import edgeslim
from edgeslim.errors import ConfigError
from edgeslim.plugin.pruning.attention import HeadAttention, convert_attention
from edgeslim.plugin.pruning.config import PruneConfig, TransformerConfig


class FusedAttn(nn.Module):
    """timm-style attention: one qkv Linear reshaped by num_heads."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        a = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, -1))


class SepAttn(nn.Module):
    """Separate q/k/v Linears reshaped by num_heads."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        a = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(-1)
        return self.o((a @ v).transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, attn: nn.Module, dim: int) -> None:
        super().__init__()
        self.n1, self.attn, self.n2, self.mlp = nn.LayerNorm(dim), attn, nn.LayerNorm(dim), Mlp(dim, 2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.n1(x)
        a = self.attn(h, h, h) if isinstance(self.attn, nn.MultiheadAttention | HeadAttention) else self.attn(h)
        x = x + (a[0] if isinstance(a, tuple) else a)
        return x + self.mlp(self.n2(x))


class TokenNet(nn.Module):
    def __init__(self, kind: str, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        make = {"fused": lambda: FusedAttn(dim, heads), "separate": lambda: SepAttn(dim, heads),
                "mha": lambda: nn.MultiheadAttention(dim, heads, batch_first=True)}[kind]
        self.embed = nn.Linear(8, dim)
        self.blocks = nn.Sequential(Block(make(), dim), Block(make(), dim))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(x))).mean(1))


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
                             num_classes=10).eval()


@pytest.fixture(scope="module")
def vit_half() -> tuple[VisionTransformer, Any]:
    model = tiny_vit()
    return model, edgeslim.prune(model, torch.randn(1, 3, 32, 32), PruneConfig(target="params=0.5"))


def test_vit_params_target_removes_whole_heads_and_mlp(vit_half: tuple[VisionTransformer, Any]) -> None:
    _, res = vit_half
    model = res.model
    assert abs(res.after.params / res.before.params - 0.5) <= 0.02 * 0.5
    assert model.hidden_dim == 64 and model.conv_proj.out_channels == 64  # embedding width kept by default
    for block in model.encoder.layers:
        attn = block.self_attention
        assert isinstance(attn, HeadAttention)
        assert attn.num_heads == block.num_heads == 2 and attn.head_dim == 16  # heads removed whole
        assert attn.qkv.out_features == 3 * 2 * 16 and attn.proj.in_features == 2 * 16
        assert block.mlp[0].out_features < 128 and block.mlp[3].in_features == block.mlp[0].out_features
    x = torch.randn(3, 3, 32, 32)
    assert model(x).shape == (3, 10)
    ep = torch.export.export(model, (x,))
    torch.testing.assert_close(ep.module()(x), model(x))


def test_vit_save_reload_bit_exact(vit_half: tuple[VisionTransformer, Any], tmp_path: Path) -> None:
    _, res = vit_half
    path = tmp_path / "vit.pt"
    edgeslim.save(res.model, path)
    back = edgeslim.load(path, base=tiny_vit())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(back(x), res.model(x))
    assert [b.self_attention.num_heads for b in back.encoder.layers] == [2, 2]


def test_head_attention_matches_multihead_attention() -> None:
    torch.manual_seed(0)
    for batch_first in (True, False):
        mha = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
        ha = HeadAttention.from_mha(mha).eval()
        x = torch.randn(2, 7, 32) if batch_first else torch.randn(7, 2, 32)
        pad = torch.zeros(2, 7, dtype=torch.bool)
        pad[1, 5:] = True
        mask = torch.ones(7, 7, dtype=torch.bool).triu(1)
        for kw in ({}, {"key_padding_mask": pad}, {"attn_mask": mask}):
            ref, ref_w = mha(x, x, x, **kw)
            out, w = ha(x, x, x, **kw)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(w, ref_w, atol=1e-5, rtol=1e-5)


def test_head_attention_refuses_cross_attention_clearly() -> None:
    ha = HeadAttention(16, 2, 8)
    x, mem = torch.randn(1, 3, 16), torch.randn(1, 4, 16)
    with pytest.raises(ValueError, match=r"self-attention only.*ignored_layers"):
        ha(x, mem, mem)


@pytest.mark.parametrize("kind", ["mha", "fused", "separate"])
def test_attention_blocks_lose_whole_heads(kind: str) -> None:
    torch.manual_seed(0)
    model = TokenNet(kind).eval()
    x = torch.randn(2, 6, 8)
    res = edgeslim.prune(model, x, PruneConfig(target="ratio=0.5"))
    for block in res.model.blocks:
        attn = block.attn
        assert attn.num_heads == 2 and attn.head_dim == 8
        assert block.mlp.fc1.out_features == 32
    assert res.model(x).shape == (2, 5)
    assert res.model.embed.out_features == 32  # the embedding width is kept
    torch.export.export(res.model, (x,))
    assert isinstance(model.blocks[0].attn, FusedAttn | SepAttn | nn.MultiheadAttention)  # caller's model untouched


def test_switches_keep_heads_or_mlp() -> None:
    x = torch.randn(2, 6, 8)
    torch.manual_seed(0)
    no_heads = edgeslim.prune(TokenNet("fused"), x, PruneConfig(target="ratio=0.5",
                                                                  transformer=TransformerConfig(heads=False)))
    assert [b.attn.num_heads for b in no_heads.model.blocks] == [4, 4]
    assert [b.mlp.fc1.out_features for b in no_heads.model.blocks] == [32, 32]
    no_mlp = edgeslim.prune(TokenNet("fused"), x, PruneConfig(target="ratio=0.5", transformer={"mlp": False}))
    assert [b.mlp.fc1.out_features for b in no_mlp.model.blocks] == [64, 64]
    assert [b.attn.num_heads for b in no_mlp.model.blocks] == [2, 2]


def test_embedding_width_pruning_updates_hidden_dim() -> None:
    """vit_b_16-style hidden-size pruning: torchvision reshapes by ``hidden_dim``, which must follow the layers."""
    model = tiny_vit()
    x = torch.randn(1, 3, 32, 32)
    res = edgeslim.prune(model, x, PruneConfig(target="ratio=0.25", transformer=TransformerConfig(embed_dim=True)))
    pm = res.model
    assert pm.conv_proj.out_channels == 48 and pm.hidden_dim == 48
    assert pm.class_token.shape[-1] == 48 and pm.encoder.pos_embedding.shape[-1] == 48
    assert pm(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_swin_prunes_mlp_and_keeps_heads() -> None:
    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=[4, 4],
                            num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    res = edgeslim.prune(model, x, PruneConfig(target="ratio=0.5"))
    attns = [m for m in res.model.modules() if isinstance(m, ShiftedWindowAttention)]
    assert [a.num_heads for a in attns] == [2, 4]
    assert [a.qkv.out_features for a in attns] == [48, 96]
    assert res.after.params < res.before.params
    assert res.model(x).shape == (1, 10)


def test_transformer_config_round_trips_and_refuses_unknown_keys() -> None:
    cfg = PruneConfig(target="params=0.5", transformer=TransformerConfig(heads=True, mlp=False, embed_dim=True))
    assert PruneConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="transformer must be a dict with keys heads, mlp, embed_dim"):
        PruneConfig(transformer={"head": True})


def test_convert_attention_keeps_outputs_and_ignored_layers() -> None:
    torch.manual_seed(0)
    model = TokenNet("mha").eval()
    x = torch.randn(2, 6, 8)
    ref = model(x)
    keep = model.blocks[1].attn
    names = convert_attention(model, keep=[keep])
    assert names == ["blocks.0.attn"] and model.blocks[1].attn is keep
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
