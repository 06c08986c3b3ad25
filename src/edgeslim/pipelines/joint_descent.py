"""The joint search's moving parts: candidates, the search state (prediction, calibration,
whole-model measurement), the greedy descent and the Pareto front."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from edgeslim.pipelines.joint_space import Bits, ModelSpace, Widths
from edgeslim.pipelines.latency import LatencyMeter
from edgeslim.plugin.pruning.api import PruneResult, prune
from edgeslim.plugin.pruning.config import PruneConfig
from edgeslim.plugin.pruning.metrics import Inputs
from edgeslim.plugin.pruning.sensitivity import SensitivityResult
from edgeslim.plugin.pruning.structured import Plan

EventHandler = Callable[[str, dict[str, Any]], None]
#: During the descent, the current plan is measured whole again once its predicted latency
#: fell by this fraction since the last measured plan (NetAdapt-style re-calibration).
REMEASURE_DROP = 0.25


@dataclass
class Candidate:
    """One evaluated plan and its numbers (``measured_ms`` once measured whole on the target)."""

    widths: Widths
    bits: Bits
    params: int
    bytes: int
    macs: int
    proxy: float
    table_ms: float
    predicted_ms: float = 0.0
    measured_ms: float | None = None
    top1: float | None = None
    step: int = 0

    def ident(self) -> tuple[tuple[str, int, int], ...]:
        """A hashable identity (widths and bits)."""
        return tuple((g, w, self.bits[g]) for g, w in sorted(self.widths.items()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def apply_widths(model: nn.Module, example_inputs: Inputs, space: ModelSpace, candidate: Candidate) -> PruneResult:
    """Prune a copy of ``model`` to the candidate's per-group widths (L2 importance)."""
    ratios = {g: 1 - (w + 0.5) / space.group(g).channels for g, w in candidate.widths.items()
              if w < space.group(g).channels}  # +0.5: torch-pruning keeps int(channels · (1 - ratio))
    result = prune(model, example_inputs, PruneConfig(max_layer_ratio=1.0), plan=Plan(0.0, ratios))
    result.extra["bits"] = dict(candidate.bits)
    return result


def interp(curve: Sequence[tuple[float, float, float]], ratio: float) -> float:
    """The damage of a sensitivity ``curve`` (``(ratio, damage, _)`` points) at ``ratio``, linearly interpolated."""
    for (r0, d0, _), (r1, d1, _) in itertools.pairwise(curve):
        if r0 <= ratio <= r1:
            return d0 if r1 == r0 else d0 + (ratio - r0) / (r1 - r0) * (d1 - d0)
    return curve[-1][1]


class Search:
    """The state of one joint search (see :func:`joint_search`)."""

    def __init__(self, space: ModelSpace, meter: LatencyMeter, sens: SensitivityResult,
                 bit_loss: dict[int, dict[str, float]], on_event: EventHandler | None) -> None:
        self.space, self.meter, self.sens, self.bit_loss = space, meter, sens, bit_loss
        self.curves = {g.name: sens.curve(g.name) for g in space.groups}
        self.on_event = on_event
        self.points: list[tuple[float, float]] = []  # (Σ table, measured ms)
        self.fit = (1.0, 0.0)
        self.seen: dict[Any, Candidate] = {}
        self.trace: list[dict[str, Any]] = []
        self.trace_refs: list[Candidate] = []

    def event(self, kind: str, **data: Any) -> None:
        """Report ``(kind, data)`` to the caller's ``on_event``."""
        if self.on_event is not None:
            self.on_event(kind, data)

    def candidate(self, widths: Widths, bits: Bits, step: int) -> Candidate:
        """The candidate of ``widths``/``bits`` with its proxy, params, bytes, MACs (one object per plan)."""
        proxy = sum(interp(self.curves[g], 1 - w / self.space.group(g).channels) for g, w in widths.items())
        proxy += sum(self.bit_loss.get(b, {}).get(g, 0.0) for g, b in bits.items())
        c = Candidate(dict(widths), dict(bits), self.space.params(widths), self.space.nbytes(widths, bits),
                      self.space.macs(widths), proxy, 0.0, step=step)
        return self.seen.setdefault(c.ident(), c)

    def predict(self, cands: Sequence[Candidate]) -> None:
        """Fill ``table_ms`` / ``predicted_ms`` (missing layer entries are measured in one bench call)."""
        geoms = {id(c): self.space.geometries(c.widths) for c in cands}
        table = self.meter.layers([g for gs in geoms.values() for g in gs])
        a, b = self.fit
        for c in cands:
            c.table_ms = sum(table[g.key()] for g in geoms[id(c)])
            c.predicted_ms = a * c.table_ms + b

    def refit(self) -> None:
        """Least-squares ``measured ≈ a · Σ table + b`` (a > 0); one point: a ratio through zero."""
        xs, ys = [p[0] for p in self.points], [p[1] for p in self.points]
        n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        a = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if n > 1 and var > 0 else 0.0
        self.fit = (a, my - a * mx) if a > 0 and my - a * mx > -0.5 * my else (my / mx, 0.0)
        for c in self.seen.values():
            c.predicted_ms = self.fit[0] * c.table_ms + self.fit[1]
        self.event("fit", a=self.fit[0], b=self.fit[1], points=len(self.points))

    def measure(self, cands: Sequence[Candidate], model: nn.Module, example_inputs: Inputs) -> None:
        """Prune, export and measure whole every candidate not measured yet; refit."""
        todo = [c for c in cands if c.measured_ms is None]
        if not todo:
            return
        x = example_inputs[0] if isinstance(example_inputs, tuple) else example_inputs
        pruned = [apply_widths(model, example_inputs, self.space, c).model for c in todo]
        for c, ms in zip(todo, self.meter.models(pruned, channels=int(x.shape[1])), strict=True):
            c.measured_ms = ms
            self.points.append((c.table_ms, ms))
            self.event("measured", widths=c.widths, predicted_ms=c.predicted_ms, measured_ms=ms)
        self.refit()


def value(c: Candidate, what: str, measured: bool = False) -> float:
    """The candidate's ``ms`` (measured if asked and known, else predicted), ``bytes`` or ``macs``."""
    if what == "ms":
        return c.measured_ms if measured and c.measured_ms is not None else c.predicted_ms
    return float(c.bytes if what == "bytes" else c.macs)


def meets(c: Candidate, limits: dict[str, float], measured: bool) -> bool:
    """Whether ``c`` is within every limit (by measured latency when ``measured``: unmeasured never is)."""
    if measured and "ms" in limits and c.measured_ms is None:
        return False
    return all(value(c, k, measured) <= v for k, v in limits.items())


def cost(c: Candidate, limits: dict[str, float]) -> float:
    """How far ``c`` is above the limits (relative, summed over the unmet ones)."""
    return sum(max(value(c, k) / v - 1, 0.0) for k, v in limits.items())


def descend(s: Search, start: Candidate, limits: dict[str, float], bits_ladder: Sequence[int],
            model: nn.Module, example_inputs: Inputs) -> Candidate:
    """Greedy descent from ``start`` until a plan meets ``limits`` (by measurement, when timed).

    Each step shrinks the group (or lowers the bit-width) whose next rung removes the most of
    the excess over the limits per unit of proxy loss. The current plan is measured whole when
    its prediction meets the limits, and whenever its prediction fell by :data:`REMEASURE_DROP`
    since the last measurement; each measurement re-fits the prediction. Returns the last plan
    (the smallest reachable one when nothing meets the limits).
    """
    cur, step, timed = start, 0, "ms" in limits
    anchor = start.predicted_ms
    while True:
        if timed and (meets(cur, limits, measured=False) or cur.predicted_ms < (1 - REMEASURE_DROP) * anchor):
            s.measure([cur], model, example_inputs)
            anchor = cur.predicted_ms
        if meets(cur, limits, measured=timed):
            return cur
        step += 1
        moves: list[tuple[str, Candidate]] = []
        for g in s.space.groups:
            if not g.searched:
                continue
            rungs = [w.keep for w in g.ladder]
            i = rungs.index(cur.widths[g.name])
            if i + 1 < len(rungs):
                moves.append((f"{g.name}: {rungs[i]}→{rungs[i + 1]} channels",
                              s.candidate({**cur.widths, g.name: rungs[i + 1]}, cur.bits, step)))
            j = bits_ladder.index(cur.bits[g.name])
            if "bytes" in limits and j + 1 < len(bits_ladder):
                moves.append((f"{g.name}: {bits_ladder[j]}→{bits_ladder[j + 1]} bits",
                              s.candidate(cur.widths, {**cur.bits, g.name: bits_ladder[j + 1]}, step)))
        if not moves:
            if timed:
                s.measure([cur], model, example_inputs)
            return cur
        s.predict([c for _, c in moves])
        base = cost(cur, limits)

        def gain(move: tuple[str, Candidate], base: float = base, here: Candidate = cur) -> float:
            return (base - cost(move[1], limits)) / max(move[1].proxy - here.proxy, 1e-6)

        best = max(moves, key=gain)
        if gain(best) <= 0:  # nothing gets closer: take the least damaging shrink
            best = min(moves, key=lambda m: m[1].proxy)
        for change, c in moves:
            s.trace.append({"step": step, "change": change, "bytes": c.bytes, "macs": c.macs,
                            "predicted_ms": c.predicted_ms, "measured_ms": c.measured_ms, "proxy": c.proxy,
                            "accepted": c is best[1]})
            s.trace_refs.append(c)
        s.event("step", step=step, change=best[0], predicted_ms=best[1].predicted_ms, proxy=best[1].proxy)
        cur = best[1]


def pareto(cands: Iterable[Candidate], accuracy: Callable[[Candidate], float],
           latency: Callable[[Candidate], float] | None = None) -> list[Candidate]:
    """Candidates not dominated in (loss, bytes, latency).

    ``accuracy`` gives the loss (lower is better); ``latency`` the ms (default: predicted).
    """
    pool = list(cands)
    ms = latency or (lambda c: c.predicted_ms)

    def key(c: Candidate) -> tuple[float, float, float]:
        return (accuracy(c), float(c.bytes), ms(c))

    def dominates(a: Candidate, b: Candidate) -> bool:
        ka, kb = key(a), key(b)
        return all(x <= y for x, y in zip(ka, kb, strict=True)) and ka != kb

    return [c for c in pool if not any(dominates(o, c) for o in pool)]


def select_front(front: list[Candidate], limits: dict[str, float], max_front: int) -> list[Candidate]:
    """At most ``max_front`` front members: measured and predicted-feasible ones (most accurate first),
    then the infeasible ones closest to the limits."""
    by_proxy = sorted(front, key=lambda c: c.proxy)
    feasible = [c for c in by_proxy if meets(c, limits, measured=False)]
    measured_ok = [c for c in feasible if c.measured_ms is not None]
    rest = sorted((c for c in by_proxy if c not in feasible), key=lambda c: cost(c, limits))
    picked: list[Candidate] = []
    for c in [*measured_ok[:1], *feasible, *rest]:
        if c not in picked and len(picked) < max_front:
            picked.append(c)
    return picked


def describe(c: Candidate, limits: dict[str, float]) -> str:
    """The candidate's values of the limited quantities, for messages (``0.512 ms, 1234 bytes``)."""
    parts = {"ms": f"{c.measured_ms if c.measured_ms is not None else c.predicted_ms:.3f} ms",
             "bytes": f"{c.bytes} bytes", "macs": f"{c.macs} MACs"}
    return ", ".join(parts[k] for k in limits)


