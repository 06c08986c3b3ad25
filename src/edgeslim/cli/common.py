"""Shared helpers of the CLI: JSON summaries, error reporting, progress bars, model input."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgeslim.errors import EdgeslimError

#: Options shared by several commands (one definition, same flag everywhere).
DataDirOpt = Annotated[Path | None, typer.Option(help="Fashion-MNIST IDX folder")]
SeedOpt = Annotated[int, typer.Option(help="Random seed")]
ForceOpt = Annotated[bool, typer.Option(help="Overwrite an existing model in OUT")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary as the last stdout line")]

#: Human-readable output goes to stderr so that stdout's last line can be pure JSON.
console = Console(stderr=True)


def run_app(app: typer.Typer) -> None:
    """Run ``app``; an :class:`EdgeslimError` becomes a one-line message and exit code 2."""
    try:
        app()
    except EdgeslimError as exc:
        console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False, markup=True)
        sys.exit(2)


def refuse_existing(dest: Path, force: bool) -> None:
    """Stop before any work when ``dest`` exists and ``--force`` was not given."""
    if dest.exists() and not force:
        raise typer.BadParameter(f"{dest} exists; pass --force to overwrite it", param_hint="--out")


def emit_json(summary: dict[str, Any]) -> None:
    """Print ``summary`` as one JSON line on stdout (the last line of the command's output)."""
    sys.stdout.write(json.dumps(summary, default=_json_default, sort_keys=True) + "\n")
    sys.stdout.flush()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "value"):  # enums
        return obj.value
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def progress() -> Progress:
    """A rich progress bar on stderr."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def load_model_arg(model: str) -> tuple[Any, str]:
    """Resolve ``--model``: a reference/torchvision name, an edgeslim-saved file or a checkpoint.

    Returns:
        ``(nn.Module, description)``.
    """
    from edgeslim import io as es_io
    from edgeslim import models

    path = Path(model)
    if path.suffix in {".pt", ".pth", ".edgeslim", ".safetensors"} or path.exists():
        return es_io.load(path), str(path)
    return models.load(model), model
