"""`edgekit profiles` and `edgekit check`: exit codes, JSON on stdout, the verdict table."""

from __future__ import annotations

import json

import pytest

from edgekit.cli import main
from edgekit_agent.contract.errors import ExitStatus

import fit_models

NEW_PROFILES = {
    "arduino-nano-33-ble-sense",
    "esp32-s3",
    "stm32h743",
    "rp2040",
    "coral-usb-accelerator",
    "coral-dev-board",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("check-cli")
    (d / "tiny.tflite").write_bytes(fit_models.tiny_cnn())
    (d / "wide.tflite").write_bytes(fit_models.wide_cnn())
    return d


def test_profiles_json_lists_budgets(capsys):
    assert main(["profiles", "--json"]) == ExitStatus.OK
    doc = json.loads(capsys.readouterr().out)
    by_name = {p["name"]: p for p in doc}
    assert NEW_PROFILES <= set(by_name)
    nano = by_name["arduino-nano-33-ble-sense"]
    assert nano["target"] == "mcu" and 0 < nano["ram_bytes"] <= 256 * 1024 and nano["ops"]
    assert by_name["coral-usb-accelerator"]["runtime"]["delegate"] == "edgetpu"


def test_profiles_table(capsys):
    assert main(["profiles"]) == ExitStatus.OK
    out = capsys.readouterr().out
    assert "stm32h743" in out and "rp2040" in out


def test_check_exits_does_not_fit_with_numbers_in_json(models, capsys):
    code = main(
        [
            "check",
            str(models / "wide.tflite"),
            "--profile",
            "arduino-nano-33-ble-sense",
            "--profile",
            "stm32h743",
            "--json",
        ]
    )
    assert code == ExitStatus.DOES_NOT_FIT
    reports = json.loads(capsys.readouterr().out)
    verdicts = {r["profile"]: r["fits"] for r in reports}
    assert verdicts == {"arduino-nano-33-ble-sense": False, "stm32h743": True}
    arena = next(c for c in reports[0]["checks"] if c["check"] == "arena")
    assert arena["verdict"] == "fail" and arena["headroom"] < 0 and arena["measured"] > arena["budget"]


def test_check_all_profiles_ok(models, capsys):
    assert main(["check", str(models / "tiny.tflite"), "--all-profiles"]) == ExitStatus.OK
    out = capsys.readouterr().out
    assert "DOES NOT FIT" not in out and out.count("fits") >= 9
    assert "edgetpu_compiler" in out  # says whether the Edge TPU model was compiled


def test_check_missing_file_and_unknown_profile(models, capsys):
    assert main(["check", str(models / "absent.tflite"), "--profile", "rp2040"]) == ExitStatus.BAD_INPUT
    assert main(["check", str(models / "tiny.tflite"), "--profile", "no-such-board"]) == ExitStatus.BAD_INPUT
    with pytest.raises(SystemExit) as exc:  # neither --profile nor --all-profiles
        main(["check", str(models / "tiny.tflite")])
    assert exc.value.code == 2


def test_check_does_not_import_tensorflow(models):
    """`edgekit check` reads the flatbuffer with tflite-micro's schema: no multi-second TensorFlow import."""
    import subprocess
    import sys

    code = (
        "import sys; from edgekit.cli import main; "
        f"rc = main(['check', {str(models / 'tiny.tflite')!r}, '--all-profiles', '--json']); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(json.loads(proc.stdout)) >= 9
