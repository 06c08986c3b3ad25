"""One call: ``edgeslim.prune(model, example_inputs, config) -> PruneResult``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from edgeslim.errors import ConfigError
from edgeslim.models import clone, copy_arch
from edgeslim.plugin.pruning.attention import convert_attention
from edgeslim.plugin.pruning.config import Allocation, Method, PruneConfig, TargetKind
from edgeslim.plugin.pruning.degrade import Checked, prune_checked
from edgeslim.plugin.pruning.graph import check_inputs
from edgeslim.plugin.pruning.heads import analyse
from edgeslim.plugin.pruning.importance import IMPORTANCE, make, needs_data
from edgeslim.plugin.pruning.importance.base import Batch, LossFn
from edgeslim.plugin.pruning.metrics import Inputs, ModelStats, layer_report, measure
from edgeslim.plugin.pruning.sensitivity import SensitivityResult, sensitivity
from edgeslim.plugin.pruning.structured import Plan, ignored_modules
from edgeslim.plugin.pruning.targets import NearestPlanError, reached_value, target_outcome
from edgeslim.plugin.pruning.unstructured import WEIGHT_SCORES, Masks, compute_masks, remember_masks

_SIZE_TARGETS = (TargetKind.PARAMS, TargetKind.MACS, TargetKind.BYTES)


@dataclass
class PruneResult:
    """What :func:`prune` returns.

    Attributes:
        model: The pruned model (a copy unless ``config.inplace``).
        config: The configuration used.
        before: Params/MACs/bytes of the input model.
        after: The same for the pruned model.
        layers: Per-layer rows: channels, params and sparsity before → after.
        plan: The channel plan applied (default ratio and per-group ratios).
        masks: Unstructured masks (unstructured/hybrid), to keep during fine-tuning.
        sensitivity: The sensitivity table when the allocation used one.
    """

    model: nn.Module
    config: PruneConfig
    before: ModelStats
    after: ModelStats
    layers: list[dict[str, Any]]
    plan: Plan
    masks: Masks | None = None
    sensitivity: SensitivityResult | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The headline numbers as a flat JSON-able dict (``params_before``, ``params_after`` ...)."""
        out: dict[str, Any] = {}
        for key in ("params", "macs", "bytes", "nonzero_params"):
            out[f"{key}_before"] = getattr(self.before, key)
            out[f"{key}_after"] = getattr(self.after, key)
        out["params_fraction"] = self.after.params / self.before.params
        out["macs_fraction"] = self.after.macs / self.before.macs
        out["sparsity"] = 0.0 if self.masks is None else self.masks.sparsity()
        out["config"] = self.config.to_dict()
        out["channel_ratio"] = self.plan.ratio
        out.update(self.extra)
        return out


#: Channel criteria that rank single weights the same way as ``magnitude`` (|w|).
_MAGNITUDE_ALIASES = ("l1", "l2")


def weight_criterion(config: PruneConfig) -> str:
    """The per-weight criterion of unstructured / hybrid pruning (``l1`` / ``l2`` rank weights as ``magnitude``).

    Raises:
        ConfigError: ``config.criterion`` cannot score single weights (names the valid ones).
    """
    crit = config.criterion
    if crit in _MAGNITUDE_ALIASES:
        return "magnitude"
    if crit not in WEIGHT_SCORES:
        valid = sorted([*WEIGHT_SCORES.loaded(), *_MAGNITUDE_ALIASES])
        raise ConfigError(f"edgeslim.plugin.pruning: criterion {crit!r} cannot score single weights for "
                          f"{config.method.value} pruning; use one of {valid}")
    return crit


def named_params(model: nn.Module, config: PruneConfig) -> PruneConfig:
    """``config`` with parameters given as objects (``unwrapped_parameters``, ``ignored_params``) named,
    so that they refer to the same parameters in the copy that is pruned.

    Raises:
        ConfigError: A parameter object does not belong to ``model``.
    """
    names = {id(p): n for n, p in model.named_parameters()}

    def name(p: object, what: str) -> object:
        if isinstance(p, str):
            return p
        if id(p) not in names:
            raise ConfigError(f"edgeslim.plugin.pruning: a parameter in {what} is not a parameter of "
                              f"{type(model).__name__}; give its name (see model.named_parameters())")
        return names[id(p)]

    return config.with_(
        unwrapped_parameters=tuple((name(p, "unwrapped_parameters"), d) for p, d in config.unwrapped_parameters),
        ignored_params=tuple(name(p, "ignored_params") for p in config.ignored_params))


def _validate(config: PruneConfig, data: Iterable[Batch] | None) -> None:
    if config.method is not Method.UNSTRUCTURED:
        IMPORTANCE.get(config.criterion)  # unknown names fail before any work
    needs = (config.method is not Method.UNSTRUCTURED and needs_data(make(config.criterion))) or (
        config.allocation is Allocation.SENSITIVITY and config.target.kind is not TargetKind.RATIO
    )
    if config.method is not Method.STRUCTURED:
        crit = weight_criterion(config)
        needs = needs or crit == "gradient"
    if needs and data is None:
        raise ConfigError(
            f"criterion {config.criterion!r} / allocation {config.allocation.value!r} needs data: "
            "pass data=<a DataLoader of (inputs, labels)>"
        )
    if config.method is Method.UNSTRUCTURED and config.target.kind not in (TargetKind.SPARSITY, TargetKind.RATIO):
        raise ConfigError("unstructured pruning takes sparsity=..., not a params/MACs/bytes target (zeros still count)")


def _working_copy(model: nn.Module, config: PruneConfig) -> nn.Module:
    work = clone(model)  # the copy rebuilds on load like the original (clone: cached graph tensors detached)
    work.eval()
    if config.method is not Method.UNSTRUCTURED:  # heads become prunable (same outputs); see transformers.py
        convert_attention(work, keep=ignored_modules(work, config))
    return work


def _with_embed_fallback(model: nn.Module, work: nn.Module, example_inputs: Inputs, config: PruneConfig,
                         before: ModelStats, checked_on: Callable[[nn.Module, PruneConfig], Checked]
                         ) -> tuple[Checked, PruneConfig, dict[str, Any] | None]:
    """Prune with the embedding width whole; when a size target is out of reach that way and
    ``transformer.embed_dim`` is ``None`` (auto), prune again narrowing it too. Returns the outcome, the config
    that made it, and (when narrowed automatically) why: ``{"narrowed": True, "nearest_whole": fraction}``."""
    auto = config.transformer.embed_dim is None and config.target.kind in _SIZE_TARGETS
    try:
        checked = checked_on(work, config)
    except NearestPlanError as exc:
        if not auto:
            raise
        failed: NearestPlanError | None = exc
        nearest = exc.nearest
    else:
        if not auto or checked.after is None or _met(config, before, checked.after):
            return checked, config, None
        failed, nearest = None, reached_value(config.target.kind, checked.after, before)
    wider = config.with_(transformer=replace(config.transformer, embed_dim=True))
    fresh = _working_copy(model, wider)
    found = analyse(fresh, example_inputs, config.forward_fn)  # remembered from the first try (same structure)
    if not (found.transformer or found.entries):  # no embedding width kept whole: nothing to narrow
        if failed is not None:
            raise failed
        return checked, config, None
    try:
        again = checked_on(fresh, wider)
    except NearestPlanError:
        if failed is not None:
            raise failed from None
        return checked, config, None
    if again.after is not None and not _met(wider, before, again.after) and failed is None:
        return checked, config, None  # neither meets it (accept_nearest): the plan with the embedding whole
    return again, wider, {"narrowed": True, "nearest_whole": nearest}


def _met(config: PruneConfig, before: ModelStats, after: ModelStats) -> bool:
    return bool(target_outcome(config, before, after).get("target_met", True))


def prune(
    model: nn.Module,
    example_inputs: Inputs,
    config: PruneConfig | None = None,
    *,
    data: Iterable[Batch] | None = None,
    loss_fn: LossFn | None = None,
    sensitivity_table: SensitivityResult | None = None,
    on_trial: Callable[[Plan, ModelStats], None] | None = None,
    plan: Plan | None = None,
) -> PruneResult:
    """Prune ``model`` according to ``config``.

    Args:
        model: Any eager ``nn.Module`` torch-pruning can trace. Untouched unless ``config.inplace``.
        example_inputs: Inputs for tracing and counting MACs (e.g. ``torch.randn(1, 3, 32, 32)``).
        config: What to prune and how much (default: structured, L2, 50 % of channels).
        data: Batches ``(x, y)`` for data-driven criteria (taylor, activation, apoz, gradient)
            and for sensitivity allocation; the first ``config.data_batches`` are used.
        loss_fn: Loss for Taylor/gradient/sensitivity (default cross-entropy).
        sensitivity_table: A precomputed table for ``allocation=sensitivity`` (else computed).
        on_trial: Called with each plan tried by the target search and its measured stats.
        plan: Apply exactly this channel plan (per-group ratios keyed by group root name) and skip
            the target search; ``config.target`` and ``config.allocation`` are then not used.

    Returns:
        A :class:`PruneResult`.

    Raises:
        ConfigError: Invalid config or missing data (raised before any work).
        UntraceableModelError: torch-pruning cannot trace the model (model not modified).
        TargetUnreachableError: The target cannot be met within tolerance (says the nearest reachable;
            with ``config.accept_nearest`` that plan is used and the summary has ``target_met: false``
            and ``nearest``).
    """
    config = named_params(model, config or PruneConfig())
    check_inputs(example_inputs)
    _validate(config, data)
    loss_fn = loss_fn or nn.functional.cross_entropy
    batches = [b for _, b in zip(range(config.data_batches), data, strict=False)] if data is not None else []
    work = _working_copy(model, config)
    before = measure(work, example_inputs, config.forward_fn)
    given, plan = plan, Plan(ratio=0.0)
    table = sensitivity_table
    extra: dict[str, Any] = {"left_whole": []}  # every layer left whole and why (``{"module", "reason"}``)
    measured: ModelStats | None = None
    if config.method is not Method.UNSTRUCTURED:
        imp = make(config.criterion)
        allocator = None
        searched = given is None and config.target.kind is not TargetKind.RATIO
        if config.allocation is Allocation.SENSITIVITY and searched:
            table = table or sensitivity(work, example_inputs, batches, config, loss_fn=loss_fn)
            allocator = table.allocator()
        if needs_data(imp):
            imp.collect(work, batches, loss_fn)

        def checked_on(work: nn.Module, cfg: PruneConfig) -> Checked:
            return prune_checked(work, example_inputs, cfg, imp, before, plan=given, allocator=allocator,
                                 on_trial=on_trial, batches=batches, loss_fn=loss_fn)

        checked, config, extra["embed_dim"] = _with_embed_fallback(model, work, example_inputs, config, before,
                                                                       checked_on)
        work, plan, measured = copy_arch(model, checked.model), checked.plan, checked.after
        extra["left_whole"] = checked.left_whole
        if extra["embed_dim"] is None:
            del extra["embed_dim"]
    masks = None
    if config.method is not Method.STRUCTURED:
        sparsity = config.target.value if config.target.kind is TargetKind.SPARSITY else config.sparsity
        crit = weight_criterion(config)
        masks = compute_masks(
            work, sparsity, criterion=crit, scope=config.sparsity_scope, ignored=ignored_modules(work, config),
            rules=config.layer_rules, batches=batches, loss_fn=loss_fn,
        )
    after = measured if masks is None and measured is not None else measure(work, example_inputs, config.forward_fn)
    layers = layer_report(model, work)
    if config.inplace:
        model.__dict__.update(work.__dict__)
        work = model
        if masks is not None:
            masks.model = model
            remember_masks(model, masks.masks)
    if config.method is not Method.UNSTRUCTURED and given is None:
        extra.update(target_outcome(config, before, after))
    return PruneResult(work, config, before, after, layers, plan, masks, table, extra=extra)
