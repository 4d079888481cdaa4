"""The `edgekit` command's exit codes (ExitStatus), checked on the real CLI: in a subprocess where the
process's own exit code matters, in-process (`edgekit.cli.main`) where it is the same code path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.cli import COMMANDS, main
from edgekit_agent.contract import errors
from edgekit_agent.contract.errors import EdgekitError, ExitStatus, exit_status_for


def edgekit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def test_exit_status_values_are_unique_and_stable() -> None:
    assert len({int(s) for s in ExitStatus}) == len(ExitStatus)
    assert (ExitStatus.OK, ExitStatus.USAGE, ExitStatus.BAD_INPUT, ExitStatus.BUNDLE_REJECTED) == (0, 2, 3, 5)


def test_every_error_class_maps_to_its_exit_status() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, EdgekitError)]
    assert len(classes) >= 10
    for cls in classes:
        exc = cls("x")
        assert exit_status_for(exc) is cls.exit_status
        assert isinstance(cls.exit_status, ExitStatus)
    assert exit_status_for(KeyboardInterrupt()) is ExitStatus.INTERRUPTED
    assert exit_status_for(RuntimeError("unexpected")) is ExitStatus.ERROR


def test_top_level_help_and_version_answer_0() -> None:
    r = edgekit("--help")
    assert r.returncode == ExitStatus.OK and "usage: edgekit" in r.stdout
    for name in COMMANDS:
        assert name in r.stdout, (
            f"`edgekit --help` does not list `{name}` (its module edgekit/cli/{COMMANDS[name][0]}.py is missing?)"
        )
    r = edgekit("--version")
    assert r.returncode == ExitStatus.OK and r.stdout.startswith("edgekit ")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_of_every_command_answers_0(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == ExitStatus.OK
    out = capsys.readouterr().out
    assert f"usage: edgekit {command}" in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == ExitStatus.USAGE
    assert "usage: edgekit" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["no-such-command"],
        ["build", "--dataset", "d"],  # --profile and --out are required
        ["build", "--dataset", "d", "--profile", "raspberry-pi-4", "--out", "o", "--prune", "1.5"],
        ["build", "--dataset", "d", "--profile", "raspberry-pi-4", "--out", "o", "--epochs", "zero"],
        ["inspect"],
    ],
)
def test_bad_command_lines_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == ExitStatus.USAGE
    assert "error:" in capsys.readouterr().err


def test_usage_error_in_a_real_process(tmp_path: Path) -> None:
    r = edgekit("build", "--dataset", str(tmp_path))
    assert r.returncode == ExitStatus.USAGE and "required" in r.stderr


def test_unknown_profile_exits_3_with_a_suggestion(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    r = edgekit(
        "build", "--dataset", str(tmp_path / "data"), "--profile", "raspberry-pi-44", "--out", str(tmp_path / "out")
    )
    assert r.returncode == ExitStatus.BAD_INPUT
    assert "unknown profile 'raspberry-pi-44'" in r.stderr and "Did you mean 'raspberry-pi-4'" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()  # nothing was started


def test_missing_dataset_exits_3_and_says_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dataset"
    r = edgekit("build", "--dataset", str(missing), "--profile", "raspberry-pi-4", "--out", str(tmp_path / "out"))
    assert r.returncode == ExitStatus.BAD_INPUT
    assert str(missing) in r.stderr and "edgekit datasets digits" in r.stderr
    assert "Traceback" not in r.stderr


def test_success_exits_0(digits_bundle: Path) -> None:
    r = edgekit("inspect", str(digits_bundle))
    assert r.returncode == ExitStatus.OK, r.stderr
    assert "verified" in r.stdout


def test_tampered_bundle_exits_5(digits_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(digits_bundle, tmp_path / digits_bundle.name))
    model = copy / "model.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 3] ^= 0x40
    model.write_bytes(bytes(data))
    r = edgekit("inspect", str(copy))
    assert r.returncode == ExitStatus.BUNDLE_REJECTED
    assert "model.tflite: mismatch" in r.stderr
