"""Integer-coded weights: the deployable form of non-affine schemes (log2, codebook, pwl).

A :class:`CodedWeight` holds integer ``codes`` (same shape as the weight) and the ``codebook``
that maps each code to a float level, per tensor (``[K]``) or per output channel
(``[C_out, K]``). Exporters use it to ship ``bits``-wide indices plus a tiny table instead of
float or int8 weights; :meth:`CodedWeight.decode` returns exactly the float weight the
quantized model computes with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CodedWeight:
    """A weight tensor stored as integer codes into a codebook.

    Attributes:
        codes: Integer tensor (``torch.int64`` or narrower), same shape as the weight; each
            entry indexes into the codebook (``0 <= code < K``).
        codebook: Float levels: ``[K]`` for the whole tensor, or ``[C_out, K]`` per channel
            along ``axis``.
        bits: Bits per code (``K <= 2**bits``).
        axis: The channel axis of a per-channel codebook (0 for conv/linear weights).
    """

    codes: torch.Tensor
    codebook: torch.Tensor
    bits: int
    axis: int = 0

    def decode(self) -> torch.Tensor:
        """The float weight (exactly what the quantized model uses)."""
        codes = self.codes.long()
        if self.codebook.dim() == 1:
            return self.codebook[codes]
        moved = codes.movedim(self.axis, 0)
        flat = moved.reshape(moved.shape[0], -1)
        out = torch.gather(self.codebook, 1, flat).reshape(moved.shape)
        return out.movedim(0, self.axis)

    @property
    def per_channel(self) -> bool:
        """True if the codebook has one row of levels per channel."""
        return self.codebook.dim() == 2

    @property
    def nbytes(self) -> int:
        """Storage size: ``bits`` per code (packed) plus the float32 codebook."""
        return (self.codes.numel() * self.bits + 7) // 8 + self.codebook.numel() * 4


__all__ = ["CodedWeight"]
