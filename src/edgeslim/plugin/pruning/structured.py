"""Structural (channel) pruning on torch-pruning's dependency graph."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch_pruning as tp
from torch import nn

from edgeslim.errors import ConfigError
from edgeslim.plugin.pruning import grouping
from edgeslim.plugin.pruning.config import LayerRule, PruneConfig
from edgeslim.plugin.pruning.graph import PRUNABLE, classifier_head, resolve_layers, tracing_errors
from edgeslim.plugin.pruning.importance.base import Batch, LossFn, needs_data
from edgeslim.plugin.pruning.metrics import Inputs
from edgeslim.plugin.pruning.transformers import TransformerPruner, TransformerSpec, transformer_spec

grouping.install()  # torch-pruning's groups without its exponential walk (rexnet: hours -> seconds)


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


def resolve_params(model: nn.Module, pairs: Sequence[tuple[object, int]], what: str) -> list[tuple[nn.Parameter, int]]:
    """``(parameter, dim)`` pairs from ``(name or parameter, dim)`` pairs of the config.

    Raises:
        ConfigError: A name is not a parameter of ``model`` (names a few that are).
    """
    named = dict(model.named_parameters())
    out: list[tuple[nn.Parameter, int]] = []
    for p, dim in pairs:
        if isinstance(p, str):
            if p not in named:
                sample = ", ".join(list(named)[:6])
                raise ConfigError(f"prune config {what}: {p!r} is not a parameter of {type(model).__name__} "
                                  f"(parameters: {sample}, ...)")
            out.append((named[p], dim))
        elif isinstance(p, nn.Parameter):
            out.append((p, dim))
        else:
            raise ConfigError(f"prune config {what}: {p!r} is neither a parameter name nor an nn.Parameter")
    return out


def plan_ratios(modules: dict[str, nn.Module], rules: dict[str, float], plan: Plan) -> dict[nn.Module, float]:
    """Per-layer ratios of ``plan`` on top of the layer rules' (``rule_ratios``), keyed by module."""
    return {modules[name]: r for name, r in {**rules, **plan.group_ratios}.items() if name in modules}


def make_pruner(
    model: nn.Module,
    example_inputs: Inputs,
    config: PruneConfig,
    importance: tp.importance.Importance,
    plan: Plan,
    steps: int = 1,
    scheduler: Callable[[float, int], list[float]] | None = None,
    extra_ignored: Sequence[str] = (),
    specs: dict[tuple[int, ...], TransformerSpec | None] | None = None,
) -> tp.pruner.BasePruner:
    """A torch-pruning pruner for ``model`` following ``plan`` (nothing is pruned yet).

    ``extra_ignored``: names of layers left whole on top of the config's ignored layers (groups that broke the
    forward, see :mod:`~edgeslim.plugin.pruning.degrade`). The config's torch-pruning hooks
    (``forward_fn``, ``output_transform``, ``customized_pruners``, ``unwrapped_parameters``,
    ``ignored_params``) are passed on. ``specs``: transformer specs already made for ``model`` (by ignored
    layers), reused and filled (many plans on one unpruned model).
    """
    ratio_dict = plan_ratios(dict(model.named_modules()), rule_ratios(model, config.layer_rules), plan)
    kwargs: dict[str, object] = {} if scheduler is None else {"iterative_pruning_ratio_scheduler": scheduler}
    ignored: list[nn.Module] = ignored_modules(model, config)
    ignored += [m for m in map(model.get_submodule, extra_ignored) if m not in ignored]
    key = tuple(id(m) for m in ignored)
    if specs is not None and key in specs:
        spec = specs[key]
    else:
        spec = transformer_spec(model, config.transformer, keep=ignored, example_inputs=example_inputs,
                                forward_fn=config.forward_fn)  # see transformers.py
        if specs is not None:
            specs[key] = spec
    cls: type[tp.pruner.BasePruner] = tp.pruner.BasePruner
    unwrapped = resolve_params(model, config.unwrapped_parameters, "unwrapped_parameters")
    if spec is not None:
        cls, kwargs = TransformerPruner, {**kwargs, "spec": spec, "head_ratio": plan.ratio}
        custom = tuple(t for t, _ in config.customized_pruners)  # their pruner handles their parameters
        owned = {id(p) for m in model.modules() if custom and isinstance(m, custom) for p in m.parameters()}
        spec.unwrapped[:] = [(p, d) for p, d in spec.unwrapped if id(p) not in owned]
        known = {id(p) for p, _ in spec.unwrapped}
        spec.unwrapped.extend((p, d) for p, d in unwrapped if id(p) not in known)
    elif unwrapped:
        kwargs["unwrapped_parameters"] = unwrapped
    if config.customized_pruners:
        kwargs["customized_pruners"] = dict(config.customized_pruners)
    for hook in ("forward_fn", "output_transform"):
        if getattr(config, hook) is not None:
            kwargs[hook] = getattr(config, hook)
    params = [p for p, _ in resolve_params(model, [(q, 0) for q in config.ignored_params], "ignored_params")]
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
            ignored_layers=[*ignored, *params],
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
    extra_ignored: Sequence[str] = (),
) -> nn.Module:
    """Remove channels from ``model`` in place following ``plan``, in ``config.iterative_steps`` steps.

    Data-driven criteria re-gather their statistics before every step (the channels changed).
    """
    steps = config.iterative_steps
    if needs_data(importance):
        importance.collect(model, batches, loss_fn)
        importance.bind(model)
    pruner = make_pruner(model, example_inputs, config, importance, plan, steps=steps, extra_ignored=extra_ignored)
    for step in range(steps):
        if step > 0 and needs_data(importance):
            importance.collect(model, batches, loss_fn)
            importance.bind(model)
        pruner.step()
    model.zero_grad(set_to_none=True)
    return model
