"""The systemd unit in scripts/ is valid for systemd and runs a command the agent actually has."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "scripts" / "edgekit-agent.service"


def test_unit_uses_real_agent_options():
    text = UNIT.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split("=", 1)[1].split()[1:] == ["run", "--config", "/etc/edgekit/agent.toml"]
    helptext = subprocess.run(
        [sys.executable, "-c", "import sys; from edgekit_agent.cli import main; sys.exit(main())", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "--config" in helptext


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    agent = Path(sys.executable).with_name("edgekit-agent")
    unit = tmp_path / "edgekit-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/edgekit/bin/edgekit-agent", str(agent)))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if "edgekit-agent.service" in line]
    assert problems == [], problems
