"""Build the uploadable bench agent: ``agent.py`` with the shared runner modules pasted in.

``agent.py`` imports each shared module with a line marked ``# edgeslim:inline``; :func:`build_agent`
replaces every such line by the source of the module it imports (without its ``from __future__``
line: the agent has its own at the top). The runners come from the one runtime list: the line
``from edgeslim.device_bench.runtimes import RUNNERS  # edgeslim:runners`` becomes an inline
import of each module of :data:`edgeslim.device_bench.runtimes.RUNNERS` and ``RUNNERS = (...)``
in the same order, so a runtime added there reaches the board with no edit to ``agent.py``. The runner modules are the ones the host verifies
artefacts with, so a board runs the same session settings, layouts and (de)quantization.

The build checks what makes the pasted script work on a board: each pasted module imports only
the standard library, numpy and modules pasted before it (those ``from MODULE import NAMES``
statements are dropped: the names are already defined; runtimes are imported by name at run
time), defines the names
the agent imports from it, and no two pieces define the same top-level name. The output depends
only on those source files (no time stamps, paths or versions): the same checkout always
uploads the same bytes.
"""

from __future__ import annotations

import ast
import atexit
import hashlib
import importlib.util
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from edgeslim.device_bench.errors import DeviceError

AGENT_SOURCE = Path(__file__).with_name("agent.py")
INLINE_MARK = "# edgeslim:inline"
RUNNERS_MARK = "# edgeslim:runners"
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # .../edgeslim
_FUTURE = "from __future__ import annotations"
_MARKED = re.compile(r"^from (\w+(?:\.\w+)*) import ([\w, ]+?)\s+" + re.escape(INLINE_MARK) + r"\s*$")
_RUNNERS_LINE = re.compile(r"^from edgeslim\.device_bench\.runtimes import RUNNERS\s+" + re.escape(RUNNERS_MARK) + r"\s*$")
_BUILT: dict[str, Path] = {}
_LOCK = threading.Lock()  # the fleet benches boards from threads; CPython 3.11's ast.parse is not thread-safe


class AgentBuildError(DeviceError):
    """The agent source or a runner module breaks the rules of the uploadable agent."""


def _defined(tree: ast.Module) -> set[str]:
    """Top-level names a module defines itself (functions, classes, assignments; not imports)."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def _imported_modules(tree: ast.Module) -> set[str]:
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return mods | {n.module.split(".")[0] for n in ast.walk(tree)
                   if isinstance(n, ast.ImportFrom) and n.module and not n.level}


def _module_source(module: str, names: list[str], pasted: dict[str, set[str]]) -> tuple[str, Path, set[str]]:
    """The source of ``module`` ready to paste, its path and the names it defines.

    ``pasted`` maps each module pasted before it to the names it defines: imports from those are dropped.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise AgentBuildError(f"agent build: cannot find module {module}")
    path = Path(spec.origin)
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, str(path))
    dropped: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module in pasted and not node.level:
            absent = [a.name for a in node.names if a.name not in pasted[node.module] or a.asname]
            if absent:
                raise AgentBuildError(f"agent build: {path} imports {absent} from {node.module}, which does not define "
                                      "them (or renames them: `as` is not supported in pasted modules)")
            dropped |= set(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    kept = ast.Module(body=[n for n in tree.body if n.lineno not in dropped], type_ignores=[])
    bad = _imported_modules(kept) - set(sys.stdlib_module_names) - {"numpy", "__future__"}
    if bad:
        raise AgentBuildError(f"agent build: {path} imports {sorted(bad)}; a module built into the agent may import "
                              "only the standard library and numpy (import runtimes by name at run time)")
    defined = _defined(tree)
    missing = [n for n in names if n not in defined]
    if missing:
        raise AgentBuildError(f"agent build: the agent imports {missing} from {module}, which does not define them")
    lines = [line for i, line in enumerate(text.splitlines(), 1) if line.strip() != _FUTURE and i not in dropped]
    return "\n".join(lines).strip("\n"), path, defined


def _expand_runners(agent_text: str) -> str:
    """``agent_text`` with the ``# edgeslim:runners`` line replaced by inline imports of the registered runners."""
    out: list[str] = []
    for line in agent_text.splitlines():
        if not _RUNNERS_LINE.match(line):
            out.append(line)
            continue
        from edgeslim.device_bench.runtimes import RUNNERS

        by_module: dict[str, list[str]] = {}
        for cls in RUNNERS:
            by_module.setdefault(cls.__module__, []).append(cls.__name__)
        out += [f"from {module} import {', '.join(names)}  {INLINE_MARK}" for module, names in by_module.items()]
        out.append(f"RUNNERS = ({', '.join(cls.__name__ for cls in RUNNERS)},)")
    return "\n".join(out) + ("\n" if agent_text.endswith("\n") else "")


def build_agent() -> str:
    """The uploadable agent: ``agent.py`` with every ``# edgeslim:inline`` import replaced by its module.

    Returns:
        One self-contained Python script (stdlib + numpy + a runtime at run time).

    Raises:
        AgentBuildError: A pasted module imports more than stdlib + numpy, lacks a name the agent
            imports, or two pieces define the same top-level name.
    """
    out: list[str] = []
    owners: dict[str, str] = {}
    parts: list[str] = []
    pasted: dict[str, set[str]] = {}
    agent_text = _expand_runners(AGENT_SOURCE.read_text(encoding="utf-8"))
    for line in agent_text.splitlines():
        m = _MARKED.match(line)
        if m is None:
            out.append(line)
            continue
        source, path, defined = _module_source(m.group(1), [n.strip() for n in m.group(2).split(",")], pasted)
        pasted[m.group(1)] = defined
        resolved = path.resolve()
        rel = resolved.relative_to(_PACKAGE_ROOT.parent).as_posix() if resolved.is_relative_to(_PACKAGE_ROOT) else path.name
        for name in defined:
            if name in owners:
                raise AgentBuildError(f"agent build: {rel} and {owners[name]} both define {name!r}")
            owners[name] = rel
        parts.append(rel)
        out += [f"# ---- begin {rel} (built into the agent) ----", source, f"# ---- end {rel} ----"]
    unmarked = "\n".join(line for line in agent_text.splitlines() if not _MARKED.match(line))
    clash = sorted(_defined(ast.parse(unmarked)) & set(owners))
    if clash:
        raise AgentBuildError(f"agent build: agent.py redefines {clash} from {', '.join(parts)}")
    header = f"# Built by edgeslim.device_bench.agent_build from edgeslim/device_bench/agent.py + {' + '.join(parts)}."
    return header + "\n" + "\n".join(out) + "\n"


def agent_file() -> Path:
    """The built agent written to a private temporary folder of this process (rebuilt if its sources change).

    Thread-safe: the fleet calls it from one thread per board.
    """
    with _LOCK:
        return _agent_file()


def _agent_file() -> Path:
    text = build_agent()
    digest = hashlib.sha256(text.encode()).hexdigest()
    path = _BUILT.get(digest)
    if path is None or not path.is_file():
        folder = Path(tempfile.mkdtemp(prefix="edgeslim-agent-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        path = folder / "agent.py"
        path.write_text(text, encoding="utf-8")
        _BUILT[digest] = path
    return path


__all__ = ["AGENT_SOURCE", "INLINE_MARK", "RUNNERS_MARK", "AgentBuildError", "agent_file", "build_agent"]
