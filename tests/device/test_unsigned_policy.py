"""A serving agent runs only signed bundles from trusted keys, unless --allow-unsigned (issue 6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edgekit_agent.contract.errors import ExitStatus

AGENT = [sys.executable, "-m", "edgekit_agent.cli", "run"]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # Port 1 on loopback: nothing listens, so the bundle check is all that can fail before the broker does.
    cmd = [
        *AGENT,
        *args,
        "--broker",
        "mqtt://127.0.0.1:1",
        "--device-id",
        "policy",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_unsigned_bundle_is_refused_without_allow_unsigned(digits_bundle: Path, tmp_path: Path):
    done = _run([str(digits_bundle)], tmp_path)
    assert done.returncode == ExitStatus.BUNDLE_REJECTED, done.stderr
    assert "not signed" in done.stderr and "--allow-unsigned" in done.stderr


def test_signed_bundle_without_trusted_keys_is_refused(digits_bundle: Path, tmp_path: Path):
    import shutil

    from edgekit.package.keys import new_keypair, sign_bundle

    bundle = tmp_path / "signed"
    shutil.copytree(digits_bundle, bundle)
    pair = new_keypair(tmp_path / "keys", "k")
    sign_bundle(bundle, pair.private_path)
    done = _run([str(bundle)], tmp_path)
    assert done.returncode == ExitStatus.BUNDLE_REJECTED, done.stderr
    assert "--trusted-keys" in done.stderr
