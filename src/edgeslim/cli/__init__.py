"""The ``edgeslim`` command.

Each sub-command lives in its own module of this package and exposes ``register(app)``;
the modules are listed in :data:`COMMAND_MODULES`. Heavy imports (torch ...) happen inside
the commands so that ``edgeslim --help`` stays fast. Failures never print a raw traceback:
see :mod:`edgeslim.cli.failure` (``--debug`` on every command shows it).
"""

from __future__ import annotations

import importlib

import typer

from edgeslim.cli.failure import GuardedGroup, install, root_callback

COMMAND_MODULES = ("demo", "prune", "sensitivity", "bench", "device", "export", "quantize", "compress", "pack", "finetune")

app = typer.Typer(
    name="edgeslim",
    help="Prune, quantize, export and benchmark PyTorch models for edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=GuardedGroup,  # no raw traceback from any command (edgeslim.cli.failure)
)
app.callback()(root_callback)

for _name in COMMAND_MODULES:
    importlib.import_module(f"edgeslim.cli.{_name}").register(app)
install(app)  # --debug on every command


def main() -> None:
    """Entry point of the console script."""
    from edgeslim.cli.common import run_app

    run_app(app)


__all__ = ["app", "main"]
