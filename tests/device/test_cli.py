"""``edgekit-agent`` subcommands and their exit codes (in-process, plus one real console-script run)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit_agent.cli.app import COMMANDS, format_table, main
from edgekit_agent.contract.errors import ExitStatus

from tamper import copy_bundle, flip_byte


@pytest.fixture(scope="module")
def images(digits_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Golden inputs written back as image files: the manifest's preprocessing inverted (grey or RGB)."""
    out = tmp_path_factory.mktemp("images")
    with np.load(digits_bundle / "golden.npz") as g:
        xs, ys = g["inputs"], g["labels"]
    doc = json.loads((digits_bundle / "manifest.json").read_text())
    spec, pre = doc["inputs"][0], doc["preprocess"]
    paths = []
    for i in range(4):
        real = (xs[i].astype(np.int64) - spec["zero_point"]) * spec["scale"]
        pixels = (real * np.array(pre["std"]) + np.array(pre["mean"])) / pre["scale"]
        pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
        p = out / f"{i}-{ys[i]}.png"
        Image.fromarray(pixels[:, :, 0] if pre["color_mode"] == "L" else pixels, pre["color_mode"]).save(p)
        paths.append(p)
    return paths


def test_verify_ok_on_dir_and_archive(digits_bundle: Path, capsys):
    assert main(["verify", str(digits_bundle)]) == ExitStatus.OK
    out = capsys.readouterr().out
    assert "model.tflite" in out and "self-test passed" in out and "verified: ok" in out
    archive = digits_bundle.parent / f"{digits_bundle.name}.tar.gz"
    assert main(["verify", str(archive), "--json"]) == ExitStatus.OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["selftest"]["passed"] and {f["status"] for f in doc["files"]} == {"ok"}


def test_verify_refuses_a_tampered_bundle_with_exit_5_and_one_line(digits_bundle: Path, tmp_path: Path, capsys):
    d = copy_bundle(digits_bundle, tmp_path)
    flip_byte(d / "model.tflite")
    assert main(["verify", str(d)]) == ExitStatus.BUNDLE_REJECTED
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "model.tflite" in err[0]
    rows = {line.split()[0]: line for line in captured.out.splitlines()[2:]}  # the per-file report
    assert "mismatch" in rows["model.tflite"] and rows["golden.npz"].split()[3] == "ok"
    assert main(["verify", str(d), "--json"]) == ExitStatus.BUNDLE_REJECTED
    doc = json.loads(capsys.readouterr().out)
    assert not doc["ok"] and "model.tflite" in doc["error"]
    statuses = {f["name"]: f["status"] for f in doc["files"]}
    assert statuses.pop("model.tflite") == "mismatch" and set(statuses.values()) == {"ok"}


def test_missing_bundle_and_usage_errors(tmp_path: Path, capsys):
    assert main(["bench", str(tmp_path / "nope")]) == ExitStatus.BUNDLE_REJECTED
    assert main([]) == ExitStatus.USAGE
    for bad in (["bench"], ["bench", str(tmp_path), "--threads", "0"], ["bench", str(tmp_path), "--runs", "x"]):
        with pytest.raises(SystemExit) as info:
            main(bad)
        assert info.value.code == ExitStatus.USAGE


def test_bench_json(digits_bundle: Path, capsys):
    code = main(
        ["bench", str(digits_bundle), "--runs", "20", "--warmup", "2", "--threads", "1", "--no-xnnpack", "--json"]
    )
    assert code == ExitStatus.OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["steady"]["count"] == 20 and doc["warmup"]["runs"] == 2
    assert doc["runtime"] == {**doc["runtime"], "engine": "litert", "delegate": "none", "num_threads": 1}
    assert doc["selftest"]["passed"]


def test_bench_table_with_skipped_selftest(digits_bundle: Path, capsys):
    assert main(["bench", str(digits_bundle), "--runs", "5", "--skip-selftest"]) == ExitStatus.OK
    captured = capsys.readouterr()
    assert "p50 / p90 / p99" in captured.out and "self-test: skipped" in captured.out
    assert "--skip-selftest" in captured.err


def test_infer_predicts_golden_images(digits_bundle: Path, images: list[Path], capsys):
    assert main(["infer", str(digits_bundle), *map(str, images), "--json"]) == ExitStatus.OK
    results = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in results] == [str(p) for p in images]
    with np.load(digits_bundle / "golden.npz") as g:
        expected = g["outputs"][: len(images)].argmax(axis=1)
    assert [r["index"] for r in results] == list(expected)  # same top-1 as the workstation
    assert all(0 < r["confidence"] <= 1 and r["invoke_ms"] > 0 for r in results)


def test_infer_reports_a_bad_image_and_exits_3(digits_bundle: Path, images: list[Path], tmp_path: Path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["infer", str(digits_bundle), str(images[0]), str(bad)]) == ExitStatus.BAD_INPUT
    captured = capsys.readouterr()
    assert str(images[0]) in captured.out and "bad.png: not an image" in captured.err


def test_every_command_is_a_class_in_the_table():
    assert COMMANDS["run"][0] == "edgekit_agent.cli.run:Run"
    assert all(target.count(":") == 1 for target, _ in COMMANDS.values())


@pytest.mark.parametrize(
    ("command", "default"),
    [
        ("verify", "refused only with --trusted-keys or --require-signature"),
        ("run", "run serves only bundles signed by a key in --trusted-keys"),
    ],
)
def test_allow_unsigned_help_states_each_commands_default(command: str, default: str, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps help text, also at hyphens, to the terminal width
    with pytest.raises(SystemExit):
        main([command, "--help"])
    helptext = capsys.readouterr().out
    assert "--allow-unsigned" in helptext and default in helptext


def test_format_table_aligns_numbers_right():
    text = format_table(("name", "bytes"), [("a", 5), ("longer", 1234)])
    lines = text.splitlines()
    assert lines[0] == "name    bytes" and lines[2] == "a           5" and lines[3] == "longer   1234"


def test_console_script_prints_no_traceback(tmp_path: Path):
    script = Path(sys.executable).with_name("edgekit-agent")
    proc = subprocess.run([str(script), "verify", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == ExitStatus.BUNDLE_REJECTED
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ") and "manifest.json" in proc.stderr


def test_errors_on_an_archive_name_the_archive_not_its_temporary_extraction(
    digits_bundle: Path, tmp_path: Path, capsys
):
    import tarfile

    archive = digits_bundle.parent / f"{digits_bundle.name}.tar.gz"
    assert main(["verify", str(archive), "--require-signature"]) == ExitStatus.BUNDLE_REJECTED
    err = capsys.readouterr().err
    assert err.startswith(f"error: {archive} is not signed"), err
    tampered = copy_bundle(digits_bundle, tmp_path)
    flip_byte(tampered / "model.tflite")
    bad = tmp_path / "tampered.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(tampered, arcname=digits_bundle.name)
    assert main(["verify", str(bad), "--json"]) == ExitStatus.BUNDLE_REJECTED
    error = json.loads(capsys.readouterr().out)["error"]
    assert error.startswith(f"{bad}/model.tflite: sha256"), error
    assert main(["bench", str(bad)]) == ExitStatus.BUNDLE_REJECTED
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}/model.tflite: sha256") and "edgekit-agent-" not in err, err


XNNPACK_NOTICE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def test_litert_delegate_notice_is_dropped_and_real_errors_still_show(digits_bundle: Path, tmp_path: Path):
    script = Path(sys.executable).with_name("edgekit-agent")
    ok = subprocess.run([str(script), "verify", str(digits_bundle)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == ExitStatus.OK, ok.stderr
    assert "delegate xnnpack" in ok.stdout  # the interpreter that prints the notice was built
    assert XNNPACK_NOTICE not in ok.stderr and ok.stderr == "", ok.stderr
    d = copy_bundle(digits_bundle, tmp_path)
    flip_byte(d / "model.tflite")
    bad = subprocess.run([str(script), "bench", str(d)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == ExitStatus.BUNDLE_REJECTED and bad.stderr.startswith("error: "), bad.stderr
    # What native code writes to file descriptor 2 meanwhile is passed on, all but the notice.
    native = (
        "import os; from edgekit_agent.cli.app import native_notices_dropped\n"
        "with native_notices_dropped():\n"
        f"    os.write(2, b'{XNNPACK_NOTICE}\\nE native: something real broke\\n')\n"
    )
    done = subprocess.run([sys.executable, "-c", native], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "E native: something real broke\n", done.stderr


def test_run_does_not_print_the_delegate_notice_either(digits_bundle: Path, tmp_path: Path):
    """`edgekit-agent run` builds its interpreter before serving: the notice stays out of its output too."""
    script = Path(sys.executable).with_name("edgekit-agent")
    (tmp_path / "inbox").mkdir()
    cmd = [str(script), "run", str(digits_bundle), "--allow-unsigned", "--device-id", "quiet-1"]
    cmd += ["--watch", str(tmp_path / "inbox"), "--data-dir", str(tmp_path / "data")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()  # the "serving ..." line comes after the interpreter was built
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[1]
    assert first.startswith("serving digits"), first + rest
    assert XNNPACK_NOTICE not in first + rest
    assert proc.returncode == 0, rest


def test_signature_options(digits_bundle: Path, tmp_path: Path, capsys):
    pytest.importorskip("cryptography")
    (tmp_path / "keys").mkdir()
    assert main(["verify", str(digits_bundle), "--trusted-keys", str(tmp_path / "keys")]) == ExitStatus.BUNDLE_REJECTED
    assert "not signed" in capsys.readouterr().err
    args = [
        "verify",
        str(digits_bundle),
        "--trusted-keys",
        str(tmp_path / "keys"),
        "--allow-unsigned",
        "--skip-selftest",
    ]
    assert main(args) == ExitStatus.OK
    assert main(["verify", str(digits_bundle), "--require-signature"]) == ExitStatus.BUNDLE_REJECTED
