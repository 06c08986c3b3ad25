"""``edgeslim.export``: one call from a PyTorch model to a verified ONNX/TFLite artefact."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeslim.config import from_data, serializable, to_data
from edgeslim.exporters.accuracy import AccuracyCheck, check_accuracy, eval_key, labelled_batches
from edgeslim.exporters.base import ExportJob, batches_from, fashion_inputs, get_exporter, is_prequantized
from edgeslim.exporters.config import ExportOptions, Format, Method, Precision, QuantSpec
from edgeslim.exporters.errors import ExportConfigError, ExportVerificationError, OutputExistsError
from edgeslim.exporters.verify import VerificationReport
from edgeslim.exporters.verify import verify as verify_runner
from edgeslim.spec import WEIGHT_SCHEMES, Lowering, ParsedSpec, SchemeKind


@serializable(derived=("top1_float", "top1_artefact"))
@dataclass
class ExportResult:
    """What :func:`export` wrote.

    Attributes:
        path: The artefact.
        format: ``onnx`` or ``tflite``.
        quant: The precision label (``fp32``, ``int8``, ``w8a16``, ``log2:4`` ...).
        bytes: File size.
        layout: Input layout (``nchw``/``nhwc``).
        input: Name, dtype, shape and (quantized input) scale/zero point of the input tensor.
        dtypes: Compute dtypes of the compute ops, weight dtypes, number of float compute ops.
        verification: The numbers against PyTorch (``None`` if ``verify=False``).
        accuracy: The artefact's top-1 in its runtime next to its float ancestor's on the same
            labelled images (``None`` when no labelled data was given).
        metadata: Route, activation signedness, runtime settings, notes.
        options: The options used.
    """

    path: Path
    format: str
    quant: str
    bytes: int
    layout: str
    input: dict[str, Any]
    dtypes: dict[str, Any]
    verification: VerificationReport | None
    accuracy: AccuracyCheck | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def top1_float(self) -> float | None:
        """The float ancestor's top-1 (None when not measured)."""
        return self.accuracy.top1_float if self.accuracy else None

    @property
    def top1_artefact(self) -> float | None:
        """The artefact's top-1 in its runtime (None when not measured)."""
        return self.accuracy.top1_artefact if self.accuracy else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (:func:`edgeslim.config.to_data`, untagged; ``top1_float``/``top1_artefact`` repeat
        ``accuracy``'s for readers)."""
        data: dict[str, Any] = to_data(self, tagged=False)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportResult:
        """Inverse of :meth:`to_dict` (a summary read back from JSON)."""
        return from_data(data, cls)


def own_label(config: Any) -> str:
    """The export spelling of a ``QuantConfig``: ``int8``, ``w8a16``, ``int16`` or ``SCHEME:BITS[/acts]``.

    A model whose every quantized layer uses one coded scheme (log2, codebook, pwl: kind ``CODED``
    in :data:`edgeslim.spec.WEIGHT_SCHEMES`) at one width is exported with coded weights; anything
    else (affine, per-layer mixed) as its QDQ graph, as ``w8a16`` when some activation is 16-bit,
    ``int16`` when weights are too.
    """
    layers = [config.default, *(c for _, c in config.overrides)]
    weights = {(lc.weight.scheme, lc.weight.bits) for lc in layers if lc.weight is not None}
    acts = [lc.activation for lc in layers if lc.activation is not None]
    if len(weights) == 1 and WEIGHT_SCHEMES.get(next(iter(weights))[0]).kind is SchemeKind.CODED:
        scheme, bits = next(iter(weights))
        act = config.default.activation
        if act is None:
            return f"{scheme}:{bits}"
        return ParsedSpec(scheme, bits, act.scheme, act.bits).label
    if any(b > 8 for _, b in weights):
        return "int16"
    return "w8a16" if any(a.bits > 8 for a in acts) else "int8"


def _unwrap(model: Any) -> tuple[nn.Module, dict[str, Any], str | None]:
    """``(module, coded weights, quant label)`` of an nn.Module or an edgeslim ``QuantResult``."""
    if isinstance(model, nn.Module):
        return model, {}, None
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module):
        config = getattr(model, "config", None)
        return inner, dict(getattr(model, "coded_weights", None) or {}), own_label(config) if config is not None else None
    raise ExportConfigError(f"cannot export a {type(model).__name__}: pass an nn.Module or an edgeslim QuantResult")


def _edgeslim_quantize(model: nn.Module, example: torch.Tensor, spec: QuantSpec, calibration: list[torch.Tensor]) -> Any:
    """``edgeslim.quantize`` (PT2E) of a float model with the export's calibration batches."""
    from edgeslim.plugin.quantization.api import quantize
    from edgeslim.plugin.quantization.config import QuantConfig

    loader = [(b, torch.zeros(len(b), dtype=torch.long)) for b in calibration]
    return quantize(model, (example,), QuantConfig.from_spec(spec.label), calibration=loader)


def export(
    model: Any,
    format: str | Format,
    path: str | Path,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    quant: str | QuantSpec | None = None,
    verify: bool = True,
    calibration: Any = None,
    verify_inputs: Any = None,
    eval_data: Any = None,
    eval_name: str | None = None,
    float_model: nn.Module | None = None,
    float_top1: float | None = None,
    overwrite: bool = False,
    options: ExportOptions | None = None,
    **option_overrides: Any,
) -> ExportResult:
    """Export ``model`` to ``path`` and check it numerically in its own runtime.

    Args:
        model: An eager model (float or pruned), a PT2E-quantized graph, or the ``QuantResult``
            of ``edgeslim.quantize`` (coded log2/codebook weights are taken from it).
        format: ``"onnx"`` or ``"tflite"`` (any registered exporter).
        path: Output file; written atomically (a temporary file renamed into place).
        example_inputs: One NCHW example input (or a 1-tuple); its batch size is the TFLite
            model's fixed batch size (ONNX batch is dynamic).
        quant: ``fp32``, ``fp16``, ``dynamic``, ``int8``, ``w8a16`` (16x8), ``int16`` (W16A16,
            ONNX), ``log2:N``, ``codebook:N``, ``pwl:N`` (grammar: :mod:`edgeslim.spec`); default:
            the model's own quantization (``QuantResult``) or fp32.
        verify: Run the artefact on real images and compare with PyTorch (raises
            :class:`~edgeslim.exporters.errors.ExportVerificationError` on failure; the file is
            then not written).
        calibration: Real calibration data (loader of ``(x, y)``, tensor or list of batches);
            default: ``options.calibration_size`` Fashion-MNIST training images.
        verify_inputs: Real verification inputs; default: the first ``options.verify_samples``
            Fashion-MNIST test images (resized to the example's size).
        eval_data: Labelled images (a loader of ``(x, y)``): the artefact's top-1 in its runtime
            is compared with its float ancestor's on the first ``options.eval_samples`` of them,
            and the export fails when the drop exceeds ``options.max_drop`` points.
        eval_name: The data set's name in the report (``fashion-mnist/test``).
        float_model: The float ancestor of an already-quantized model (measured on ``eval_data``);
            a float ``model`` is its own ancestor.
        float_top1: The float ancestor's top-1 on the same images, when the model is not at hand
            (the saved file's lineage).
        overwrite: Replace an existing ``path``.
        options: Full options; ``option_overrides`` (``layout="nhwc"``, ``activations="s8s8"``,
            ``io_dtype="int8"``, ``method="edgeslim"``, ``calibration_size=512`` ...) replace fields.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ExportConfigError: Unsupported format/quantization/layout combination.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        UnsupportedOpError: A converter cannot handle an op (names the op and the module).
        ExportVerificationError: The artefact does not match PyTorch (carries the numbers).
        ExportAccuracyError: The artefact's top-1 drops more than ``max_drop`` points below its
            float ancestor's (the file is then not written).
    """
    from edgeslim.exporters.inspect import inspect_artifact
    from edgeslim.exporters.onnx import optimized_copy_path, write_optimized_copy

    fmt = Format(format).value if isinstance(format, Format) or format in {f.value for f in Format} else str(format)
    exporter = get_exporter(fmt)
    module, coded, own_quant = _unwrap(model)
    pre = is_prequantized(module)
    if pre and own_quant is None and quant is None:
        raise ExportConfigError(
            "this model is an already-quantized graph without its config: pass the QuantResult of edgeslim.quantize "
            "(or load the saved file with edgeslim.plugin.quantization.load_result), or quant='int8'/'w8a16'"
        )
    if pre and own_quant is not None and quant is not None and QuantSpec.parse(quant) != QuantSpec.parse(own_quant):
        raise ExportConfigError(
            f"this model is already quantized as {own_quant}; export it as it is (no quant / --quant), or pass the "
            f"float model to export it as {QuantSpec.parse(quant).label}"
        )
    spec = QuantSpec.parse(quant if quant is not None else (own_quant or "fp32"))
    try:
        opts = replace(options or ExportOptions(), quant=spec, **option_overrides)
    except TypeError as exc:
        raise ExportConfigError(f"unknown export option: {exc}") from exc
    example = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    if not isinstance(example, torch.Tensor) or example.dim() < 1:
        raise ExportConfigError("example_inputs must be one NCHW tensor (or a 1-tuple of it)")
    dest = Path(path)
    for out in [dest] + ([optimized_copy_path(dest)] if opts.optimized_copy and fmt == Format.ONNX.value else []):
        if out.exists() and not overwrite:
            raise OutputExistsError(f"{out} exists; pass overwrite=True (CLI: --force) to replace it")

    if not pre and not isinstance(module, torch.fx.GraphModule):
        module = module.eval()
    ancestor = float_model if float_model is not None else (None if pre else module)
    needs_calib = (spec.quantized_activations or opts.method is Method.EDGESLIM) and not pre
    calib: list[torch.Tensor] = []
    if needs_calib:
        calib = (
            batches_from(calibration, tuple(example.shape), opts.calibration_size)
            if calibration is not None
            else fashion_inputs(tuple(example.shape), opts.calibration_size, split="train")
        )
    if not pre and (opts.method is Method.EDGESLIM or spec.precision is Precision.CODED):
        if spec.precision is Precision.CODED and (scheme := WEIGHT_SCHEMES.get(spec.scheme or "")).lowers_to(fmt) is not Lowering.CODES:
            raise ExportConfigError(f"{spec.label} weights are offered for {', '.join(scheme.formats(Lowering.CODES)) or 'no format'} "
                                    f"only (as N-bit codes); quantize with edgeslim.quantize first to export {fmt}")
        qres = _edgeslim_quantize(module, example, spec, calib)
        module, coded, _ = _unwrap(qres)
        pre = True
    job = ExportJob(module, example, opts, calib, coded, pre)
    exporter.check(job)

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=exporter.suffix, dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        exporter.write(job, tmp)
        report = None
        runner = None
        if verify:
            inputs = (
                batches_from(verify_inputs, tuple(example.shape), opts.verify_samples)
                if verify_inputs is not None
                else fashion_inputs(tuple(example.shape), opts.verify_samples)
            )
            with torch.no_grad():
                tolerance = opts.tolerance or getattr(exporter, "tolerances", {}).get(spec.precision) or opts.effective_tolerance
                runner = exporter.open(tmp, job)
                try:
                    report = verify_runner(runner, module, inputs, tolerance, what=f"{fmt} {spec.label} artefact")
                except ExportVerificationError as exc:
                    retry = getattr(exporter, "retry_after_verification_failure", None)
                    instead = retry(job, tmp, exc) if retry is not None else None
                    if not instead:
                        raise
                    note, check = instead
                    try:
                        runner = exporter.open(check, job)
                        report = verify_runner(runner, module, inputs, tolerance, what=f"{fmt} {spec.label} artefact")
                    except ExportVerificationError as again:
                        raise ExportVerificationError(f"{again} ({note}; it fails too)", again.report) from exc
                    finally:
                        if check != tmp:
                            check.unlink(missing_ok=True)
        accuracy = None
        if eval_data is not None:
            batches = labelled_batches(eval_data, tuple(example.shape), opts.eval_samples)
            key = eval_key(eval_name or "user-data", tuple(example.shape), sum(len(y) for _, y in batches))
            with torch.no_grad():
                accuracy = check_accuracy(
                    runner if runner is not None else exporter.open(tmp, job), batches, key, float_model=ancestor,
                    float_top1=float_top1, max_drop=opts.max_drop, what=f"the {fmt} {spec.label} artefact",
                )
        info = inspect_artifact(tmp, fmt)
        if dest.exists() and not overwrite:  # appeared meanwhile
            raise OutputExistsError(f"{dest} exists; pass overwrite=True (CLI: --force) to replace it")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; published files get the usual mode
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if opts.optimized_copy and fmt == Format.ONNX.value:
        job.metadata["optimized_copy"] = str(write_optimized_copy(dest, overwrite=overwrite))
    inp = info.inputs[0] if info.inputs else None
    return ExportResult(
        path=dest,
        format=fmt,
        quant="int8" if fmt == Format.TFLITE.value and spec.precision is Precision.CODED else spec.label,
        bytes=dest.stat().st_size,
        layout=opts.layout.value,
        input={
            "name": inp.name if inp else None,
            "dtype": inp.dtype if inp else None,
            "shape": list(inp.shape) if inp else None,
            "scale": inp.scales[0] if inp and inp.scales else None,
            "zero_point": inp.zero_points[0] if inp and inp.zero_points else None,
        },
        dtypes={k: v for k, v in info.summary().items() if k not in {"inputs", "outputs", "ops"}},
        verification=report,
        accuracy=accuracy,
        metadata=job.metadata,
        options=opts.to_dict(),
    )


__all__ = ["ExportResult", "export"]
