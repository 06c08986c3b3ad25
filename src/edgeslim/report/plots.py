"""The report's plots, drawn with matplotlib's Agg canvas into PNG bytes.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot, no global backend
switch). Mathtext is off while drawing (``text.parse_math``), so a ``$`` in a variant or layer name
is printed as it is. A plot whose data is missing is simply not made: each function returns
``None`` then.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from edgeslim.report.data import latency, mapping, records, runtimes, search_latency
from edgeslim.report.fmt import number

#: Resolution of the PNGs (dots per inch).
DPI = 100
_MARKERS = "osD^vP*X"
_STATUS_COLOURS = {"done": "tab:green", "resumed": "tab:blue", "skipped": "tab:gray", "failed": "tab:red"}


@dataclass(frozen=True)
class Plot:
    """One rendered plot.

    Attributes:
        name: A short identifier (``pareto``, ``trace`` ...), also the PNG's file stem if written.
        title: The caption.
        png: The PNG bytes.
    """

    name: str
    title: str
    png: bytes


@contextmanager
def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1) -> Iterator[tuple[Figure, list[Axes]]]:
    """A figure and its axes, drawn with mathtext off (``$`` in names is literal)."""
    with matplotlib.rc_context({"text.parse_math": False, "font.size": 9}):
        fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        yield fig, [ax for line in axes for ax in line]


def _png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    with matplotlib.rc_context({"text.parse_math": False}):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _mb(value: Any) -> float | None:
    x = number(value)
    return None if x is None else x / 1e6


_Getter = Callable[[Mapping[str, Any]], "float | None"]


def _xy(items: list[Mapping[str, Any]], fx: _Getter, fy: _Getter) -> list[tuple[float, float, Mapping[str, Any]]]:
    """``(x, y, item)`` for the items where both ``fx`` and ``fy`` give a number, in order."""
    out = []
    for item in items:
        x, y = fx(item), fy(item)
        if x is not None and y is not None:
            out.append((x, y, item))
    return out


def _top1_pct(item: Mapping[str, Any]) -> float | None:
    x = number(item.get("top1"))
    return None if x is None else 100 * x


def _size(item: Mapping[str, Any]) -> float | None:
    return _mb(item.get("bytes"))


def _lat(item: Mapping[str, Any]) -> float | None:
    return number(search_latency(item))


def _latency_in(runtime: str) -> _Getter:
    return lambda row: number(latency(row, runtime))


def variants_plot(results: Mapping[str, Any]) -> Plot | None:
    """Size × latency of the variants, one marker per runtime@target, colour = top-1.

    Args:
        results: The results dict.

    Returns:
        The plot, or ``None`` when no variant has both a size and a latency.
    """
    rows = records(results.get("rows"))
    series = [(key, _xy(rows, _size, _latency_in(key))) for key in runtimes(rows)]
    series = [(key, pts) for key, pts in series if pts]
    if not series:
        return None
    accs = [a for _, pts in series for _, _, r in pts if (a := _top1_pct(r)) is not None]
    lo, hi = (min(accs), max(accs)) if accs else (0.0, 1.0)
    labelled: set[int] = set()
    with _figure(7.5, 4.2) as (fig, (ax,)):
        scatter = None
        for k, (key, pts) in enumerate(series):
            marker = _MARKERS[k % len(_MARKERS)]
            known = [(x, y, a) for x, y, r in pts if (a := _top1_pct(r)) is not None]
            unknown = [(x, y) for x, y, r in pts if _top1_pct(r) is None]
            if known:
                scatter = ax.scatter(
                    [p[0] for p in known], [p[1] for p in known], c=[p[2] for p in known], cmap="viridis",
                    vmin=lo, vmax=hi if hi > lo else lo + 1, marker=marker, s=60, edgecolors="black", label=key,
                )
            if unknown:
                ax.scatter([p[0] for p in unknown], [p[1] for p in unknown], marker=marker, s=60,
                           facecolors="none", edgecolors="gray", label=f"{key} (top-1 not measured)")
            for x, y, r in pts:
                if id(r) not in labelled:  # one label per variant, next to its first marker
                    labelled.add(id(r))
                    ax.annotate(str(r.get("variant", "")), (x, y), textcoords="offset points", xytext=(5, 4),
                                fontsize=8)
        if scatter is not None:
            fig.colorbar(scatter, ax=ax, label="top-1 (%)")
        ax.set_xlabel("size (MB)")
        ax.set_ylabel("latency (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return Plot("variants", "Variants: size vs latency (colour = top-1)", _png(fig))


def pareto_plot(results: Mapping[str, Any]) -> Plot | None:
    """The search's points and Pareto front: size × latency, colour = top-1 (else proxy).

    Explored trace points are grey dots; front points are coloured, joined in size order; where a
    point was measured, its prediction is a hollow orange marker joined to it by a thin line; the
    chosen point is a red star.

    Args:
        results: The results dict.

    Returns:
        The plot, or ``None`` without front or trace points that have a size and a latency.
    """
    search = mapping(results.get("search"))
    front = sorted(_xy(records(search.get("front")), _size, _lat), key=lambda p: p[0])
    trace = _xy(records(search.get("trace")), _size, _lat)
    if not front and not trace:
        return None
    use_top1 = any(_top1_pct(p) is not None for _, _, p in front)
    metric: _Getter = _top1_pct if use_top1 else (lambda p: number(p.get("proxy")))
    with _figure(7.5, 4.2) as (fig, (ax,)):
        if trace:
            ax.scatter([t[0] for t in trace], [t[1] for t in trace], s=12, color="lightgray",
                       label="explored (trace)", zorder=1)
        if front:
            ax.plot([p[0] for p in front], [p[1] for p in front], color="black", lw=1, alpha=0.6, ls="--",
                    zorder=2, label="front (by size)")
            coloured = [(x, y, c) for x, y, p in front if (c := metric(p)) is not None]
            if coloured:
                sc = ax.scatter([c[0] for c in coloured], [c[1] for c in coloured], c=[c[2] for c in coloured],
                                cmap="viridis", s=50, edgecolors="black", zorder=3)
                fig.colorbar(sc, ax=ax, label="top-1 (%)" if use_top1 else "proxy")
            blank = [(x, y) for x, y, p in front if metric(p) is None]
            if blank:
                ax.scatter([b[0] for b in blank], [b[1] for b in blank], s=50, facecolors="none", edgecolors="gray",
                           zorder=3, label="top-1 not measured" if use_top1 else "proxy not measured")
            for x, y, p in front:
                pred = number(p.get("predicted_ms"))
                if number(p.get("measured_ms")) is not None and pred is not None:
                    ax.plot([x, x], [pred, y], color="tab:orange", lw=0.8, zorder=2)
                    ax.scatter([x], [pred], s=30, facecolors="none", edgecolors="tab:orange", zorder=3)
            chosen = [(x, y) for x, y, p in front if p.get("chosen")]
            if chosen:
                ax.scatter([c[0] for c in chosen], [c[1] for c in chosen], marker="*", s=260, color="red",
                           edgecolors="black", zorder=4, label="chosen")
        ax.scatter([], [], s=30, facecolors="none", edgecolors="tab:orange", label="predicted (when measured)")
        ax.set_xlabel("size (MB)")
        ax.set_ylabel("latency (ms): measured, else predicted")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        label = "top-1" if use_top1 else "proxy"
        return Plot("pareto", f"Search: size vs latency, Pareto front (colour = {label})", _png(fig))


def trace_plot(results: Mapping[str, Any]) -> Plot | None:
    """Latency (predicted line, measured dots) and size along the search's steps.

    Args:
        results: The results dict.

    Returns:
        The plot, or ``None`` without ``search.trace``.
    """
    trace = records(mapping(results.get("search")).get("trace"))
    if not trace:
        return None
    index = {id(t): i for i, t in enumerate(trace)}

    def step(t: Mapping[str, Any]) -> float:
        s = number(t.get("step"))
        return float(index[id(t)]) if s is None else s

    with _figure(7.5, 3.6) as (fig, (ax,)):
        pred = _xy(trace, step, lambda t: number(t.get("predicted_ms")))
        ax.plot([p[0] for p in pred], [p[1] for p in pred], color="tab:blue", lw=1.2, label="predicted (ms)")
        meas = _xy(trace, step, lambda t: number(t.get("measured_ms")))
        for accepted, marker, name in ((True, "o", "measured, accepted"), (False, "x", "measured, rejected")):
            mine = [(x, y) for x, y, t in meas if bool(t.get("accepted")) == accepted]
            if mine:
                ax.scatter([m[0] for m in mine], [m[1] for m in mine], marker=marker, color="tab:blue", label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("latency (ms)", color="tab:blue")
        size = _xy(trace, step, _size)
        if size:
            ax2 = ax.twinx()
            ax2.plot([p[0] for p in size], [p[1] for p in size], color="tab:green", lw=1.2, ls="--")
            ax2.set_ylabel("size (MB), dashed", color="tab:green")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
        return Plot("trace", "Search trace: latency and size per step", _png(fig))


def layers_plot(results: Mapping[str, Any]) -> Plot | None:
    """Bar charts by layer: the keep ratio, and the bit-width where any layer has one.

    Args:
        results: The results dict.

    Returns:
        The plot, or ``None`` without ``layers``.
    """
    layers = records(results.get("layers"))
    if not layers:
        return None
    names = [str(layer.get("name", i)) for i, layer in enumerate(layers)]
    keep = [number(layer.get("keep_ratio")) for layer in layers]
    bits = [number(layer.get("bits")) for layer in layers]
    has_bits = any(b is not None for b in bits)
    width = min(max(6.0, 0.28 * len(layers) + 2), 18.0)
    with _figure(width, 5.6 if has_bits else 3.4, nrows=2 if has_bits else 1) as (fig, axes):
        x = list(range(len(layers)))
        axes[0].bar(x, [k or 0.0 for k in keep], color=["tab:blue" if k is not None else "lightgray" for k in keep])
        axes[0].set_ylabel("keep ratio")
        axes[0].set_ylim(0, 1.05)
        if has_bits:
            axes[1].bar(x, [b or 0.0 for b in bits], color="tab:purple")
            axes[1].set_ylabel("bits")
        for ax in axes:
            ax.set_xticks(x, names if ax is axes[-1] else [], rotation=90, fontsize=7)
            ax.grid(axis="y", alpha=0.3)
        title = "Per layer: keep ratio" + (" and bit-width" if has_bits else "")
        return Plot("layers", title, _png(fig))


def steps_plot(results: Mapping[str, Any]) -> Plot | None:
    """Horizontal bars of each step's wall time, coloured by status.

    Args:
        results: The results dict.

    Returns:
        The plot, or ``None`` without ``steps`` that have seconds.
    """
    steps = [s for s in records(results.get("steps")) if number(s.get("seconds")) is not None]
    if not steps:
        return None
    with _figure(7.5, 0.35 * len(steps) + 1.2) as (fig, (ax,)):
        y = list(range(len(steps)))
        colours = [_STATUS_COLOURS.get(str(s.get("status")), "tab:gray") for s in steps]
        ax.barh(y, [number(s["seconds"]) or 0.0 for s in steps], color=colours)
        ax.set_yticks(y, [str(s.get("name", "")) for s in steps])
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        ax.grid(axis="x", alpha=0.3)
        return Plot("steps", "Step timings (green done, blue resumed, grey skipped, red failed)", _png(fig))


#: Every plot of the report, in page order.
PLOTS: tuple[Callable[[Mapping[str, Any]], Plot | None], ...] = (
    variants_plot, pareto_plot, trace_plot, layers_plot, steps_plot,
)


def make_plots(results: Mapping[str, Any]) -> dict[str, Plot]:
    """Every plot whose data is present.

    Args:
        results: The results dict.

    Returns:
        ``{name: plot}`` in page order.
    """
    made = (draw(results) for draw in PLOTS)
    return {plot.name: plot for plot in made if plot is not None}
