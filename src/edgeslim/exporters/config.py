"""Export options: frozen dataclasses with enums, parsed from the CLI spelling.

``QuantSpec.parse("int8")`` reads the one quantization spec grammar (:func:`edgeslim.spec.parse_spec`,
shared with ``edgeslim.quantize``) and maps it to what exporters offer:

- ``fp32``, ``fp16``, ``dynamic`` -> :attr:`Precision.FP32` / ``FP16`` / ``DYNAMIC``;
- ``int8`` (``w8a8``) -> ``INT8``; ``w8a16`` (``16x8``, ``int8/a16``) -> ``W8A16``;
- ``int16`` (``w16a16``) -> ``INT16``: int16 weights and activations, ONNX only (QDQ at opset 21,
  run with ONNX Runtime's graph optimizations off);
- ``SCHEME:BITS`` of a coded scheme (``log2``, ``codebook``, ``pwl`` ...: every registered weight
  scheme of kind ``CODED``, :data:`edgeslim.spec.WEIGHT_SCHEMES`) with BITS 2..8, optionally
  ``/aBITS`` or ``/SCHEME:BITS`` -> ``CODED`` (codes + codebook in the formats whose lowering is
  ``CODES``: ONNX; via ``edgeslim.quantize``).

Valid specs that no exporter offers (other ``wNaM`` pairs, coded weights above 8 bits, affine
weights with log2 activations) raise :class:`ExportConfigError` naming the spec and the
offered ones; unparsable text raises :class:`ExportSpecError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from edgeslim.config import from_data, serializable, to_data
from edgeslim.errors import SpecError
from edgeslim.exporters.errors import ExportConfigError, ExportSpecError
from edgeslim.spec import WEIGHT_SCHEMES, ParsedSpec, SchemeKind, parse_spec, schemes_of


class Format(str, Enum):
    """Artefact formats (each one a registered exporter)."""

    ONNX = "onnx"
    TFLITE = "tflite"
    TENSORRT = "tensorrt"


class Precision(str, Enum):
    """What the artefact computes in."""

    FP32 = "fp32"
    FP16 = "fp16"
    DYNAMIC = "dynamic"
    INT8 = "int8"
    W8A16 = "w8a16"
    INT16 = "int16"  # W16A16
    CODED = "coded"


class Layout(str, Enum):
    """Layout of the artefact's image input."""

    NCHW = "nchw"
    NHWC = "nhwc"


class ActivationType(str, Enum):
    """Signedness of int8 activations and weights in an ONNX QDQ model.

    U8S8 ran ~2.5x faster than S8S8 in ONNX Runtime 1.32 on x86-64 (2 threads); S8S8 is what
    ARM NPUs and most mobile kernels prefer. U8U8 stores the weights as uint8 too (value-preserving,
    zero point + 128): ONNX Runtime's U8S8 kernels on x86 CPUs without VNNI add pairs of u8·s8
    products in int16 and saturate on large neighbouring weights, its U8U8 kernels do not. A
    ``u8s8`` export that does not verify on such a CPU is re-encoded as ``u8u8`` and verified again
    (``metadata["activations"]`` and ``metadata["u8u8_reason"]`` say so). AUTO (the default) is
    U8U8 on such a CPU (the export is verified and measured here) and U8S8 elsewhere.
    """

    AUTO = "auto"
    U8S8 = "u8s8"
    S8S8 = "s8s8"
    U8U8 = "u8u8"


class IODType(str, Enum):
    """Dtype of the input/output tensors of a fully quantized TFLite model."""

    FLOAT = "float"
    INT8 = "int8"


class Method(str, Enum):
    """How a float model is quantized for export.

    ``AUTO``: models already quantized by edgeslim are exported as they are; float models are
    quantized by the format's own tool (ONNX Runtime ``quantize_static`` / ai-edge-quantizer),
    except coded schemes, which need ``edgeslim.quantize``. ``RUNTIME`` forces the format's
    tool, ``EDGESLIM`` forces ``edgeslim.quantize`` (PT2E) first.
    """

    AUTO = "auto"
    RUNTIME = "runtime"
    EDGESLIM = "edgeslim"


#: Coded weights are stored as UINT4 (<= 4 bits) or UINT8 codes.
CODED_MAX_BITS = 8
#: (weight bits, activation bits) of affine specs -> precision.
_AFFINE: dict[tuple[int | None, int | None], Precision] = {
    (8, 8): Precision.INT8, (8, 16): Precision.W8A16, (16, 16): Precision.INT16,
}


def offered() -> str:
    """The specs some exporter offers, for error messages (coded schemes from the registry)."""
    return (
        "fp32, fp16, dynamic, int8, w8a16 (16x8), int16 (w16a16), "
        f"{'/'.join(schemes_of(SchemeKind.CODED))}:BITS (BITS 2..{CODED_MAX_BITS}) optionally followed by "
        "/aBITS or /SCHEME:BITS"
    )


@serializable(text=True)
@dataclass(frozen=True)
class QuantSpec:
    """A precision and, for coded weights, the scheme and bits.

    Attributes:
        precision: What the artefact computes in.
        scheme: A coded weight scheme (``log2``, ``codebook``, ``pwl`` ...) for :attr:`Precision.CODED`.
        bits: Code width of a coded scheme (2..8).
        activations: Activation part of a coded spec (``a16``, ``log2:5``); None: int8.
    """

    precision: Precision = Precision.FP32
    scheme: str | None = None
    bits: int | None = None
    activations: str | None = None

    @classmethod
    def parse(cls, spec: str | QuantSpec | Precision) -> QuantSpec:
        """Parse the CLI spelling with :func:`edgeslim.spec.parse_spec` (see the module docstring).

        Raises:
            ExportSpecError: Unparsable spelling (an :class:`ExportConfigError` and a
                :class:`~edgeslim.errors.SpecError`).
            ExportConfigError: A valid spec that no exporter offers.
        """
        if isinstance(spec, QuantSpec):
            return spec
        if isinstance(spec, Precision):
            return cls(spec)
        try:
            parsed = parse_spec(str(spec))
        except SpecError as exc:
            raise ExportSpecError(str(exc)) from exc
        return cls.from_parsed(parsed, text=str(spec))

    @classmethod
    def from_parsed(cls, p: ParsedSpec, *, text: str | None = None) -> QuantSpec:
        """The export precision of a parsed spec.

        Args:
            p: The parsed spec.
            text: The spelling it came from (for the error message; default: ``p.label``).

        Raises:
            ExportConfigError: No exporter offers ``p``; the message lists the offered specs.
        """
        if p.export_only:
            return cls(Precision(p.export_only))
        if p.weight_scheme == "affine" and p.activation_scheme == "affine" and (p.weight_bits, p.activation_bits) in _AFFINE:
            return cls(_AFFINE[p.weight_bits, p.activation_bits])
        bits = p.weight_bits or 0
        coded = p.weight_scheme is not None and WEIGHT_SCHEMES.get(p.weight_scheme).kind is SchemeKind.CODED
        if coded and 2 <= bits <= CODED_MAX_BITS:
            acts = p.label.partition("/")[2] or None
            return cls(Precision.CODED, p.weight_scheme, bits, acts)
        raise ExportConfigError(
            f"quantization {text or p.label!r}"
            + (f" ({p.label})" if text and text.strip().lower() != p.label else "")
            + f" is valid but no exporter offers it; offered: {offered()}"
        )

    @property
    def parsed(self) -> ParsedSpec:
        """This spec in the shared grammar's terms (weight/activation schemes and bits).

        Raises:
            ExportSpecError: A hand-built ``QuantSpec(Precision.CODED)`` without scheme or bits.
        """
        try:
            return parse_spec(self.label)
        except SpecError as exc:
            raise ExportSpecError(str(exc)) from exc

    @property
    def label(self) -> str:
        """The CLI spelling (``int8``, ``log2:4`` ...)."""
        if self.precision is not Precision.CODED:
            return self.precision.value
        return f"{self.scheme}:{self.bits}" + (f"/{self.activations}" if self.activations else "")

    @property
    def quantized_activations(self) -> bool:
        """True when activations are integer tensors (int8 or int16)."""
        return self.precision in {Precision.INT8, Precision.W8A16, Precision.INT16, Precision.CODED}

    def __str__(self) -> str:
        return self.label


@serializable()
@dataclass(frozen=True)
class Tolerance:
    """Verification thresholds of one precision (logits of the artefact vs PyTorch).

    Attributes:
        min_cosine: Smallest acceptable mean cosine similarity of the logit vectors.
        min_top1_agreement: Smallest acceptable fraction of inputs with the same top-1 class.
        max_abs_error: Largest acceptable max abs logit difference, as a fraction of the
            reference logits' range (``None``: not checked).
    """

    min_cosine: float
    min_top1_agreement: float
    max_abs_error: float | None = None


#: Per-precision tolerances against the PyTorch model the artefact came from.
TOLERANCES: dict[Precision, Tolerance] = {
    Precision.FP32: Tolerance(0.99999, 0.99, 1e-3),
    Precision.FP16: Tolerance(0.9999, 0.98, 1e-2),
    Precision.DYNAMIC: Tolerance(0.98, 0.90),
    Precision.INT8: Tolerance(0.98, 0.90),
    Precision.W8A16: Tolerance(0.99, 0.93),
    Precision.INT16: Tolerance(0.999, 0.97),  # TinyResNet: cosine 0.99999, top-1 agreement 100 %
    Precision.CODED: Tolerance(0.98, 0.90),
}


@serializable(what="export option")
@dataclass(frozen=True)
class ExportOptions:
    """Everything an exporter needs besides the model, the inputs and the path.

    Attributes:
        quant: The precision (parsed from a string with :meth:`QuantSpec.parse`).
        layout: Input layout of the artefact (TFLite can take NHWC; ONNX is NCHW).
        activations: ONNX int8 encoding (AUTO default: U8U8 on x86 without VNNI, else U8S8, fastest in ORT on x86).
        io_dtype: Input/output dtype of a fully quantized TFLite model (float by default: the
            model quantizes its input itself; ``int8`` ships the input scale/zero point).
        method: How float models are quantized (see :class:`Method`).
        calibration_size: Number of real images used to calibrate when no loader is given.
        opset: ONNX opset (default: 21 for int16 activations and coded weights, else the exporter's).
        verify_samples: Number of real test images the verification runs.
        eval_samples: Labelled images on which the artefact's top-1 (in its runtime) is compared
            with its float ancestor's (when labelled data is given).
        max_drop: Largest allowed top-1 drop against the float ancestor, in points (None: report only).
        tolerance: Overrides :data:`TOLERANCES` for this export.
        optimized_copy: Also write an ONNX Runtime graph-optimised copy (``*.ort-opt.onnx``).
        verbose: Let the converters print their own progress (litert-torch's ``[START] ...`` lines).
    """

    quant: QuantSpec = field(default_factory=QuantSpec)
    layout: Layout = Layout.NCHW
    activations: ActivationType = ActivationType.AUTO
    io_dtype: IODType = IODType.FLOAT
    method: Method = Method.AUTO
    calibration_size: int = 256
    opset: int | None = None
    verify_samples: int = 256
    eval_samples: int = 2000
    max_drop: float | None = 1.0
    tolerance: Tolerance | None = None
    optimized_copy: bool = False
    verbose: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "quant", QuantSpec.parse(self.quant))
        for name, enum in (("layout", Layout), ("activations", ActivationType), ("io_dtype", IODType), ("method", Method)):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError as exc:
                known = ", ".join(e.value for e in enum)
                raise ExportConfigError(f"{name}={getattr(self, name)!r} is invalid; use one of {known}") from exc
        if self.calibration_size < 1 or self.verify_samples < 1 or self.eval_samples < 1:
            raise ExportConfigError("calibration_size, verify_samples and eval_samples must be >= 1")
        if self.max_drop is not None and self.max_drop < 0:
            raise ExportConfigError(f"max_drop={self.max_drop} is negative; give the allowed top-1 drop in points (e.g. 1.0)")

    @property
    def effective_tolerance(self) -> Tolerance:
        """The tolerance that verification applies."""
        return self.tolerance or TOLERANCES[self.quant.precision]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (enums as values, ``quant`` as its label; :func:`edgeslim.config.to_data`, untagged)."""
        data: dict[str, Any] = to_data(self, tagged=False)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportOptions:
        """Inverse of :meth:`to_dict`; unknown keys and values of the wrong type are refused (a ConfigError)."""
        return from_data(data, cls)


__all__ = [
    "CODED_MAX_BITS",
    "TOLERANCES",
    "ActivationType",
    "ExportOptions",
    "Format",
    "IODType",
    "Layout",
    "Method",
    "Precision",
    "QuantSpec",
    "Tolerance",
    "offered",
]
