"""The energy readers are pasted into the agent: imports between pasted modules are dropped, and checked."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from edgeslim.device_bench import agent_build
from edgeslim.device_bench.agent_build import AgentBuildError, build_agent

ENERGY = Path(agent_build.__file__).parent / "energy"


def test_every_energy_module_is_pasted_without_its_package_imports() -> None:
    text = build_agent()
    for module in ("base", "hwmon", "jetson", "measure", "nvidia", "pmic", "rapl"):
        assert f"# ---- begin edgeslim/device_bench/energy/{module}.py (built into the agent) ----" in text
    assert not re.search(r"^\s*(from|import) edgeslim", text, re.MULTILINE)
    assert text.index("energy/base.py (built") < text.index("energy/rapl.py (built")  # base pasted first
    defined = {n.name for n in ast.parse(text).body if isinstance(n, ast.ClassDef)}
    assert {"RaplSensor", "HwmonSensor", "JetsonIioSensor", "PmicSensor", "NvmlSensor", "NvidiaSmiSensor"} <= defined


def test_energy_modules_import_only_stdlib_and_their_package() -> None:
    pasted = [p for p in ENERGY.glob("*.py") if p.name != "__init__.py"]  # the package's __init__ is host-only
    assert len(pasted) == 7
    for path in pasted:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                ok = name.startswith("edgeslim.device_bench.energy.") or name.split(".")[0] in sys.stdlib_module_names
                assert ok, (path.name, name)


def _fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second: str) -> None:
    (tmp_path / "one_mod.py").write_text("def helper():\n    return 1\n")
    (tmp_path / "two_mod.py").write_text(second)
    (tmp_path / "agent.py").write_text(
        "from one_mod import helper  # edgeslim:inline\nfrom two_mod import Runner  # edgeslim:inline\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(agent_build, "AGENT_SOURCE", tmp_path / "agent.py")


def test_import_from_a_pasted_module_is_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_package(tmp_path, monkeypatch, "from one_mod import (\n    helper,\n)\n\n\nclass Runner:\n    x = helper()\n")
    text = build_agent()
    assert "from one_mod" not in text and "    helper,\n" not in text
    namespace: dict[str, object] = {}
    exec(compile(text, "agent", "exec"), namespace)  # the built script, as the device runs it
    assert namespace["Runner"].x == 1  # type: ignore[attr-defined]


def test_importing_an_undefined_or_renamed_name_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_package(tmp_path, monkeypatch, "from one_mod import nothing\n\n\nclass Runner:\n    pass\n")
    with pytest.raises(AgentBuildError, match=r"imports \['nothing'\] from one_mod, which does not define them"):
        build_agent()
    _fake_package(tmp_path, monkeypatch, "from one_mod import helper as h\n\n\nclass Runner:\n    pass\n")
    with pytest.raises(AgentBuildError, match="`as` is not supported in pasted modules"):
        build_agent()
