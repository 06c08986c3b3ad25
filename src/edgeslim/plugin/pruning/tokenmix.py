"""Token-mixing layers: Linear layers run along the tokens, not the channels (MLP-Mixer, gMLP, ResMLP).

``mlp_tokens(norm(x).transpose(1, 2)).transpose(1, 2)`` runs a Linear over the token dimension: its
``in_features``/``out_features`` are token counts, and each channel of its input comes out as the same
channel. torch-pruning sees an ordinary Linear and couples its (token) features with the channels around
it, so every group through it breaks the forward. :mod:`.headtrace` finds these layers by where the
channel dimension is when they run; here the dependency graph makes each one carry channels through
unchanged (like an elementwise op), and it is never pruned itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch_pruning as tp
from torch import nn


class _PassThrough(tp.ops.DummyPruner):
    """Prunes nothing; its in- and out-channel functions are one (torch-pruning follows one into the other)."""


_PASS = _PassThrough()


def pass_through(graph: tp.DependencyGraph, layers: Sequence[nn.Module]) -> None:
    """Make each of ``layers`` carry the channels through in ``graph`` (idempotent: the same functions are set again)."""
    for layer in layers:
        node = graph.module2node.get(layer)
        if node is None:
            continue
        for dep in node.dependencies:  # from it to its neighbours: one trigger for both sides
            dep.trigger = _PASS.prune_out_channels
        for other in {*node.inputs, *node.outputs}:
            for dep in other.dependencies:  # from its neighbours to it: nothing to cut, and onwards
                if dep.target is node:
                    dep.handler = _PASS.prune_out_channels


@contextlib.contextmanager
def mixers_pass_through(layers: Sequence[nn.Module]) -> Iterator[None]:
    """While active, every dependency graph built (or handed over) gets :func:`pass_through` for ``layers``."""
    if not layers:
        yield
        return
    original = tp.DependencyGraph.build_dependency

    def build(self: tp.DependencyGraph, *args: Any, **kwargs: Any) -> tp.DependencyGraph:
        graph = original(self, *args, **kwargs)
        pass_through(graph, layers)
        return graph

    tp.DependencyGraph.build_dependency = build
    try:
        yield
    finally:
        tp.DependencyGraph.build_dependency = original
