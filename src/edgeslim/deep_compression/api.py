"""``edgeslim.deep_compression`` / ``edgeslim.unpack``: Deep Compression (Han et al., 2016) as one call each.

``pack`` prunes (per-layer sparsity from a sensitivity analysis, iterative, masks kept through
fine-tuning), quantizes the stored weights with trained per-layer codebooks (bits per layer
under a budget; centroids then snapped onto an int8 grid, :mod:`~edgeslim.deep_compression.grid`)
and writes codes and relative indices, Huffman-coded, to one ``.esz`` file.
``unpack`` rebuilds the codebook model from the file, bit for bit.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeslim.config import serializable, to_data
from edgeslim.deep_compression import archive, esz
from edgeslim.deep_compression.codebook import Codebook, fit_layers, relative_error
from edgeslim.deep_compression.config import Init, PackConfig
from edgeslim.deep_compression.grid import snap
from edgeslim.deep_compression.prune_stage import allocate, layer_sensitivity, prune_iteratively, teacher_of
from edgeslim.deep_compression.streams import stored_positions
from edgeslim.deep_compression.trained import train_centroids
from edgeslim.errors import ConfigError
from edgeslim.plugin.pruning.sensitivity import score
from edgeslim.plugin.pruning.unstructured import prunable_weights
from edgeslim.train import resolve_torch_device

#: ``progress(stage, done, total)``: stage is ``sensitivity``, ``prune``, ``quantize``.
Progress = Callable[[str, int, int], None]


@serializable(omit=("model",), derived=("ratio",))
@dataclass
class PackResult:
    """What :func:`pack` wrote and measured.

    Attributes:
        model: The codebook model (what :func:`unpack` rebuilds, bit for bit).
        path: The ``.esz`` file.
        bytes: Its size.
        fp32_bytes: Size of the float model's state_dict saved with ``torch.save``.
        stages: One row per stage: ``stage``, ``bytes`` and, with an ``eval_fn``, ``top1``
            (``codebook``: the trained float32 centroids; ``entropy``: the file's model, its
            centroids snapped to the int8 grid when ``config.int8_grid``).
        layers: Per layer: name, weights, sparsity, bits, index bits, coded bytes, int8 grid step.
        init: Per initialisation (linear, density): summed relative error and top-1 before fine-tuning.
        config: The settings used.
    """

    model: nn.Module
    path: Path
    bytes: int
    fp32_bytes: int
    stages: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    init: dict[str, dict[str, float]] = field(default_factory=dict)
    config: PackConfig = field(default_factory=PackConfig)

    @property
    def ratio(self) -> float:
        """``fp32_bytes / bytes``."""
        return self.fp32_bytes / max(self.bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary without the model (:func:`edgeslim.config.to_data`, untagged; ``ratio`` included)."""
        data: dict[str, Any] = to_data(self, tagged=False)
        return data


def saved_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` (the fp32 file the ratio is measured against)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def _arch(model: nn.Module) -> dict[str, Any] | None:
    from edgeslim.models import arch_of_module

    info = arch_of_module(model)
    return info.to_dict() if info is not None else None


def _fixed_bytes(layers: dict[str, dict[str, Any]], value_bits: dict[str, int], dense: int) -> int:
    """Bytes of a layout with fixed-width values and relative indices (no entropy coding)."""
    bits = sum(e["entries"] * (value_bits[n] + e["index_bits"]) for n, e in layers.items())
    return (bits + 7) // 8 + dense


def pack(
    model: nn.Module,
    config: PackConfig | None = None,
    *,
    path: str | Path,
    train_data: Any,
    heldout: Iterable[tuple[torch.Tensor, torch.Tensor]],
    eval_fn: Callable[[nn.Module], float] | None = None,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    device: str | torch.device | None = None,
) -> PackResult:
    """Prune, quantize with trained codebooks and entropy-code ``model`` into one ``.esz`` file.

    Args:
        model: The float model (not modified; a copy is compressed).
        config: Settings (default :class:`PackConfig`).
        path: The ``.esz`` file to write (atomically).
        train_data: Training batches ``(x, y)`` for fine-tuning (a DataLoader: it needs a length).
        heldout: Batches for the sensitivity analysis and the initialisation comparison.
        eval_fn: Top-1 of a model (fraction); measured after every stage when given.
        meta: JSON-able extra information stored in the manifest (source, data set ...).
        overwrite: Replace an existing ``path``.
        progress: Called as ``progress(stage, done, total)``.
        device: Where the fine-tunes and the centroid training run (``auto``, ``cpu``, ``cuda``,
            ``cuda:N``; None: the CPU); the models come back to the CPU.

    Returns:
        A :class:`PackResult`.

    Raises:
        ConfigError: ``path`` exists and ``overwrite`` is false, or no held-out data.
    """
    config = config or PackConfig()
    dev = resolve_torch_device(device, option="pack(device=...)") if device is not None else None
    dest = Path(path)
    if dest.exists() and not overwrite:
        raise ConfigError(f"{dest} already exists; pass overwrite=True (CLI: --force) or choose another path")
    batches = [b for _, b in zip(range(config.sensitivity_batches), heldout, strict=False)]
    if not batches:
        raise ConfigError("pack needs held-out batches (x, y) for its sensitivity analysis")
    float_model = teacher_of(model)
    work = copy.deepcopy(model).eval()
    fp32 = saved_bytes(work)
    stages: list[dict[str, Any]] = [{"stage": "fp32", "bytes": fp32}]
    if eval_fn is not None:
        stages[0]["top1"] = eval_fn(work)

    def report(stage: str) -> Callable[[int, int], None]:
        return lambda done, total: progress(stage, done, total) if progress else None

    # 1. pruning
    weights = prunable_weights(work)
    sizes = {n: w.numel() for n, w in weights.items()}
    table = layer_sensitivity(work, batches, config.sensitivity_sparsities, on_progress=report("sensitivity"))
    per_layer = allocate(table, sizes, config.sparsity)
    prune_iteratively(
        work,
        per_layer,
        train_data,
        steps=config.prune_steps,
        epochs=config.prune_epochs,
        lr=config.prune_lr,
        teacher=float_model if config.distill else None,
        on_step=lambda s, t, _l: report("prune")(s, t),
        device=dev,
    )
    positions = {n: stored_positions(w) for n, w in prunable_weights(work).items()}
    stored = {n: w.detach().reshape(-1)[positions[n]] for n, w in prunable_weights(work).items()}
    dense_fp32 = sum(t.numel() * t.element_size() for k, t in work.state_dict().items() if k not in positions)
    pruned_row: dict[str, Any] = {"stage": "pruned"}
    if eval_fn is not None:
        pruned_row["top1"] = eval_fn(work)
    # 2. trained quantization: compare the two initialisations, train from the configured one
    inits: dict[str, dict[str, float]] = {}
    chosen: dict[str, Codebook] = {}
    for init in (Init.LINEAR, Init.DENSITY):
        books, _errors = fit_layers(stored, config.bits, config.mean_bits, init, config.kmeans_iterations)
        trial = copy.deepcopy(work)
        _bake(trial, positions, books)
        acc, loss = score(trial, batches, nn.functional.cross_entropy)
        inits[init.value] = {
            "relative_error": sum(relative_error(stored[n], b) for n, b in books.items()),
            "heldout_top1_before_finetune": acc,
            "heldout_loss_before_finetune": loss,
        }
        if init is config.init:
            chosen = books
    trained = train_centroids(
        work,
        {n: (positions[n], chosen[n]) for n in chosen},
        train_data,
        epochs=config.quant_epochs,
        lr=config.quant_lr,
        teacher=float_model if config.distill else None,
        on_step=report("quantize"),
        device=dev,
    )
    quant_row: dict[str, Any] = {"stage": "codebook"}
    if eval_fn is not None:
        quant_row["top1"] = eval_fn(work)  # float32 centroids, before they are snapped to the int8 grid
    steps: dict[str, float] = {}
    if config.int8_grid:
        for n in list(trained):
            trained[n], steps[n] = snap(trained[n])
        _bake(work, positions, trained)
    if config.float16:
        archive.round_floats(work, list(trained))
    part, blobs = archive.to_blobs(
        work, {n: (positions[n], trained[n]) for n in trained}, config.index_bits, config.float16
    )
    for e in part["layers"]:
        if e["name"] in steps:
            e["int8_step"] = steps[e["name"]]
    manifest = {"arch": _arch(model), "config": config.to_dict(), "meta": dict(meta or {}), **part}
    esz.write(dest, manifest, blobs)
    size = dest.stat().st_size
    entries = {e["name"]: e for e in part["layers"]}
    dense_stored = len(blobs["dense"])
    pruned_row["bytes"] = _fixed_bytes(entries, dict.fromkeys(entries, 32), dense_fp32)
    quant_row["bytes"] = _fixed_bytes(entries, {n: e["bits"] for n, e in entries.items()}, dense_stored) + sum(
        4 << e["bits"] for e in part["layers"]
    )
    final: dict[str, Any] = {"stage": "entropy", "bytes": size}
    if eval_fn is not None:
        final["top1"] = eval_fn(work) if config.int8_grid or config.float16 else quant_row["top1"]
    stages += [pruned_row, quant_row, final]
    layers = [
        {
            "name": e["name"],
            "weights": sizes[e["name"]],
            "sparsity": 1 - e["stored"] / max(sizes[e["name"]], 1),
            "target_sparsity": per_layer[e["name"]],
            "bits": e["bits"],
            "index_bits": e["index_bits"],
            "padding": e["padding"],
            "code_bytes": e["code_bytes"],
            "index_bytes": e["index_bytes"],
            "int8_step": e.get("int8_step"),
        }
        for e in part["layers"]
    ]
    return PackResult(work, dest, size, fp32, stages, layers, inits, config)


@torch.no_grad()
def _bake(model: nn.Module, positions: dict[str, torch.Tensor], books: dict[str, Codebook]) -> None:
    params = dict(model.named_parameters())
    for n, book in books.items():
        flat = torch.zeros(params[n].numel())
        flat[positions[n]] = book.values()
        params[n].copy_(flat.view_as(params[n]))


def unpack(path: str | Path, *, base: nn.Module | None = None) -> nn.Module:
    """Rebuild the codebook model of an ``.esz`` file (eval mode), bit for bit.

    Args:
        path: The file written by :func:`pack`.
        base: An instance of the architecture, for models edgeslim cannot rebuild by name.

    Raises:
        EszError: Missing, truncated or corrupted file (nothing is loaded), or no architecture.
    """
    file = esz.read(path)
    state = archive.state_from(file, path)
    arch = file.manifest.get("arch")
    if base is None:
        if not arch:
            raise esz.EszError(
                f"{path} does not name a torchvision architecture: pass base=<an instance of your model>"
            )
        from edgeslim.models import ArchInfo, build_arch, remember_arch

        info = ArchInfo.from_dict(arch)
        base = remember_arch(build_arch(info.name, **info.kwargs), info)
    try:
        base.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise esz.EszError(f"{path} does not fit the architecture: {str(exc).splitlines()[0]}") from None
    return base.eval()


__all__ = ["PackResult", "pack", "saved_bytes", "unpack"]
