"""Activation calibrators: min-max, moving-average min-max, percentile, MSE-optimal, entropy (KL).

Each calibrator is a torchao observer class registered by name in :data:`CALIBRATORS`; the
quantizer hands it to PT2E, which builds one per quantized activation. Statistics gathering
(``forward``) and range choice (``calculate_qparams``) are separate phases: the sample-based
calibrators keep a bounded random sample of the activations and pick the range at the end.
Every calibrator refuses NaN/inf, naming the layer that produced them.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torchao.quantization.pt2e.observer import MinMaxObserver, MovingAverageMinMaxObserver

from edgeslim.plugin.quantization.errors import CalibrationError
from edgeslim.registry import Registry
from edgeslim.train import device_of, resolve_torch_device

#: Observer classes by calibrator name.
CALIBRATORS: Registry[type] = Registry("calibrator")

#: Values kept per observer by the sample-based calibrators.
MAX_SAMPLES = 1 << 19
_PER_BATCH = 1 << 15
#: Values the MSE search evaluates each candidate range on.
_MSE_SAMPLES = 1 << 16


#: Side table: the layer each observer watches, in words (for error messages); filled by
#: ``prepare`` (the same text is in ``QuantInfo.observers`` by observer module name).
_LAYER_OF: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def name_observer(obs: torch.nn.Module, layer: str) -> None:
    """Record which layer ``obs`` observes (named in its errors)."""
    _LAYER_OF[obs] = layer


def observer_layer(obs: torch.nn.Module) -> str:
    """The layer ``obs`` observes, as recorded by :func:`name_observer` (else ``"an unnamed layer"``)."""
    return _LAYER_OF.get(obs, "an unnamed layer")


def _check_finite(obs: torch.nn.Module, x: torch.Tensor) -> None:
    # NaN and ±inf propagate into the sum: one vectorised pass (``torch.isfinite(x).all()`` was ~25x slower on
    # this CPU and a sixth of the whole calibration); a finite batch whose sum overflows float32 is as unusable
    if x.is_floating_point() and x.numel() and not math.isfinite(float(x.detach().sum(dtype=torch.float32))):
        layer = observer_layer(obs)
        raise CalibrationError(
            f"non-finite values (NaN/inf) in the activations of {layer} during calibration: "
            "check the input data and the model's float outputs for that layer"
        )


@CALIBRATORS.register("minmax")
class CheckedMinMaxObserver(MinMaxObserver):
    """Running min/max over all calibration batches."""

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        """Check for non-finite values, then record min/max."""
        _check_finite(self, x_orig)
        return super().forward(x_orig)


@CALIBRATORS.register("ema")
class CheckedMovingAverageObserver(MovingAverageMinMaxObserver):
    """Moving-average (momentum 0.01) of each batch's min/max."""

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        """Check for non-finite values, then update the moving averages."""
        _check_finite(self, x_orig)
        return super().forward(x_orig)


class SampleObserver(MinMaxObserver):
    """Keeps a bounded random sample of the activations; the range is chosen by :meth:`choose_range`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._samples: list[torch.Tensor] = []
        self._n = 0
        self._gen = torch.Generator().manual_seed(0)  # the same calibration data gives the same ranges
        self._qparams: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        """Check, record min/max, and keep up to ``_PER_BATCH`` random values of this batch."""
        _check_finite(self, x_orig)
        out = super().forward(x_orig)
        self._qparams = None
        flat = x_orig.detach().reshape(-1).to(torch.float32)
        if flat.numel() > _PER_BATCH:
            flat = flat[torch.randint(flat.numel(), (_PER_BATCH,), generator=self._gen)]
        self._samples.append(flat.to("cpu", copy=True))  # a copy (an in-place ReLU may change x), on the CPU
        self._n += flat.numel()
        if self._n > 2 * MAX_SAMPLES:
            allv = torch.cat(self._samples)
            self._samples = [allv[torch.randperm(allv.numel(), generator=self._gen)[:MAX_SAMPLES]]]
            self._n = MAX_SAMPLES
        return out

    def choose_range(self, x: torch.Tensor) -> tuple[float, float]:
        """The ``(lo, hi)`` clipping range for the sample ``x``."""
        raise NotImplementedError

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point from the chosen range (falls back to min/max without samples).

        Computed once per calibration state: one observer shared by several edges (max-pool input
        and output) is asked once per edge, and every edge must get the same scale, or runtimes
        cannot fold the Q/DQ pair (ONNX Runtime then runs that op in float, with layout transposes).
        """
        if not self._samples:
            return super().calculate_qparams()
        if self._qparams is None:
            x = torch.cat(self._samples)
            lo, hi = self.choose_range(x)
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            self._qparams = self._calculate_qparams(torch.tensor(lo), torch.tensor(hi))
        return self._qparams

    def _levels(self) -> int:
        return int(self.quant_max) - int(self.quant_min)


@CALIBRATORS.register("percentile")
class PercentileObserver(SampleObserver):
    """Clip at the 0.01 % / 99.99 % percentiles of the sample."""

    percentile = 99.99

    def choose_range(self, x: torch.Tensor) -> tuple[float, float]:
        """Percentile range."""
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100])
        lo, hi = torch.quantile(x, q).tolist()
        return float(lo), float(hi)


def _fake_quant_mse(x: torch.Tensor, lo: float, hi: float, levels: int) -> float:
    scale = max(hi - lo, 1e-12) / levels
    zp = round(-lo / scale)
    q = torch.clamp(torch.round(x / scale) + zp, 0, levels)
    return float(((q - zp) * scale - x).pow(2).mean())


@CALIBRATORS.register("mse")
class MSEObserver(SampleObserver):
    """The clipping range (a shrunk min/max) that minimises the quantization MSE on the sample."""

    def choose_range(self, x: torch.Tensor) -> tuple[float, float]:
        """Grid search over geometric shrink factors (1 down to ~0.02) of the min/max range."""
        if x.numel() > _MSE_SAMPLES:
            x = x[torch.randperm(x.numel(), generator=self._gen)[:_MSE_SAMPLES]]
        lo0, hi0 = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        best = (math.inf, lo0, hi0)
        for i in range(80):
            a = 0.95**i
            err = _fake_quant_mse(x, lo0 * a, hi0 * a, self._levels())
            if err < best[0]:
                best = (err, lo0 * a, hi0 * a)
        return best[1], best[2]


@CALIBRATORS.register("entropy")
class EntropyObserver(SampleObserver):
    """TensorRT-style KL-divergence threshold on a 2048-bin histogram of ``|x|``."""

    bins = 2048

    def choose_range(self, x: torch.Tensor) -> tuple[float, float]:
        """The threshold whose quantized distribution is closest (KL) to the float one.

        Exact zeros (half of a post-ReLU tensor) are left out: every range represents them
        exactly, and their spike in the first bin would otherwise push the threshold down.
        """
        signed = float(x.min()) < 0
        x = x[x != 0]
        amax = float(x.abs().max()) if x.numel() else 0.0
        if amax == 0:
            return 0.0, 0.0
        hist = torch.histc(x.abs(), bins=self.bins, min=0, max=amax).double()
        nq = max((self._levels() + 1) // (2 if signed else 1), 2)
        best_kl, best_i = math.inf, self.bins
        for i in range(max(nq, 128), self.bins + 1, 16):
            p = hist[:i].clone()
            p[-1] += hist[i:].sum()
            kl = _kl_after_merge(p, hist[:i], nq)
            if kl < best_kl:
                best_kl, best_i = kl, i
        t = amax * best_i / self.bins
        return (-t if signed else 0.0), t


def _kl_after_merge(p: torch.Tensor, raw: torch.Tensor, nq: int) -> float:
    n = raw.numel()
    edges = torch.linspace(0, n, nq + 1).round().long()
    q = torch.zeros_like(raw)
    for j in range(nq):
        a, b = int(edges[j]), int(edges[j + 1])
        seg = raw[a:b]
        nz = seg > 0
        if int(nz.sum()):
            q[a:b] = torch.where(nz, seg.sum() / nz.sum(), torch.zeros_like(seg))
    ps, qs = p / p.sum().clamp_min(1e-12), q / q.sum().clamp_min(1e-12)
    mask = ps > 0
    return float((ps[mask] * (ps[mask] / qs[mask].clamp_min(1e-12)).log()).sum())


def observer_class(name: str) -> Callable[..., Any]:
    """The observer class of calibrator ``name`` (raises ``RegistryError`` listing the known ones)."""
    return CALIBRATORS.get(name)


__all__ = [
    "CALIBRATORS",
    "CheckedMinMaxObserver",
    "CheckedMovingAverageObserver",
    "EntropyObserver",
    "MSEObserver",
    "PercentileObserver",
    "SampleObserver",
    "name_observer",
    "observer_class",
    "observer_layer",
]


def pinned_node(graph: torch.fx.GraphModule) -> str | None:
    """The first node of ``graph`` that creates a tensor on a fixed device (``device=`` in its call), else None."""
    for node in graph.graph.nodes:
        if isinstance(node.kwargs.get("device"), torch.device):
            return str(node.name)
    return None


def calibration_device(prepared: torch.fx.GraphModule, device: str | torch.device | None) -> torch.device:
    """Where :func:`~edgeslim.plugin.quantization.api.calibrate` runs ``prepared``.

    ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``; None: where ``prepared`` is) when the graph can
    move there; a graph that creates tensors on a fixed device (``torch.export`` recorded ``device=`` in
    a node: ``torch.arange``/``zeros`` in the model's forward) stays where it is, with a warning naming
    the node.

    Raises:
        ConfigError: An unknown device, or a CUDA device this machine does not have.
    """
    home = device_of(prepared)
    if device is None:
        return home
    dev = resolve_torch_device(device, option="calibrate(device=...)")
    node = pinned_node(prepared) if dev != home else None
    if node is not None:
        warnings.warn(f"edgeslim.quantize: the exported graph creates tensors on a fixed device (node {node}); "
                      f"calibrating on {home}, not {dev} (move the tensor creation onto the input's device to "
                      "calibrate elsewhere)", stacklevel=3)
        return home
    return dev
