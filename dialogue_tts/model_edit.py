"""Read an ONNX model's nodes and add a graph output, working on its protobuf bytes directly.

Exposing a VITS model's phoneme durations is one field appended to its graph (piper's own
``add_alignment_output`` does it through the ``onnx`` package). Done through ``onnx``, it
cost about 0.9 s of CPU at every start of every process, 0.65 s of it importing the package,
and again for each further session of the voice. Here it is a scan of the serialized model
that skips the weights (they are length-prefixed) and one copy of the bytes: milliseconds.

Only what that needs of the protobuf wire format is here: field keys, varints and
length-delimited fields. Anything it cannot read raises ``ModelFormatError``, and the caller
falls back to ``onnx``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

__all__ = ["ModelFormatError", "Node", "append_output", "graph_nodes", "graph_outputs"]

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_MODEL_GRAPH: Final = 7
"""ModelProto.graph."""
_GRAPH_NODE, _GRAPH_OUTPUT = 1, 12
"""GraphProto.node, GraphProto.output."""
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP_TYPE = 1, 2, 4
"""NodeProto.input, .output, .op_type."""
_VALUE_INFO_NAME: Final = 1
"""ValueInfoProto.name."""


class ModelFormatError(ValueError):
    """The bytes are not a model this reader understands."""


@dataclass(frozen=True)
class Node:
    """The parts of an ONNX NodeProto that finding a tensor needs."""

    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def graph_nodes(model: bytes) -> list[Node]:
    """The nodes of the model's main graph, in order (not those of subgraphs)."""
    _, start, end = _graph(model)
    nodes = []
    for number, _, value_start, value_end in _fields(model, start, end):
        if number == _GRAPH_NODE:
            nodes.append(_node(model, value_start, value_end))
    return nodes


def graph_outputs(model: bytes) -> list[str]:
    """The names of the main graph's outputs, in order."""
    _, start, end = _graph(model)
    return [
        _value_info_name(model, value_start, value_end)
        for number, _, value_start, value_end in _fields(model, start, end)
        if number == _GRAPH_OUTPUT
    ]


def append_output(model: bytes, name: str) -> bytes:
    """The model with tensor ``name`` as its graph's last output (type and shape left for
    onnxruntime to infer, as piper's patch does)."""
    key_start, start, end = _graph(model)
    encoded = name.encode("utf-8")
    value_info = _key(_VALUE_INFO_NAME, _LEN) + _varint(len(encoded)) + encoded
    output = _key(_GRAPH_OUTPUT, _LEN) + _varint(len(value_info)) + value_info
    header = _key(_MODEL_GRAPH, _LEN) + _varint(end - start + len(output))
    return b"".join((model[:key_start], header, model[start:end], output, model[end:]))


# --- The wire format ------------------------------------------------------------------------


def _graph(model: bytes) -> tuple[int, int, int]:
    """(where the graph field's key starts, where its payload starts and ends)."""
    found = None
    for number, wire_type, start, end in _fields(model, 0, len(model), keys=True):
        if number == _MODEL_GRAPH and wire_type == _LEN:
            if found is not None:
                raise ModelFormatError("the model has its graph in more than one field")
            found = (start, *_payload(model, start, end))
    if found is None:
        raise ModelFormatError("the model has no graph")
    return found


def _payload(model: bytes, key_start: int, end: int) -> tuple[int, int]:
    """A length-delimited field's payload, given where its key starts and the field ends."""
    _, position = _read_varint(model, key_start)
    _, position = _read_varint(model, position)
    return position, end


def _fields(
    data: bytes, start: int, end: int, keys: bool = False
) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each field between ``start`` and ``end``:
    the value's bounds (a length-delimited field's payload), or with ``keys`` the whole
    field's, key included."""
    position = start
    while position < end:
        field_start = position
        key, position = _read_varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            _, value_end = _read_varint(data, position)
            value_start = position
        elif wire_type == _LEN:
            length, value_start = _read_varint(data, position)
            value_end = value_start + length
        elif wire_type in (_FIXED64, _FIXED32):
            value_start, value_end = position, position + (8 if wire_type == _FIXED64 else 4)
        else:
            raise ModelFormatError(f"unsupported protobuf wire type {wire_type}")
        if value_end > end or number == 0:
            raise ModelFormatError("truncated or malformed protobuf")
        position = value_end
        yield number, wire_type, (field_start if keys else value_start), value_end


def _node(data: bytes, start: int, end: int) -> Node:
    op_type, inputs, outputs = "", [], []
    for number, wire_type, value_start, value_end in _fields(data, start, end):
        if wire_type != _LEN:
            continue
        if number == _NODE_OP_TYPE:
            op_type = _text(data, value_start, value_end)
        elif number == _NODE_INPUT:
            inputs.append(_text(data, value_start, value_end))
        elif number == _NODE_OUTPUT:
            outputs.append(_text(data, value_start, value_end))
    return Node(op_type, tuple(inputs), tuple(outputs))


def _value_info_name(data: bytes, start: int, end: int) -> str:
    for number, wire_type, value_start, value_end in _fields(data, start, end):
        if number == _VALUE_INFO_NAME and wire_type == _LEN:
            return _text(data, value_start, value_end)
    return ""


def _text(data: bytes, start: int, end: int) -> str:
    try:
        return data[start:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelFormatError("a name is not UTF-8") from exc


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ModelFormatError("truncated or malformed varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)
