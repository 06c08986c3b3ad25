"""The TFLite (LiteRT) exporter: litert-torch converts, ai-edge-quantizer quantizes.

Routes (no TensorFlow needed; the ``tflite`` extra):

- ``fp32``: ``litert_torch.convert(model, (x,)).export(path)``; NCHW input kept, or NHWC via
  ``litert_torch.to_channel_last_io``. The batch size is fixed to the example's.
- ``fp16``: float16 weights (ai-edge-quantizer float casting), float compute.
- ``dynamic``: int8 weights, activations quantized on the fly (``dynamic_wi8_afp32``).
- ``int8``: full integer (``static_wi8_ai8``) calibrated on real images; input and output stay
  float (a QUANTIZE/DEQUANTIZE pair is added at the boundary) unless ``io_dtype="int8"``, in
  which case the input tensor carries its scale and zero point.
- ``w8a16`` (16x8): int8 weights, int16 activations (``static_wi8_ai16``). XNNPACK does not run
  16x8 kernels: ~150x slower than int8 on x86 — an accuracy mode, not a speed mode.

Models already quantized by edgeslim (PT2E graphs: int8, 16x8, per-layer mixed, grid schemes
on the int8 grid) are carried over with their own scales (:mod:`~edgeslim.exporters.tflite_pt2e`);
what TFLite cannot represent (weights wider than 8 bits, log2 activations) is refused, naming the
layer.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from edgeslim.device_bench.runtimes.litert import LiteRtRunner
from edgeslim.device_bench.runtimes.litert import guess_layout as _guess_layout
from edgeslim.exporters.base import (
    EXPORTERS,
    ExportJob,
    Runner,
    node_module,
    quiet_stdout,
    raise_unsupported,
    to_layout,
)
from edgeslim.exporters.config import IODType, Layout, Precision, Tolerance
from edgeslim.exporters.errors import ExportConfigError, ExportError, MissingBackendError, UnsupportedOpError
from edgeslim.exporters.tflite_decomp import same_size_resize_is_identity
from edgeslim.exporters.tflite_io import float_io
from edgeslim.registry import Registry

#: precision -> function(float_tflite_bytes, job) -> quantized bytes (absent: fp32 as is)
TFLITE_RECIPES: Registry[Any] = Registry("TFLite quantization recipe")

_INSTALL_HINT = "install the TFLite extra: pip install 'edgeslim[tflite]' (litert-torch, ai-edge-quantizer, ai-edge-litert)"


def _require(module: str) -> Any:
    """Import ``module`` without its known import-time noise (:mod:`edgeslim.quiet`)."""
    from edgeslim.quiet import import_quietly

    try:
        return import_quietly(module)
    except ImportError as exc:
        raise MissingBackendError(f"{module} is not installed: {_INSTALL_HINT}") from exc


@contextlib.contextmanager
def litert_progress(verbose: bool) -> Iterator[None]:
    """Show litert-torch's conversion progress (``[START] LiteRT-Torch Convert > ...``) only if ``verbose``.

    litert-torch reads the ``LITERT_TORCH_SHOW_PROGRESS`` environment variable (default: on); it is
    set for the conversion only and restored afterwards. A value the user set is kept unless
    ``verbose`` is true.
    """
    from edgeslim.quiet import quiet_stderr

    key = "LITERT_TORCH_SHOW_PROGRESS"
    before = os.environ.get(key)
    os.environ[key] = "y" if verbose else (before or "n")
    try:
        if verbose:
            yield
        else:
            with quiet_stderr():  # and the converter's C++ op count (edgeslim.quiet)
                yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def torch_to_tflite(model: torch.nn.Module, example: torch.Tensor, layout: Layout, quant_config: Any = None,
                    *, verbose: bool = False) -> bytes:
    """Convert an eager float model (or, with a litert ``quant_config``, a Q/DQ graph) with litert-torch.

    Args:
        model: The model.
        example: One NCHW example input.
        layout: The artefact's input layout.
        quant_config: litert-torch's quant config of a Q/DQ graph (``None``: float).
        verbose: Show litert-torch's own progress lines (on stderr).

    Returns the flatbuffer.

    Raises:
        UnsupportedOpError: litert-torch cannot lower an op (names op and module).
        ExportError: Any other conversion failure.
    """
    litert_torch = _require("litert_torch")
    module, x = model, example
    if layout is Layout.NHWC:
        module = litert_torch.to_channel_last_io(model, args=[0]).eval()
        x = torch.from_numpy(to_layout(example.numpy(), Layout.NHWC))
    try:
        with quiet_stdout(), litert_progress(verbose), same_size_resize_is_identity(), \
                tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.tflite"
            kwargs = {"quant_config": quant_config} if quant_config is not None else {}
            litert_torch.convert(module, (x,), **kwargs).export(str(path))
            return path.read_bytes()
    except Exception as exc:
        raise_unsupported(exc, job_model=model, example=example, converter="litert-torch", alternative="--format onnx")
        found = _unlowerable_op(model, example)
        if found:
            op, where = found
            raise UnsupportedOpError(
                f"litert-torch has no lowering for op {op} (module {where}); replace that layer with a supported one, "
                "or try --format onnx",
                op=op,
                module=where,
            ) from exc
        first = (str(exc).strip().splitlines() or [""])[0][:400]
        raise ExportError(f"litert-torch conversion failed: {type(exc).__name__}: {first}") from exc


def _unlowerable_op(model: torch.nn.Module, example: torch.Tensor) -> tuple[str, str] | None:
    """The first op litert-torch cannot lower, and its module (after litert-torch's decompositions)."""
    import operator

    try:
        from litert_torch import fx_infra
        from litert_torch.backend import lowerings

        ep = torch.export.export(model, (example,))
        with same_size_resize_is_identity():
            ep = fx_infra.safe_run_decompositions(ep, fx_infra.decomp.pre_convert_decomp())
            ep = fx_infra.safe_run_decompositions(ep, fx_infra.decomp.pre_lower_decomp(), can_skip=False)
    except Exception:
        return None
    for node in ep.graph.nodes:
        target = node.target
        callable_op = node.op == "call_function" and target is not operator.getitem and hasattr(target, "_schema")
        if callable_op and lowerings.lookup(target) is None:
            return str(target), node_module(node)
    return None


def _signature_input(buf: bytes) -> tuple[str, str, tuple[int, ...]]:
    """``(signature key, input name, input shape)`` of a one-input TFLite model."""
    interp = _require("ai_edge_litert.interpreter").Interpreter(model_content=buf)
    key = next(iter(interp.get_signature_list()))
    details = interp.get_signature_runner(key).get_input_details()
    name = next(iter(details))
    return key, name, tuple(int(d) for d in details[name]["shape"])


def _quantize(buf: bytes, recipe: Any, job: ExportJob) -> bytes:
    aeq = _require("ai_edge_quantizer")
    q = aeq.quantizer.Quantizer(bytearray(buf), recipe)
    calib = None
    if q.need_calibration:
        if not job.calibration:
            raise ExportConfigError("static TFLite quantization needs calibration data (none given)")
        key, name, shape = _signature_input(buf)
        samples = []
        for b in job.calibration:
            arr = to_layout(b.numpy(), job.options.layout)
            samples += [{name: arr[i : i + shape[0]]} for i in range(0, len(arr) - shape[0] + 1, shape[0])]
        with quiet_stdout(), _quiet_quantizer(job.options.verbose):
            calib = q.calibrate({key: samples}, num_threads=max(1, os.cpu_count() or 1))
    with quiet_stdout(), _quiet_quantizer(job.options.verbose):
        result = q.quantize(calib, enable_progress_report=job.options.verbose)
    return bytes(result.quantized_model)


@contextlib.contextmanager
def _quiet_quantizer(verbose: bool) -> Iterator[None]:
    """ai-edge-quantizer without its noise: the ``experimental_preserve_all_tensors`` warning of its calibration
    interpreter (always; edgeslim asked for nothing), and its C++ lines (:data:`edgeslim.quiet.KNOWN_STDERR_NOISE`:
    the XNNPACK delegate) unless ``verbose``."""
    from edgeslim.quiet import quiet_stderr

    with warnings.catch_warnings(), (contextlib.nullcontext() if verbose else quiet_stderr()):
        warnings.filterwarnings("ignore", message=r".*experimental_preserve_all_tensors", category=UserWarning)
        yield


@TFLITE_RECIPES.register("fp16")
def _fp16(buf: bytes, job: ExportJob) -> bytes:
    aeq = _require("ai_edge_quantizer")
    rm = aeq.recipe_manager.RecipeManager()
    rm.add_weight_only_config(
        ".*", aeq.qtyping.TFLOperationName.ALL_SUPPORTED, 16, algorithm_key=aeq.recipe.AlgorithmName.FLOAT_CASTING
    )
    return _quantize(buf, rm.get_quantization_recipe(), job)


@TFLITE_RECIPES.register("dynamic")
def _dynamic(buf: bytes, job: ExportJob) -> bytes:
    return _quantize(buf, _require("ai_edge_quantizer").recipe.dynamic_wi8_afp32(), job)


def _static(bits: int) -> Any:
    def run(buf: bytes, job: ExportJob) -> bytes:
        recipe = _require("ai_edge_quantizer").recipe
        out = _quantize(buf, recipe.static_wi8_ai8() if bits == 8 else recipe.static_wi8_ai16(), job)
        return float_io(out) if job.options.io_dtype is IODType.FLOAT else out

    return run


TFLITE_RECIPES.register("int8")(_static(8))
TFLITE_RECIPES.register("w8a16")(_static(16))


class LiteRTRunner(LiteRtRunner):
    """A TFLite file in the ai-edge-litert interpreter (XNNPACK on by default): the shared runner.

    Takes NCHW float batches; transposes to NHWC, splits into the model's fixed batch size,
    quantizes a quantized input with its scale/zero point and dequantizes the output
    (:class:`~edgeslim.device_bench.runtimes.litert.LiteRtRunner`, which the bench agent runs too).

    Args:
        path: The ``.tflite`` file (or ``content``: its bytes).
        layout: The model's input layout (default: guessed from the input shape).
        threads: Interpreter threads.
        xnnpack: Use the default delegates (XNNPACK); off = reference kernels.
        preserve_all_tensors: Keep intermediate tensors readable (for per-layer reports).
    """

    def __init__(
        self,
        path: Path | None = None,
        *,
        content: bytes | None = None,
        layout: Layout | None = None,
        threads: int | None = None,
        xnnpack: bool = True,
        preserve_all_tensors: bool = False,
    ) -> None:
        from edgeslim.quiet import quiet_stderr

        _require(self.module + ".interpreter")
        with quiet_stderr(), warnings.catch_warnings():  # "Created TensorFlow Lite XNNPACK delegate", the
            # debugging-only warning of preserve_all_tensors (asked for on purpose by per-layer reports)
            warnings.filterwarnings("ignore", message=r".*experimental_preserve_all_tensors", category=UserWarning)
            super().__init__(path, content=content, layout=layout.value if layout else None, threads=threads,
                             xnnpack=xnnpack, preserve_all_tensors=preserve_all_tensors)
        self.layout: Layout = Layout(self.layout)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run an NCHW float32 batch (any size)."""
        return np.asarray(self.predict(x), np.float32)


def guess_layout(shape: tuple[int, ...]) -> Layout:
    """NHWC if a 4-D shape has 1 or 3 channels last and not first, else NCHW."""
    return Layout(_guess_layout(shape))


@EXPORTERS.register("tflite")
class TfliteExporter:
    """TFLite artefacts (see the module docstring for the routes)."""

    suffix = ".tflite"
    #: LiteRT's 16x8 reference kernels reproduce PyTorch less closely than its int8 ones (measured on
    #: the tests' TinyResNet: cosine 0.996, top-1 agreement 91 %), so 16x8 gets the int8 thresholds.
    tolerances: ClassVar[dict[Precision, Tolerance]] = {Precision.W8A16: Tolerance(0.98, 0.88)}

    def check(self, job: ExportJob) -> None:
        """Refuse what the TFLite route does not offer."""
        p = job.options.quant.precision
        if job.prequantized:
            self._check_prequantized(job)
            return
        if p is not Precision.FP32 and p.value not in TFLITE_RECIPES:
            raise ExportConfigError(
                f"quantization {job.options.quant.label!r} is not offered for TFLite; offered: fp32, "
                f"{', '.join(TFLITE_RECIPES.names())} (coded log2/codebook weights: use --format onnx)"
            )
        _require("litert_torch")

    def _check_prequantized(self, job: ExportJob) -> None:
        from edgeslim.exporters.tflite_pt2e import check_representable

        _require("litert_torch")
        check_representable(job.model)  # type: ignore[arg-type]

    def write(self, job: ExportJob, dest: Path) -> None:
        """Convert, quantize and write ``dest``."""
        if job.prequantized:
            from edgeslim.exporters.tflite_pt2e import pt2e_to_tflite

            buf = pt2e_to_tflite(job.model, job.example,  # type: ignore[arg-type]
                                 lambda m, cfg: torch_to_tflite(m, job.example, job.options.layout, cfg,
                                                                verbose=job.options.verbose))
            dest.write_bytes(float_io(buf) if job.options.io_dtype is IODType.FLOAT else buf)
            job.metadata["route"] = "litert-torch STATIC Q/DQ conversion of the edgeslim PT2E graph (its own scales)"
            if job.options.quant.precision is Precision.CODED:
                job.metadata["source_quant"] = job.options.quant.label
                job.metadata["note"] = (f"{job.options.quant.label} weights carried over as their exact int8 values "
                                        "(TFLite has no N-bit codebook weights)")
            return
        buf = torch_to_tflite(job.model, job.example, job.options.layout, verbose=job.options.verbose)
        p = job.options.quant.precision
        if p is not Precision.FP32:
            buf = TFLITE_RECIPES.get(p.value)(buf, job)
        dest.write_bytes(buf)
        job.metadata["route"] = "litert-torch convert" + ("" if p is Precision.FP32 else " + ai-edge-quantizer")
        if p is Precision.W8A16:
            job.metadata["note"] = "16x8 kernels have no XNNPACK path: ~150x slower than int8 on x86"

    def open(self, path: Path, job: ExportJob | None = None) -> Runner:
        """An ai-edge-litert interpreter over ``path``."""
        layout = job.options.layout if job is not None else None
        threads = int(os.environ.get("EDGESLIM_TFLITE_THREADS", "0")) or None
        try:
            return LiteRTRunner(path, layout=layout, threads=threads)
        except RuntimeError as exc:  # the interpreter has no kernel for an op the converter emitted
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ExportError(f"LiteRT cannot run {path.name}: {first}. "
                              "export to ONNX instead, or replace that op in the model") from exc


__all__ = ["TFLITE_RECIPES", "LiteRTRunner", "TfliteExporter", "guess_layout", "torch_to_tflite"]
