"""The per-process cache of torchlib's ONNX function list: the same entries, built once, installed for the exporter."""

from __future__ import annotations

import importlib
from typing import Any

from torch.onnx._internal import _lazy_import

from edgeslim.exporters import torchlib_cache


def _module() -> Any:
    apis = _lazy_import.onnxscript_apis
    return importlib.import_module(apis._name) if isinstance(getattr(apis, "_name", None), str) else apis


def test_installed_for_torch_onnx_export_and_idempotent() -> None:
    assert torchlib_cache.install() is True
    first = _module().get_torchlib_ops
    assert getattr(first, "_edgeslim_cached", False) is True
    assert torchlib_cache.install() is True and _module().get_torchlib_ops is first


def test_same_entries_as_onnxscript_built_once() -> None:
    torchlib_cache.install()
    raw = _module().get_torchlib_ops.__wrapped__
    calls: list[int] = []

    def build() -> list[Any]:
        calls.append(1)
        return raw()

    torchlib_cache.clear()
    get = torchlib_cache.cached(build)
    first, second = get(), get()
    assert len(calls) == 1  # the registry did not change between the calls
    assert first is not second and first == second  # a new list each time, equal frozen entries
    want = raw()
    assert [(m.qualified_name, m.function, m.domain, m.name, m.is_complex) for m in first] == [
        (m.qualified_name, m.function, m.domain, m.name, m.is_complex) for m in want]
    assert len(first) > 300 and any(m.qualified_name == "aten::conv2d" for m in first)
