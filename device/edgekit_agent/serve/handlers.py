"""The built-in fleet commands of the agent: ``ping``, ``run_benchmark``, ``set_config``, ``infer``.

Each handler takes the :class:`~edgekit_agent.serve.agent.Agent` and a validated
:class:`~edgekit_agent.mqtt.commands.Command` and returns a typed result, whose ``to_dict()`` is the ``result``
object of the ``succeeded`` answer, or raises a typed error (which :mod:`edgekit_agent.mqtt.commands` turns into
``{code, message, retryable}``). :func:`builtin_commands` is the dispatch table, where results become JSON; other
modules register more (``swap_bundle`` in ``ota``).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from edgekit_agent.contract.errors import BusyError, InputError
from edgekit_agent.contract.limits import MAX_INFER_SAMPLES
from edgekit_agent.mqtt.commands import Arg, Command, CommandSpec

if TYPE_CHECKING:
    from edgekit_agent.infer.benchmark import BenchReport
    from edgekit_agent.serve.agent import Agent, Prediction


class _Result(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Pong:
    boot_id: str
    uptime_s: float
    pong: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class BenchmarkRun:
    run_id: str  # the command's cmd_id
    report_topic: str
    report: BenchReport

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "report_topic": self.report_topic, "report": self.report.to_dict()}


@dataclass(frozen=True, slots=True)
class ConfigApplied:
    applied: dict[str, Any]  # the arguments given, as given
    config: dict[str, Any]  # meta's ``config`` after the change

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cmd_ping(agent: Agent, cmd: Command) -> Pong:
    """Liveness: answered inline, even while a benchmark occupies the command worker."""
    return Pong(agent.boot_id, round(time.monotonic() - agent.started_mono, 3))


def cmd_run_benchmark(agent: Agent, cmd: Command) -> BenchmarkRun:
    """benchmark_model-style run on a separate interpreter (serving goes on); also ``bench/{run_id}/report``."""
    from edgekit_agent.infer.benchmark import run_benchmark

    a = cmd.args
    t0 = time.perf_counter_ns()
    rt = agent.bundle.open_runtime(num_threads=a["num_threads"] or agent.runtime.info.num_threads)
    init_ms = (time.perf_counter_ns() - t0) / 1e6
    try:
        report = run_benchmark(
            rt,
            warmup_runs=a["warmup_runs"],
            num_runs=a["num_runs"],
            init_ms=init_ms,
            model_sha256=agent.manifest.model.sha256,
            model_name=f"{agent.manifest.name} {agent.manifest.version} ({agent.manifest.profile_name})",
        )
    finally:
        rt.close()
    doc = report.to_dict()
    run_id = cmd.cmd_id
    agent.publish(agent.topics.bench(run_id), {**doc, "run_id": run_id, "cmd_id": cmd.cmd_id}, sequenced=False)
    return BenchmarkRun(run_id, agent.topics.bench(run_id), report)


def cmd_set_config(agent: Agent, cmd: Command) -> ConfigApplied:
    """Change window_s, num_threads (a new interpreter, swapped under the serving lock) or drift_every."""
    a = {k: v for k, v in cmd.args.items() if v is not None}
    if not a:
        raise InputError("set_config needs at least one of: window_s, num_threads, drift_every.")
    settings = agent.settings.with_changes(**a)  # validates before anything changes
    if "num_threads" in a and a["num_threads"] != agent.runtime.info.num_threads:
        bundle = agent.bundle
        if not agent.swap_runtime(bundle.open_runtime(num_threads=a["num_threads"]), bundle):
            raise BusyError(
                f"{agent.settings.device_id}: the bundle changed while num_threads was being applied; retry."
            )
    agent.settings = settings
    agent.event("config_applied", changes=a, cmd_id=cmd.cmd_id)
    agent.publish_meta()
    return ConfigApplied(a, agent.meta()["config"])


def cmd_infer(agent: Agent, cmd: Command) -> Prediction:
    """Request/response inference on a base64 input file (image, WAV or CSV, as the bundle takes), raw samples
    (a waveform, sensor rows) or a preprocessed float tensor."""
    a = cmd.args
    if a["image"] is not None:
        try:
            data = base64.b64decode(a["image"], validate=True)
        except (binascii.Error, ValueError):
            raise InputError("infer: 'image' is not valid base64.") from None
        return agent.serve_file(data, label_name=a["label"])
    try:
        if a["samples"] is not None:
            return agent.serve_samples(a["samples"], label_name=a["label"])
        return agent.serve_array(a["tensor"], label_name=a["label"])
    except InputError as exc:
        raise InputError(f"infer: {exc}") from None


def _sample_count(v: list[Any]) -> int:
    """How many numbers a ``samples`` list holds (rows are counted by their length), before numpy sees it."""
    return sum(len(r) if isinstance(r, list) else 1 for r in v)


def _between(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: lo <= v <= hi


def _answering(handler: Callable[[Agent, Command], _Result], agent: Agent) -> Callable[[Command], dict[str, Any]]:
    """The table's handler: the typed result becomes the answer's JSON here, at the edge."""
    return lambda cmd: handler(agent, cmd).to_dict()


def builtin_commands(agent: Agent) -> list[CommandSpec]:
    """The dispatch table of the built-in commands (others are added with ``agent.commands.register``)."""
    return [
        CommandSpec(
            "ping", _answering(cmd_ping, agent), inline=True, doc="liveness: answers pong with boot_id and uptime"
        ),
        CommandSpec(
            "run_benchmark",
            _answering(cmd_run_benchmark, agent),
            {
                "warmup_runs": Arg(int, 5, check=_between(0, 10_000), expect="an integer 0-10000"),
                "num_runs": Arg(int, 100, check=_between(1, 100_000), expect="an integer 1-100000"),
                "num_threads": Arg(int, None, check=_between(1, 64), expect="an integer 1-64"),
            },
            doc="benchmark the active model on a separate interpreter; also publishes bench/{run_id}/report",
        ),
        CommandSpec(
            "set_config",
            _answering(cmd_set_config, agent),
            {
                "window_s": Arg(float, None, check=_between(0.05, 86_400), expect="seconds between 0.05 and 86400"),
                "num_threads": Arg(int, None, check=_between(1, 64), expect="an integer 1-64"),
                "drift_every": Arg(int, None, check=_between(1, 1_000_000), expect="an integer ≥ 1"),
            },
            doc="change the telemetry window, interpreter threads or drift sampling at run time",
        ),
        CommandSpec(
            "infer",
            _answering(cmd_infer, agent),
            {
                "image": Arg(str, None, expect="base64 of an input file: an image (PNG, JPEG, …), a WAV or a CSV"),
                "samples": Arg(
                    list,
                    None,
                    check=lambda v: 0 < _sample_count(v) <= MAX_INFER_SAMPLES,
                    expect=f"a non-empty list of at most {MAX_INFER_SAMPLES} raw samples (a waveform, or rows)",
                ),
                "tensor": Arg(list, None, expect="a nested list of preprocessed floats (the model's input)"),
                "label": Arg(
                    str,
                    None,
                    check=lambda v: v in agent.label_index,
                    expect=f"one of the labels {list(agent.labels)[:20]} (multi-label: a set of them joined by '+')",
                ),
            },
            one_of=("image", "samples", "tensor"),
            doc="request/response inference on one input",
        ),
    ]
