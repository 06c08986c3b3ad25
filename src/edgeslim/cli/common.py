"""Shared helpers of the CLI: JSON summaries, error reporting, progress bars, model input."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgeslim.errors import EdgeslimError

#: Options shared by several commands (one definition, same flag everywhere).
DataDirOpt = Annotated[Path | None, typer.Option(help="Fashion-MNIST IDX folder")]
DataOpt = Annotated[str | None, typer.Option(
    "--data",
    help="fashion-mnist (default) | imagefolder:DIR (DIR/train/<class>/*.png|jpg and DIR/val/<class>/*) | "
         "npz:FILE (arrays x, y [+ x_val, y_val]; x uint8 NHWC/NHW, or float NCHW used as is) | "
         "python:module:function or python:FILE.py:function (returns (train_loader, eval_loader))",
)]
MeanOpt = Annotated[str | None, typer.Option(
    "--mean", help="Per-channel mean subtracted from images read as [0,1] (imagefolder, uint8 npz), e.g. 0.485,0.456,0.406")]
StdOpt = Annotated[str | None, typer.Option(
    "--std", help="Per-channel std they are divided by, e.g. 0.229,0.224,0.225 (default: no normalisation)")]
WeightsOpt = Annotated[Path | None, typer.Option(
    "--weights",
    help="A state_dict .pt (loaded weights_only=True) for --model FILE.py:factory, package.module:factory or a "
         "torchvision name",
)]
SeedOpt = Annotated[int, typer.Option(help="Random seed")]
ForceOpt = Annotated[bool, typer.Option(help="Overwrite files that already exist in OUT")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary as the last stdout line")]

#: Human-readable output goes to stderr so that stdout's last line can be pure JSON.
console = Console(stderr=True)


def run_app(app: typer.Typer) -> None:
    """Run ``app`` (its group, :class:`edgeslim.cli.failure.GuardedGroup`, turns failures into messages).

    An :class:`EdgeslimError` raised outside a command becomes the same one-line message and exit code 2.
    """
    try:
        app()
    except EdgeslimError as exc:
        console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False, markup=True)
        sys.exit(2)
    except KeyboardInterrupt:  # outside a command (while starting up)
        console.print("interrupted", highlight=False)
        sys.exit(130)


def refuse_existing_outputs(out_dir: Path, names: Iterable[str], force: bool, *, param_hint: str = "--out") -> None:
    """Stop before any work when a file the command will write already exists and ``--force`` was not given.

    Call it with every file name the command may write into ``out_dir`` (model, reports, plots ...),
    so that nothing is overwritten silently, not only the model.

    Args:
        out_dir: The output folder (for a command whose ``--out`` is a file: that file's folder).
        names: File names, relative to ``out_dir``, the command will write.
        force: Whether ``--force`` was given (then nothing is refused).
        param_hint: The option named in the message.

    Raises:
        typer.BadParameter: ``out_dir`` is a file, or (without ``force``) one of the outputs exists;
            the message names every existing file and says to pass ``--force`` (exit code 2).
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise typer.BadParameter(f"{out_dir} is a file, not a folder", param_hint=param_hint)
    if force:
        return
    existing = [name for name in dict.fromkeys(names) if (out_dir / name).exists()]
    if existing:
        listed = ", ".join(existing)
        raise typer.BadParameter(
            f"{out_dir} already holds {listed}; pass --force to overwrite "
            f"{'it' if len(existing) == 1 else 'them'} (or choose another {param_hint})",
            param_hint=param_hint,
        )


def refuse_existing(dest: Path, force: bool) -> None:
    """Stop before any work when the single output file ``dest`` exists and ``--force`` was not given.

    Prefer :func:`refuse_existing_outputs` with every file the command writes.

    Args:
        dest: The output file.
        force: Whether ``--force`` was given.

    Raises:
        typer.BadParameter: ``dest`` exists and ``force`` is false.
    """
    refuse_existing_outputs(dest.parent, [dest.name], force)


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


class ModelArg:
    """What ``--model`` resolved to: the model (or ``QuantResult``), its lineage and data set.

    Attributes:
        obj: An ``nn.Module``, or a ``QuantResult`` for a saved quantized file.
        source: The name or path given.
        lineage: The saved file's lineage (a reference model: one ``float`` step).
        dataset: The data set the model was trained on (``fashion-mnist``), if known.
        kind: ``reference``, ``torchvision``, ``pruned``, ``quantized`` ...
    """

    def __init__(self, obj: Any, source: str, lineage: list[dict[str, Any]], dataset: str | None, kind: str) -> None:
        self.obj, self.source, self.lineage, self.dataset, self.kind = obj, source, lineage, dataset, kind

    @property
    def module(self) -> Any:
        """The ``nn.Module`` (the converted graph of a ``QuantResult``)."""
        return getattr(self.obj, "model", self.obj)


def resolve_model(model: str, weights: Path | None = None) -> ModelArg:
    """Resolve ``--model`` (and ``--weights``) with its lineage (see :mod:`edgeslim.lineage`).

    ``model``: a reference name, a torchvision name, an edgeslim-saved file, or your factory
    ``path/to/file.py:build`` / ``package.module:build`` (its lineage records the file, the
    factory and the sha256 of ``weights``).

    Raises:
        edgeslim.errors.ModelLoadError: Unknown name, missing or unsafe file, a factory that cannot
            be called, weights that do not match.
    """
    from edgeslim import io as es_io
    from edgeslim import models
    from edgeslim.lineage import dataset_of, lineage_of
    from edgeslim.models.user import is_user_spec, load_user

    path = Path(model)
    if is_user_spec(model) and not path.is_file():
        net, origin = load_user(model, weights)
        models.remember_arch(net, models.ArchInfo(str(origin["source"])))
        step = {"step": "float", **origin, "sha256": es_io.state_sha256(net.state_dict())}
        return ModelArg(net, model, [step], None, "user")
    if path.suffix in {".pt", ".pth", ".edgeslim", ".safetensors"} or path.exists():
        if weights is not None:
            raise typer.BadParameter(f"{model} is a saved model file: it carries its own weights (--weights is for "
                                     "FILE.py:factory, package.module:factory or a torchvision name)",
                                     param_hint="--weights")
        header = es_io.read_header(path)
        kind = str(header.get("kind", "state_dict"))
        steps = lineage_of(header.get("meta"))
        if kind == "quantized":
            from edgeslim.plugin.quantization.saved import load_result

            return ModelArg(load_result(path), str(path), steps, dataset_of(steps), kind)
        return ModelArg(es_io.load(path), str(path), steps, dataset_of(steps), kind)
    net = models.load(model, weights=weights)
    if model in models.REFERENCES:
        ref = models.REFERENCES[model]
        step = {"step": "float", "source": model, "sha256": es_io.state_sha256(net.state_dict()), "dataset": ref.dataset}
        return ModelArg(net, model, [step], ref.dataset, "reference")
    if weights is not None:
        from edgeslim.models.user import file_sha256

        step = {"step": "float", "source": model, "weights": str(weights.resolve()), "weights_sha256": file_sha256(weights),
                "sha256": es_io.state_sha256(net.state_dict())}
        return ModelArg(net, model, [step], None, "torchvision")
    return ModelArg(net, model, [], None, "torchvision")


class DataArg:
    """What ``--data`` resolved to.

    Attributes:
        source: The :class:`~edgeslim.data.DataSource`.
        explicit: Whether ``--data`` was given (else: the default, Fashion-MNIST).
    """

    def __init__(self, source: Any, explicit: bool) -> None:
        self.source, self.explicit = source, explicit

    def measures(self, arg: ModelArg) -> bool:
        """Whether top-1 on this data means something for ``arg`` (given explicitly, or the model's own data)."""
        return self.explicit or arg.dataset == self.source.name

    def warn_if_foreign(self, arg: ModelArg, what: str) -> None:
        """Say on stderr when the default data (Fashion-MNIST) is used for a model not trained on it."""
        if not self.explicit and arg.dataset != self.source.name:
            console.print(f"[yellow]note:[/] {what} on {self.source.name} (no --data given) for {arg.source}, which was not "
                          "trained on it; pass --data for your own images", highlight=False)

    def channels(self) -> int:
        """Channels of the data's images (the example input's)."""
        return int(self.source.channels())

    def example(self, input_size: int, batch: int = 1, *, random: bool = True) -> Any:
        """An NCHW example input with the data's channels."""
        import torch

        shape = (batch, self.channels(), input_size, input_size)
        return torch.randn(shape) if random else torch.zeros(shape)

    def check_fits(self, net: Any, x: Any) -> None:
        """Fail when a label is outside the model's outputs (run once on ``x``); names the file."""
        import torch

        with torch.no_grad():
            out = net.eval()(x)
        if isinstance(out, torch.Tensor) and out.ndim == 2:
            self.source.check_labels(int(out.shape[1]))


def resolve_data(
    data: str | None, *, data_dir: Path | None = None, input_size: int | None = None,
    mean: str | None = None, std: str | None = None,
) -> DataArg:
    """Resolve ``--data`` (default ``fashion-mnist``) and check it before any work.

    Raises:
        edgeslim.errors.DataError: Unknown kind, missing, unreadable, empty or inconsistent data
            (the message names the file or folder).
    """
    from edgeslim.data import DataOptions, open_data
    from edgeslim.data.sources import parse_floats

    options = DataOptions(input_size=input_size, mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"),
                          root=data_dir)
    return DataArg(open_data(data or "fashion-mnist", options), data is not None)


def count_images(loader: Any) -> int:
    """The number of images a loader yields (``len(loader.dataset)`` when it has one)."""
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    return sum(len(y) for _, y in loader)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr (converters print from C++ too), so stdout ends in JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


#: ``--device`` of the commands that train, calibrate or evaluate (resolved by :func:`edgeslim.train.resolve_torch_device`).
DeviceOpt = Annotated[str, typer.Option(
    "--device", help="Where training, calibration and evaluation run: auto (CUDA when present), cpu, cuda, cuda:N")]
