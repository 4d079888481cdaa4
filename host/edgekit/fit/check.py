"""Does a .tflite model fit a device profile? Measured, not guessed: a verdict per check with its numbers.

Checks per target (a table, not an if-chain):

- ``mcu``: the exact tensor arena under the real TFLite Micro interpreter plus the profile's margin
  against the RAM left for it; model bytes plus the runtime/kernel estimate against the flash left;
  every operator against the op set the firmware registers; tensor dtypes.
- ``edgetpu``: Coral's per-operator rules and the split point (``edgekit.fit.edgetpu``), the compiler
  when installed, the parameter cache, host RAM and storage; tensor dtypes.
- ``cpu``: RAM (model + activations planned by TFLite Micro, or every activation tensor when TFLite
  Micro cannot load the model) and storage against the budgets; custom ops; tensor dtypes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

import numpy as np

from edgekit.fit.edgetpu import CACHE_BYTES, EdgeTpuReport, edgetpu_report
from edgekit.fit.mcu import add_method, mcu_artifacts
from edgekit.fit.tflite_graph import Graph, read_graph
from edgekit.fit.tflm import measure_arena, tflm_agreement
from edgekit.profiles import Profile, Target
from edgekit_agent.contract.errors import FitError, ModelError
from edgekit_agent.contract.manifest import InputSpec


class Verdict(StrEnum):
    """The outcome of one check; only FAIL makes a model not fit."""

    OK = "ok"
    WARN = "warn"  # runs, but slower or with a caveat
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class FitRow:
    """One check: what was measured, the budget, the headroom (budget - measured), the verdict, what to try."""

    check: str
    measured: int | str
    budget: int | str | None
    headroom: int | None
    verdict: Verdict
    detail: str
    what_to_try: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (verdict as a string)."""
        return {
            "check": self.check,
            "measured": self.measured,
            "budget": self.budget,
            "headroom": self.headroom,
            "verdict": str(self.verdict),
            "detail": self.detail,
            "what_to_try": self.what_to_try,
        }


@dataclass(frozen=True, slots=True)
class FitReport:
    """The fit of one model on one profile. ``fits`` is False when any row failed."""

    model: str
    profile: str
    target: str
    model_bytes: int
    model_sha256: str
    ops: tuple[str, ...]
    rows: tuple[FitRow, ...]
    margin: float
    arena_bytes: int | None = None  # measured by TFLite Micro, without margin
    arena_with_margin: int | None = None  # what firmware should allocate (rounded up to 16 bytes)
    flash_bytes: int | None = None  # model + runtime estimate
    edgetpu: EdgeTpuReport | None = field(default=None, repr=False)
    tflm_agreement: float | None = None  # top-1 agreement of TFLite Micro with LiteRT on golden samples

    @property
    def fits(self) -> bool:
        return all(r.verdict is not Verdict.FAIL for r in self.rows)

    def row(self, check: str) -> FitRow:
        """The row of one check ("arena", "flash", "ops", "dtypes", "edgetpu", ...); KeyError if absent."""
        for r in self.rows:
            if r.check == check:
                return r
        raise KeyError(check)

    def failures(self) -> tuple[FitRow, ...]:
        """The rows whose verdict is FAIL."""
        return tuple(r for r in self.rows if r.verdict is Verdict.FAIL)

    def to_dict(self) -> dict[str, Any]:
        """The form stored in a bundle's manifest["fit"] and printed by ``edgekit check --json``."""
        d: dict[str, Any] = {
            "model": self.model,
            "profile": self.profile,
            "target": self.target,
            "fits": self.fits,
            "model_bytes": self.model_bytes,
            "model_sha256": self.model_sha256,
            "ops": list(self.ops),
            "margin": self.margin,
            "arena_bytes": self.arena_bytes,
            "arena_with_margin": self.arena_with_margin,
            "flash_bytes": self.flash_bytes,
            "tflm_agreement": self.tflm_agreement,
            "checks": [r.to_dict() for r in self.rows],
        }
        if self.edgetpu is not None:
            d["edgetpu"] = self.edgetpu.to_dict()
        return d

    def summary(self) -> str:
        """A few human lines: the verdict, then each check that did not pass with what to try."""
        head = f"{self.model} on {self.profile}: {'fits' if self.fits else 'DOES NOT FIT'}"
        lines = [head]
        for r in self.rows:
            if r.verdict is not Verdict.OK:
                lines.append(
                    f"  {r.check} [{r.verdict}]: {r.detail}" + (f" Try: {r.what_to_try}" if r.what_to_try else "")
                )
        return "\n".join(lines)


def _b(n: int) -> str:
    return f"{n:,} B ({n / 1024:,.1f} KiB)"


@dataclass(frozen=True, slots=True)
class _Arena:
    """TFLite Micro's exact arena in bytes, or None with the reason it could not load the model."""

    bytes: int | None
    error: str = ""


@dataclass(frozen=True)
class _Ctx:
    """One model against one profile. Measurements that several checks need are made once, on first use."""

    tflite: bytes
    graph: Graph
    profile: Profile
    name: str
    run_compiler: bool

    @cached_property
    def arena(self) -> _Arena:
        try:
            return _Arena(measure_arena(self.tflite, self.name).bytes)
        except ModelError as exc:
            return _Arena(None, str(exc))

    @cached_property
    def edgetpu(self) -> EdgeTpuReport:
        return edgetpu_report(
            self.graph, self.tflite, self.name, supported=self.profile.ops, run_compiler=self.run_compiler
        )

    @property
    def flash_bytes(self) -> int:
        """Model plus the runtime/kernels estimate: what flash (or storage) must hold."""
        return self.graph.model_bytes + self.profile.runtime_flash_bytes


def _with_margin(n: int, margin: float) -> int:
    return int(math.ceil(n * (1.0 + margin) / 16.0) * 16)  # arenas are 16-byte aligned


def _row_budget(check: str, need: int, budget: int, what: str, detail: str, try_: str, warn: bool = False) -> FitRow:
    head = budget - need
    if head >= 0:
        return FitRow(
            check, need, budget, head, Verdict.OK, f"{detail} = {_b(need)} ≤ {_b(budget)} {what}; headroom {_b(head)}."
        )
    return FitRow(
        check,
        need,
        budget,
        head,
        Verdict.WARN if warn else Verdict.FAIL,
        f"{detail} = {_b(need)} > {_b(budget)} {what}: over by {_b(-head)}.",
        try_,
    )


def _check_dtypes(c: _Ctx) -> FitRow:
    g, p = c.graph, c.profile
    io_in = [g.tensor(i).dtype for i in g.inputs]
    io_out = [g.tensor(i).dtype for i in g.outputs]
    problems = []
    if any(d != str(p.input_dtype) for d in io_in):
        problems.append(f"input is {'/'.join(io_in)}, the profile expects {p.input_dtype}")
    if any(d != str(p.output_dtype) for d in io_out):
        problems.append(f"output is {'/'.join(io_out)}, the profile expects {p.output_dtype}")
    produced_by = {t: op for op in g.operators for t in op.outputs}
    floats = [t for t in g.tensors if not t.constant and t.dtype in ("float32", "float16")]
    islands = sorted({produced_by[t.index].name for t in floats if t.index in produced_by})
    measured = f"in {'/'.join(io_in)}, out {'/'.join(io_out)}, {len(floats)} float tensors"
    if floats:
        problems.append(
            f"{len(floats)} float activation tensors (float island made by {', '.join(islands) or 'inputs'})"
        )
    if not problems:
        return FitRow(
            "dtypes",
            measured,
            f"{p.input_dtype}/{p.output_dtype}, no float",
            None,
            Verdict.OK,
            "all activations are 8-bit integers; input and output dtypes match the profile.",
        )
    only_floats_on_cpu = p.target is Target.CPU and len(problems) == 1 and floats
    return FitRow(
        "dtypes",
        measured,
        f"{p.input_dtype}/{p.output_dtype}, no float",
        None,
        Verdict.WARN if only_floats_on_cpu else Verdict.FAIL,
        "; ".join(problems) + ".",
        f"convert with `edgekit convert --profile {p.name}` "
        f"(full int8, {p.input_dtype} input, {p.output_dtype} output) "
        "and replace the layers that leave float islands.",
    )


def _check_arena(c: _Ctx) -> FitRow:
    p = c.profile
    arena = c.arena
    if arena.bytes is None:
        try_ = (
            "calibrate with representative inputs of a trained model so every tensor has a real range."
            if "Likely cause" in arena.error
            else "use only TFLite Micro operators and full-int8 tensors."
        )
        return FitRow("arena", "unmeasurable", p.ram_bytes, None, Verdict.FAIL, arena.error, try_)
    return _row_budget(
        "arena",
        _with_margin(arena.bytes, p.margin),
        p.ram_bytes,
        "RAM left for the arena",
        f"TFLite Micro arena {_b(arena.bytes)} + {p.margin:.0%} margin",
        "fewer or narrower channels in the early layers, "
        "a smaller input resolution, or stride 2 sooner (the largest pair of live activations sets the arena).",
    )


def _check_flash(c: _Ctx) -> FitRow:
    p = c.profile
    return _row_budget(
        "flash",
        c.flash_bytes,
        p.flash_bytes,
        "flash left for model and runtime",
        f"model {_b(c.graph.model_bytes)} + runtime/kernels estimate {_b(p.runtime_flash_bytes)}",
        "fewer parameters (narrower layers, depthwise-separable convolutions, pruning does not shrink flash).",
    )


def _check_storage(c: _Ctx) -> FitRow:
    p = c.profile
    return _row_budget(
        "storage",
        c.flash_bytes,
        p.flash_bytes,
        "storage budget",
        f"model {_b(c.graph.model_bytes)}",
        "a smaller model, or raise memory.flash_bytes if the device has the space.",
    )


def _check_ram(c: _Ctx) -> FitRow:
    p = c.profile
    arena = c.arena.bytes
    acts, how = (
        (arena, "activations planned by TFLite Micro")
        if arena
        else (c.graph.activation_bytes(), "all activation tensors")
    )
    need = _with_margin(c.graph.model_bytes + acts, p.margin)
    return _row_budget(
        "ram",
        need,
        p.ram_bytes,
        "RAM budget",
        f"model + {how} {_b(acts)} + {p.margin:.0%} margin",
        "a smaller input resolution or fewer channels.",
    )


def _check_ops_mcu(c: _Ctx) -> FitRow:
    g, p = c.graph, c.profile
    allowed = set(p.ops or ())
    used = g.op_names()
    missing = [op for op in used if op not in allowed]
    measured = f"{len(used)} ops: {', '.join(used)}"
    if p.ops is None or not missing:
        return FitRow(
            "ops",
            measured,
            f"{len(allowed) if p.ops is not None else 'all'} registered",
            None,
            Verdict.OK,
            "every operator is registered by the firmware.",
        )
    counts = {op: sum(1 for o in g.operators if o.name == op) for op in missing}
    return FitRow(
        "ops",
        measured,
        f"{len(allowed)} registered",
        None,
        Verdict.FAIL,
        "not registered by the firmware: " + ", ".join(f"{op} (×{n})" for op, n in counts.items()) + ".",
        f"register {', '.join(_registration(op) for op in missing)} in the firmware's MicroMutableOpResolver and "
        "list them in the profile's ops.builtin, or change the layers that produce them.",
    )


def _registration(op: str) -> str:
    try:
        return f"{op} ({add_method(op)}())"
    except FitError:
        return f"{op} (custom op)"


def _check_ops_cpu(c: _Ctx) -> FitRow:
    used = c.graph.op_names()
    custom = sorted({o.name for o in c.graph.operators if o.custom})
    flex = [n for n in custom if n.startswith("Flex")]
    measured = f"{len(used)} ops"
    if flex:
        return FitRow(
            "ops",
            measured,
            "TFLite builtins",
            None,
            Verdict.FAIL,
            f"TensorFlow (Flex) ops {', '.join(flex)} need the Flex delegate, which LiteRT wheels lack.",
            "convert with TFLITE_BUILTINS_INT8 only.",
        )
    if custom:
        return FitRow(
            "ops",
            measured,
            "TFLite builtins",
            None,
            Verdict.WARN,
            f"custom ops {', '.join(custom)} must be registered by the application.",
        )
    return FitRow("ops", measured, "TFLite builtins", None, Verdict.OK, "only builtin operators.")


def _check_edgetpu(c: _Ctx) -> FitRow:
    rep = c.edgetpu
    total = len(rep.ops)
    compiled = rep.compiler.message
    measured = f"{rep.mapped}/{total} ops on the Edge TPU (predicted)"
    if rep.compiler.compiled and rep.compiler.ops_on_edgetpu is not None:
        measured = f"{rep.compiler.ops_on_edgetpu}/{total} ops on the Edge TPU (compiler)"
    if rep.all_mapped:
        return FitRow("edgetpu", measured, f"{total}/{total}", 0, Verdict.OK, f"{rep.split_description()}; {compiled}.")
    return FitRow(
        "edgetpu",
        measured,
        f"{total}/{total}",
        rep.mapped - total,
        Verdict.FAIL,
        f"{rep.split_description()}; {compiled}.",
        "keep every layer 8-bit and in Coral's list (no float islands, fixed batch-1 shapes) so the whole graph maps.",
    )


def _check_param_cache(c: _Ctx) -> FitRow:
    rep = c.edgetpu
    if rep.compiler.compiled and rep.compiler.off_chip_bytes is not None:
        off = rep.compiler.off_chip_bytes
        verdict = Verdict.OK if off == 0 else Verdict.WARN
        return FitRow(
            "param-cache",
            rep.compiler.on_chip_bytes or 0,
            CACHE_BYTES,
            CACHE_BYTES - (rep.compiler.on_chip_bytes or 0),
            verdict,
            f"compiler: {_b(off)} of parameters stream from host memory.",
        )
    return _row_budget(
        "param-cache",
        rep.parameter_bytes,
        CACHE_BYTES,
        "on-chip parameter cache (about 8 MB)",
        "parameters of the mapped operators",
        "fewer parameters, or accept off-chip streaming (slower).",
        warn=True,
    )


_CHECKS: dict[Target, tuple[Callable[[_Ctx], FitRow], ...]] = {
    Target.MCU: (_check_arena, _check_flash, _check_ops_mcu, _check_dtypes),
    Target.EDGETPU: (_check_edgetpu, _check_param_cache, _check_ram, _check_storage, _check_dtypes),
    Target.CPU: (_check_ram, _check_storage, _check_ops_cpu, _check_dtypes),
}


def _check_agreement(c: _Ctx, golden_inputs: np.ndarray) -> tuple[FitRow, float | None]:
    """The agreement row and the agreement itself (None when TFLite Micro could not run the samples)."""
    try:
        agreement = tflm_agreement(c.tflite, golden_inputs)
    except ModelError as exc:
        return FitRow("tflm-agreement", "not run", 1.0, None, Verdict.WARN, str(exc)), None
    n = len(golden_inputs)
    detail = f"TFLite Micro and LiteRT agree on the top-1 class of {agreement:.1%} of {n} golden samples"
    if agreement == 1.0:
        return FitRow("tflm-agreement", agreement, 1.0, None, Verdict.OK, detail + "."), agreement
    # Kernels round differently; a few flips near a decision boundary are expected, many are not.
    row = FitRow(
        "tflm-agreement",
        agreement,
        1.0,
        None,
        Verdict.WARN,
        detail + " (rounding differences).",
        "compare the raw outputs of the disagreeing samples; check the input quantisation.",
    )
    return row, agreement


def check_fit(
    tflite: bytes,
    profile: Profile,
    *,
    name: str = "model",
    run_compiler: bool = True,
    golden_inputs: np.ndarray | None = None,
) -> FitReport:
    """Check ``tflite`` against ``profile``; never raises for a misfit (see :func:`require_fit`).

    ``golden_inputs`` (N, H, W, C; quantised, or float to be quantised with the model's input
    parameters) adds, for MCU profiles, the top-1 agreement of TFLite Micro with LiteRT on them.
    Raises :class:`ModelError` only when ``tflite`` is not a TFLite model.
    """
    graph = read_graph(tflite, name)
    c = _Ctx(bytes(tflite), graph, profile, name, run_compiler)
    rows = tuple(check(c) for check in _CHECKS[profile.target])
    arena = c.arena.bytes  # every target's checks measured it (arena or ram)
    agreement = None
    if golden_inputs is not None and profile.target is Target.MCU and arena is not None:
        row, agreement = _check_agreement(c, golden_inputs)
        rows += (row,)
    return FitReport(
        model=name,
        profile=profile.name,
        target=str(profile.target),
        model_bytes=graph.model_bytes,
        model_sha256=graph.sha256,
        ops=graph.op_names(),
        rows=rows,
        margin=profile.margin,
        arena_bytes=arena,
        arena_with_margin=_with_margin(arena, profile.margin) if arena else None,
        flash_bytes=c.flash_bytes,
        edgetpu=c.edgetpu if profile.target is Target.EDGETPU else None,
        tflm_agreement=agreement,
    )


def require_fit(report: FitReport) -> FitReport:
    """Return ``report`` if the model fits; otherwise raise :class:`FitError` with every failed check's numbers."""
    if report.fits:
        return report
    parts = [f"{r.check}: {r.detail}" + (f" Try: {r.what_to_try}" if r.what_to_try else "") for r in report.failures()]
    raise FitError(
        f"{report.model} does not fit {report.profile} ({report.target}): "
        + " | ".join(parts)
        + " (use --keep-going to build the other profiles anyway)"
    )


def bundle_artifacts(tflite: bytes, report: FitReport, name: str, spec: InputSpec | None = None) -> dict[str, bytes]:
    """Extra bundle files for the report's target: C sources for an MCU (with the feature parameters of an
    audio ``spec``), ``model_edgetpu.tflite`` when compiled."""
    if report.target == str(Target.MCU):
        return mcu_artifacts(tflite, name, report.arena_bytes, report.arena_with_margin, report.margin, spec)
    if report.target == str(Target.EDGETPU) and report.edgetpu is not None and report.edgetpu.compiler.model:
        return {
            "model_edgetpu.tflite": report.edgetpu.compiler.model,
            "model_edgetpu.log": report.edgetpu.compiler.log.encode("utf-8"),
        }
    return {}
