"""Read a .tflite flatbuffer into a small typed graph: operators (name, version, options), tensors, buffers.

The fit checks need what no interpreter API exposes: operator versions, shape signatures (dynamic
dimensions), which tensors are constants, fused activations. The schema comes from the
``tflite-micro`` package (pure Python, imports only ``flatbuffers``) rather than TensorFlow's copy, so
``edgekit check`` never waits for TensorFlow to import.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from edgekit_agent.contract.errors import ModelError

_DTYPE_BYTES = {
    "float32": 4,
    "float16": 2,
    "int32": 4,
    "uint8": 1,
    "int64": 8,
    "string": 0,
    "bool": 1,
    "int16": 2,
    "complex64": 8,
    "int8": 1,
    "float64": 8,
    "complex128": 16,
    "uint64": 8,
    "resource": 0,
    "variant": 0,
    "uint32": 4,
    "uint16": 2,
    "int4": 1,
    "bfloat16": 2,
}


def _schema() -> Any:
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    return schema


@lru_cache(maxsize=1)
def _enum_names() -> tuple[dict[int, str], dict[int, str], dict[int, str]]:
    s = _schema()

    def names(cls: Any) -> dict[int, str]:
        return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}

    return names(s.BuiltinOperator), names(s.TensorType), names(s.ActivationFunctionType)


@dataclass(frozen=True, slots=True)
class Tensor:
    """One tensor of the main subgraph. ``constant`` means its data lives in the model (weights, biases)."""

    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]
    constant: bool
    quantized: bool
    scale: float = 0.0  # first (per-tensor) scale; 0.0 when not quantised
    zero_point: int = 0

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= max(int(d), 1)
        return n * _DTYPE_BYTES.get(self.dtype, 4)

    @property
    def dynamic(self) -> bool:
        """A dimension unknown until run time (-1 in the shape signature)."""
        return any(d < 0 for d in self.shape_signature)


@dataclass(frozen=True, slots=True)
class Operator:
    """One operator in execution order. ``name`` is the builtin name (``CONV_2D``) or the custom code."""

    index: int
    name: str
    version: int
    custom: bool
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    fused_activation: str | None


@dataclass(frozen=True, slots=True)
class Graph:
    """The main subgraph of a model plus what the fit checks need to know about the file."""

    model_bytes: int
    sha256: str
    operators: tuple[Operator, ...]
    tensors: tuple[Tensor, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    subgraphs: int
    constant_bytes: int

    def op_names(self) -> tuple[str, ...]:
        """Distinct operator names, in order of first use."""
        return tuple(dict.fromkeys(op.name for op in self.operators))

    def tensor(self, index: int) -> Tensor:
        """The tensor at ``index`` of the main subgraph."""
        return self.tensors[index]

    def activation_bytes(self) -> int:
        """Bytes of every non-constant tensor, without memory reuse: an upper bound of an interpreter's arena."""
        return sum(t.nbytes for t in self.tensors if not t.constant)


def read_graph(tflite: bytes, name: str = "model") -> Graph:
    """Parse a .tflite flatbuffer. Raises :class:`ModelError` (naming ``name``) when it is not one."""
    if len(tflite) < 8 or tflite[4:8] != b"TFL3":
        raise ModelError(f"{name}: not a TFLite model (the TFL3 file identifier is missing); give a .tflite file.")
    return _read_graph_cached(bytes(tflite), name)


@lru_cache(maxsize=16)
def _read_graph_cached(tflite: bytes, name: str) -> Graph:
    s = _schema()
    op_names, type_names, act_names = _enum_names()
    try:
        model = s.ModelT.InitFromPackedBuf(tflite, 0)
    except Exception as exc:  # noqa: BLE001 - flatbuffers raises assorted errors on corrupt input
        raise ModelError(f"{name}: the TFLite flatbuffer cannot be parsed ({exc}); the file is corrupt.") from None
    if not model.subgraphs:
        raise ModelError(f"{name}: the model has no subgraph.")
    sg = model.subgraphs[0]
    buffers = model.buffers or []

    def has_data(buffer_index: int) -> bool:
        if buffer_index <= 0 or buffer_index >= len(buffers):
            return False
        buf = buffers[buffer_index]
        # Large models keep data outside the flatbuffer (offset/size) instead of in `data`.
        return (buf.data is not None and len(buf.data) > 0) or bool(getattr(buf, "size", 0))

    tensors = []
    constant_bytes = 0
    for i, t in enumerate(sg.tensors or []):
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
        sig = tuple(int(d) for d in t.shapeSignature) if t.shapeSignature is not None else shape
        q = t.quantization
        quantized = bool(q is not None and q.scale is not None and len(q.scale) > 0)
        tensor = Tensor(
            index=i,
            name=t.name.decode("utf-8", "replace") if isinstance(t.name, bytes) else str(t.name or ""),
            dtype=type_names.get(t.type, str(t.type)).lower(),
            shape=shape,
            shape_signature=sig,
            constant=has_data(t.buffer),
            quantized=quantized,
            scale=float(q.scale[0]) if quantized else 0.0,
            zero_point=int(q.zeroPoint[0]) if quantized and q.zeroPoint is not None and len(q.zeroPoint) else 0,
        )
        if tensor.constant:
            constant_bytes += tensor.nbytes
        tensors.append(tensor)

    ops = []
    for i, op in enumerate(sg.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        opname = op_names.get(builtin, f"BUILTIN_{builtin}")
        custom = opname == "CUSTOM"
        if custom:
            cc = code.customCode
            opname = cc.decode("utf-8", "replace") if isinstance(cc, bytes) else str(cc or "CUSTOM")
        act = getattr(op.builtinOptions, "fusedActivationFunction", None) if op.builtinOptions is not None else None
        ops.append(
            Operator(
                index=i,
                name=opname,
                version=int(code.version or 1),
                custom=custom,
                inputs=tuple(int(x) for x in (op.inputs if op.inputs is not None else ())),
                outputs=tuple(int(x) for x in (op.outputs if op.outputs is not None else ())),
                fused_activation=act_names.get(act) if act is not None else None,
            )
        )
    return Graph(
        model_bytes=len(tflite),
        sha256=hashlib.sha256(tflite).hexdigest(),
        operators=tuple(ops),
        tensors=tuple(tensors),
        inputs=tuple(int(x) for x in (sg.inputs if sg.inputs is not None else ())),
        outputs=tuple(int(x) for x in (sg.outputs if sg.outputs is not None else ())),
        subgraphs=len(model.subgraphs),
        constant_bytes=constant_bytes,
    )
