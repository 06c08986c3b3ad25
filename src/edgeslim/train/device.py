"""``--device auto|cpu|cuda|cuda:N``: where training, calibration and evaluation run."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from edgeslim import distributed
from edgeslim.errors import ConfigError

#: The values ``--device`` (and the recipe key ``device``) accepts besides ``cuda:N``.
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_torch_device(spec: str | torch.device | None = "auto", *, option: str = "--device") -> torch.device:
    """The ``torch.device`` named by ``spec``.

    ``auto`` (or None) is this rank's GPU under torchrun with NCCL, else ``cuda`` when a GPU is
    present, else the CPU.

    Args:
        spec: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a ``torch.device``.
        option: The option or key that gave ``spec``, for the error message.

    Returns:
        The device.

    Raises:
        ConfigError: An unknown value, or a CUDA device this machine does not have (names ``option``).
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    if text == "auto":
        if distributed.active():
            return distributed.device()
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"{option}: {spec!r} is not a device; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"{option} {spec}: no CUDA GPU is available on this machine (torch.cuda.is_available() is "
                          f"False); use {option} cpu or {option} auto")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise ConfigError(f"{option} {spec}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    return torch.device(text)


def device_of(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s first parameter (or buffer) lives; the CPU for a module without tensors."""
    for tensors in (module.parameters(), module.buffers()):
        first: torch.Tensor | None = next(iter(tensors), None)
        if first is not None:
            return first.device
    return torch.device("cpu")
def to_device(value: Any, device: torch.device) -> Any:
    """``value`` with its tensors on ``device`` (a tensor, or tuples/lists/dicts of them; anything else as is)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


class OnDevice:
    """``loader``'s batches moved to ``device`` as they are read (for code that runs a model on its batches)."""

    def __init__(self, loader: Iterable[Any], device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            yield to_device(batch, self.device)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


__all__ = ["DEVICE_CHOICES", "OnDevice", "device_of", "resolve_torch_device", "to_device"]
