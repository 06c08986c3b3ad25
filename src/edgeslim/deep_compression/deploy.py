"""An unpacked ``.esz`` model as an int8 ONNX / TFLite artefact whose weights are the packed codes.

A file packed with ``int8_grid`` (the default) holds every conv/linear weight as ``k·step`` with
integer ``|k| <= 127`` (:mod:`~edgeslim.deep_compression.grid`). :func:`quantize_unpacked` runs
``edgeslim.quantize`` (PT2E) with the ``int8-grid`` weight scheme on those layers: BatchNorm is
folded as usual and each folded channel keeps its integers with the scale ``step·f_c`` — the
weights are not re-rounded (checked: every layer's converted weight equals its folded float
weight to float32 precision, SQNR >= :data:`MIN_SQNR_DB`). Activations are int8, calibrated on
real images (512 by default), because the integer kernels of ONNX Runtime and LiteRT/XNNPACK
then run the whole network in int8 (~3x faster than fp32 here); a weight-only file (int8
weights, float activations) is just as small but runs at fp32 speed.

:func:`export_unpacked` exports that model through the standard exporters (verified in their
runtime against the PyTorch graph). For ONNX, layers whose rows hold at most 16 distinct
integers (codebooks of <= 3 bits plus the pruned zero, or dense 4-bit layers) are then stored
as 4-bit codes with an int8 codebook (:func:`edgeslim.exporters.coded.lower_coded_weights`); the
lowered file must give bit-identical outputs to the verified one in ONNX Runtime. TFLite keeps
int8 weights (it has no 4-bit codes with a codebook).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeslim.deep_compression import grid
from edgeslim.errors import ConfigError

#: Smallest SQNR (dB) of a converted weight against its folded float weight: float32 noise is ~140 dB,
#: re-rounding to int8 ~40-50 dB.
MIN_SQNR_DB = 100.0
#: Calibration images for the int8 activations.
CALIBRATION_IMAGES = 512


def grid_modules(manifest: dict[str, Any], path: str | Path) -> dict[str, float]:
    """``{module name: int8 step}`` of the coded layers of an ``.esz`` manifest.

    Raises:
        ConfigError: The file was packed without the int8 grid (its weights are not int8 codes).
    """
    layers = manifest.get("layers", [])
    missing = [e["name"] for e in layers if "int8_step" not in e]
    if missing or not layers:
        raise ConfigError(
            f"{path} was packed without the int8 grid (layer {missing[0] if missing else '?'} has no int8 step), so "
            "its weights are not int8 codes: re-create it with `edgeslim pack`, or unpack it with --quant fp32"
        )
    return {e["name"].removesuffix(".weight"): float(e["int8_step"]) for e in layers}


def int8_config(max_code: dict[str, tuple[int, ...]]) -> Any:
    """The ``QuantConfig``: int8 activations everywhere, the ``int8-grid`` scheme on the weights of ``max_code``.

    Args:
        max_code: Module name -> per output channel, the largest ``|k|`` of its packed weight.
    """
    from dataclasses import replace

    from edgeslim.plugin.quantization.config import LayerConfig, QuantConfig, WeightSpec

    base = QuantConfig.from_spec("int8")
    act = base.default.activation
    overrides = tuple(
        (m, LayerConfig(WeightSpec(grid.SCHEME, 8, options=(("max_code", codes),)), act)) for m, codes in max_code.items()
    )
    return replace(base, overrides=overrides, bias_correction=False, name="int8")


def packed_integers(model: nn.Module, manifest: dict[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """``{module name: the integers k of its weight (k·step)}``; checks the weights are on their grid.

    Raises:
        ConfigError: No int8 grid in the file, or a weight is not on it.
    """
    steps = grid_modules(manifest, path)
    state = model.state_dict()
    out = {}
    for module, step in steps.items():
        w = state[f"{module}.weight"]
        if not grid.on_grid(w, step):
            raise ConfigError(f"{path}: layer {module}'s weight is not on its int8 grid; re-create it with `edgeslim pack`")
        out[module] = torch.round(w.to(torch.float32) / torch.tensor(step, dtype=torch.float32)).to(torch.int8)
    return out


def quantize_unpacked(
    model: nn.Module,
    manifest: dict[str, Any],
    example: torch.Tensor,
    calibration: Iterable[Any],
    *,
    path: str | Path = "the .esz file",
) -> Any:
    """``edgeslim.quantize`` of an unpacked model with its packed integers as the int8 weights.

    Args:
        model: The unpacked model (:func:`edgeslim.deep_compression.unpack`).
        manifest: The file's manifest.
        example: One NCHW input.
        calibration: Batches ``(x, y)`` (or ``x``) of real images for the activation ranges.
        path: The file's name, for error messages.

    Returns:
        The ``QuantResult``.

    Raises:
        ConfigError: No int8 grid in the file, or a converted weight is not its packed integers.
    """
    from edgeslim.plugin.quantization.api import quantize

    ints = packed_integers(model, manifest, path)
    modules = {m: tuple(int(v) for v in k.reshape(k.shape[0], -1).abs().amax(dim=1)) for m, k in ints.items()}
    result = quantize(model, (example,), int8_config(modules), calibration=calibration)
    sqnr = {r.name: r.sqnr_db for r in result.report.layers if r.name in modules}
    bad = {n: v for n, v in sqnr.items() if v < MIN_SQNR_DB}
    if bad or set(sqnr) != set(modules):
        name, value = next(iter(bad.items()), (sorted(set(modules) - set(sqnr))[0], float("nan")))
        raise ConfigError(
            f"{path}: layer {name}'s int8 weight is not its packed integers (SQNR {value:.1f} dB against the folded "
            "float weight): unpack it with --quant fp32, and please report this model"
        )
    return result


def lower_narrow_weights(path: Path) -> dict[str, Any] | None:
    """Store the 8-bit weights of ``path`` with <= 16 distinct values per row as 4-bit codes (in place).

    The weights are int8, or uint8 in a ``u8u8`` file (the default on x86 CPUs without VNNI).

    Returns:
        The lowering statistics, or ``None`` when no weight is that narrow (the file is left alone).
    """
    import onnx
    from onnx import numpy_helper

    from edgeslim.exporters.coded import CODED_DTYPES, encode, lower_coded_weights

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    weights = [n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    if not any(
        (q := numpy_helper.to_array(inits[w])).dtype in CODED_DTYPES
        and q.ndim >= 2
        and encode(q, 4) is not None
        for w in weights
    ):
        return None
    return lower_coded_weights(path, {}, bits=4)


def _same_outputs(a: Path, b: Path, inputs: list[torch.Tensor]) -> bool:
    from edgeslim.device_bench.runtimes.onnxruntime import OnnxRuntimeRunner

    ra, rb = OnnxRuntimeRunner(a), OnnxRuntimeRunner(b)
    return all(np.array_equal(ra.predict(x.numpy()), rb.predict(x.numpy())) for x in inputs)


def export_unpacked(
    model: nn.Module,
    manifest: dict[str, Any],
    fmt: str,
    dest: str | Path,
    example: torch.Tensor,
    *,
    calibration: Iterable[Any],
    verify: bool = True,
    eval_data: Any = None,
    eval_name: str | None = None,
    overwrite: bool = False,
    path: str | Path = "the .esz file",
    **options: Any,
) -> dict[str, Any]:
    """Write the unpacked model as an int8 ``fmt`` artefact (``onnx``/``tflite``) with its packed weights.

    Args:
        model: The unpacked model.
        manifest: The file's manifest.
        fmt: ``onnx`` or ``tflite``.
        dest: The artefact (written atomically; refused if it exists and ``overwrite`` is false).
        example: One NCHW input (its batch is the TFLite file's batch).
        calibration: Real images for the activation ranges (:data:`CALIBRATION_IMAGES` is the usual count).
        verify: Verify the artefact in its runtime against the PyTorch graph.
        eval_data: Labelled images: the artefact's top-1 against the unpacked float model's.
        eval_name: Their name in the report.
        overwrite: Replace ``dest``.
        path: The ``.esz`` file's name, for error messages.
        options: Further :class:`~edgeslim.exporters.config.ExportOptions` fields (``eval_samples``, ``max_drop`` ...).

    Returns:
        ``bytes``, ``quant``, ``route``, ``verification``, ``accuracy``, ``top1_unpacked``,
        ``top1_artefact``, ``weights`` (how they are stored) and, for ONNX, ``bytes_int8`` (before
        the 4-bit lowering) and ``lowered`` (its statistics, or None).

    Raises:
        OutputExistsError: ``dest`` exists and ``overwrite`` is false.
        ExportError: A lowered ONNX file computes differently from the verified int8 one.
    """
    from edgeslim.exporters import export
    from edgeslim.exporters.errors import ExportError, OutputExistsError

    out = Path(dest)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass overwrite=True (CLI: --force) to replace it")
    qres = quantize_unpacked(model, manifest, example, calibration, path=path)
    kw = dict(verify=verify, eval_data=eval_data, eval_name=eval_name, float_model=model, **options)
    summary: dict[str, Any] = {"quant": "int8", "weights": "int8 (the packed integers, per-channel scale step·BN)"}
    if fmt != "onnx":
        r = export(qres, fmt, out, example, overwrite=overwrite, **kw).to_dict()
        summary["route"] = r["metadata"].get("route")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            int8, final = work / "int8.onnx", work / "final.onnx"
            r = export(qres, fmt, int8, example, **kw).to_dict()
            shutil.copyfile(int8, final)
            lowered = lower_narrow_weights(final)
            if lowered is not None and not _same_outputs(int8, final, _check_inputs(example, eval_data, options)):
                raise ExportError(f"{out.name}: the 4-bit weight codes changed ONNX Runtime's outputs; please report")
            if out.exists() and not overwrite:
                raise OutputExistsError(f"{out} exists; pass overwrite=True (CLI: --force) to replace it")
            os.chmod(final, 0o666 & ~_umask())
            os.replace(final, out)
            summary.update(bytes_int8=int8.stat().st_size, lowered=lowered)
            if lowered:
                summary["weights"] += f"; {lowered['lowered']} layers as 4-bit codes + int8 codebook"
            summary["route"] = f"{r['metadata'].get('route')}; int8-grid weights" + (
                " + 4-bit code lowering" if lowered else ""
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    summary.update(
        bytes=out.stat().st_size,
        verification=r["verification"],
        accuracy=r["accuracy"],
        top1_unpacked=r["top1_float"],
        top1_artefact=r["top1_artefact"],
        min_weight_sqnr_db=min(
            (lr.sqnr_db for lr in qres.report.layers if lr.scheme == grid.SCHEME), default=float("inf")
        ),
    )
    return summary


def _check_inputs(example: torch.Tensor, eval_data: Any, options: dict[str, Any]) -> list[torch.Tensor]:
    """The images the accuracy check used (else 256 Fashion-MNIST test images), resized to ``example``."""
    from edgeslim.exporters.accuracy import labelled_batches
    from edgeslim.exporters.base import fashion_inputs
    from edgeslim.exporters.config import ExportOptions

    shape = tuple(example.shape)
    if eval_data is None:
        return fashion_inputs(shape, 256)
    n = int(options.get("eval_samples", ExportOptions().eval_samples))
    return [x for x, _ in labelled_batches(eval_data, shape, n)]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = [
    "CALIBRATION_IMAGES",
    "MIN_SQNR_DB",
    "export_unpacked",
    "grid_modules",
    "int8_config",
    "lower_narrow_weights",
    "packed_integers",
    "quantize_unpacked",
]
