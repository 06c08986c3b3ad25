"""tokenmix.py (with headtrace.py's channel following): layers run along the tokens carry channels through."""

from __future__ import annotations

import torch
from torch import nn

import edgeslim
from edgeslim.plugin.pruning import PruneConfig
from edgeslim.plugin.pruning.headtrace import trace

TOKENS, DIM = 16, 32


class MixerBlock(nn.Module):
    """MLP-Mixer style: a token MLP over the transposed sequence, then a channel MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.tok1, self.tok2 = nn.Linear(TOKENS, 24), nn.Linear(24, TOKENS)
        self.ch1, self.ch2 = nn.Linear(DIM, 64), nn.Linear(64, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.norm1(x).transpose(1, 2)
        x = x + self.tok2(torch.relu(self.tok1(t))).transpose(1, 2)
        return x + self.ch2(torch.relu(self.ch1(self.norm2(x))))


class GatingBlock(nn.Module):
    """gMLP style: the hidden width is chunked in two; one half is mixed over the tokens and gates the other."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.gate_norm = nn.LayerNorm(DIM), nn.LayerNorm(32)
        self.fc1, self.fc2 = nn.Linear(DIM, 64), nn.Linear(32, DIM)
        self.proj = nn.Linear(TOKENS, TOKENS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = self.fc1(self.norm(x)).chunk(2, dim=-1)
        v = self.proj(self.gate_norm(v).transpose(-1, -2)).transpose(-1, -2)
        return x + self.fc2(u * v)


class ChannelsLast(nn.Module):
    """ConvNeXt style: a conv's output permuted channels-last, then a Linear over the channels (not tokens)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc1, self.fc2 = nn.Conv2d(DIM, DIM, 3, padding=1), nn.Linear(DIM, 64), nn.Linear(64, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).permute(0, 2, 3, 1)
        return x + self.fc2(torch.relu(self.fc1(y))).permute(0, 3, 1, 2)


class Net(nn.Module):
    def __init__(self, block: type[nn.Module]) -> None:
        super().__init__()
        self.embed = nn.Linear(12, DIM)
        self.blocks = nn.Sequential(block(), block())
        self.head = nn.Linear(DIM, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, TOKENS, 12)
        return self.head(self.blocks(self.embed(x)).mean(1))


def _net(block: type[nn.Module]) -> Net:
    torch.manual_seed(0)
    return Net(block).eval()


def test_trace_finds_the_layers_run_along_the_tokens_and_only_those() -> None:
    x = torch.randn(1, TOKENS, 12)
    mixer, gating = _net(MixerBlock), _net(GatingBlock)
    assert [n for n, m in mixer.named_modules() if m in trace(mixer, x).mixers] == [
        "blocks.0.tok1", "blocks.0.tok2", "blocks.1.tok1", "blocks.1.tok2"]
    assert [n for n, m in gating.named_modules() if m in trace(gating, x).mixers] == ["blocks.0.proj", "blocks.1.proj"]
    conv = nn.Sequential(ChannelsLast(), ChannelsLast()).eval()
    assert trace(conv, torch.randn(1, DIM, 6, 6)).mixers == []


def test_token_mixers_keep_their_widths_while_the_channels_around_them_are_pruned() -> None:
    x = torch.randn(1, TOKENS, 12)
    for block, mixers in ((MixerBlock, ("tok1", "tok2")), (GatingBlock, ("proj",))):
        model = _net(block)
        before = {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        res = edgeslim.prune(model, x, PruneConfig(criterion="l2", target="params=0.5", accept_nearest=True))
        summary = res.summary()
        assert summary["left_whole"] == [], block.__name__
        assert summary["params_fraction"] < 0.75, block.__name__
        after = {n: (m.in_features, m.out_features) for n, m in res.model.named_modules() if isinstance(m, nn.Linear)}
        for i in range(2):
            for name in mixers:
                key = f"blocks.{i}.{name}"
                assert after[key] == before[key], key  # token counts (and the token MLP's hidden width) kept
        assert after["embed"][1] < DIM  # the channels through the token mixers were cut
        with torch.no_grad():
            assert res.model(x).shape == (1, 10)


def test_a_token_mixing_net_meets_a_params_target() -> None:
    res = edgeslim.prune(_net(MixerBlock), torch.randn(1, TOKENS, 12), PruneConfig(criterion="l2", target="params=0.5"))
    assert res.summary()["target_met"] is True
    assert abs(res.summary()["params_fraction"] - 0.5) <= 0.01


def test_a_linear_over_channels_last_conv_features_is_pruned_as_usual() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(ChannelsLast(), nn.Flatten(), nn.Linear(DIM * 36, 10)).eval()
    res = edgeslim.prune(model, torch.randn(1, DIM, 6, 6), PruneConfig(criterion="l2", target="params=0.5",
                                                                       ignored_layers=("2",)))
    assert res.model[0].fc1.out_features < 64
