"""Logarithmic (power-of-two) activations: ``a ≈ sign(a) · top · 2^e``, ``e ∈ [kmin, 0]``, or 0.

The rounding is done in the log domain (``e = round(log2(|a| / top))``, the classic log
quantizer); values that round below ``kmin`` become 0 and values above ``top`` saturate.
With ``b`` bits an unsigned activation (after a ReLU) has ``2^b - 1`` exponents plus zero, a
signed one ``2^(b-1) - 1`` plus sign and zero; signedness is read from the calibration data.

Deployment: every level ``top · 2^e`` is an integer multiple of ``top · 2^kmin``, at most
``2^14`` of them, so a log2 activation is *exactly* an int16 per-tensor quantize/dequantize
pair (scale ``top · 2^kmin``, zero point 0) preceded by :func:`log2_snap`. At convert time
:func:`insert_log2_snaps` puts that snap op (plain elementwise torch ops, exportable to ONNX)
in front of each log2 fake-quant, and torchao's stock ``convert_pt2e`` turns the fake-quant
itself into the int16 pair. For QAT the snap has a straight-through gradient (zero where the
value saturates above ``top``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.fx import GraphModule
from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

from edgeslim.plugin.quantization.errors import QuantConfigError

#: Bits of log2 activations (2^b - 1 exponents plus zero must fit the int16 grid).
LOG2_ACT_MIN_BITS, LOG2_ACT_MAX_BITS = 2, 5
#: An int16 grid holds ``2^0 .. 2^14``: at most 15 exponents.
MAX_EXPONENTS = 15
#: Candidate ``top`` levels relative to the observed max |a|, picked by MSE on a sample.
_TOP_FRACTIONS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
_SAMPLE = 1 << 16


def exponents(bits: int, signed: bool) -> int:
    """Number of non-zero magnitudes of a ``bits``-bit log2 code."""
    n = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    return max(1, min(n, MAX_EXPONENTS))


def check_bits(bits: int) -> None:
    """Log2 activations fit an int16 grid up to 5 bits (signed) / 4 bits (unsigned: 15 exponents)."""
    if not LOG2_ACT_MIN_BITS <= bits <= LOG2_ACT_MAX_BITS:
        raise QuantConfigError(
            f"log2 activations take {LOG2_ACT_MIN_BITS}..{LOG2_ACT_MAX_BITS} bits (15 exponents fit the int16 grid), "
            f"got {bits}"
        )


def log2_snap(x: torch.Tensor, top: torch.Tensor, kmin: torch.Tensor) -> torch.Tensor:
    """``x`` rounded in the log domain to ``±top · 2^e`` (``kmin <= e <= 0``) or 0 (no gradient tricks)."""
    top = top.to(x.dtype)
    a = x.abs()
    e = torch.round(torch.log2(torch.clamp(a, min=1e-30) / top))
    e = torch.clamp(e, max=0.0)
    level = top * torch.exp2(torch.maximum(e, kmin.to(x.dtype)))
    return torch.where(e < kmin.to(x.dtype), torch.zeros_like(x), torch.sign(x) * level)


def _mse_top(sample: torch.Tensor, amax: float, kmin: float) -> float:
    best, best_top = math.inf, amax
    for frac in _TOP_FRACTIONS:
        top = torch.tensor(amax * frac)
        err = float((log2_snap(sample, top, torch.tensor(kmin)) - sample).pow(2).mean())
        if err < best:
            best, best_top = err, amax * frac
    return best_top


class Log2ActFakeQuantize(FakeQuantizeBase):
    """Activation fake-quant of the ``log2`` activation scheme (per tensor).

    PTQ (``qat=False``): while the observer is on it only records (max |a|, sign, a random
    sample) and passes activations through; ``top`` is then chosen by MSE over a few fractions
    of the max. QAT: ``top`` follows a moving average of each batch's MSE-optimal top and the
    forward pass snaps with a straight-through gradient.

    Args:
        bits: Bits per activation code (2–5).
        qat: Training mode (see above).
        averaging_constant: Moving-average weight of each new batch in QAT.
        dtype, quant_min, quant_max, qscheme: The int16 grid torchao's convert emits.
    """

    top: torch.Tensor
    kmin: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(
        self,
        bits: int = 4,
        qat: bool = False,
        averaging_constant: float = 0.01,
        dtype: torch.dtype = torch.int16,
        quant_min: int = -32767,
        quant_max: int = 32767,
        qscheme: torch.qscheme = torch.per_tensor_symmetric,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        check_bits(bits)
        self.bits, self.qat, self.averaging_constant = bits, qat, averaging_constant
        self.dtype, self.quant_min, self.quant_max, self.qscheme = dtype, quant_min, quant_max, qscheme
        self.ch_axis, self.is_dynamic = -1, False
        self.register_buffer("top", torch.tensor(0.0))
        self.register_buffer("kmin", torch.tensor(float(1 - exponents(bits, signed=False))))
        self.register_buffer("scale", torch.tensor([1.0]))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.int64))
        self.amax = 0.0
        self.signed = False
        self._samples: list[torch.Tensor] = []
        self._gen = torch.Generator().manual_seed(0)  # reproducible samples

    def _record(self, x: torch.Tensor) -> None:
        from edgeslim.plugin.quantization.calibration import _check_finite

        _check_finite(self, x)
        flat = x.detach().reshape(-1).to(torch.float32)
        self.amax = max(self.amax, float(flat.abs().max())) if flat.numel() else self.amax
        self.signed = self.signed or bool(flat.numel() and float(flat.min()) < 0)
        self.kmin.fill_(float(1 - exponents(self.bits, self.signed)))
        if flat.numel() > _SAMPLE // 8:
            flat = flat[torch.randint(flat.numel(), (_SAMPLE // 8,), generator=self._gen)]
        self._samples.append(flat.clone())
        if sum(s.numel() for s in self._samples) > 2 * _SAMPLE:
            allv = torch.cat(self._samples)
            self._samples = [allv[torch.randperm(allv.numel(), generator=self._gen)[:_SAMPLE]]]

    def _set_top(self, top: float) -> None:
        top = max(top, 1e-12)
        self.top.fill_(top)
        self.scale = torch.tensor([top * 2.0 ** float(self.kmin)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Observe when enabled; snap (QAT, or PTQ once observing stopped) with a straight-through gradient."""
        observing = bool(self.observer_enabled[0])
        if observing:
            if self.qat:
                self.amax = 0.0
                self._samples = []
            self._record(x)
            batch_top = _mse_top(torch.cat(self._samples), self.amax, float(self.kmin))
            if self.qat and float(self.top) > 0:
                batch_top = float(self.top) + self.averaging_constant * (batch_top - float(self.top))
            self._set_top(batch_top)
            if not self.qat:
                return x
        if not bool(self.fake_quant_enabled[0]) or float(self.top) <= 0:
            return x
        q = log2_snap(x, self.top, self.kmin)
        inside = (x.abs() <= self.top).to(x.dtype)
        return q.detach() + (x - x.detach()) * inside

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The int16 grid step ``top · 2^kmin`` and zero point 0."""
        return self.scale, self.zero_point

    def extra_repr(self) -> str:
        """Bits, top level and smallest exponent."""
        return f"bits={self.bits}, top={float(self.top):.4g}, kmin={int(self.kmin)}, signed={self.signed}"


def insert_log2_snaps(gm: GraphModule) -> int:
    """Put a :func:`log2_snap` node (reading the module's ``top``/``kmin``) before every log2 fake-quant.

    Returns how many were inserted. Run on a prepared model right before ``convert_pt2e``.
    """
    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(str(node.target))
        if not isinstance(mod, Log2ActFakeQuantize):
            continue
        mod.disable_observer()
        prefix = f"edgeslim_log2_act_{n}"
        gm.register_buffer(f"{prefix}_top", mod.top.detach().clone())
        gm.register_buffer(f"{prefix}_kmin", mod.kmin.detach().clone())
        with gm.graph.inserting_before(node):
            top = gm.graph.get_attr(f"{prefix}_top")
            kmin = gm.graph.get_attr(f"{prefix}_kmin")
            snap = gm.graph.call_function(log2_snap, (node.args[0], top, kmin))
        snap.meta = dict(node.args[0].meta) if hasattr(node.args[0], "meta") else {}
        node.args = (snap, *node.args[1:])
        n += 1
    if n:
        gm.graph.lint()
        gm.recompile()
    return n


__all__ = ["LOG2_ACT_MAX_BITS", "LOG2_ACT_MIN_BITS", "Log2ActFakeQuantize", "check_bits", "exponents", "insert_log2_snaps", "log2_snap"]
