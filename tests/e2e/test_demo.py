"""The README's first command, in its short CI mode: scripts/demo.sh --short must exit 0, produce the
bundles, a benchmark report and its picture, and leave nothing running."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from edgekit.fleet.dev_broker import mosquitto_path, port_in_use

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # no mosquitto needed: the demo then runs on the embedded amqtt (MQTT 3.1.1)
def test_short_demo_runs_end_to_end_and_leaves_nothing_running(tmp_path):
    work = tmp_path / "demo"
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh"), "--short", "--workdir", str(work)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    for step in ("1/7", "2/7", "3/7", "4/7", "5/7", "6/7", "7/7", "clean-up"):
        assert step in out
    assert "fits" in out  # the fit table of the build
    for profile in ("raspberry-pi-4", "esp32-s3"):
        assert (work / "bundles" / f"digits-{profile}" / "manifest.json").is_file()
        assert (work / "bundles" / f"digits-{profile}.tar.gz").is_file()
    reports = list((work / "bench").glob("bench-pi-kitchen-*.json"))
    assert len(reports) == 1 and reports[0].with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # Every device served labelled images, and every agent stopped cleanly.
    assert re.search(
        r"stopped: agent pi-kitchen \(exit 0\), agent pi-garage \(exit 0\), agent esp32-sim \(exit 0\), "
        r"exporter, broker",
        out,
    ), out[-2000:]
    counted = out[out.index("what the Prometheus exporter counted") :]
    for device in ("pi-kitchen", "pi-garage", "esp32-sim"):
        requests = int(re.search(rf"│ {device}\s+│\s+(\d+)", counted).group(1))
        assert requests > 0, (device, counted[:1500])
    port = int(re.search(r"broker mqtt://127\.0\.0\.1:(\d+)", out).group(1))
    assert not port_in_use("127.0.0.1", port)
    left = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes left running: {left}"


@pytest.mark.skipif(mosquitto_path() is None, reason="asserts the mosquitto engine (the amqtt demo: test_mqtt311.py)")
def test_demo_interrupted_by_sigterm_stops_everything_it_started(tmp_path, digits_bundle):
    import shutil
    import signal
    import sys
    import time

    work = tmp_path / "demo"
    shutil.copytree(digits_bundle, work / "bundles" / "digits-raspberry-pi-4")  # reused: no training in this test
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit", "demo", "--workdir", str(work), "--watch-seconds", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    seen = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        seen.append(line)
        if "5/7" in line or time.monotonic() > deadline:
            break
    assert any("5/7" in line for line in seen), "".join(seen)
    time.sleep(2)  # in the middle of the fleet view
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    proc.wait(60)
    out = "".join(seen) + rest
    assert proc.returncode == 130, out[-3000:]
    assert "stopped: agent pi-kitchen" in out and "broker (mosquitto)" in out
    port = int(re.search(r"broker mqtt://127\.0\.0\.1:(\d+)", out).group(1))
    assert not port_in_use("127.0.0.1", port)
    left = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes left running: {left}"


def test_demo_with_a_given_broker_uses_it_and_leaves_it_running(tmp_path, digits_bundle, mosquitto):
    import shutil
    import sys

    work = tmp_path / "demo"
    shutil.copytree(digits_bundle, work / "bundles" / "digits-raspberry-pi-4")  # reused: no training in this test
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit", "demo", "--short", "--workdir", str(work), "--broker", mosquitto.url],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"broker {mosquitto.url};" in proc.stdout
    assert (
        "stopped: agent pi-kitchen (exit 0), agent pi-garage (exit 0), agent esp32-sim (exit 0), exporter"
        in proc.stdout
    )
    assert "broker (" not in proc.stdout.split("stopped:")[1].splitlines()[0]  # not ours to stop
    assert port_in_use("127.0.0.1", mosquitto.port)
    assert len(list((work / "bench").glob("*.json"))) == 1


def test_a_failed_build_shows_its_own_error_and_exit_status(tmp_path):
    """The build runs as a child process: its error (and progress) must reach the user's terminal, not the
    temporary log that holds TensorFlow's native chatter, and the demo exits with the build's own code."""
    import sys

    from edgekit_agent.contract.errors import ExitStatus

    work = tmp_path / "demo"
    (work / "data" / "digits" / "9").mkdir(parents=True)  # the demo takes this for its dataset: one class, unusable
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit", "demo", "--short", "--workdir", str(work)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == ExitStatus.BAD_INPUT, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "needs at least two class subfolders" in proc.stderr, proc.stderr[-2000:]
    assert "`edgekit build` failed with exit status 3" in proc.stderr
    assert "stopped: nothing was running" in proc.stdout


@pytest.mark.parametrize("width", [80, 120])
def test_where_everything_went_fits_the_terminal_and_never_cuts_a_path(tmp_path, width):
    import argparse
    import io

    from rich.console import Console
    from rich.text import Text

    from edgekit.cli.demo import Demo, _where_table

    d = Demo(args=argparse.Namespace(), work=tmp_path / "demo-out", short=True)
    report = "bench/bench-pi-kitchen-20261203T140121-647e65.json"
    d.outputs = [
        ("archive for raspberry-pi-4 (copy it to the device)", d.work / "bundles" / "digits-raspberry-pi-4.tar.gz"),
        ("benchmark report (JSON)", d.work / report),
        ("MQTT broker (stopped now)", "mqtt://127.0.0.1:51113"),
        ("Grafana dashboard for the exporter", Path("/opt/edgekit/dashboards/edgekit-grafana.json")),
    ]
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False, color_system=None).print(_where_table(d, 42))
    text = out.getvalue()
    assert max(Text(line).cell_len for line in text.splitlines()) <= width, text
    assert str(d.work) in text  # once, in the title: the rows are relative to it
    for where in (
        "bundles/digits-raspberry-pi-4.tar.gz",
        report,
        "mqtt://127.0.0.1:51113",
        "/opt/edgekit/dashboards/edgekit-grafana.json",
    ):
        assert where in text, text  # whole, on one line: a path is there to be copied
