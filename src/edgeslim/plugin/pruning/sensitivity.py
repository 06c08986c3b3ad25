"""Sensitivity analysis: prune one channel group at a time at several ratios, measure the loss
and accuracy on held-out batches, and allocate per-group ratios that meet a global target with
the least predicted damage."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from edgeslim.config import from_data, serializable, to_data
from edgeslim.errors import ConfigError
from edgeslim.models import clone
from edgeslim.plugin.pruning.config import PruneConfig
from edgeslim.plugin.pruning.graph import PRUNABLE, build_graph, check_inputs
from edgeslim.plugin.pruning.importance import make, needs_data
from edgeslim.plugin.pruning.importance.base import Batch, LossFn
from edgeslim.plugin.pruning.metrics import Inputs, measure
from edgeslim.plugin.pruning.structured import Plan, ignored_modules, make_pruner
from edgeslim.train import count_top1, device_of


def score(model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn,
          device: torch.device | None = None) -> tuple[float, float]:
    """``(accuracy, mean loss)`` of ``model`` over ``batches`` (eval mode; on ``device``, then moved back)."""
    was, home = model.training, device_of(model)
    model.eval()
    if device is not None:
        model.to(device)
    try:
        counts = count_top1(model, batches, device=device, loss_fn=loss_fn)
    finally:
        model.train(was)
        model.to(home)
    return counts.correct / max(counts.total, 1), counts.loss_sum / max(counts.total, 1)


@serializable()
@dataclass
class SensitivityResult:
    """The sensitivity table and what it implies.

    Attributes:
        base_accuracy: Accuracy of the unpruned model on the held-out batches.
        base_loss: Its mean loss.
        params: Parameters of the unpruned model.
        rows: One dict per (group, ratio): ``group``, ``channels``, ``ratio``, ``accuracy``,
            ``loss``, ``acc_drop``, ``loss_increase``, ``params_removed``, ``macs_removed``.
    """

    base_accuracy: float
    base_loss: float
    params: int
    macs: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    def groups(self) -> list[str]:
        """Group root names, in graph order."""
        return list(dict.fromkeys(r["group"] for r in self.rows))

    def curve(self, group: str, key: str = "loss_increase") -> list[tuple[float, float, float]]:
        """``(ratio, damage, params_removed_fraction)`` for ``group``, from ratio 0, damage made monotone."""
        pts = [(0.0, 0.0, 0.0)]
        worst = 0.0
        for r in sorted((r for r in self.rows if r["group"] == group), key=lambda r: r["ratio"]):
            worst = max(worst, float(r[key]), 0.0)
            pts.append((float(r["ratio"]), worst, float(r["params_removed"]) / self.params))
        return pts

    def allocator(self, key: str = "loss_increase", step: float = 0.05) -> Callable[[float], dict[str, float]]:
        """A map λ → group ratios minimising ``damage − λ · params_removed`` per group (linear interpolation)."""
        grids: dict[str, list[tuple[float, float, float]]] = {}
        for g in self.groups():
            pts = self.curve(g, key)
            fine: list[tuple[float, float, float]] = []
            top = pts[-1][0]
            n = round(top / step)
            for i in range(n + 1):
                r = min(i * step, top)
                for (r0, d0, s0), (r1, d1, s1) in itertools.pairwise(pts):
                    if r0 <= r <= r1:
                        t = 0.0 if r1 == r0 else (r - r0) / (r1 - r0)
                        fine.append((r, d0 + t * (d1 - d0), s0 + t * (s1 - s0)))
                        break
            grids[g] = fine

        def allocate(lam: float) -> dict[str, float]:
            return {g: min(grid, key=lambda p: p[1] - lam * p[2])[0] for g, grid in grids.items()}

        return allocate

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (:func:`edgeslim.config.to_data`, untagged)."""
        data: dict[str, Any] = to_data(self, tagged=False)
        return data

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON."""
        p = Path(path)
        p.write_text(json.dumps(self.to_dict(), indent=1))
        return p

    @classmethod
    def load(cls, path: str | Path) -> SensitivityResult:
        """Read a table written by :meth:`save`."""
        return from_data(json.loads(Path(path).read_text()), cls)

    def markdown(self) -> str:
        """The table as Markdown: accuracy drop (pt) per group and ratio."""
        ratios = sorted({r["ratio"] for r in self.rows})
        lines = ["| group | channels | " + " | ".join(f"{r:.0%}" for r in ratios) + " |",
                 "|---|---|" + "---|" * len(ratios)]
        for g in self.groups():
            cells = {r["ratio"]: r for r in self.rows if r["group"] == g}
            ch = next(iter(cells.values()))["channels"]
            lines.append(f"| {g} | {ch} | " + " | ".join(
                f"{100 * cells[r]['acc_drop']:.2f}" if r in cells else "" for r in ratios) + " |")
        return "\n".join(lines)

    def plot(self, path: str | Path, key: str = "acc_drop") -> Path:
        """Plot damage vs ratio, one line per group, to a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5))
        for g in self.groups():
            pts = sorted((r["ratio"], r[key]) for r in self.rows if r["group"] == g)
            ax.plot([p[0] for p in pts], [100 * p[1] if key == "acc_drop" else p[1] for p in pts], marker="o", label=g)
        ax.set_xlabel("channels removed from the group")
        ax.set_ylabel("top-1 drop (pt)" if key == "acc_drop" else key)
        ax.set_title("Pruning sensitivity per channel group")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        p = Path(path)
        fig.savefig(p, dpi=120)
        plt.close(fig)
        return p


_OUT_FNS = {
    tp.pruner.function.prune_conv_out_channels: 0,
    tp.pruner.function.prune_depthwise_conv_out_channels: 0,
    tp.pruner.function.prune_linear_out_channels: 0,
    tp.pruner.function.prune_batchnorm_out_channels: 0,
}


@contextlib.contextmanager
def masked_channels(group: tp.Group) -> Iterator[None]:
    """Zero, for the duration of the block, every output slice the group would remove.

    A removed channel contributes exactly zero downstream, so zeroing the producing layers'
    weights/biases (and BN scale/shift) reproduces the pruned model's function without
    rebuilding it — the same numbers for a fraction of the cost.
    """
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.no_grad():
        for dep, idxs in group:
            dim = _OUT_FNS.get(dep.pruning_fn)
            layer = dep.layer
            if dim is None or getattr(layer, "transposed", False):
                continue
            index = torch.tensor(sorted(int(i) for i in idxs), dtype=torch.long)
            for leaf in ("weight", "bias"):
                t = getattr(layer, leaf, None)
                if isinstance(t, torch.Tensor):
                    saved.append((t, t.data.clone()))
                    t.data.index_fill_(dim, index, 0.0)
    try:
        yield
    finally:
        with torch.no_grad():
            for t, orig in saved:
                t.data.copy_(orig)


def _n_pruned(channels: int, ratio: float, round_to: int | None) -> int:
    keep = int(channels * (1 - ratio))
    if round_to:
        keep = max(round_to, keep - keep % round_to) if channels >= round_to else channels
    return max(0, min(channels - 1, channels - keep))


def sensitivity(
    model: nn.Module,
    example_inputs: Inputs,
    data: Iterable[Batch],
    config: PruneConfig | None = None,
    *,
    loss_fn: LossFn | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    device: torch.device | None = None,
) -> SensitivityResult:
    """Prune each channel group of ``model`` alone at ``config.sensitivity_ratios`` and measure the damage.

    Damage is measured by masking the channels the criterion would remove (exactly the pruned
    function); parameters/MACs removed come from one real pruning of each group.

    Args:
        model: The model (not modified).
        example_inputs: Inputs for tracing.
        data: Held-out batches ``(x, y)``; the first ``config.data_batches`` are used.
        config: Criterion, ignored layers, ratios, batches.
        loss_fn: Loss for the score (default cross-entropy).
        on_progress: Called with ``(done, total)`` after each measurement.
        device: Where each measurement's forward passes run (None: the CPU, with the model).

    Returns:
        The :class:`SensitivityResult` table.
    """
    config = config or PruneConfig()
    check_inputs(example_inputs)
    loss_fn = loss_fn or nn.functional.cross_entropy
    batches = [b for _, b in zip(range(config.data_batches), data, strict=False)]
    if not batches:
        raise ConfigError("sensitivity analysis needs held-out data: pass a non-empty DataLoader of (x, y)")
    base = clone(model).eval()
    before = measure(base, example_inputs)
    acc0, loss0 = score(base, batches, loss_fn, device)
    imp = make(config.criterion)
    if needs_data(imp):
        imp.collect(base, batches, loss_fn)
        imp.bind(base)
    names = {m: n for n, m in base.named_modules()}
    dg = build_graph(base, example_inputs)
    groups = list(dg.get_all_groups(ignored_layers=ignored_modules(base, config), root_module_types=list(PRUNABLE)))
    result = SensitivityResult(acc0, loss0, before.params, before.macs)
    total, done = len(groups) * len(config.sensitivity_ratios), 0
    top = max(config.sensitivity_ratios)
    for group in groups:
        root, root_fn = group[0].dep.target.module, group[0].dep.handler
        name, channels = names.get(root, "?"), len(group[0].idxs)
        scores = imp(group)
        order = torch.argsort(scores) if scores is not None else torch.arange(channels)
        # parameters / MACs per removed channel, from one real pruning of this group alone
        work = clone(base)
        if needs_data(imp):
            imp.bind(work)
        make_pruner(work, example_inputs, config, imp, Plan(ratio=0.0, group_ratios={name: top})).step()
        cut = measure(work, example_inputs)
        k_top = max(1, _n_pruned(channels, top, config.round_to))
        per_param = (before.params - cut.params) / k_top
        per_mac = (before.macs - cut.macs) / k_top
        if needs_data(imp):
            imp.bind(base)
        for ratio in config.sensitivity_ratios:
            k = _n_pruned(channels, ratio, config.round_to)
            sub = dg.get_pruning_group(root, root_fn, idxs=order[:k].tolist())
            with masked_channels(sub):
                acc, loss = score(base, batches, loss_fn, device)
            result.rows.append({
                "group": name, "channels": channels, "ratio": ratio, "pruned": k, "accuracy": acc, "loss": loss,
                "acc_drop": acc0 - acc, "loss_increase": loss - loss0,
                "params_removed": round(per_param * k), "macs_removed": round(per_mac * k),
            })
            done += 1
            if on_progress:
                on_progress(done, total)
    return result
