"""Float input/output for fully quantized TFLite models.

ai-edge-quantizer's static recipes quantize the graph's input and output tensors too, so the
model takes int8 input. :func:`float_io` puts a QUANTIZE op in front of every quantized input
and a DEQUANTIZE op after every quantized output, so the model is fed the same float tensor as
the PyTorch model (the quantization parameters stay inside, on the QUANTIZE op's output).
"""

from __future__ import annotations

import copy
from typing import Any

_QUANTIZED_TYPES = ("INT8", "UINT8", "INT16")


def _opcode(model: Any, schema: Any, builtin: int) -> int:
    for i, code in enumerate(model.operatorCodes):
        if max(int(code.builtinCode), int(code.deprecatedBuiltinCode)) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _float_twin(subgraph: Any, schema: Any, index: int) -> int:
    """Add a float32 tensor shaped like tensor ``index``; it takes over the original's name."""
    old = subgraph.tensors[index]
    new = copy.copy(old)
    new.type = schema.TensorType.FLOAT32
    new.quantization = None
    new.buffer = 0
    new.name = old.name
    old.name = (old.name or b"") + b"_quantized"
    subgraph.tensors.append(new)
    return len(subgraph.tensors) - 1


def float_io(buf: bytes) -> bytes:
    """Return ``buf`` with float32 inputs/outputs in place of quantized ones (see the module doc)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(buf))
    quantized = {getattr(schema.TensorType, t) for t in _QUANTIZED_TYPES}
    sg = model.subgraphs[0]
    remap: dict[int, int] = {}
    for k, idx in enumerate(list(sg.inputs)):
        if sg.tensors[idx].type in quantized:
            new = _float_twin(sg, schema, idx)
            op = schema.OperatorT()
            op.opcodeIndex = _opcode(model, schema, schema.BuiltinOperator.QUANTIZE)
            op.inputs, op.outputs = [new], [idx]
            sg.operators.insert(0, op)
            sg.inputs[k] = new
            remap[idx] = new
    for k, idx in enumerate(list(sg.outputs)):
        if sg.tensors[idx].type in quantized:
            new = _float_twin(sg, schema, idx)
            op = schema.OperatorT()
            op.opcodeIndex = _opcode(model, schema, schema.BuiltinOperator.DEQUANTIZE)
            op.inputs, op.outputs = [idx], [new]
            sg.operators.append(op)
            sg.outputs[k] = new
            remap[idx] = new
    for sig in model.signatureDefs or []:
        if sig.subgraphIndex != 0:
            continue
        for t in list(sig.inputs or []) + list(sig.outputs or []):
            t.tensorIndex = remap.get(t.tensorIndex, t.tensorIndex)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


__all__ = ["float_io"]
