"""The health window after an OTA switch: a policy, the statistics of a bundle's inferences, and the verdict.

The agent's telemetry recorder is replaced by :class:`TallyRecorder`, which also keeps a rolling tally of
the last inferences (lock-free: one tuple appended to a bounded deque), so a new bundle's window can be
compared with the bundle that served before it. :func:`judge` turns two :class:`HealthStats` and a
:class:`HealthPolicy` into a list of :class:`Check` results; a check without enough data passes and says so.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from edgekit_agent.contract.errors import InputError
from edgekit_agent.serve.telemetry import WindowRecorder

TALLY_SIZE = 4096  # inferences remembered per bundle for health comparisons


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """What a new bundle must show during its health window (``commit``'s ``health`` argument)."""

    window_s: float = 30.0
    min_requests: int = 0  # fewer inferences than this in the window: fail ("cannot judge")
    max_error_rate: float = 0.05
    max_p99_ratio: float = 3.0  # new p99 invoke latency ≤ ratio × old p99 + slack
    # Absolute slack: a sub-millisecond model's p99 is dominated by scheduler stalls on a busy device.
    p99_slack_ms: float = 2.0
    # Below 100 inferences a "p99" is just the slowest one (one stall fails the bundle): not judged.
    min_latency_samples: int = 100
    max_accuracy_drop: float = 0.10  # accuracy on labelled inputs may fall this much below the old bundle's
    min_labeled: int = 10
    # Latency right after the switch measures the update's own work (events, meta, the old window competing
    # for the GIL and the CPU), not the new model: the p99 check starts this many seconds into the window.
    latency_warmup_s: float = 1.0

    _LIMITS = {
        "window_s": (0.0, 86_400.0),
        "min_requests": (0, 10**9),
        "max_error_rate": (0.0, 1.0),
        "latency_warmup_s": (0.0, 3600.0),
        "max_p99_ratio": (1.0, 1000.0),
        "p99_slack_ms": (0.0, 60_000.0),
        "min_latency_samples": (1, 10**9),
        "max_accuracy_drop": (0.0, 1.0),
        "min_labeled": (1, 10**9),
    }

    @classmethod
    def from_args(cls, args: Mapping[str, Any] | None) -> HealthPolicy:
        """Validated from a command's ``health`` object; unknown keys and bad values are :class:`InputError`."""
        args = dict(args or {})
        values: dict[str, Any] = {}
        for key, value in args.items():
            if key not in cls._LIMITS:
                raise InputError(f"swap_bundle: unknown health setting '{key}'; known: {', '.join(cls._LIMITS)}.")
            lo, hi = cls._LIMITS[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise InputError(f"swap_bundle: health.{key} must be a number between {lo} and {hi}, got {value!r}.")
            values[key] = int(value) if isinstance(lo, int) and isinstance(hi, int) else float(value)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._LIMITS}


@dataclass(frozen=True, slots=True)
class HealthStats:
    """Inferences of one bundle over a period."""

    requests: int
    errors: int
    p99_invoke_ms: float | None
    latency_samples: int
    labeled: int
    correct: int

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labeled if self.labeled else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(error_rate=round(self.error_rate, 6), accuracy=self.accuracy)
        return d


class TallyRecorder(WindowRecorder):
    """The telemetry recorder plus a rolling tally of the last inferences, for health windows.

    ``record`` stays lock-free: one more tuple appended to a bounded deque.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (monotonic time, invoke ns, correct: 1/0 or -1 unlabelled, error)
        self.tally: deque[tuple[float, int, int, bool]] = deque(maxlen=TALLY_SIZE)

    def record(
        self,
        total_ns: int,
        preprocess_ns: int,
        invoke_ns: int,
        predicted: int,
        confidence: float,
        label: int = -1,
        input_mean: float = math.nan,
    ) -> None:
        self.tally.append((time.monotonic(), invoke_ns, -1 if label < 0 else int(label == predicted), False))
        super().record(total_ns, preprocess_ns, invoke_ns, predicted, confidence, label, input_mean)

    def record_error(self, code: str) -> None:
        self.tally.append((time.monotonic(), 0, -1, True))
        super().record_error(code)

    def stats(self, since: float = 0.0, latency_since: float = 0.0) -> HealthStats:
        """Inferences recorded since ``since`` (monotonic); latency only from those since ``latency_since``."""
        rows = [r for r in list(self.tally) if r[0] >= since]
        lat = sorted(r[1] for r in rows if not r[3] and r[0] >= latency_since)
        p99 = lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)] / 1e6 if lat else None
        labelled = [r[2] for r in rows if r[2] >= 0]
        return HealthStats(len(rows), sum(1 for r in rows if r[3]), p99, len(lat), len(labelled), sum(labelled))


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    value: Any
    limit: Any
    note: str = ""


def judge(policy: HealthPolicy, new: HealthStats, old: HealthStats, reference_accuracy: float | None) -> list[Check]:
    """The health checks of a window (a check without enough data passes and says so)."""
    checks = [
        Check("requests", new.requests >= policy.min_requests, new.requests, policy.min_requests),
        Check("error_rate", new.error_rate <= policy.max_error_rate, round(new.error_rate, 4), policy.max_error_rate),
    ]
    if (
        new.latency_samples >= policy.min_latency_samples
        and old.p99_invoke_ms is not None
        and old.latency_samples >= policy.min_latency_samples
    ):
        limit = policy.max_p99_ratio * old.p99_invoke_ms + policy.p99_slack_ms
        checks.append(
            Check(
                "p99_invoke_ms",
                new.p99_invoke_ms <= limit,
                round(new.p99_invoke_ms, 3),
                round(limit, 3),  # type: ignore[operator]
                f"old bundle {old.p99_invoke_ms:.3f} ms",
            )
        )
    else:
        checks.append(Check("p99_invoke_ms", True, new.p99_invoke_ms, None, "not enough inferences to compare"))
    base = old.accuracy if old.labeled >= policy.min_labeled else reference_accuracy
    if new.labeled >= policy.min_labeled and base is not None:
        limit = base - policy.max_accuracy_drop
        checks.append(
            Check(
                "accuracy",
                new.accuracy >= limit,
                round(new.accuracy, 4),
                round(limit, 4),  # type: ignore[operator]
                "vs the old bundle" if old.labeled >= policy.min_labeled else "vs the manifest's int8 accuracy",
            )
        )
    else:
        checks.append(Check("accuracy", True, new.accuracy, None, "not enough labelled inputs"))
    return checks


__all__ = ["Check", "HealthPolicy", "HealthStats", "TallyRecorder", "judge", "TALLY_SIZE"]
