"""The real TFLite Micro interpreter on the workstation: the exact minimal tensor arena, and agreement with LiteRT.

TFLite Micro (``tflite-micro`` on PyPI) raises RuntimeError when the arena is too small, so probing
``arena_size`` finds the exact minimum: a binary search, narrowed to 16 bytes around the arena the interpreter
records using at the first size it accepts. Not always, though: for some sizes a failed tail
allocation is dereferenced (SIGSEGV), and some models make it abort (SIGABRT) whatever the size. So the
search runs in a child process that forks once per probe, a crashed probe counts as "too small", a crash
at every size is reported as the model's problem, and TFLite Micro's diagnostics, which go to C-level
stderr (fd 2), are captured and quoted.

These are 64-bit host figures with reference kernels; an MCU build differs a little (smaller
pointers, extra scratch for CMSIS-NN / ESP-NN), which is what a profile's margin is for.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edgekit_agent.contract.errors import ModelError

# Every real model needs more than this (the allocator's own bookkeeping is a few hundred bytes).
SEARCH_FLOOR = 1024
# Largest arena tried before giving up: no microcontroller profile comes close.
SEARCH_CEILING = 256 * 1024 * 1024
# The first size tried, doubled until accepted: more than the models meant for these profiles need. An arena is
# reserved, not written, so a large probe costs what a small one does, and the allocation record it yields
# narrows the search (below).
FIRST_PROBE = 16 * 1024 * 1024
_TIMEOUT_S = 300
# What Interpreter.print_allocations() writes first: the arena the interpreter used, tail and head together.
_ARENA_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_ALIGNMENT = 16  # TFLite Micro aligns the arena's start to 16 bytes (MicroArenaBufferAlignment)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ArenaMeasurement:
    """The smallest ``arena_size`` TFLite Micro accepts for a model (bytes), found by binary search.

    ``exact`` is True when ``bytes`` was accepted and ``bytes - 1`` refused (a one-byte resolution).
    """

    bytes: int
    exact: bool
    probes: int
    tflm_version: str


def _tflm_version() -> str:
    try:
        from importlib.metadata import version

        return version("tflite_micro")
    except Exception:  # noqa: BLE001 - metadata missing in odd installs
        return "unknown"


# --------------------------------------------------------------------------------------------------
# The child process. It imports only tflite_micro and numpy.
# --------------------------------------------------------------------------------------------------
def _worker(request: dict[str, Any]) -> dict[str, Any]:
    from tflite_micro.python.tflite_micro import runtime

    model = Path(request["model"]).read_bytes()
    crashes: list[int] = []

    def accepts_here(size: int, report_fd: int | None = None) -> bool:
        try:
            interp = runtime.Interpreter.from_bytes(model, arena_size=size)
        except RuntimeError:
            return False
        if report_fd is not None:  # the allocation record goes to C-level stderr: send it to the parent
            os.dup2(report_fd, 2)
            interp.print_allocations()
        return True

    def accepts(size: int, *, recorded: list[int] | None = None) -> bool:
        # Each probe in a forked child: some too-small arenas make a tail allocation fail in a code path
        # that does not check it (SIGSEGV), not only the tiny ones. A crash at a size counts as "refused";
        # a crash even at the largest size is the model's own problem and is reported as such.
        # With ``recorded``, an accepting probe appends the arena TFLite Micro says it used.
        if not hasattr(os, "fork"):
            return accepts_here(size)
        read_end, write_end = os.pipe() if recorded is not None else (None, None)
        pid = os.fork()
        if pid == 0:  # child: report through the exit status (and the pipe) only
            try:
                os._exit(0 if accepts_here(size, write_end) else 1)
            except BaseException:  # noqa: BLE001 - anything else is a refusal, never a hang
                os._exit(2)
        if write_end is not None:
            os.close(write_end)
        _, status = os.waitpid(pid, 0)
        if read_end is not None:
            with os.fdopen(read_end, "rb") as pipe:
                found = _ARENA_TOTAL.search(pipe.read().decode("utf-8", "replace"))
            if found and recorded is not None:
                recorded.append(int(found.group(1)))
        if os.WIFSIGNALED(status):
            crashes.append(os.WTERMSIG(status))
            return False
        return os.WEXITSTATUS(status) == 0

    if request["op"] == "arena":
        probes, hi, recorded = 0, max(FIRST_PROBE, len(model) // 4), []
        while True:
            probes += 1
            crashes.clear()
            if accepts(hi, recorded=recorded):
                break
            if hi >= SEARCH_CEILING:
                return {"error": "crash", "signal": crashes[-1]} if crashes else {"error": "unsupported"}
            hi = min(hi * 2, SEARCH_CEILING)
        lo = SEARCH_FLOOR  # invariant: lo refused (or the floor), hi accepted
        # TFLite Micro records the arena it used at the accepted size: the minimum plus up to 15 bytes of alignment
        # (where the arena buffer starts). Bracketing it narrows the bisection from ~17 probes to ~6; when the
        # record does not bracket the minimum (another allocator), the full bisection runs as before.
        used = recorded[-1] if recorded else 0
        if SEARCH_FLOOR + _ALIGNMENT < used <= hi:
            probes += 1
            if not accepts(used):
                lo = used
            else:
                hi = used
                probes += 1
                if not accepts(used - _ALIGNMENT):
                    lo = used - _ALIGNMENT
                else:
                    hi = used - _ALIGNMENT
        if lo == SEARCH_FLOOR:
            probes += 1
            if accepts(lo):
                return {"arena": lo, "exact": False, "probes": probes}
        while hi - lo > 1:
            mid = (lo + hi) // 2
            probes += 1
            if accepts(mid):
                hi = mid
            else:
                lo = mid
        return {"arena": hi, "exact": True, "probes": probes}

    if request["op"] == "run":
        interp = runtime.Interpreter.from_bytes(model, arena_size=int(request["arena"]))
        inputs = np.load(request["inputs"])["x"]
        outs = []
        for x in inputs:
            interp.set_input(x[None, ...], 0)
            interp.invoke()
            outs.append(np.array(interp.get_output(0))[0])
        np.save(request["outputs"], np.stack(outs))
        return {"ok": True}
    return {"error": f"unknown request {request['op']}"}


def _call_worker(request: dict[str, Any], name: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit.fit.tflm"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
    )
    stderr = proc.stderr.strip().splitlines()
    tail = "; ".join(line for line in stderr[-3:] if line)
    if proc.returncode != 0:
        how = f"exit status {proc.returncode}"
        if proc.returncode < 0:
            try:
                how = signal.Signals(-proc.returncode).name
            except ValueError:
                how = f"signal {-proc.returncode}"
        hint = request.get("hint") or ""
        # Earlier probes' "arena too small" lines are noise next to a known cause; otherwise quote the last line.
        last = "" if hint or not stderr else f": {stderr[-1].strip()}"
        raise ModelError(
            f"{name}: TFLite Micro crashed on this model ({how}{last}){hint}; "
            "a microcontroller would stop the same way, so the model is not usable there as it is."
        )
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise ModelError(f"{name}: the TFLite Micro worker gave no answer ({tail or 'no message'}).") from None
    if result.get("error") == "unsupported":
        # TFLM's own reason (an unregistered op, an unsupported type) went to stderr: quote it.
        reasons = [line for line in stderr if "Failed to allocate" not in line and line.strip()]
        reason = "; ".join(dict.fromkeys(reasons)) or "no reason given"
        raise ModelError(
            f"{name}: TFLite Micro cannot run this model even with a {SEARCH_CEILING // (1024 * 1024)} MiB arena "
            f"({reason}). Use only operators and types TFLite Micro supports (full int8)."
        )
    if result.get("error") == "crash":
        try:
            how = signal.Signals(result["signal"]).name
        except ValueError:
            how = f"signal {result['signal']}"
        hint = request.get("hint") or ""
        raise ModelError(
            f"{name}: TFLite Micro crashed on this model ({how}) even with a "
            f"{SEARCH_CEILING // (1024 * 1024)} MiB arena{hint}; a microcontroller would stop the same way, "
            "so the model is not usable there as it is."
        )
    if "error" in result:
        raise ModelError(f"{name}: TFLite Micro worker: {result['error']}")
    return result


def _with_model_file(tflite: bytes, fn: Callable[[Path, Path], T]) -> T:
    with tempfile.TemporaryDirectory(prefix="edgekit-tflm-") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(tflite)
        return fn(Path(tmp), path)


def _crash_hint(tflite: bytes) -> str:
    """A known cause of TFLite Micro aborting (instead of raising), found in the graph, or ""."""
    from edgekit.fit.tflite_graph import read_graph

    g = read_graph(tflite)
    for op in g.operators:
        if op.name == "SOFTMAX":
            t = g.tensor(op.inputs[0])
            # int8 softmax computes QuantizeMultiplierGreaterThanOne(scale * 2**26) and asserts it is > 1.
            if t.quantized and 0 < t.scale * 2**26 <= 1.0:
                return (
                    f". Likely cause: SOFTMAX #{op.index} has an input scale of {t.scale:.3g} (< 2^-26), which TFLite "
                    "Micro's int8 softmax asserts against: the logits have almost no range (vanishing activations, "
                    "e.g. an untrained model or unrepresentative calibration data)"
                )
    return ""


@lru_cache(maxsize=32)
def _measure_cached(tflite: bytes, name: str) -> ArenaMeasurement | ModelError:
    # A failure is cached too: checking one crashing model against every MCU profile must not crash 4 times.
    request = {"op": "arena", "hint": _crash_hint(tflite)}
    try:
        result = _with_model_file(tflite, lambda _d, p: _call_worker({**request, "model": str(p)}, name))
    except ModelError as exc:
        return exc
    return ArenaMeasurement(int(result["arena"]), bool(result["exact"]), int(result["probes"]), _tflm_version())


def measure_arena(tflite: bytes, name: str = "model") -> ArenaMeasurement:
    """The exact minimal tensor arena of a model under the real TFLite Micro interpreter.

    Cached per model content, so checking one model against many profiles measures it once.
    Raises :class:`ModelError` when TFLite Micro cannot run the model at all (the reason quoted).
    """
    result = _measure_cached(bytes(tflite), name)
    if isinstance(result, ModelError):
        raise ModelError(str(result))
    return result


def tflm_outputs(
    tflite: bytes, inputs: np.ndarray, *, arena_bytes: int | None = None, name: str = "model"
) -> np.ndarray:
    """Raw outputs of TFLite Micro for each sample of ``inputs`` (N, ...) already quantised to the input dtype."""
    arena = arena_bytes or measure_arena(tflite, name).bytes

    def run(tmp: Path, model: Path) -> np.ndarray:
        np.savez(tmp / "inputs.npz", x=np.asarray(inputs))
        _call_worker(
            {
                "op": "run",
                "model": str(model),
                "arena": arena,
                "inputs": str(tmp / "inputs.npz"),
                "outputs": str(tmp / "out.npy"),
            },
            name,
        )
        return np.load(tmp / "out.npy")

    return _with_model_file(tflite, run)


def quantize_inputs(tflite: bytes, inputs: np.ndarray) -> np.ndarray:
    """Float inputs (N, H, W, C) -> the model's input dtype with its scale and zero point; integer inputs
    pass through."""
    from edgekit.fit.tflite_graph import read_graph

    x = np.asarray(inputs)
    if np.issubdtype(x.dtype, np.integer):
        return x
    g = read_graph(tflite)
    t = g.tensor(g.inputs[0])
    if not t.quantized:
        return x.astype(np.float32)
    info = np.iinfo(np.dtype(t.dtype))
    q = np.round(x.astype(np.float64) / t.scale + t.zero_point)
    return np.clip(q, info.min, info.max).astype(t.dtype)


def tflm_agreement(tflite: bytes, golden_inputs: np.ndarray) -> float:
    """Fraction of samples whose top-1 class under TFLite Micro equals LiteRT's (0.0-1.0).

    Exact raw outputs may differ by a rounding step between the two kernel sets, so agreement of the
    predicted class is what is reported. ``golden_inputs`` are quantised inputs (N, H, W, C), as in
    ``golden.npz``; float inputs are quantised with the model's input scale and zero point.
    """
    from edgekit_agent.infer.runtime import Runtime

    x = quantize_inputs(tflite, golden_inputs)
    if len(x) == 0:
        raise ModelError("tflm_agreement: no golden inputs given.")
    rt = Runtime(tflite, num_threads=1, delegate="none", model_name="model.tflite")
    ref = np.stack([rt.invoke(x[i : i + 1])[0] for i in range(len(x))])
    micro = tflm_outputs(tflite, x)
    ref_top = ref.reshape(len(x), -1).argmax(axis=1)
    micro_top = micro.reshape(len(x), -1).argmax(axis=1)
    return float(np.mean(ref_top == micro_top))


if __name__ == "__main__":  # the child process of _call_worker
    print(json.dumps(_worker(json.loads(sys.stdin.read()))))
