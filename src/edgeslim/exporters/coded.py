"""ONNX lowering of coded weights (log2 / codebook): N-bit codes + a per-channel int8 codebook.

A PT2E-quantized log2/codebook model exports as a QDQ graph whose weights are int8 tensors
with at most ``2**bits`` distinct values per output channel. Each such weight is replaced by

    codes (UINT4 for bits <= 4, packed two per byte; else UINT8), shape [C_out, N]
      -> Cast(int64) -> GatherElements(codebook int8 [C_out, K], axis=1) -> Reshape(weight shape)
      -> the original DequantizeLinear (scale per channel) -> Conv / Gemm

so the file really holds ``bits`` per weight, and the decoded tensor is bit-identical to the
int8 weight (checked while lowering); a ``u8u8`` file's uint8 weights get a uint8 codebook.
ONNX Runtime folds the decode into a constant when it loads the model, then fuses the QDQ
pattern into its integer kernels as for plain int8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.exporters.errors import ExportError

_MIN_ELEMENTS = 64  # smaller weights are not worth a decode subgraph
CODED_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8))  # uint8: a u8u8 file (weights + 128, zero point + 128)


def _pack_uint4(codes: np.ndarray) -> bytes:
    flat = codes.astype(np.uint8).ravel()
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return ((flat[0::2] & 0x0F) | ((flat[1::2] & 0x0F) << 4)).astype(np.uint8).tobytes()


def encode(q: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-row codes and codebook of an integer weight ``q`` (rows = axis 0), or None if it has too many levels.

    Returns:
        ``(codes [C, N] uint8, codebook [C, K] of q's dtype)`` with ``codebook[c, codes[c, n]] == q[c].ravel()[n]``.
    """
    rows = q.reshape(q.shape[0], -1)
    k = 1 << bits
    books = []
    codes = np.empty(rows.shape, np.uint8)
    for c, row in enumerate(rows):
        levels, inverse = np.unique(row, return_inverse=True)
        if len(levels) > k:
            return None
        books.append(np.pad(levels, (0, k - len(levels)), mode="edge"))
        codes[c] = inverse.reshape(-1)
    return codes, np.stack(books).astype(q.dtype)


def lower_coded_weights(path: Path, coded_weights: dict[str, Any], *, bits: int) -> dict[str, Any]:
    """Rewrite the ONNX file at ``path`` in place (see the module docstring).

    Args:
        path: A QDQ ONNX file (opset >= 21) with int8 or uint8 weights.
        coded_weights: The ``CodedWeight`` dict of the ``QuantResult`` (used for the report).
        bits: Code width (2..8).

    Returns:
        ``{"lowered": n, "coded_layers": m, "weight_bytes_int8": b0, "weight_bytes_coded": b1}``.

    Raises:
        ExportError: No weight could be lowered, or a decode check failed.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    users: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    new_nodes, drop, before, after, lowered = [], set(), 0, 0, 0
    storage = TensorProto.UINT4 if bits <= 4 else TensorProto.UINT8
    for node in g.node:
        w = node.input[0] if node.op_type == "DequantizeLinear" else None
        if w is None or w not in inits or users.get(w, 0) != 1:
            continue
        q = numpy_helper.to_array(inits[w])
        if q.dtype not in CODED_DTYPES or q.ndim < 2 or q.size < _MIN_ELEMENTS:
            continue
        enc = encode(q, bits)
        if enc is None:
            continue
        codes, book = enc
        if not np.array_equal(np.take_along_axis(book, codes.astype(np.int64), 1).reshape(q.shape), q):
            raise ExportError(f"coded-weight decode check failed for {w}")
        cname, bname, sname = f"{w}__codes", f"{w}__codebook", f"{w}__shape"
        raw = _pack_uint4(codes) if storage == TensorProto.UINT4 else codes.tobytes()
        g.initializer.append(helper.make_tensor(cname, storage, list(codes.shape), raw, raw=True))
        g.initializer.append(numpy_helper.from_array(book, bname))
        g.initializer.append(numpy_helper.from_array(np.array(q.shape, np.int64), sname))
        idx, flat = f"{w}__idx", f"{w}__flat"
        new_nodes += [
            helper.make_node("Cast", [cname], [idx], to=TensorProto.INT64, name=f"{w}__cast"),
            helper.make_node("GatherElements", [bname, idx], [flat], axis=1, name=f"{w}__gather"),
            helper.make_node("Reshape", [flat, sname], [w], name=f"{w}__reshape"),
        ]
        drop.add(w)
        before += q.size
        after += len(raw) + book.size + 8 * q.ndim
        lowered += 1
    if not lowered:
        raise ExportError(
            f"no 8-bit weight of {path.name} has <= {1 << bits} levels per channel: the model was not quantized "
            f"with a {bits}-bit log2/codebook scheme"
        )
    kept = [i for i in g.initializer if i.name not in drop]
    del g.initializer[:]
    g.initializer.extend(kept)
    nodes = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    model.ir_version = max(model.ir_version, 10)
    onnx.save(model, str(path))
    return {"lowered": lowered, "coded_layers": len(coded_weights), "weight_bytes_int8": before, "weight_bytes_coded": after}


__all__ = ["CODED_DTYPES", "encode", "lower_coded_weights"]
