"""A structural check of a .tflite file in pure Python, before any interpreter sees it.

LiteRT verifies the flatbuffer when it loads a model, but tflite-runtime 2.14 (the fallback runtime where
LiteRT has no wheel) does not: a truncated model can crash the process with a segmentation fault
instead of raising. So the agent checks the parts an interrupted copy or a bad build breaks first:
the ``TFL3`` file identifier, the root table, every offset of the Model table, the subgraphs' tensor
and operator tables, and that every buffer's data lies inside the file. This is not a full flatbuffer
verifier (options tables are not walked), but it turns the common corruptions into a typed error.
"""

from __future__ import annotations

import struct

from edgekit_agent.contract.errors import ModelError

FILE_IDENTIFIER = b"TFL3"
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")

# Model table field numbers (tensorflow/lite/schema/schema.fbs), with their kinds.
_MODEL_OPERATOR_CODES, _MODEL_SUBGRAPHS, _MODEL_BUFFERS = 1, 2, 4
_SUBGRAPH_TENSORS, _SUBGRAPH_INPUTS, _SUBGRAPH_OUTPUTS, _SUBGRAPH_OPERATORS = 0, 1, 2, 3
_TENSOR_SHAPE, _TENSOR_BUFFER = 0, 2
_OPERATOR_OPCODE, _OPERATOR_INPUTS, _OPERATOR_OUTPUTS = 0, 1, 2
_BUFFER_DATA = 0


class _Reader:
    """Bounds-checked reads of flatbuffer tables and vectors; any violation raises ModelError."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.name = name

    def fail(self, what: str) -> ModelError:
        return ModelError(
            f"{self.name}: not a valid TFLite model ({what}); the file is truncated or corrupt — "
            "re-copy the bundle or rebuild it with `edgekit build`."
        )

    def u32(self, pos: int) -> int:
        if pos < 0 or pos + 4 > len(self.data):
            raise self.fail(f"offset {pos} is outside the {len(self.data)}-byte file")
        return _U32.unpack_from(self.data, pos)[0]

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of field ``index`` of the table at ``table`` (None when absent)."""
        vtable = table - _I32.unpack_from(self.data, table)[0] if table + 4 <= len(self.data) else -1
        if vtable < 0 or vtable + 4 > len(self.data):
            raise self.fail(f"table at {table} has its vtable outside the file")
        vt_size, obj_size = _U16.unpack_from(self.data, vtable)[0], _U16.unpack_from(self.data, vtable + 2)[0]
        if vt_size < 4 or vtable + vt_size > len(self.data) or table + obj_size > len(self.data):
            raise self.fail(f"table at {table} runs past the end of the file")
        slot = 4 + 2 * index
        if slot + 2 > vt_size:
            return None
        off = _U16.unpack_from(self.data, vtable + slot)[0]
        return table + off if off else None

    def table_at(self, pos: int) -> int:
        """Follow the uoffset stored at ``pos`` to a table."""
        target = pos + self.u32(pos)
        if target + 4 > len(self.data):
            raise self.fail(f"reference at {pos} points past the end of the file")
        return target

    def vector(self, pos: int | None, elem_size: int) -> tuple[int, int]:
        """(start of elements, length) of the vector referenced at ``pos``; (0, 0) when absent."""
        if pos is None:
            return 0, 0
        vec = pos + self.u32(pos)
        length = self.u32(vec)
        if vec + 4 + length * elem_size > len(self.data):
            raise self.fail(f"a vector of {length} elements at {vec} runs past the end of the file")
        return vec + 4, length

    def int_vector(self, pos: int | None) -> list[int]:
        start, n = self.vector(pos, 4)
        return [_I32.unpack_from(self.data, start + 4 * i)[0] for i in range(n)]

    def tables(self, pos: int | None) -> list[int]:
        start, n = self.vector(pos, 4)
        return [self.table_at(start + 4 * i) for i in range(n)]


def check_tflite(data: bytes, name: str = "model.tflite") -> None:
    """Raise :class:`ModelError` naming ``name`` unless ``data`` is a structurally sound TFLite model.

    Checks the file identifier, the Model/SubGraph/Tensor/Operator/Buffer tables and that every
    tensor, operator and buffer index points at something that exists.
    """
    r = _Reader(data, name)
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise r.fail(f"file identifier is {data[4:8]!r}, not {FILE_IDENTIFIER!r}")
    root = r.table_at(0)
    codes = r.tables(r.field(root, _MODEL_OPERATOR_CODES))
    for c in codes:
        r.field(c, 0)  # bounds-checks the table (the builder writes these last: a cut tail lands here)
    n_codes = len(codes)
    buffers = r.tables(r.field(root, _MODEL_BUFFERS))
    for b in buffers:
        r.vector(r.field(b, _BUFFER_DATA), 1)  # weights cut off by truncation end up here
    subgraphs = r.tables(r.field(root, _MODEL_SUBGRAPHS))
    if not subgraphs:
        raise r.fail("it has no subgraph")
    for sg in subgraphs:
        tensors = r.tables(r.field(sg, _SUBGRAPH_TENSORS))
        for t in tensors:
            r.int_vector(r.field(t, _TENSOR_SHAPE))
            buf = r.field(t, _TENSOR_BUFFER)
            if buf is not None and r.u32(buf) >= max(len(buffers), 1):
                raise r.fail(f"a tensor refers to buffer {r.u32(buf)} of {len(buffers)}")
        n = len(tensors)
        io = r.int_vector(r.field(sg, _SUBGRAPH_INPUTS)) + r.int_vector(r.field(sg, _SUBGRAPH_OUTPUTS))
        for op in r.tables(r.field(sg, _SUBGRAPH_OPERATORS)):
            opcode = r.field(op, _OPERATOR_OPCODE)
            if opcode is not None and r.u32(opcode) >= n_codes:
                raise r.fail(f"an operator uses opcode {r.u32(opcode)} of {n_codes}")
            io += r.int_vector(r.field(op, _OPERATOR_INPUTS)) + r.int_vector(r.field(op, _OPERATOR_OUTPUTS))
        bad = [i for i in io if not -1 <= i < n]  # -1 marks an optional input that is absent
        if bad:
            raise r.fail(f"tensor index {bad[0]} is out of range (the subgraph has {n} tensors)")
