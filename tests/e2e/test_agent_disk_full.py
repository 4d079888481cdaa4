"""A full disk (issue 9): a real agent, its data directory on a real 2 MB tmpfs, a real mosquitto. Images are fed
with the broker down until the disk is full; the broker comes back (with the last byte taken too, the issue's
re-send storm) and the agent is restarted on the full disk; then the space comes back. Runs the chaos scenario
module (scripts/chaos/disk.py) and checks its figures. Skipped, with the reason, where a tmpfs cannot be mounted."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Env:  # the fields of the chaos driver's ChaosEnv that the scenario reads
    workdir: Path
    python: str


def _module():
    spec = importlib.util.spec_from_file_location("chaos_disk", REPO / "scripts" / "chaos" / "disk.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_full_disk_is_reported_loses_only_what_it_counts_and_never_storms(digits_bundle: Path, tmp_path: Path):
    import sys

    archive = digits_bundle.parent / f"{digits_bundle.name}.tar.gz"
    result = _module().run(Env(tmp_path, sys.executable), archive, broker_back_while_full=True, images=150)
    if result.get("skipped"):
        pytest.skip(result["skipped"])
    print(result)
    # Reported once per agent run (the restarted agent finds the disk still full), recovered by itself.
    assert result["disk_events"] == {"disk_full": 2, "disk_ok": 1}, result
    assert result["recover_s"] is not None and result["recover_s"] < 10
    # No storm: nothing is sent twice while the broker is back and the disk full, and the log stays quiet.
    assert result["dup_while_full"] == 0 and result["log_bytes"] < 20_000, result
    # What a consumer cannot see is what the device says it dropped; everything else arrived.
    # Not exact yet (races at stop, not found): under load the report has been seen one under the gap (a
    # message dropped at the final stop is never reported: no window follows it) and two over (messages counted
    # dropped at a stop on the full disk that still arrived). The bench prints both figures for each run.
    assert result["dropped_reported"] > 0, result
    assert abs(result["seq_gap"] - result["dropped_reported"]) <= 2, result
    assert result["counted"] <= result["fed"]  # the windows dropped first are the oldest: those with the images
    # The restart on the full disk re-sends at most what was delivered but could not be deleted: once.
    assert result["duplicates"] < 100, result
    assert result["unpacked_again"] is False
