"""What the ``edgeslim`` command does when a command fails: never a raw traceback.

- An :class:`~edgeslim.errors.EdgeslimError` (a failure edgeslim foresaw) prints one line,
  ``error: Type: message``, and exits with :data:`EXIT_USAGE` (2); when it wraps another
  library's exception, that traceback goes to a log file too (``log: PATH``).
- Any other exception prints a short message naming the step, the module (``nn.Module``) or
  file involved when the traceback shows one, and what to try; the full traceback goes to a
  new log file under :func:`log_dir`, printed as ``log: PATH``; exit :data:`EXIT_SOFTWARE` (70).
- Ctrl-C prints ``interrupted`` and exits :data:`EXIT_INTERRUPTED` (130); files already written
  are kept.
- ``--debug`` (accepted by every command and by ``edgeslim`` itself) prints the traceback too.

:class:`GuardedGroup` is the ``edgeslim`` app's group: it handles the failures above, for the
console script and for typer's ``CliRunner``; :func:`install` adds ``--debug`` to every command.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import os
import platform
import shlex
import sys
import sysconfig
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
import typer.core

from edgeslim.cli.common import console
from edgeslim.errors import EdgeslimError
from edgeslim.quiet import quiet_logs

#: Exit status of an :class:`~edgeslim.errors.EdgeslimError` (as click's usage errors).
EXIT_USAGE = 2
#: Exit status of an unexpected failure (``EX_SOFTWARE`` of sysexits.h).
EXIT_SOFTWARE = 70
#: Exit status after Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130

_DEBUG_HELP = "On failure, also print the full traceback (it is always written to a log file)"


def log_dir() -> Path:
    """The folder failure logs go to: ``$XDG_STATE_HOME/edgeslim/logs`` (default ``~/.local/state``)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "edgeslim" / "logs"


@dataclass
class Where:
    """What the traceback of a failure shows.

    Attributes:
        module: Qualified name of the innermost ``nn.Module`` whose ``forward`` was running
            (``""``: the model itself), or ``None`` when no forward was running.
        module_type: That module's class name.
        user_frame: ``FILE:LINE in FUNCTION`` of the innermost frame in code that is neither
            edgeslim's nor an installed library's (the user's model or data file).
        inner_call: ``module.function`` of the innermost edgeslim frame outside the CLI.
        step: The edgeslim call the command was running (``edgeslim.plugin.pruning.api.prune``).
    """

    module: str | None = None
    module_type: str | None = None
    user_frame: str | None = None
    inner_call: str | None = None
    step: str | None = None


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (or while handling), outermost first."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ if cur.__cause__ is not None else (None if cur.__suppress_context__ else cur.__context__)
    return out


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths.get(k, "") for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return tuple(sorted(r for r in roots if r))


def _kind(filename: str, package_root: str, libraries: tuple[str, ...]) -> str:
    """``edgeslim``, ``cli``, ``library`` or ``user`` for a frame's file."""
    if filename.startswith(package_root):
        return "cli" if filename.startswith(os.path.join(package_root, "cli")) else "edgeslim"
    if (filename.startswith("<") or filename.startswith(libraries) or "site-packages" in filename
            or "dist-packages" in filename):
        return "library"
    return "user"


def _module_name(frame: FrameType) -> str:
    name = frame.f_globals.get("__name__")
    return str(name) if name else Path(frame.f_code.co_filename).stem


def locate(exc: BaseException) -> Where:
    """Find the step, the ``nn.Module`` and the user's file involved in ``exc`` (see :class:`Where`)."""
    import edgeslim

    package_root = str(Path(edgeslim.__file__).resolve().parent)
    libraries = _library_roots()
    # the whole stack: the outer exception's frames, then those of what it was raised from (whose first
    # frame is the one that caught it, already listed)
    frames: list[tuple[FrameType, int]] = []
    for e in _chain(exc):
        more = list(traceback.walk_tb(e.__traceback__))
        if more and frames and more[0][0] is frames[-1][0]:
            more = more[1:]
        frames.extend(more)
    where = Where()
    nn_module = getattr(sys.modules.get("torch.nn"), "Module", None)
    forwards: list[Any] = []
    after_cli = False
    for frame, lineno in frames:
        filename = frame.f_code.co_filename
        kind = _kind(str(Path(filename).resolve()) if not filename.startswith("<") else filename, package_root,
                     libraries)
        func = frame.f_code.co_name
        if kind == "cli":
            after_cli, where.step = True, None
        elif kind == "edgeslim":
            where.inner_call = f"{_module_name(frame)}.{func}"
            if after_cli:  # the edgeslim call the command made
                where.step, after_cli = where.inner_call, False
        elif kind == "user":
            where.user_frame = f"{filename}:{lineno} in {func}"
        this = frame.f_locals.get("self")
        if nn_module is not None and func == "forward" and isinstance(this, nn_module):
            forwards.append(this)
    if forwards:
        inner = forwards[-1]
        where.module_type = type(inner).__name__
        where.module = next((name for root in forwards for name, m in root.named_modules() if m is inner), None)
    return where


def describe(exc: BaseException, command: str, step: str | None = None) -> list[str]:
    """The short message of an unexpected failure ``exc`` of ``edgeslim COMMAND`` (no traceback).

    Args:
        exc: The exception.
        command: The command's name (``prune``, ``device check``).
        step: The pipeline step running (``edgeslim compress``), if known.

    Returns:
        The lines to print: what failed, where, and what to try.
    """
    where = locate(exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    if len(first) > 300:
        first = first[:300] + " …"
    during = step or where.step
    head = f"edgeslim {command} failed unexpectedly{f' in step {during}' if during else ''}: {type(exc).__name__}"
    lines = [f"{head}: {first}" if first else head]
    if where.module is not None:
        name = f"module '{where.module}'" if where.module else "the model's own forward"
        lines.append(f"  in {name} ({where.module_type})"
                     + (f", raised at {where.user_frame}" if where.user_frame else ""))
    elif where.user_frame:
        lines.append(f"  raised in your code at {where.user_frame}")
    if where.inner_call and where.inner_call != during:
        lines.append(f"  while edgeslim ran {where.inner_call}")
    lines.append("  try: " + _advice(exc, where, during))
    return lines


def _advice(exc: BaseException, where: Where, step: str | None) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"check {exc.filename} ({exc.strerror or 'it cannot be used'}); --debug shows the traceback"
    pruning = any("prun" in (s or "") or "sensitivity" in (s or "") for s in (step, where.inner_call))
    if where.module and pruning:
        return (f"if the model runs before pruning, edgeslim cannot follow the forward of '{where.module}' once its "
                f"channels change: keep it whole (--ignore '{where.module}', or ignore: in a recipe) or make its "
                "forward read sizes from its input; otherwise fix your code there (--debug shows the traceback)")
    if where.user_frame:
        return "your code raised this: check it in Python on the same inputs (--debug shows the traceback)"
    return "rerun with --debug to see the traceback; if it comes from edgeslim, report it with the log file"


def write_log(exc: BaseException, command: str, argv: list[str] | None = None) -> Path | None:
    """Write ``exc``'s full traceback to a new file in :func:`log_dir` (never overwriting one).

    Args:
        exc: The exception.
        command: The command's name (part of the file name).
        argv: The command line (default ``sys.argv``).

    Returns:
        The file, or ``None`` when no log could be written (the folder cannot be created).
    """
    from edgeslim import __version__

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = "-".join(command.split()) or "edgeslim"
    argv = list(sys.argv if argv is None else argv)
    text = (f"edgeslim {__version__} {safe} failed at {datetime.datetime.now().isoformat(timespec='seconds')}\n"
            f"command: {shlex.join(['edgeslim', *argv[1:]])}\n"
            f"python {platform.python_version()} on {platform.platform()}\n"
            + "".join(f"{m} {getattr(sys.modules[m], '__version__', '?')}\n" for m in ("torch", "torchao")
                      if m in sys.modules)
            + "\n" + "".join(traceback.format_exception(exc)))
    try:
        folder = log_dir()
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1000):
            path = folder / f"{stamp}-{safe}-{os.getpid()}{f'-{n}' if n else ''}.log"
            try:
                with path.open("x", encoding="utf-8") as f:
                    f.write(text)
                return path
            except FileExistsError:
                continue
    except OSError:
        return None
    return None


def report(exc: BaseException, command: str, *, debug: bool, step: str | None = None) -> int:
    """Print what an exception of ``edgeslim COMMAND`` means and return the exit status.

    Args:
        exc: The exception (``KeyboardInterrupt``, an :class:`EdgeslimError` or anything else).
        command: The command's name.
        debug: Also print the traceback.
        step: The pipeline step running, if known.

    Returns:
        :data:`EXIT_INTERRUPTED`, :data:`EXIT_USAGE` or :data:`EXIT_SOFTWARE`.
    """
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, KeyboardInterrupt):
        console.print(f"interrupted: edgeslim {command} stopped; files already written are kept", highlight=False,
                      soft_wrap=True)
        return EXIT_INTERRUPTED
    if isinstance(exc, EdgeslimError):
        console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False, markup=True)
        if any(not isinstance(e, EdgeslimError) for e in _chain(exc)[1:]):  # it wraps another library's failure
            _print_log(write_log(exc, command))
        return EXIT_USAGE
    lines = describe(exc, command, step)
    console.print(f"[bold red]error:[/] {lines[0]}", highlight=False, markup=True, soft_wrap=True)
    for line in lines[1:]:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    _print_log(write_log(exc, command))
    return EXIT_SOFTWARE


def _print_log(path: Path | None) -> None:
    console.print(f"log: {path}" if path else f"log: none (cannot write in {log_dir()}); rerun with --debug",
                  highlight=False, markup=False, soft_wrap=True)


#: The running command's flags: reset by :class:`GuardedGroup` at each invocation.
_STATE: dict[str, Any] = {"debug": False, "step": None}


def set_step(name: str | None) -> None:
    """Record the pipeline step the running command is in (named in the failure message)."""
    _STATE["step"] = name


DebugOpt = Annotated[bool, typer.Option("--debug", help=_DEBUG_HELP)]


def with_debug(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` with a ``--debug`` option added to its signature (the option is consumed here)."""
    sig = inspect.signature(func, eval_str=True)
    if "debug" in sig.parameters:
        return func

    @functools.wraps(func)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        _STATE["debug"] = _STATE["debug"] or debug
        return func(*args, **kwargs)

    param = inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=DebugOpt)
    wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[*sig.parameters.values(), param])
    wrapper.__annotations__ = {**getattr(func, "__annotations__", {}), "debug": DebugOpt}
    return wrapper


def root_callback(debug: DebugOpt = False) -> None:
    """``edgeslim --debug COMMAND``: the same as ``edgeslim COMMAND --debug``."""
    _STATE["debug"] = _STATE["debug"] or debug


def install(app: typer.Typer) -> None:
    """Give every command of ``app`` (and of its sub-apps) a ``--debug`` option."""
    for info in app.registered_commands:
        if info.callback is not None:
            info.callback = with_debug(info.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            install(group.typer_instance)


class GuardedGroup(typer.core.TyperGroup):
    """The ``edgeslim`` group: no raw traceback from any command (see the module doc)."""

    def invoke(self, ctx: Any) -> Any:
        """Run the command; turn its exceptions into a message and an exit status."""
        command = _command_name(self, [*getattr(ctx, "_protected_args", []), *ctx.args])
        _STATE.update(debug=False, step=None)
        try:
            with quiet_logs():  # known third-party log noise (edgeslim.quiet), for this command only
                return super().invoke(ctx)
        except _PASS_THROUGH:
            raise
        except (Exception, KeyboardInterrupt) as exc:
            code = report(exc, command, debug=bool(_STATE["debug"]), step=_STATE["step"])
            raise typer.Exit(code) from None


def _pass_through() -> tuple[type[BaseException], ...]:
    """typer's (and click's) own signalling exceptions: usage errors, Exit, Abort."""
    kinds: list[type[BaseException]] = [typer.TyperException, typer.Exit, typer.Abort]
    try:
        import click

        kinds += [click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort]
    except ImportError:  # pragma: no cover - typer >= 0.29 vendors click
        pass
    return tuple(kinds)


_PASS_THROUGH = _pass_through()


def _command_name(group: Any, args: list[str]) -> str:
    """``prune``, ``device check`` ...: the command words at the start of ``args``."""
    cmd: Any = group
    out: list[str] = []
    for word in args:
        commands = getattr(cmd, "commands", None)
        if not isinstance(commands, dict) or word not in commands:
            break
        out.append(word)
        cmd = commands[word]
    return " ".join(out) or "command"
