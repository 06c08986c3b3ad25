"""The ONNX exporter: ``torch.onnx.export(dynamo=True)``, then QDQ quantization if asked.

Routes (measured on ONNX Runtime 1.32, x86-64):

- ``fp32``: ``torch.onnx.export(..., dynamo=True, external_data=False)`` with a dynamic batch.
- ``int8`` / ``w8a16`` of a float model: ``onnxruntime.quantization.quantize_static`` (QDQ,
  per-channel int8 weights, calibrated on real images); activations ``u8s8`` (default, ~2.5x
  faster on x86), ``s8s8`` or ``u8u8`` (uint8 weights too: ONNX Runtime's x86 U8S8 kernels without
  VNNI saturate int16 pair sums; a ``u8s8`` artefact that does not verify is re-encoded so); ``w8a16`` uses int16 activations (opset 21); ``int16`` (W16A16)
  int16 weights and activations (opset 21).
- A model already quantized by ``edgeslim.quantize`` (a PT2E-converted graph) is exported as
  it is: its Q/DQ ops become ``QuantizeLinear``/``DequantizeLinear``; int8 activations are
  re-encoded as uint8 for ``u8s8`` (the default; value-preserving, :mod:`edgeslim.exporters.qdq`).
- ``log2:N`` / ``codebook:N``: the PT2E export, its activation/weight encoding, then the weights
  are lowered to N-bit codes (:mod:`edgeslim.exporters.coded`; a ``u8u8`` file's codebooks are uint8).

Graphs with 16-bit activations are run with ``ORT_DISABLE_ALL``: ONNX Runtime 1.32 computed
a W16A16 ResNet-18 at 22 % accuracy with its graph optimizations on (93.7 % with them off).
The setting travels in the file (``metadata_props``: ``edgeslim.ort.graph_optimization_level``,
``edgeslim.version``; :func:`write_runtime_metadata`), and the one ONNX Runtime runner
(:mod:`edgeslim.device_bench.runtimes.onnxruntime`), used by verification and by the bench
agent on a board, applies it.
"""

from __future__ import annotations

import copy
import os
import platform
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeslim.device_bench.runtimes.onnxruntime import (
    DEFAULT_GRAPH_OPTIMIZATION,
    EXAMPLE_SHAPE_KEY,
    GRAPH_OPTIMIZATION_KEY,
    OnnxRuntimeRunner,
    read_onnx_metadata,
)
from edgeslim.exporters import torchlib_cache
from edgeslim.exporters.base import EXPORTERS, ExportJob, Runner, is_prequantized, quiet_stdout, raise_unsupported
from edgeslim.exporters.config import ActivationType, Layout, Precision
from edgeslim.exporters.errors import ExportConfigError, ExportError
from edgeslim.exporters.qdq import activations_to_uint8, weights_to_uint8
from edgeslim.exporters.sdpa import decompose_sdpa
from edgeslim.registry import Registry

INPUT_NAME = "input"
OUTPUT_NAME = "output"
INT16_OPSET = 21

#: precision -> function(job, dest) writing the ONNX file for that precision
ONNX_ROUTES: Registry[Any] = Registry("ONNX quantization route")


def torch_to_onnx(model: torch.nn.Module, example: torch.Tensor, dest: Path, *, opset: int | None = None) -> str:
    """Export ``model`` with the dynamo exporter into one self-contained file.

    The batch dimension is dynamic; for 4-D inputs height and width are made dynamic too when
    the graph allows it (an eager CNN ending in adaptive pooling runs at 32x32 and 224x224).

    Returns:
        The dynamic axes obtained (``"batch,height,width"`` or ``"batch"``).

    Raises:
        UnsupportedOpError: The exporter met an op it cannot translate (names op and module).
        ExportError: Any other export failure.
    """
    torchlib_cache.install()  # torchlib's function list built once per process, not per export
    kwargs: dict[str, Any] = {"opset_version": opset} if opset else {}
    batch = torch.export.Dim("batch", min=1, max=4096)
    attempts: list[tuple[str, dict[int, Any]]] = [("batch", {0: batch})]
    if example.dim() == 4 and not is_prequantized(model):
        hw = {2: torch.export.Dim("height", min=16, max=2048), 3: torch.export.Dim("width", min=16, max=2048)}
        attempts.insert(0, ("batch,height,width", {0: batch, **hw}))
    # a batch-1 example lets torch.export specialize the batch to 1 (ConvNeXt's LayerNorm2d permutes:
    # "your code specialized it to be a constant (1)"); trace a batch of 2, the graph is the same
    traced = example.expand(2, *example.shape[1:]).clone() if example.dim() >= 1 and example.shape[0] == 1 else example
    target: Any = model
    for i, (axes, dims) in enumerate(attempts):
        try:
            with quiet_stdout(), torch.inference_mode(False), torch.no_grad():
                torch.onnx.export(
                    target,
                    (traced,),
                    str(dest),
                    dynamo=True,
                    external_data=False,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes=(dims,),
                    verbose=False,
                    **kwargs,
                )
            return axes
        except Exception as exc:
            if i + 1 < len(attempts):
                continue
            if target is model and "scaled_dot_product_attention" in str(exc):  # a layout it cannot translate
                written = _sdpa_written_out(model, traced, dims)
                if written is not None:
                    target = written
                    attempts.append((axes, dims))
                    continue
            raise_unsupported(exc, job_model=model, example=example, converter="ONNX export", alternative="--format tflite")
            first = (str(exc).strip().splitlines() or [""])[0][:400]
            raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {first}") from exc
    raise AssertionError("unreachable")


def _sdpa_written_out(model: torch.nn.Module, traced: torch.Tensor, dims: dict[int, Any]) -> Any:
    """``model`` with its attentions written out as matmul/softmax (:mod:`.sdpa`): a copy of a graph module,
    or an exported program of an eager module; None when there is none or it cannot be made."""
    try:
        if isinstance(model, torch.fx.GraphModule):
            gm = copy.deepcopy(model)
            return gm if decompose_sdpa(gm) else None
        with torch.no_grad():
            program = torch.export.export(model, (traced,), dynamic_shapes=(dims,))
        return program if decompose_sdpa(program.graph_module) else None
    except Exception:
        return None


@ONNX_ROUTES.register("fp32")
def _fp32(job: ExportJob, dest: Path) -> None:
    opset = job.options.opset or (INT16_OPSET if job.prequantized else None)
    job.metadata["dynamic_axes"] = torch_to_onnx(job.model, job.example, dest, opset=opset)
    job.metadata["route"] = "torch.onnx.export(dynamo)" + (" of the edgeslim-quantized graph" if job.prequantized else "")


def _reader(batches: list[torch.Tensor]) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over real image batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self._it, None)
            return None if b is None else {INPUT_NAME: b.numpy()}

    return _Reader()


def resolve_activations(job: ExportJob) -> ActivationType:
    """Turn AUTO into U8U8 where ONNX Runtime's U8S8 kernels saturate (x86 without VNNI), else U8S8; in place."""
    if job.options.activations is ActivationType.AUTO:
        chosen = ActivationType.U8U8 if x86_u8s8_overflows() else ActivationType.U8S8
        job.options = replace(job.options, activations=chosen)
        job.metadata["activations_auto"] = (
            "u8u8: this CPU is x86 without VNNI, where ONNX Runtime's U8S8 kernels saturate int16 pair sums"
            if chosen is ActivationType.U8U8 else "u8s8: ONNX Runtime's fast x86 kernels, exact on this CPU")
    return job.options.activations


def _ort_static(job: ExportJob, dest: Path) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not job.calibration:
        raise ExportConfigError("static int8/w8a16 quantization needs calibration data (none given)")
    w16 = job.options.quant.precision in {Precision.W8A16, Precision.INT16}
    wide_weights = job.options.quant.precision is Precision.INT16
    act = {
        ActivationType.U8S8: QuantType.QUInt16 if w16 else QuantType.QUInt8,
        ActivationType.S8S8: QuantType.QInt16 if w16 else QuantType.QInt8,
        ActivationType.U8U8: QuantType.QUInt16 if w16 else QuantType.QUInt8,
    }[resolve_activations(job)]
    unsigned_weights = job.options.activations is ActivationType.U8U8 and not wide_weights
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        fp32, pre = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx"
        job.metadata["dynamic_axes"] = torch_to_onnx(
            job.model, job.example, fp32, opset=job.options.opset or (INT16_OPSET if w16 else None)
        )
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        reader = _reader(job.calibration)
        quantize_static(
            str(pre),
            str(dest),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=act,
            weight_type=QuantType.QInt16 if wide_weights else QuantType.QInt8,
            extra_options={"ActivationSymmetric": job.options.activations is ActivationType.S8S8},
        )
    if unsigned_weights:
        weights_to_uint8(dest)
    sign = "s" if job.options.activations is ActivationType.S8S8 else "u"
    job.metadata["route"] = "onnxruntime.quantization.quantize_static (QDQ, per-channel)"
    job.metadata["activations"] = f"{sign}{16 if w16 else 8}{'u' if unsigned_weights else 's'}{16 if wide_weights else 8}"


def _signed_activations(job: ExportJob, dest: Path) -> None:
    """Apply the asked int8 activation signedness to a PT2E export (it comes out S8S8)."""
    resolve_activations(job)
    if job.options.quant.precision in {Precision.W8A16, Precision.INT16} or uses_16bit_activations(dest):
        job.metadata["activations"] = "s16s16" if job.options.quant.precision is Precision.INT16 else "s16s8"
        return
    if job.options.activations is ActivationType.S8S8:
        job.metadata["activations"] = "s8s8"
        return
    n = activations_to_uint8(dest)
    if job.options.activations is ActivationType.U8U8:
        w = weights_to_uint8(dest)
        job.metadata["activations"] = ("u8" if n else "s8") + ("u8" if w else "s8")
    else:
        job.metadata["activations"] = "u8s8" if n else "s8s8"


def _prequantized_or_runtime(job: ExportJob, dest: Path) -> None:
    if job.prequantized:
        _fp32(job, dest)
        _signed_activations(job, dest)
        job.metadata["route"] = "torch.onnx.export(dynamo) of the edgeslim PT2E-quantized graph (QDQ)"
    else:
        _ort_static(job, dest)


ONNX_ROUTES.register("int8")(_prequantized_or_runtime)
ONNX_ROUTES.register("w8a16")(_prequantized_or_runtime)
ONNX_ROUTES.register("int16")(_prequantized_or_runtime)


@ONNX_ROUTES.register("coded")
def _coded(job: ExportJob, dest: Path) -> None:
    from edgeslim.exporters.coded import lower_coded_weights

    if not (job.prequantized and job.coded_weights):
        raise ExportConfigError(
            f"{job.options.quant.label} export needs a model quantized by edgeslim.quantize(..., "
            f"'{job.options.quant.label}') (a QuantResult with coded_weights)"
        )
    _fp32(job, dest)
    _signed_activations(job, dest)  # before the lowering, so that u8u8 codebooks are uint8 too
    stats = lower_coded_weights(dest, job.coded_weights, bits=int(job.options.quant.bits or 4))
    job.metadata["route"] = "PT2E QDQ export + coded-weight lowering (UINTn codes + GatherElements codebook)"
    job.metadata["coded"] = stats


def uses_16bit_activations(path: Path) -> bool:
    """True if any ``QuantizeLinear`` of the ONNX file produces a 16-bit tensor."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i.data_type for i in model.graph.initializer}
    wide = {onnx.TensorProto.INT16, onnx.TensorProto.UINT16}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and inits.get(node.input[2]) in wide:
            return True
    return False


#: Per-node ``metadata_props`` kept in edgeslim's ONNX files (the rest is the exporter's debug record).
NODE_METADATA_KEPT = frozenset({"pkg.torch.onnx.name_scopes"})


def write_runtime_metadata(path: Path, example_shape: tuple[int, ...] | None = None) -> dict[str, str]:
    """Record in the file's ``metadata_props`` the ONNX Runtime settings it must run with, and edgeslim's version.

    ``edgeslim.ort.graph_optimization_level`` is ``disable_all`` for 16-bit activations (ONNX
    Runtime 1.32 computes them wrongly with its graph optimizations on), else ``enable_all``; every
    runner (:class:`~edgeslim.device_bench.runtimes.onnxruntime.OnnxRuntimeRunner`: host
    verification and the bench agent) applies it. ``edgeslim.example_shape`` (``1,3,32,32``) is the
    shape the file was exported for: a bench without inputs times the dynamic dimensions at it.

    The exporter's per-node debug records (stack traces with the user's source paths, FX node and
    class hierarchy: about 1 KB a node, 4 % of a pruned int8 ResNet-18) are dropped; each node's
    ``pkg.torch.onnx.name_scopes`` (the module it came from, used by
    :mod:`edgeslim.exporters.layerwise`) is kept.

    Returns:
        The entries written.
    """
    import onnx

    from edgeslim import __version__

    level = "disable_all" if uses_16bit_activations(path) else DEFAULT_GRAPH_OPTIMIZATION
    entries = {GRAPH_OPTIMIZATION_KEY: level, "edgeslim.version": __version__}
    if example_shape:
        entries[EXAMPLE_SHAPE_KEY] = ",".join(str(int(d)) for d in example_shape)
    model = onnx.load(str(path), load_external_data=False)
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    for node in model.graph.node:
        scopes = [p for p in node.metadata_props if p.key in NODE_METADATA_KEPT]
        del node.metadata_props[:]
        node.metadata_props.extend(scopes)
    onnx.save(model, str(path))
    return entries


class OrtRunner(OnnxRuntimeRunner):
    """An ONNX file in an ONNX Runtime CPU session: the shared runner, called with NCHW float32 batches.

    Args:
        path: The ONNX file.
        threads: Intra-op threads (default: ONNX Runtime's).
        optimize: Graph optimizations on/off; ``None``: what the file's metadata asks for
            (:func:`write_runtime_metadata`), and for a file without it: on, except for 16-bit
            activations (off).
        spinning: Let the intra-op threads spin-wait after a run (ONNX Runtime's default; off
            here): a finished session's spinning threads otherwise steal the cores from the next
            one timed and distort every timing.
    """

    def __init__(self, path: Path, *, threads: int | None = None, optimize: bool | None = None, spinning: bool = False) -> None:
        level = None if optimize is None else DEFAULT_GRAPH_OPTIMIZATION if optimize else "disable_all"
        if level is None and GRAPH_OPTIMIZATION_KEY not in read_onnx_metadata(path) and uses_16bit_activations(path):
            level = "disable_all"
        super().__init__(path, threads=threads, spinning=spinning, graph_optimization=level)
        self.optimized = self.settings["graph_optimization_level"] != "disable_all"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run an NCHW float32 batch (any size)."""
        return np.asarray(self.predict(x))


@EXPORTERS.register("onnx")
class OnnxExporter:
    """ONNX artefacts (see the module docstring for the routes)."""

    suffix = ".onnx"

    def check(self, job: ExportJob) -> None:
        """Refuse what ONNX export does not offer."""
        if job.options.layout is not Layout.NCHW:
            raise ExportConfigError("ONNX artefacts take NCHW input (as PyTorch); use --format tflite for NHWC")
        if job.options.quant.precision.value not in ONNX_ROUTES:
            raise ExportConfigError(
                f"quantization {job.options.quant.label!r} is not offered for ONNX; "
                f"ONNX offers {', '.join(ONNX_ROUTES.names())} (fp16/dynamic: use --format tflite)"
            )

    def write(self, job: ExportJob, dest: Path) -> None:
        """Write the ONNX file, check it with ``onnx.checker``, optionally an ORT-optimised copy."""
        import onnx

        ONNX_ROUTES.get(job.options.quant.precision.value)(job, dest)
        try:
            onnx.checker.check_model(str(dest), full_check=True)
        except Exception as exc:
            raise ExportError(f"the ONNX file fails onnx.checker: {str(exc).splitlines()[0][:300]}") from exc
        entries = write_runtime_metadata(dest, tuple(job.example.shape))
        disabled = entries[GRAPH_OPTIMIZATION_KEY] == "disable_all"
        job.metadata["ort_graph_optimization"] = "disabled (16-bit activations)" if disabled else "enabled"
        job.metadata["onnx_metadata_props"] = entries

    def retry_after_verification_failure(self, job: ExportJob, path: Path, error: Exception) -> tuple[str, Path] | None:
        """After a failed verification on a CPU whose ONNX Runtime U8S8 kernels saturate: what to verify instead.

        ONNX Runtime's U8S8 GEMM/conv kernels on x86 CPUs without VNNI (SSE4.1, AVX2, AVX-512F)
        add pairs of u8·s8 products in int16 (``vpmaddubsw``), which saturates when neighbouring
        weights are large (S8S8 files run on the same kernels there). The U8U8 kernels widen first.
        A default ``u8s8`` file gets its weights re-encoded as uint8 in place (same values; the
        artefact then runs right on this CPU too); an ``s8s8`` file, asked for as it is (ARM
        kernels prefer it), stays as it is and a value-identical ``u8u8`` copy is verified instead.

        Returns:
            ``(note, path to verify)``, or None when this does not apply.
        """
        if not x86_u8s8_overflows() or job.options.activations is ActivationType.U8U8:
            return None
        reason = (f"ONNX Runtime's U8S8 kernels on this CPU (x86 without VNNI) saturate int16 pair sums; the file "
                  f"failed as it was: {str(error).splitlines()[0][:200]}")
        if job.metadata.get("activations") == "u8s8":
            if not weights_to_uint8(path):
                return None
            job.metadata["activations"] = "u8u8"
            job.metadata["u8u8_reason"] = reason + "; weights re-encoded as uint8 (same values, U8U8 kernels)"
            return "the u8s8 file failed first and was re-encoded as u8u8", path
        if job.metadata.get("activations") == "s8s8":
            fd, name = tempfile.mkstemp(prefix="edgeslim-u8u8-check-", suffix=".onnx")
            os.close(fd)
            copy = Path(name)
            shutil.copyfile(path, copy)
            activations_to_uint8(copy)
            weights_to_uint8(copy)
            job.metadata["verified_as"] = reason + "; the s8s8 file is kept and a value-identical u8u8 copy was verified"
            return "the s8s8 file failed first on this CPU; a value-identical u8u8 copy was verified", copy
        return None

    def open(self, path: Path, job: ExportJob | None = None) -> Runner:
        """An ONNX Runtime session over ``path``."""
        return OrtRunner(path, threads=int(os.environ.get("EDGESLIM_ORT_THREADS", "0")) or None)


def x86_u8s8_overflows() -> bool:
    """True on x86 CPUs without VNNI, where ONNX Runtime's U8S8 kernels add u8·s8 pairs in int16 (``vpmaddubsw``)."""
    if platform.machine().lower() not in {"x86_64", "amd64", "i686", "x86"}:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return not any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def optimized_copy_path(path: Path) -> Path:
    """Where :func:`write_optimized_copy` writes the copy of ``path`` (``*.ort-opt.onnx``)."""
    return path.with_name(path.stem + ".ort-opt.onnx")


def write_optimized_copy(path: Path, *, overwrite: bool = False) -> Path:
    """Write ONNX Runtime's graph-optimised model next to ``path`` (``*.ort-opt.onnx``), atomically.

    Raises:
        OutputExistsError: The copy exists and ``overwrite`` is False.
    """
    import onnxruntime as ort

    from edgeslim.exporters.errors import OutputExistsError

    out = optimized_copy_path(path)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass overwrite=True (CLI: --force) to replace it")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = tmp
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


__all__ = [
    "ONNX_ROUTES",
    "OnnxExporter",
    "OrtRunner",
    "optimized_copy_path",
    "torch_to_onnx",
    "uses_16bit_activations",
    "write_optimized_copy",
    "write_runtime_metadata",
    "x86_u8s8_overflows",
]
