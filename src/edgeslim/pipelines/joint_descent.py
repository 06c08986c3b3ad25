"""The joint search's moving parts: candidates, the search state (prediction, calibration,
whole-model measurement against references, real accuracy), the greedy descent and the front.

Limits (``limits`` below) hold the budget — ``latency_ms``, ``speedup`` (over the reference
named by :attr:`Search.speedup_label`), ``bytes``, ``macs`` — and ``ms``, the latency limit in
the units of the prediction, which :meth:`Search.refit` derives from the references.
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from edgeslim.config import serializable, to_data
from edgeslim.errors import ConfigError
from edgeslim.pipelines.joint_space import Bits, ModelSpace, Widths
from edgeslim.pipelines.latency import LatencyMeter
from edgeslim.pipelines.latency_compare import Comparison, Timing
from edgeslim.plugin.pruning.api import PruneResult, prune
from edgeslim.plugin.pruning.config import PruneConfig
from edgeslim.plugin.pruning.metrics import Inputs
from edgeslim.plugin.pruning.sensitivity import SensitivityResult
from edgeslim.plugin.pruning.structured import Plan

EventHandler = Callable[[str, dict[str, Any]], None]
EvalFn = Callable[[nn.Module], float]
#: During the descent, the current plan is measured whole again once its predicted latency
#: fell by this fraction since the last measured plan (NetAdapt-style re-calibration).
REMEASURE_DROP = 0.25
#: A group whose shrink lost more than ``max_step_drop`` real top-1 has its gain divided by this (per rejection).
GROUP_PENALTY = 4.0
#: Limits that constrain the measured latency (``ms`` is their prediction-side form).
TIMED_KEYS = ("latency_ms", "speedup")


@serializable()
@dataclass
class Candidate:
    """One evaluated plan and its numbers.

    ``measured_ms`` is the median of its latest whole-model session; ``reference_ms`` the median
    of the speed-up reference in that session, ``speedup`` their ratio, ``rounds`` the rounds
    it was timed in, ``references`` every reference's median there. ``top1`` is the caller's
    ``eval_fn`` (a fraction) of the pruned model, when evaluated.
    """

    widths: Widths
    bits: Bits
    params: int
    bytes: int
    macs: int
    proxy: float
    table_ms: float
    predicted_ms: float = 0.0
    measured_ms: float | None = None
    speedup: float | None = None
    reference_ms: float | None = None
    rounds: int = 0
    references: dict[str, float] = field(default_factory=dict)
    top1: float | None = None
    step: int = 0

    def ident(self) -> tuple[tuple[str, int, int], ...]:
        """A hashable identity (widths and bits)."""
        return tuple((g, w, self.bits[g]) for g, w in sorted(self.widths.items()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (:func:`edgeslim.config.to_data`, untagged)."""
        data: dict[str, Any] = to_data(self, tagged=False)
        return data


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


@dataclass
class Probe:
    """How whole models are measured and evaluated.

    Attributes:
        model: The unpruned eager model (candidates are pruned copies of it).
        example_inputs: Its tracing inputs.
        timer: Times candidates against the references (one session per call).
        quant: Label of the reference at the candidates' precision (predictions are normalised to it).
        speedup_label: Label of the reference speed-ups are relative to.
        rounds: Interleaved rounds of a descent measurement.
        eval_fn: Real top-1 (a fraction in [0, 1]) of a pruned model, or None.
        max_step_drop: A descent step losing more real top-1 than this (points) is rejected.
    """

    model: nn.Module
    example_inputs: Inputs
    timer: Comparison
    quant: str
    speedup_label: str
    rounds: int = 3
    eval_fn: EvalFn | None = None
    max_step_drop: float = 5.0


class Search:
    """The state of one joint search (see :func:`edgeslim.pipelines.joint.joint_search`)."""

    def __init__(self, space: ModelSpace, meter: LatencyMeter, sens: SensitivityResult,
                 bit_loss: dict[int, dict[str, float]], on_event: EventHandler | None, probe: Probe,
                 limits: dict[str, float]) -> None:
        self.space, self.meter, self.sens, self.bit_loss, self.probe = space, meter, sens, bit_loss, probe
        self.limits = limits
        self.curves = {g.name: sens.curve(g.name) for g in space.groups}
        self.on_event = on_event
        self.points: list[tuple[float, Timing]] = []  # (Σ table, the session's timing)
        self.fit = (1.0, 0.0)
        self.seen: dict[Any, Candidate] = {}
        self.trace: list[dict[str, Any]] = []
        self.trace_refs: list[Candidate] = []
        self.penalty: dict[str, float] = {}

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
        """Least-squares ``measured ≈ a · Σ table + b`` (a > 0; one point: a ratio through zero).

        Each measurement is first scaled by ``typical / reference`` — its session's reference at
        the candidates' precision against the median over all sessions — so a load burst that
        slowed one session does not bend the fit; ``limits["ms"]`` follows the typical references.
        """
        q, sp = self.probe.quant, self.probe.speedup_label
        typical = statistics.median(t.references[q] for _, t in self.points)
        xs = [p[0] for p in self.points]
        ys = [t.ms * typical / t.references[q] for _, t in self.points]
        n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        a = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if n > 1 and var > 0 else 0.0
        self.fit = (a, my - a * mx) if a > 0 and my - a * mx > -0.5 * my else (my / mx, 0.0)
        for c in self.seen.values():
            c.predicted_ms = self.fit[0] * c.table_ms + self.fit[1]
        ms = self.limits.get("latency_ms", math.inf)
        if "speedup" in self.limits:
            ratio = statistics.median(t.references[sp] / t.references[q] for _, t in self.points)
            ms = min(ms, typical * ratio / self.limits["speedup"])
        if math.isfinite(ms):
            self.limits["ms"] = ms
        self.event("fit", a=self.fit[0], b=self.fit[1], points=len(self.points))

    def pruned(self, c: Candidate) -> nn.Module:
        """The unpruned model (full widths) or a pruned copy."""
        if c.widths == self.space.full():
            return self.probe.model
        return apply_widths(self.probe.model, self.probe.example_inputs, self.space, c).model

    def measure(self, cands: Sequence[Candidate], rounds: int | None = None, again: bool = False) -> None:
        """Time candidates whole with the references in one interleaved session; refit.

        Args:
            cands: Candidates; without ``again`` only those not measured yet are timed.
            rounds: Rounds of the session (default: the probe's).
            again: Time every candidate of ``cands`` (the final front: one session for all).
        """
        todo = list({id(c): c for c in cands if again or c.measured_ms is None}.values())
        if not todo:
            return
        label = self.probe.speedup_label
        for c, t in zip(todo, self.probe.timer.time([self.pruned(c) for c in todo], rounds or self.probe.rounds),
                        strict=True):
            c.measured_ms, c.references, c.rounds = t.ms, dict(t.references), t.rounds
            c.reference_ms, c.speedup = t.references[label], t.speedup(label)
            self.points.append((c.table_ms, t))
            self.event("measured", widths=c.widths, predicted_ms=c.predicted_ms, measured_ms=t.ms,
                       reference_ms=c.reference_ms, speedup=c.speedup, rounds=t.rounds)
        self.refit()

    def evaluate(self, cands: Iterable[Candidate]) -> None:
        """Fill ``top1`` of the candidates not evaluated yet with the probe's ``eval_fn`` (if any).

        Raises:
            ConfigError: ``eval_fn`` returned something else than a fraction in [0, 1].
        """
        fn = self.probe.eval_fn
        if fn is None:
            return
        for c in cands:
            if c.top1 is None:
                model = copy.deepcopy(self.probe.model) if c.widths == self.space.full() else self.pruned(c)
                top1 = float(fn(model.eval()))
                if not 0.0 <= top1 <= 1.0:
                    raise ConfigError(f"joint_search: eval_fn returned {top1!r}; it must return top-1 as a fraction "
                                      "in [0, 1] (like edgeslim.exporters.accuracy.torch_top1) on a non-empty subset")
                c.top1 = top1
                self.event("evaluated", widths=c.widths, top1=top1, proxy=c.proxy)

    def collapses(self, here: Candidate, nxt: Candidate) -> bool:
        """Whether ``nxt`` lost more than ``max_step_drop`` points of real top-1 from ``here`` (evaluates both)."""
        if self.probe.eval_fn is None:
            return False
        self.evaluate([here, nxt])
        assert here.top1 is not None and nxt.top1 is not None
        return 100 * (here.top1 - nxt.top1) > self.probe.max_step_drop


def value(c: Candidate, what: str, measured: bool = False) -> float:
    """The candidate's ``ms`` (measured if asked and known, else predicted), ``bytes`` or ``macs``."""
    if what == "ms":
        return c.measured_ms if measured and c.measured_ms is not None else c.predicted_ms
    return float(c.bytes if what == "bytes" else c.macs)


def meets(c: Candidate, limits: dict[str, float], measured: bool) -> bool:
    """Whether ``c`` is within every limit.

    ``measured``: latency by the candidate's latest session — ``measured_ms <= latency_ms`` and
    ``speedup`` (over the reference of the same session) ``>= speedup`` — unmeasured never is;
    else by the prediction (``predicted_ms <= limits["ms"]``).
    """
    if measured and any(k in limits for k in TIMED_KEYS):
        if c.measured_ms is None or c.speedup is None:
            return False
        if c.measured_ms > limits.get("latency_ms", math.inf) or c.speedup < limits.get("speedup", 0.0):
            return False
    checked = ("bytes", "macs") if measured else ("ms", "bytes", "macs")
    return all(value(c, k) <= limits[k] for k in checked if k in limits)


def cost(c: Candidate, limits: dict[str, float]) -> float:
    """How far ``c``'s prediction is above the limits (relative, summed over the unmet ones)."""
    return sum(max(value(c, k) / limits[k] - 1, 0.0) for k in ("ms", "bytes", "macs") if k in limits)


def _moves(s: Search, cur: Candidate, limits: dict[str, float], bits_ladder: Sequence[int],
           step: int) -> list[tuple[str, str, Candidate]]:
    """``(group, change, candidate)`` of every one-rung shrink (and bit-width drop when bytes count)."""
    moves = []
    for g in s.space.groups:
        if not g.searched:
            continue
        rungs = [w.keep for w in g.ladder]
        i = rungs.index(cur.widths[g.name])
        if i + 1 < len(rungs):
            moves.append((g.name, f"{g.name}: {rungs[i]}→{rungs[i + 1]} channels",
                          s.candidate({**cur.widths, g.name: rungs[i + 1]}, cur.bits, step)))
        j = bits_ladder.index(cur.bits[g.name])
        if "bytes" in limits and j + 1 < len(bits_ladder):
            moves.append((g.name, f"{g.name}: {bits_ladder[j]}→{bits_ladder[j + 1]} bits",
                          s.candidate(cur.widths, {**cur.bits, g.name: bits_ladder[j + 1]}, step)))
    return moves


def descend(s: Search, start: Candidate, bits_ladder: Sequence[int]) -> Candidate:
    """Greedy descent from ``start`` until a plan meets ``s.limits`` (by measurement, when timed).

    Each step shrinks the group (or lowers the bit-width) whose next rung removes the most of
    the excess over the limits per unit of proxy loss (divided by the group's penalty). With
    an ``eval_fn``, a step whose real top-1 falls more than ``max_step_drop`` points below the
    current plan's is rejected, its group penalised (:data:`GROUP_PENALTY`) and the next-best
    move tried; when every move collapses, the one keeping the most top-1 is taken. The current
    plan is measured whole when its prediction meets the limits, and whenever its prediction fell
    by :data:`REMEASURE_DROP` since the last measurement. Returns the last plan (the smallest
    reachable one when nothing meets the limits).
    """
    limits = s.limits
    cur, step, timed = start, max(start.step, max((r["step"] for r in s.trace), default=0)), "ms" in limits
    s.evaluate([cur])
    anchor = cur.predicted_ms
    while True:
        if timed and (meets(cur, limits, measured=False) or cur.predicted_ms < (1 - REMEASURE_DROP) * anchor):
            s.measure([cur])
            anchor = cur.predicted_ms
        if meets(cur, limits, measured=timed):
            return cur
        step += 1
        moves = _moves(s, cur, limits, bits_ladder, step)
        if not moves:
            if timed:
                s.measure([cur])
            return cur
        s.predict([c for _, _, c in moves])
        base = cost(cur, limits)

        def gain(move: tuple[str, str, Candidate], base: float = base, here: Candidate = cur) -> float:
            raw = (base - cost(move[2], limits)) / max(move[2].proxy - here.proxy, 1e-6)
            return raw / s.penalty.get(move[0], 1.0) if raw > 0 else raw

        ranked = sorted(moves, key=gain, reverse=True)
        if gain(ranked[0]) <= 0:  # nothing gets closer: the least damaging shrinks first
            ranked = sorted(moves, key=lambda m: m[2].proxy)
        best, rejected = None, set()
        for move in ranked:
            if not s.collapses(cur, move[2]):
                best = move
                break
            rejected.add(id(move[2]))
            s.penalty[move[0]] = s.penalty.get(move[0], 1.0) * GROUP_PENALTY
        if best is None:  # every move collapses: keep the most real top-1
            best = max(ranked, key=lambda m: m[2].top1 if m[2].top1 is not None else -1.0)
            rejected.discard(id(best[2]))
        for _, change, c in moves:
            s.trace.append({"step": step, "change": change, "bytes": c.bytes, "macs": c.macs,
                            "predicted_ms": c.predicted_ms, "measured_ms": c.measured_ms, "proxy": c.proxy,
                            "top1": c.top1, "from_top1": cur.top1, "rejected": id(c) in rejected,
                            "accepted": c is best[2]})
            s.trace_refs.append(c)
        s.event("step", step=step, change=best[1], predicted_ms=best[2].predicted_ms, proxy=best[2].proxy,
                top1=best[2].top1)
        cur = best[2]


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
    """The candidate's values of the limited quantities, for messages (``0.512 ms (1.31x ...), 1234 bytes``)."""
    parts = []
    if any(k in limits for k in ("ms", *TIMED_KEYS)):
        ms = f"{c.measured_ms if c.measured_ms is not None else c.predicted_ms:.3f} ms"
        if c.speedup is not None and c.reference_ms is not None:
            ms += f" ({c.speedup:.2f}x over the reference's {c.reference_ms:.3f} ms in the same session)"
        parts.append(ms)
    parts += [f"{c.bytes} bytes"] if "bytes" in limits else []
    parts += [f"{c.macs} MACs"] if "macs" in limits else []
    return ", ".join(parts)
