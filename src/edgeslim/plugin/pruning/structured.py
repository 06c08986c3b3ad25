"""Structural (channel) pruning on torch-pruning's dependency graph."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch_pruning as tp
from torch import nn

from edgeslim.plugin.pruning.config import LayerRule, PruneConfig
from edgeslim.plugin.pruning.graph import PRUNABLE, classifier_head, resolve_layers, tracing_errors
from edgeslim.plugin.pruning.importance.base import Batch, LossFn, needs_data
from edgeslim.plugin.pruning.metrics import Inputs
from edgeslim.plugin.pruning.transformers import TransformerPruner, transformer_spec


@dataclass(frozen=True)
class Plan:
    """How many channels to remove: a default group ratio and per-group overrides (root module names)."""

    ratio: float
    group_ratios: dict[str, float] = field(default_factory=dict)
    global_ranking: bool = False


def ignored_modules(model: nn.Module, config: PruneConfig) -> list[nn.Module]:
    """The modules never pruned: ``config.ignored_layers`` (default: the classifier head) and skip rules."""
    names = classifier_head(model) if config.ignored_layers is None else list(config.ignored_layers)
    mods = resolve_layers(model, names) if names else []
    skip = [r.pattern for r in config.layer_rules if r.skip]
    for m in resolve_layers(model, skip) if skip else []:
        if m not in mods:
            mods.append(m)
    return mods


def rule_ratios(model: nn.Module, rules: Sequence[LayerRule]) -> dict[str, float]:
    """Per-module channel ratios from layer rules (module name -> ratio)."""
    out: dict[str, float] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, PRUNABLE):
            continue
        for rule in rules:
            if rule.ratio is not None and rule.matches(name):
                out[name] = float(rule.ratio)
    return out


def make_pruner(
    model: nn.Module,
    example_inputs: Inputs,
    config: PruneConfig,
    importance: tp.importance.Importance,
    plan: Plan,
    steps: int = 1,
    scheduler: Callable[[float, int], list[float]] | None = None,
) -> tp.pruner.BasePruner:
    """A torch-pruning pruner for ``model`` following ``plan`` (nothing is pruned yet)."""
    modules = dict(model.named_modules())
    ratio_dict: dict[nn.Module, float] = {}
    for name, r in {**rule_ratios(model, config.layer_rules), **plan.group_ratios}.items():
        if name in modules:
            ratio_dict[modules[name]] = r
    kwargs: dict[str, object] = {} if scheduler is None else {"iterative_pruning_ratio_scheduler": scheduler}
    ignored = ignored_modules(model, config)
    spec = transformer_spec(model, config.transformer, keep=ignored, example_inputs=example_inputs)  # see transformers.py
    cls: type[tp.pruner.BasePruner] = tp.pruner.BasePruner
    if spec is not None:
        cls, kwargs = TransformerPruner, {**kwargs, "spec": spec, "head_ratio": plan.ratio}
    with tracing_errors(model):
        return cls(
            model,
            example_inputs,
            importance=importance,
            pruning_ratio=plan.ratio,
            pruning_ratio_dict=ratio_dict or None,
            global_pruning=plan.global_ranking,
            max_pruning_ratio=config.max_layer_ratio,
            iterative_steps=steps,
            ignored_layers=ignored,
            round_to=config.round_to,
            **kwargs,
        )


def prune_structured(
    model: nn.Module,
    example_inputs: Inputs,
    config: PruneConfig,
    importance: tp.importance.Importance,
    plan: Plan,
    batches: Sequence[Batch] = (),
    loss_fn: LossFn | None = None,
) -> nn.Module:
    """Remove channels from ``model`` in place following ``plan``, in ``config.iterative_steps`` steps.

    Data-driven criteria re-gather their statistics before every step (the channels changed).
    """
    steps = config.iterative_steps
    if needs_data(importance):
        importance.collect(model, batches, loss_fn)
        importance.bind(model)
    pruner = make_pruner(model, example_inputs, config, importance, plan, steps=steps)
    for step in range(steps):
        if step > 0 and needs_data(importance):
            importance.collect(model, batches, loss_fn)
            importance.bind(model)
        pruner.step()
    model.zero_grad(set_to_none=True)
    return model
