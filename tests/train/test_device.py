"""``--device``: what auto/cpu/cuda resolve to, and the error for a GPU that is not there."""

from __future__ import annotations

import pytest
import torch

from edgeslim.errors import ConfigError
from edgeslim.train import resolve_torch_device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")


def test_cpu_and_auto() -> None:
    assert resolve_torch_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_torch_device("auto") == expected == resolve_torch_device(None)
    assert resolve_torch_device(torch.device("cpu")) == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_names_the_option(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_torch_device(spec)
    assert str(info.value) == (f"--device {spec}: no CUDA GPU is available on this machine (torch.cuda.is_available() "
                               "is False); use --device cpu or --device auto")
    with pytest.raises(ConfigError, match=r"^device cuda: no CUDA GPU"):
        resolve_torch_device("cuda", option="device")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu:0"])
def test_not_a_device(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_torch_device(spec)
    assert str(info.value) == f"--device: {spec!r} is not a device; use auto, cpu, cuda or cuda:N"


@pytest.mark.gpu
def test_cuda_resolves_and_a_missing_index_is_named() -> None:
    assert resolve_torch_device("cuda") == torch.device("cuda")
    assert resolve_torch_device("auto").type == "cuda"
    n = torch.cuda.device_count()
    with pytest.raises(ConfigError, match=rf"--device cuda:{n}: this machine has {n} CUDA device"):
        resolve_torch_device(f"cuda:{n}")
