"""Coral Edge TPU: a per-operator compatibility report, and the real ``edgetpu_compiler`` when it is installed.

The rules follow Coral's "TensorFlow models on the Edge TPU" page (coral.ai/docs/edgetpu/models-intro):
tensors quantised to 8 bits (int8 or uint8), sizes constant at compile time, parameters constant,
tensors with at most three dimensions above 1 (so batch 1), and only the listed operations with their
known limitations. The compiler maps the graph up to the first operation it cannot map; that operation
and everything after it run on the CPU, even operations the Edge TPU supports.

Operator *versions* are enforced by the compiler itself (its log says "Operation version not
supported"); Coral does not publish a version table, so without the compiler the report lists each
operator's version and says the mapping is predicted, never that the model was compiled.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgekit.fit.tflite_graph import Graph, Operator

COMPILER = "edgetpu_compiler"
NOT_FOUND = "not compiled: edgetpu_compiler not found; run it on an x86-64 Debian host"
# The Edge TPU caches model parameters in about 8 MB of on-chip SRAM; beyond it they stream from host
# memory on every inference (slower, still correct). The compiler reports the exact split.
CACHE_BYTES = 8 * 1024 * 1024
SOFTMAX_MAX_ELEMENTS = 16_000

# Coral's supported-operations table (operation -> known limitation, "" when none), in TFLite names.
SUPPORTED_OPS: dict[str, str] = {
    "ADD": "",
    "AVERAGE_POOL_2D": "No fused activation function.",
    "CONCATENATION": "No fused activation function; a constant input must be all zeros (zero padding).",
    "CONV_2D": "Same dilation in x and y.",
    "DEPTHWISE_CONV_2D": "Same dilation in x and y.",
    "EXPAND_DIMS": "",
    "FULLY_CONNECTED": "Only the default weights format; the output tensor is one-dimensional.",
    "L2_NORMALIZATION": "",
    "LOGISTIC": "",
    "LSTM": "Unidirectional LSTM only.",
    "MAXIMUM": "",
    "MAX_POOL_2D": "No fused activation function.",
    "MEAN": "No reduction in the batch dimension; a z-reduction needs z a multiple of 4.",
    "MINIMUM": "",
    "MUL": "",
    "PACK": "No packing in the batch dimension.",
    "PAD": "No padding in the batch dimension.",
    "PRELU": "Alpha must be one-dimensional.",
    "QUANTIZE": "",
    "REDUCE_MAX": "Not on the batch dimension.",
    "REDUCE_MIN": "Not on the batch dimension.",
    "RELU": "",
    "RELU6": "",
    "RELU_N1_TO_1": "",
    "RESHAPE": "Some reshapes of large tensors are not mapped.",
    "RESIZE_BILINEAR": "3-dimensional input/output; may stay on the CPU to keep precision.",
    "RESIZE_NEAREST_NEIGHBOR": "3-dimensional input/output; may stay on the CPU to keep precision.",
    "RSQRT": "",
    "SLICE": "",
    "SOFTMAX": f"1-D input of at most {SOFTMAX_MAX_ELEMENTS:,} elements.",
    "SPACE_TO_DEPTH": "",
    "SPLIT": "No splitting in the batch dimension.",
    "SQUARED_DIFFERENCE": "",
    "SQUEEZE": "Only when no relayout is needed (leading 1s).",
    "STRIDED_SLICE": "Elementwise strides of 1 only; no ellipsis or new-axis masks.",
    "SUB": "",
    "SUM": "Not on the batch dimension.",
    "TANH": "",
    "TRANSPOSE": "",
    "TRANSPOSE_CONV": "",
}
_NO_FUSED_ACTIVATION = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION"}
_EIGHT_BIT = {"int8", "uint8"}
# Operators whose inputs after the first are parameters (weights, bias), which must be compile-time constants.
_WEIGHTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}


@dataclass(frozen=True, slots=True)
class OpMapping:
    """One operator: whether Coral's rules allow it on the Edge TPU, and where it runs in the partition."""

    index: int
    name: str
    version: int
    supported: bool  # the operator itself satisfies Coral's rules
    runs_on: str  # "edgetpu" or "cpu" (after the first unsupported operator everything runs on the CPU)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "op": self.name,
            "version": self.version,
            "supported": self.supported,
            "runs_on": self.runs_on,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class CompilerResult:
    """What ``edgetpu_compiler`` did (or why it did not run). ``model`` holds ``model_edgetpu.tflite``."""

    compiled: bool
    message: str
    version: str = ""
    ops_on_edgetpu: int | None = None
    ops_on_cpu: int | None = None
    on_chip_bytes: int | None = None
    off_chip_bytes: int | None = None
    op_status: tuple[tuple[str, int, str], ...] = ()
    log: str = field(default="", repr=False)
    model: bytes | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "compiled": self.compiled,
            "message": self.message,
            "version": self.version,
            "ops_on_edgetpu": self.ops_on_edgetpu,
            "ops_on_cpu": self.ops_on_cpu,
            "on_chip_bytes": self.on_chip_bytes,
            "off_chip_bytes": self.off_chip_bytes,
            "op_status": [{"op": o, "count": c, "status": s} for o, c, s in self.op_status],
        }


@dataclass(frozen=True, slots=True)
class EdgeTpuReport:
    """Per-operator mapping predicted from Coral's rules, the split point, and the compiler's own verdict."""

    ops: tuple[OpMapping, ...]
    first_unsupported: int | None
    parameter_bytes: int
    compiler: CompilerResult

    @property
    def mapped(self) -> int:
        """How many operators run on the Edge TPU (those before the first unsupported one)."""
        return sum(1 for op in self.ops if op.runs_on == "edgetpu")

    @property
    def all_mapped(self) -> bool:
        """True when the whole graph runs on the Edge TPU (by the compiler's count when it ran)."""
        if self.compiler.compiled and self.compiler.ops_on_cpu is not None:
            return self.compiler.ops_on_cpu == 0  # the compiler is the authority when it ran
        return self.first_unsupported is None

    def split_description(self) -> str:
        """Where the graph splits, in words."""
        if self.first_unsupported is None:
            return f"all {len(self.ops)} operators map to the Edge TPU"
        op = self.ops[self.first_unsupported]
        rest = len(self.ops) - self.first_unsupported
        return (
            f"operator #{op.index} {op.name} (v{op.version}) cannot run on the Edge TPU ({op.reason}); "
            f"ops #0-#{op.index - 1} run on the Edge TPU and it plus the {rest - 1} after it run on the CPU"
            if op.index > 0
            else f"the first operator #0 {op.name} cannot run on the Edge TPU ({op.reason}): all {rest} run on the CPU"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "mapped": self.mapped,
            "total": len(self.ops),
            "first_unsupported": self.first_unsupported,
            "split": self.split_description(),
            "parameter_bytes": self.parameter_bytes,
            "cache_bytes": CACHE_BYTES,
            "ops": [o.to_dict() for o in self.ops],
            "compiler": self.compiler.to_dict(),
        }


def _op_problem(op: Operator, graph: Graph, supported: frozenset[str]) -> str:
    """Why Coral's rules keep ``op`` off the Edge TPU ("" when they allow it)."""
    if op.name not in supported:
        if op.name == "DEQUANTIZE":
            return "DEQUANTIZE is not supported: the converter left a float island here"
        return f"{op.name} is not in Coral's supported-operations list"
    tensors = [graph.tensor(i) for i in (*op.inputs, *op.outputs) if i >= 0]
    for t in tensors:
        if t.constant:
            continue  # int32 biases and shape constants are fine
        if t.dtype not in _EIGHT_BIT:
            return f"tensor '{t.name}' is {t.dtype}; the Edge TPU needs 8-bit (int8/uint8) tensors"
        if t.dynamic:
            return f"tensor '{t.name}' has a dynamic shape {list(t.shape_signature)}; sizes must be fixed"
        if len(t.shape) == 4 and t.shape[0] > 1:
            return f"tensor '{t.name}' has batch size {t.shape[0]}; the Edge TPU runs batch 1"
        big = [d for d in t.shape if d > 1]
        if len(big) > 3:
            return f"tensor '{t.name}' {list(t.shape)} has {len(big)} dimensions above 1 (at most 3)"
    if op.name in _WEIGHTED:
        for i in op.inputs[1:]:
            if i >= 0 and not graph.tensor(i).constant:
                return (
                    f"{op.name} takes its parameters from tensor '{graph.tensor(i).name}' at run time; "
                    "they must be constants"
                )
    if op.name in _NO_FUSED_ACTIVATION and op.fused_activation not in (None, "NONE"):
        return f"{op.name} with a fused {op.fused_activation} is not supported (no fused activation)"
    if op.name == "SOFTMAX":
        t = graph.tensor(op.inputs[0])
        n = 1
        for d in t.shape:
            n *= d
        if n > SOFTMAX_MAX_ELEMENTS:
            return f"SOFTMAX over {n:,} elements (at most {SOFTMAX_MAX_ELEMENTS:,})"
    if op.name == "FULLY_CONNECTED":
        t = graph.tensor(op.outputs[0])
        if len([d for d in t.shape if d > 1]) > 1:
            return f"FULLY_CONNECTED output {list(t.shape)} is not one-dimensional"
    return ""


_SIZE = re.compile(r"([\d.]+)\s*(B|KiB|MiB|GiB)")
_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def _parse_size(text: str) -> int | None:
    m = _SIZE.search(text)
    return round(float(m.group(1)) * _UNITS[m.group(2)]) if m else None


@dataclass(frozen=True, slots=True)
class CompilerLog:
    """The figures of an ``edgetpu_compiler -s`` log (None where the log does not say)."""

    version: str = ""
    ops_on_edgetpu: int | None = None
    ops_on_cpu: int | None = None
    on_chip_bytes: int | None = None
    off_chip_bytes: int | None = None
    op_status: tuple[tuple[str, int, str], ...] = ()  # (operator, count, status) per row of the op table


def parse_compiler_log(log: str) -> CompilerLog:
    """The figures of an ``edgetpu_compiler -s`` log: version, ops on the Edge TPU / CPU, memory, op table."""
    version = ""
    ops_on_edgetpu = ops_on_cpu = on_chip_bytes = off_chip_bytes = None
    op_status: list[tuple[str, int, str]] = []
    for line in log.splitlines():
        s = line.strip()
        if s.startswith("Edge TPU Compiler version"):
            version = s.rsplit(" ", 1)[-1]
        elif s.startswith("Number of operations that will run on Edge TPU:"):
            ops_on_edgetpu = int(s.rsplit(":", 1)[1])
        elif s.startswith("Number of operations that will run on CPU:"):
            ops_on_cpu = int(s.rsplit(":", 1)[1])
        elif s.startswith("On-chip memory used for caching model parameters:"):
            on_chip_bytes = _parse_size(s.rsplit(":", 1)[1])
        elif s.startswith("Off-chip memory used for streaming uncached model parameters:"):
            off_chip_bytes = _parse_size(s.rsplit(":", 1)[1])
        else:
            m = re.match(r"^([A-Z0-9_]+)\s+(\d+)\s+(\S.*)$", s)
            if m and m.group(1) not in ("Operator",):
                op_status.append((m.group(1), int(m.group(2)), m.group(3).strip()))
    return CompilerLog(
        version=version,
        ops_on_edgetpu=ops_on_edgetpu,
        ops_on_cpu=ops_on_cpu,
        on_chip_bytes=on_chip_bytes,
        off_chip_bytes=off_chip_bytes,
        op_status=tuple(dict.fromkeys(op_status)),  # stdout and the .log file may repeat the table
    )


def _compiler_result(
    compiled: bool, message: str, figures: CompilerLog, log: str, model: bytes | None = None
) -> CompilerResult:
    return CompilerResult(
        compiled=compiled,
        message=message,
        version=figures.version,
        ops_on_edgetpu=figures.ops_on_edgetpu,
        ops_on_cpu=figures.ops_on_cpu,
        on_chip_bytes=figures.on_chip_bytes,
        off_chip_bytes=figures.off_chip_bytes,
        op_status=figures.op_status,
        log=log,
        model=model,
    )


def compile_edgetpu(tflite: bytes, name: str = "model", timeout_s: int = 180) -> CompilerResult:
    """Run ``edgetpu_compiler -s`` when it is on PATH; otherwise say plainly that nothing was compiled."""
    exe = shutil.which(COMPILER)
    if exe is None:
        return CompilerResult(compiled=False, message=NOT_FOUND)
    return _compile(bytes(tflite), name, exe, timeout_s)


@lru_cache(maxsize=8)  # one model is checked against two Coral profiles: compile it once
def _compile(tflite: bytes, name: str, exe: str, timeout_s: int) -> CompilerResult:
    with tempfile.TemporaryDirectory(prefix="edgekit-edgetpu-") as tmp:
        src = Path(tmp) / "model.tflite"
        src.write_bytes(tflite)
        try:
            proc = subprocess.run([exe, "-s", "-o", tmp, str(src)], capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return CompilerResult(
                compiled=False, message=f"not compiled: {COMPILER} timed out after {timeout_s} s on {name}"
            )
        log_file = Path(tmp) / "model_edgetpu.log"
        log = proc.stdout + proc.stderr + (log_file.read_text(errors="replace") if log_file.is_file() else "")
        out_model = Path(tmp) / "model_edgetpu.tflite"
        figures = parse_compiler_log(log)
        if proc.returncode != 0 or not out_model.is_file():
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return _compiler_result(False, f"not compiled: {COMPILER} failed on {name} ({last[0]})", figures, log)
        return _compiler_result(
            True, f"compiled with {COMPILER} {figures.version}".strip(), figures, log, out_model.read_bytes()
        )


def edgetpu_report(
    graph: Graph,
    tflite: bytes,
    name: str = "model",
    *,
    supported: Iterable[str] | None = None,
    run_compiler: bool = True,
) -> EdgeTpuReport:
    """Per-operator Edge TPU compatibility of a model, where the graph splits, and the compiler's result.

    ``supported`` is the profile's op list (Coral's list, :data:`SUPPORTED_OPS`, when None).
    """
    allowed = frozenset(supported) if supported is not None else frozenset(SUPPORTED_OPS)
    mappings: list[OpMapping] = []
    first: int | None = None
    params = 0
    for op in graph.operators:
        problem = _op_problem(op, graph, allowed)
        if problem and first is None:
            first = op.index
        on_tpu = first is None
        if on_tpu:
            params += sum(graph.tensor(i).nbytes for i in op.inputs if i >= 0 and graph.tensor(i).constant)
        reason = problem or ("" if on_tpu else "after the first unsupported operator, everything runs on the CPU")
        mappings.append(OpMapping(op.index, op.name, op.version, not problem, "edgetpu" if on_tpu else "cpu", reason))
    compiler = (
        compile_edgetpu(bytes(tflite), name)
        if run_compiler
        else CompilerResult(False, "not compiled: compiler not requested")
    )
    return EdgeTpuReport(tuple(mappings), first, params, compiler)
