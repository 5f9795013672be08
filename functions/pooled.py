"""The served model's pooled sentence embedding, fetched from the same ONNX graph as its answer.

An ONNX Runtime session can only fetch a graph's outputs, and the exported graphs
(`training/export.py`) output `logits` and `probabilities` only. The mean-pooled sentence vector
the classification head reads is a tensor inside the graph: the `Div` of the mean pooling
(`training.modeling.mean_pool`, sum over the real tokens divided by their count), the first `Div`
met walking back from `logits` (in fp32 and in the int8 graph, whose head quantizes that tensor).

To fetch it without changing the committed model and without the `onnx` package (a training
dependency, not in the serving image), the model's bytes get one more graph output in memory, in
protobuf's wire format: ModelProto.graph (field 7) appears a second time holding only
GraphProto.output (field 12) = ValueInfoProto{name, float tensor}, and a protobuf parser merges a
repeated message field into the first (the protobuf encoding spec, "last one wins" for scalars,
merged for messages, appended for repeated fields). Finding the tensor needs only the nodes'
inputs, outputs and op types, read with the small wire-format reader below. So the sampler runs
with onnxruntime, tokenizers and numpy alone, inside the serving image too; a test checks the
result against the `onnx` package's own graph surgery.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# Field numbers from onnx.proto (ModelProto, GraphProto, NodeProto, ValueInfoProto, TypeProto).
MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_OUTPUT = 1, 12
NODE_INPUT, NODE_OUTPUT, NODE_OP_TYPE = 1, 2, 4
VALUE_NAME, VALUE_TYPE = 1, 2
TYPE_TENSOR, TENSOR_ELEM_TYPE = 1, 1
FLOAT = 1  # TensorProto.FLOAT
VARINT, I64, LEN, I32 = 0, 1, 2, 5


class GraphError(ValueError):
    """The graph cannot be read, or has no mean-pooling tensor before its `logits`."""


@dataclass(frozen=True)
class Node:
    """What the search needs of a NodeProto."""

    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise GraphError("not an ONNX model: a truncated varint")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7


def fields(data: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of a message: bytes for LEN fields, else an int."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        value: bytes | int
        if wire == VARINT:
            value, at = _varint(data, at)
        elif wire == LEN:
            size, at = _varint(data, at)
            if at + size > len(data):
                raise GraphError("not an ONNX model: a field runs past the end")
            value, at = data[at : at + size], at + size
        elif wire in (I64, I32):
            width = 8 if wire == I64 else 4
            value, at = int.from_bytes(data[at : at + width], "little"), at + width
        else:
            raise GraphError(f"not an ONNX model: wire type {wire}")
        yield number, wire, value


def nodes(model: bytes) -> list[Node]:
    """The graph's nodes, in order (every ModelProto.graph occurrence, merged)."""
    out = []
    for number, wire, graph in fields(model):
        if number != MODEL_GRAPH or wire != LEN:
            continue
        assert isinstance(graph, bytes)
        for g_number, g_wire, node in fields(graph):
            if g_number != GRAPH_NODE or g_wire != LEN:
                continue
            assert isinstance(node, bytes)
            parts: dict[int, list[str]] = {NODE_INPUT: [], NODE_OUTPUT: [], NODE_OP_TYPE: []}
            for n_number, n_wire, value in fields(node):
                if n_number in parts and n_wire == LEN:
                    assert isinstance(value, bytes)
                    parts[n_number].append(value.decode("utf-8"))
            op = parts[NODE_OP_TYPE][0] if parts[NODE_OP_TYPE] else ""
            out.append(Node(op, tuple(parts[NODE_INPUT]), tuple(parts[NODE_OUTPUT])))
    return out


def pooled_name(model: bytes, head_output: str = "logits") -> str:
    """The mean-pooling tensor: the output of the first `Div` walking back from `head_output`."""
    producer = {out: node for node in nodes(model) for out in node.outputs}
    if head_output not in producer:
        raise GraphError(f"the graph has no {head_output!r} output")
    queue, seen = [head_output], {head_output}
    while queue:
        node = producer[queue.pop(0)]
        if node.op_type == "Div":
            return node.outputs[0]
        for name in node.inputs:
            if name and name in producer and name not in seen:
                seen.add(name)
                queue.append(name)
    raise GraphError(f"no mean-pooling Div before {head_output!r}: not a mean-pooled encoder")


def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _key(number, LEN) + _encode_varint(len(payload)) + payload


def with_output(model: bytes, name: str) -> bytes:
    """The model's bytes with `name` (a float tensor) as one more graph output."""
    tensor = _key(TENSOR_ELEM_TYPE, VARINT) + _encode_varint(FLOAT)
    value_info = _len_field(VALUE_NAME, name.encode("utf-8")) + _len_field(
        VALUE_TYPE, _len_field(TYPE_TENSOR, tensor)
    )
    return model + _len_field(MODEL_GRAPH, _len_field(GRAPH_OUTPUT, value_info))
