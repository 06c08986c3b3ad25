"""Attentions found from the traced forward: timm DeiT, hand-written attentions with their own attribute
names, head-indexed tables, LayerScale-style parameters; size attributes follow and reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import edgeslim
from edgeslim.plugin.pruning.config import PruneConfig
from edgeslim.plugin.pruning.heads import STREAM_KEPT, analyse

timm = pytest.importorskip("timm")


def _deit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10).eval()


@pytest.fixture(scope="module")
def deit_half() -> tuple[nn.Module, edgeslim.plugin.pruning.PruneResult]:
    net = _deit()
    return net, edgeslim.prune(net, torch.randn(1, 3, 32, 32), PruneConfig(target="params=0.5"))


def test_deit_loses_whole_heads_and_its_sizes_follow(deit_half: tuple[nn.Module, object]) -> None:
    net, res = deit_half
    assert res.summary()["params_fraction"] == pytest.approx(0.5, abs=0.01)  # type: ignore[attr-defined]
    for block in res.model.blocks:  # type: ignore[attr-defined]
        attn = block.attn
        assert attn.num_heads == 2 and attn.head_dim == 64  # 3 heads -> 2, head width kept
        assert attn.attn_dim == 128 and attn.qkv.out_features == 3 * 128 and attn.proj.in_features == 128
        assert attn.scale == pytest.approx(64**-0.5)  # the scale of the original head_dim
    x = torch.randn(3, 3, 32, 32)
    assert res.model(x).shape == (3, 10)  # type: ignore[attr-defined]
    assert net.blocks[0].attn.num_heads == 3 and net.blocks[0].attn.attn_dim == 192  # the user's model untouched


def test_deit_reloads_identically_and_exports_verified(deit_half: tuple[nn.Module, object], tmp_path: Path) -> None:
    _, res = deit_half
    model = res.model  # type: ignore[attr-defined]
    edgeslim.save(res, tmp_path / "deit.pt")
    back = edgeslim.load(tmp_path / "deit.pt", base=_deit())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    assert [b.attn.attn_dim for b in back.blocks] == [128, 128]
    for fmt in ("onnx", "tflite"):  # both verified in their runtime (ONNX Runtime, LiteRT) against PyTorch
        out = edgeslim.export(model, fmt, tmp_path / f"deit.{fmt}", x[:1], verify_inputs=[x])
        assert out.verification is not None and out.verification.passed, fmt


class OddAttention(nn.Module):
    """Attention with attribute names edgeslim was not written for: ``nh``, ``dh``, ``inner``; einsum."""

    def __init__(self, dim: int, nh: int, dh: int) -> None:
        super().__init__()
        self.nh, self.dh, self.inner = nh, dh, nh * dh
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, nh * dh, bias=False) for _ in range(3))
        self.out = nn.Linear(nh * dh, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, self.nh, self.dh) for f in (self.to_q, self.to_k, self.to_v))
        a = torch.einsum("bqhd,bkhd->bhqk", q, k).mul(self.dh**-0.5).softmax(-1)
        return self.out(torch.einsum("bhqk,bkhd->bqhd", a, v).reshape(b, n, self.inner))


class SdpaAttention(nn.Module):
    """Fused qkv unflattened into heads, ``F.scaled_dot_product_attention``, merge width in ``self.width``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.width = heads, dim
        self.w_qkv, self.w_o = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.w_qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        return self.w_o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, self.width))


class Net(nn.Module):
    def __init__(self, attn: nn.Module, dim: int = 48) -> None:
        super().__init__()
        self.embed, self.attn, self.n = nn.Linear(8, dim), attn, nn.LayerNorm(dim)
        self.up, self.down, self.head = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim), nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.attn(self.n(h))
        h = h + self.down(F.gelu(self.up(h)))
        return self.head(h.mean(1))


@pytest.mark.parametrize("kind", ["odd", "sdpa"])
def test_attention_with_its_own_attribute_names_loses_whole_heads(kind: str, tmp_path: Path) -> None:
    def make() -> Net:
        torch.manual_seed(1)
        return Net(OddAttention(48, 6, 8) if kind == "odd" else SdpaAttention(48, 6)).eval()

    net, x = make(), torch.randn(1, 10, 8)
    found = analyse(net, x)
    assert [(a.heads, a.head_dim, len(a.layers)) for a in found.attentions] == [(6, 8, 3 if kind == "odd" else 1)]
    res = edgeslim.prune(net, x, PruneConfig(target="ratio=0.5"))
    attn = res.model.attn
    if kind == "odd":
        assert (attn.nh, attn.dh, attn.inner) == (3, 8, 24) and attn.to_q.out_features == 24
    else:
        assert (attn.heads, attn.width) == (3, 24) and attn.w_qkv.out_features == 72
    assert res.model(torch.randn(2, 10, 8)).shape == (2, 5)
    edgeslim.save(res, tmp_path / "m.pt")
    back = edgeslim.load(tmp_path / "m.pt", base=make())
    x2 = torch.randn(2, 10, 8)
    with torch.no_grad():
        assert torch.equal(back(x2), res.model(x2))


class BiasTableAttention(nn.Module):
    """LeViT-like: per-head attention biases gathered by an index buffer, and a per-head temperature."""

    def __init__(self, dim: int, heads: int, points: int) -> None:
        super().__init__()
        self.num_heads, self.key_dim = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.randn(heads, points))
        self.temperature = nn.Parameter(torch.rand(heads, 1, 1) + 0.5)
        idx = torch.arange(points)
        self.register_buffer("bias_idxs", (idx[:, None] - idx[None, :]).abs(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.key_dim).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1)) * self.temperature + self.attention_biases[:, self.bias_idxs]
        return self.proj((a.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1))


def test_head_tables_lose_the_rows_of_the_removed_heads(tmp_path: Path) -> None:
    def make() -> Net:
        torch.manual_seed(2)
        return Net(BiasTableAttention(48, 4, 10)).eval()

    net, x = make(), torch.randn(1, 10, 8)
    res = edgeslim.prune(net, x, PruneConfig(target="ratio=0.5"))
    old, new = net.attn, res.model.attn
    assert new.num_heads == 2 and new.attention_biases.shape == (2, 10) and new.temperature.shape == (2, 1, 1)
    d = old.key_dim  # which heads stayed: their q rows are in the pruned qkv
    kept = [h for h in range(4) if any(torch.equal(old.qkv.weight[h * d], r) for r in new.qkv.weight[: 2 * d])]
    assert len(kept) == 2
    torch.testing.assert_close(new.attention_biases, old.attention_biases[kept], rtol=0, atol=0)
    torch.testing.assert_close(new.temperature, old.temperature[kept], rtol=0, atol=0)
    # the pruned attention is the original one with the removed heads' contribution cut from proj
    cols = torch.cat([torch.arange(h * d, (h + 1) * d) for h in kept])
    ref = BiasTableAttention(48, 4, 10).eval()
    ref.load_state_dict(old.state_dict())
    with torch.no_grad():
        ref.proj.weight[:, [c for c in range(48) if c not in cols]] = 0
        h = torch.randn(2, 10, 48)
        torch.testing.assert_close(new(h), ref(h), rtol=1e-5, atol=1e-5)
    edgeslim.save(res, tmp_path / "t.pt")
    back = edgeslim.load(tmp_path / "t.pt", base=make())
    with torch.no_grad():
        assert torch.equal(back(x), res.model(x))


class BiasMlp(nn.Module):
    """timm RelPosMlp-like: a small MLP computes one bias per head from relative coordinates."""

    def __init__(self, heads: int, points: int) -> None:
        super().__init__()
        self.num_heads, self.bias_shape = heads, (points, points, heads)
        self.mlp = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, heads))
        idx = torch.arange(points, dtype=torch.float32)
        self.register_buffer("coords", (idx[:, None] - idx[None, :]).reshape(-1, 1) / points, persistent=False)

    def forward(self) -> torch.Tensor:
        return self.mlp(self.coords).view(-1, self.num_heads).view(self.bias_shape).permute(2, 0, 1)


class MlpBiasAttention(nn.Module):
    def __init__(self, dim: int, heads: int, points: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj, self.rel_pos = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), BiasMlp(heads, points)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5 + self.rel_pos()
        return self.proj((a.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1))


def test_a_per_head_bias_mlp_loses_the_outputs_of_the_removed_heads(tmp_path: Path) -> None:
    def make() -> Net:
        torch.manual_seed(4)
        return Net(MlpBiasAttention(48, 4, 10)).eval()

    net, x = make(), torch.randn(1, 10, 8)
    res = edgeslim.prune(net, x, PruneConfig(target="ratio=0.5"))
    old, new = net.attn, res.model.attn
    assert new.num_heads == 2 and new.qkv.out_features == 3 * 24
    assert new.rel_pos.mlp[2].out_features == 2 and (new.rel_pos.num_heads, new.rel_pos.bias_shape) == (2, (10, 10, 2))
    d = old.head_dim
    kept = [h for h in range(4) if any(torch.equal(old.qkv.weight[h * d], r) for r in new.qkv.weight[: 2 * d])]
    assert len(kept) == 2
    torch.testing.assert_close(new.rel_pos.mlp[2].bias, old.rel_pos.mlp[2].bias[kept], rtol=0, atol=0)  # its heads
    assert old.num_heads == 4 and old.rel_pos.mlp[2].out_features == 4  # the user's model untouched
    assert res.model(torch.randn(2, 10, 8)).shape == (2, 5)


class Scale(nn.Module):
    """A channel scale viewed to a shape kept in an attribute (poolformer's ``Scale``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.shape = (dim, 1, 1)
        self.scale = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(self.shape)


class PoolBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm, self.pool = nn.GroupNorm(1, dim), nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.ls1 = Scale(dim)
        self.fc1, self.fc2 = nn.Conv2d(dim, 4 * dim, 1), nn.Conv2d(4 * dim, dim, 1)
        self.gamma = nn.Parameter(torch.rand(dim, 1, 1) + 0.5)  # LayerScale [C, 1, 1], not in a layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        x = x + self.ls1(self.pool(y) - y)
        return x + self.gamma * self.fc2(F.gelu(self.fc1(x)))


class PoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 4, 4)
        self.blocks = nn.Sequential(PoolBlock(32), PoolBlock(32))
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def test_layer_scale_parameters_and_shape_attributes_follow_their_channels(tmp_path: Path) -> None:
    def make() -> PoolNet:
        torch.manual_seed(3)
        return PoolNet().eval()

    net, x = make(), torch.randn(1, 3, 32, 32)
    res = edgeslim.prune(net, x, PruneConfig(target="params=0.5"))
    assert res.summary()["params_fraction"] == pytest.approx(0.5, abs=0.01)
    width = res.model.stem.out_channels
    assert width < 32
    for block in res.model.blocks:
        assert block.ls1.shape == (width, 1, 1) and block.ls1.scale.shape == (width,)
        assert block.gamma.shape == (width, 1, 1)
    assert res.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    edgeslim.save(res, tmp_path / "p.pt")
    back = edgeslim.load(tmp_path / "p.pt", base=make())
    with torch.no_grad():
        assert torch.equal(back(x), res.model(x))
    assert back.blocks[0].ls1.shape == (width, 1, 1)


class WidthFromInput(nn.Module):
    """Derives head_dim from the input width (like torchvision's swin): its heads cannot be removed alone, only
    together with that width (streamheads.py)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


def test_an_attention_whose_heads_follow_only_its_input_width_keeps_them_while_that_width_is_whole() -> None:
    net, x = Net(WidthFromInput(48, 4)).eval(), torch.randn(1, 10, 8)
    found = analyse(net, x)
    assert [(a.stream, a.heads, a.head_dim) for a in found.attentions] == [(48, 4, 12)]
    assert net.attn.qkv not in found.keep
    res = edgeslim.prune(net, x, PruneConfig(target="ratio=0.5"))  # a ratio target: the embedding width stays
    assert res.model.attn.qkv.out_features == 144 and res.model.up.out_features < 96
    assert res.model(x).shape == (1, 5)
    assert res.summary()["left_whole"] == [{"module": "attn.qkv", "reason": STREAM_KEPT}]


class Fold(nn.Module):
    """Merges a conv's channels into the batch dimension (like mobilevit's unfold): that conv is left whole."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.mix = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(1, 1, 3, padding=1)
        self.out, self.fc = nn.Conv2d(8, 16, 1), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        b, c, h, w = y.shape
        return self.fc(self.out(self.mix(y.reshape(b * c, 1, h, w)).reshape(b, c, h, w)).mean((2, 3)))


def test_a_layer_merged_into_the_batch_dimension_is_listed_as_left_whole() -> None:
    torch.manual_seed(0)
    net, x = Fold().eval(), torch.randn(1, 3, 8, 8)
    res = edgeslim.prune(net, x, PruneConfig(target="ratio=0.5"))
    assert res.summary()["left_whole"] == [{"module": "conv", "reason": "its channels are merged into the batch "
                                                                         "dimension (fold/unfold): the graph cannot follow them"}]
    assert (res.model.conv.out_channels, res.model.out.out_channels) == (8, 8)
    assert res.model(torch.randn(2, 3, 8, 8)).shape == (2, 4)
