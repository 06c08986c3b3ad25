"""The runtime registry: one :class:`RuntimeSpec` per runtime, registered by the runtime's own file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeslim.registry import Registry


@dataclass(frozen=True)
class RuntimeSpec:
    """One runtime the agent supports.

    Attributes:
        name: Registry name, the same as in the agent (``--runtime NAME``).
        module: The Python module the agent imports.
        pip_name: The PyPI distribution to install on the device.
        suffixes: Artefact suffixes it runs.
        wheels: Distributions ``device setup`` downloads for it (numpy first).
    """

    name: str
    module: str
    pip_name: str
    suffixes: tuple[str, ...]
    wheels: tuple[str, ...]

    @classmethod
    def of(cls, runner: Any) -> RuntimeSpec:
        """The spec of a runner class (its ``name``, ``module``, ``pip_name``, ``suffixes``, ``wheels``)."""
        return cls(runner.name, runner.module, runner.pip_name, tuple(runner.suffixes), tuple(runner.wheels))

    def install_hint(self, python: str = "python3") -> str:
        """The command that installs this runtime on a device with network access."""
        return f"{python} -m pip install --user {self.pip_name}"


RUNTIMES: Registry[RuntimeSpec] = Registry("bench runtime")


def register_runtime(spec: RuntimeSpec) -> RuntimeSpec:
    """Add ``spec`` to :data:`RUNTIMES` under its name."""
    return RUNTIMES.register(spec.name)(spec)


def runtimes_for(suffix: str) -> list[RuntimeSpec]:
    """Runtimes that run files ending in ``suffix`` (e.g. ``".onnx"``), sorted by name."""
    return [spec for spec in map(RUNTIMES.get, RUNTIMES.names()) if suffix.lower() in spec.suffixes]
