"""Lint a converted model: is it really full int8?

``TFLITE_BUILTINS_INT8`` does not guarantee an all-integer graph: the converter silently leaves float
islands (DEQUANTIZE → float op → QUANTIZE), e.g. inside LayerNormalization (docs/pipeline.md, Convert). Such a model
is slower, cannot run on an Edge TPU past the island and needs float kernels on a microcontroller. The
lint reads the operators and tensor types with the device's own interpreter shim (reference kernels, so
XNNPACK does not hide operators behind ``DELEGATE``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekit_agent.contract.errors import QuantizationError
from edgekit_agent.infer.runtime import Runtime

# Ops that only move between integer and float representations: boundaries of an island, not its body.
_CASTS = {"QUANTIZE", "DEQUANTIZE"}
# Int32 shape arithmetic left by a dynamic batch dimension (docs/pipeline.md, Train): legal, but worth a warning.
_SHAPE_OPS = {"SHAPE", "STRIDED_SLICE", "PACK"}
_FLOATS = {"float32", "float16", "float64"}


@dataclass(frozen=True, slots=True)
class FloatOp:
    """One operator that computes in floating point."""

    index: int
    op: str
    outputs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FloatIsland:
    """Connected float operators, normally entered by DEQUANTIZE and left by QUANTIZE."""

    ops: tuple[FloatOp, ...]

    @property
    def op_names(self) -> tuple[str, ...]:
        return tuple(o.op for o in self.ops)

    def describe(self) -> str:
        return " → ".join(f"{o.op}#{o.index}" for o in self.ops)


@dataclass(frozen=True, slots=True)
class LintReport:
    """Operators with counts, float islands, tensor dtypes and every problem found (empty when clean)."""

    ops: tuple[tuple[str, int], ...]
    input_dtype: str
    output_dtype: str
    expected_input_dtype: str
    expected_output_dtype: str
    float_ops: tuple[FloatOp, ...]
    islands: tuple[FloatIsland, ...]
    problems: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when the graph is all-integer with the demanded input and output dtypes."""
        return not self.problems

    @property
    def op_counts(self) -> dict[str, int]:
        return dict(self.ops)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "ops": dict(self.ops),
            "input_dtype": self.input_dtype,
            "output_dtype": self.output_dtype,
            "float_ops": [{"index": o.index, "op": o.op} for o in self.float_ops],
            "islands": [list(i.op_names) for i in self.islands],
            "problems": list(self.problems),
            "warnings": list(self.warnings),
        }


def _islands(
    float_ops: list[FloatOp], op_io: dict[int, tuple[list[int], list[int]]], float_tensors: set[int]
) -> list[FloatIsland]:
    """Group float ops (plus their DEQUANTIZE/QUANTIZE boundaries) connected through float tensors."""
    members = {o.index: o for o in float_ops}
    parent = {i: i for i in members}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    producer = {t: i for i, (_, outs) in op_io.items() if i in members for t in outs if t in float_tensors}
    for i in members:
        for t in op_io[i][0]:
            if t in producer:
                parent[find(i)] = find(producer[t])
    groups: dict[int, list[FloatOp]] = {}
    for i in sorted(members):
        groups.setdefault(find(i), []).append(members[i])
    return [FloatIsland(tuple(g)) for g in groups.values() if any(o.op not in _CASTS for o in g)]


def lint_full_int8(
    tflite: bytes,
    *,
    input_dtype: str = "int8",
    output_dtype: str = "int8",
    strict: bool = False,
    name: str = "model.tflite",
) -> LintReport:
    """List operators and float islands of a converted model; check its input/output dtypes.

    With ``strict`` any problem raises :class:`QuantizationError` naming the offending operator(s).
    """
    rt = Runtime(tflite, num_threads=1, delegate="none", model_name=name)
    interp = rt.interpreter
    dtypes = {int(t["index"]): np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    names = {int(t["index"]): str(t["name"]) for t in interp.get_tensor_details()}
    details = interp._get_ops_details()  # noqa: SLF001 - the only per-op listing the interpreter offers
    op_io = {
        int(d["index"]): ([int(i) for i in d["inputs"] if i >= 0], [int(o) for o in d["outputs"]]) for d in details
    }
    counts = Counter(str(d["op_name"]) for d in details)
    float_tensors = {i for i, dt in dtypes.items() if dt in _FLOATS}
    float_ops: list[FloatOp] = []
    for d in details:
        idx, op = int(d["index"]), str(d["op_name"])
        ins, outs = op_io[idx]
        if any(t in float_tensors for t in outs) or (op == "QUANTIZE" and any(t in float_tensors for t in ins)):
            float_ops.append(FloatOp(idx, op, tuple(names.get(t, str(t)) for t in outs)))
    islands = _islands(float_ops, op_io, float_tensors)
    in_dt = np.dtype(interp.get_input_details()[0]["dtype"]).name
    out_dt = np.dtype(interp.get_output_details()[0]["dtype"]).name
    problems: list[str] = []
    if in_dt != input_dtype:
        problems.append(f"input tensor is {in_dt}, the profile demands {input_dtype}")
    if out_dt != output_dtype:
        problems.append(f"output tensor is {out_dt}, the profile demands {output_dtype}")
    for island in islands:
        body = sorted({o.op for o in island.ops if o.op not in _CASTS})
        problems.append(f"float island {island.describe()} (computes {', '.join(body)} in float32)")
    body_ops = [o for o in float_ops if o.op not in _CASTS and not any(o in i.ops for i in islands)]
    for o in body_ops:  # a float op outside any island (e.g. a float input feeding it directly)
        problems.append(f"operator {o.op}#{o.index} computes in float32")
    warnings = []
    shape_ops = sorted(op for op in counts if op in _SHAPE_OPS)
    if shape_ops:
        warnings.append(
            f"shape operators {', '.join(shape_ops)} present: the model probably has a dynamic batch; "
            "export it with a fixed batch of 1 (keras.Input(shape, batch_size=1))"
        )
    report = LintReport(
        ops=tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        input_dtype=in_dt,
        output_dtype=out_dt,
        expected_input_dtype=input_dtype,
        expected_output_dtype=output_dtype,
        float_ops=tuple(float_ops),
        islands=tuple(islands),
        problems=tuple(problems),
        warnings=tuple(warnings),
    )
    rt.close()
    if strict and problems:
        raise QuantizationError(
            f"{name} is not a full-integer model: " + "; ".join(problems) + ". Replace the layers behind these "
            "operators (e.g. LayerNormalization → BatchNormalization) or choose a profile that accepts float "
            "kernels; `edgekit inspect` lists every operator."
        )
    return report
