"""The PT2E weight fake-quant of the grid schemes (log2, codebook, pwl, and third parties').

It subclasses **torchao's** ``FakeQuantizeBase`` and carries "PerChannel" in its class name,
so that PT2E keeps it in the prepared graph with ``ch_axis``. ``forward`` snaps the weight to
the scheme's levels (straight-through estimator, so QAT trains through it);
``calculate_qparams`` reports the scheme's integer-grid step, so that once the snapped
values are baked into the parameters (:func:`edgeslim.plugin.quantization.api.convert`),
torchao's stock ``convert_pt2e`` emits exact int8/int16 per-channel quantize/dequantize ops.
"""

from __future__ import annotations

from typing import Any

import torch
from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

from edgeslim.plugin.quantization.schemes.base import SCHEMES, channels_view, nearest_level


class GridFakeQuantizePerChannel(FakeQuantizeBase):
    """Weight fake-quant for a registered grid scheme.

    Args:
        scheme: Registered scheme name.
        bits: Bits per weight.
        per_channel: Per output channel levels (else one set of levels for the tensor).
        options: Scheme options as ``(key, value)`` pairs.
        dtype: Integer storage of the grid (``torch.int8`` / ``torch.int16``), set by the quantizer.
        quant_min: Grid minimum (``-qmax``).
        quant_max: Grid maximum.
        qscheme: Always ``torch.per_channel_symmetric``.
        ch_axis: Channel axis (0).
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    codebook: torch.Tensor

    def __init__(
        self,
        scheme: str = "log2",
        bits: int = 4,
        per_channel: bool = True,
        options: tuple[tuple[str, Any], ...] = (),
        dtype: torch.dtype = torch.int8,
        quant_min: int = -127,
        quant_max: int = 127,
        qscheme: torch.qscheme = torch.per_channel_symmetric,
        ch_axis: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.scheme, self.bits, self.per_channel, self.options = scheme, bits, per_channel, dict(options)
        self.dtype, self.quant_min, self.quant_max = dtype, quant_min, quant_max
        self.qscheme, self.ch_axis, self.is_dynamic = qscheme, ch_axis, False
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int64))
        self.register_buffer("codebook", torch.zeros(1, 1))
        self._seen: tuple[int, int] | None = None

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the levels of ``x`` (the observer phase); returns the snapped tensor."""
        _codes, params = SCHEMES.get(self.scheme).quantize(x.detach(), self.bits, per_channel=self.per_channel, **self.options)
        book = params.codebook
        c = x.shape[0]
        self.scale = params.step.expand(c).clone() if params.step.numel() == 1 else params.step.clone()
        self.zero_point = torch.zeros(c, dtype=torch.int64)
        self.codebook = book.clone()
        return self.snap(x)

    def snap(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` rounded to the nearest stored level (no gradient)."""
        xc = channels_view(x, self.per_channel)
        idx = nearest_level(xc, self.codebook.to(xc.dtype))
        return torch.gather(self.codebook.to(xc.dtype), 1, idx).reshape(x.shape).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Observe (when enabled and ``x`` changed), then fake-quantize with a straight-through gradient."""
        key = (x.data_ptr(), x._version)
        if bool(self.observer_enabled[0]) and (key != self._seen or (self.codebook.shape[0] == 1 and self.codebook.numel() == 1)):
            self.observe(x)
            self._seen = key if not torch.is_grad_enabled() or not x.requires_grad else None
        if not bool(self.fake_quant_enabled[0]):
            return x
        return x + (self.snap(x) - x).detach()

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel grid step and zero points (0)."""
        return self.scale, self.zero_point

    def extra_repr(self) -> str:
        """Scheme, bits and grid."""
        return f"scheme={self.scheme}, bits={self.bits}, dtype={self.dtype}, per_channel={self.per_channel}"


__all__ = ["GridFakeQuantizePerChannel"]
