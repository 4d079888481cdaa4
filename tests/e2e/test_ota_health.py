"""The health-window verdict (edgekit_agent.ota.health.judge) and its policy, on constructed statistics: each
check fails when it should, and a check without enough data passes and says why."""

from __future__ import annotations

import pytest

from edgekit_agent.contract.errors import InputError
from edgekit_agent.ota.health import HealthPolicy, HealthStats, TallyRecorder, judge

POLICY = HealthPolicy(
    window_s=10,
    max_error_rate=0.05,
    max_p99_ratio=3.0,
    p99_slack_ms=2.0,
    min_latency_samples=100,
    max_accuracy_drop=0.1,
    min_labeled=10,
)
OLD = HealthStats(requests=500, errors=0, p99_invoke_ms=1.0, latency_samples=500, labeled=200, correct=190)


def verdict(new: HealthStats, old: HealthStats = OLD, ref: float | None = None, policy: HealthPolicy = POLICY) -> dict:
    return {c.name: c for c in judge(policy, new, old, ref)}


def test_a_healthy_window_passes_every_check():
    checks = verdict(HealthStats(300, 1, 2.5, 299, 100, 93))
    assert all(c.passed for c in checks.values()), checks
    assert checks["p99_invoke_ms"].limit == pytest.approx(3 * 1.0 + 2.0)


def test_error_rate_over_the_limit_fails():
    assert not verdict(HealthStats(300, 30, 1.0, 270, 0, 0))["error_rate"].passed


def test_p99_over_ratio_times_old_plus_slack_fails():
    c = verdict(HealthStats(300, 0, 5.5, 300, 0, 0))["p99_invoke_ms"]
    assert not c.passed and c.value == 5.5 and c.limit == 5.0


def test_p99_is_not_judged_from_a_handful_of_inferences():
    c = verdict(HealthStats(40, 0, 50.0, 40, 0, 0))["p99_invoke_ms"]
    assert c.passed and "not enough" in c.note


def test_accuracy_drop_against_the_old_bundle_fails():
    c = verdict(HealthStats(300, 0, 1.0, 300, 100, 80))["accuracy"]  # 0.80 < 0.95 - 0.10
    assert not c.passed and c.note == "vs the old bundle"


def test_accuracy_falls_back_to_the_manifest_reference_without_old_labels():
    old = HealthStats(500, 0, 1.0, 500, 0, 0)
    c = verdict(HealthStats(300, 0, 1.0, 300, 100, 50), old, ref=0.97)["accuracy"]
    assert not c.passed and "manifest" in c.note and c.limit == pytest.approx(0.87)
    assert verdict(HealthStats(300, 0, 1.0, 300, 100, 50), old, ref=None)["accuracy"].passed  # nothing to compare with


def test_min_requests_fails_an_idle_window_when_asked():
    policy = HealthPolicy(min_requests=10)
    assert not verdict(HealthStats(3, 0, None, 3, 0, 0), policy=policy)["requests"].passed
    assert verdict(HealthStats(3, 0, None, 3, 0, 0))["requests"].passed  # default 0: an idle device may update


@pytest.mark.parametrize(
    "args", [{"window": 3}, {"window_s": -1}, {"max_error_rate": 2}, {"window_s": True}, {"min_labeled": "ten"}]
)
def test_bad_health_arguments_are_input_errors(args):
    with pytest.raises(InputError):
        HealthPolicy.from_args(args)


def test_tally_recorder_counts_what_the_agent_records():
    rec = TallyRecorder(["a", "b"])
    for i in range(150):
        rec.record(2_000_000, 500_000, 1_000_000 + i * 1000, i % 2, 0.9, label=0)  # predicted alternates, true label 0
    rec.record_error("INPUT_INVALID")
    s = rec.stats()
    assert (s.requests, s.errors, s.labeled, s.correct, s.latency_samples) == (151, 1, 150, 75, 150)
    assert s.p99_invoke_ms == pytest.approx(1.148)  # 149th of 150 sorted invoke times
    body = rec.snapshot_and_reset()
    assert body["counts"]["ok"] == 150  # the telemetry window is unaffected


def test_latency_right_after_the_switch_is_left_out_of_the_p99():
    import time

    rec = TallyRecorder(["a"])
    for _ in range(3):
        rec.record(0, 0, 50_000_000, 0, 1.0)  # 50 ms stalls while the update publishes its events
    cut = time.monotonic()
    for _ in range(120):
        rec.record(0, 0, 1_000_000, 0, 1.0)
    assert rec.stats().p99_invoke_ms == pytest.approx(50.0)
    late = rec.stats(0.0, latency_since=cut)
    assert late.p99_invoke_ms == pytest.approx(1.0) and late.requests == 123 and late.latency_samples == 120
    assert HealthPolicy.from_args({"latency_warmup_s": 0.5}).latency_warmup_s == 0.5
