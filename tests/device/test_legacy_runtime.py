"""The device-only legacy environment (.venv-legacy: tflite-runtime 2.14, numpy<2, no TensorFlow), the fallback
runtime of a 64-bit device: verify and bench the real digits bundle there. CI always creates it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEGACY = ROOT / ".venv-legacy" / "bin" / "python"

pytestmark = pytest.mark.skipif(
    not LEGACY.exists(), reason=f"{LEGACY} does not exist: run scripts/setup-legacy.sh (CI and scripts/test.sh do)"
)


def legacy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LEGACY), *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_legacy_environment_has_numpy1_tflite_runtime_and_no_tensorflow():
    proc = legacy(
        "-c",
        "import json, importlib.util, numpy, tflite_runtime;"
        "print(json.dumps([numpy.__version__, tflite_runtime.__version__, "
        "importlib.util.find_spec('tensorflow') is None]))",
    )
    assert proc.returncode == 0, proc.stderr
    numpy_version, tflite_version, no_tf = json.loads(proc.stdout)
    assert numpy_version.split(".")[0] == "1" and tflite_version.startswith("2.14") and no_tf


def test_verify_in_legacy_environment(digits_bundle: Path):
    archive = digits_bundle.parent / f"{digits_bundle.name}.tar.gz"
    proc = legacy("-m", "edgekit_agent.cli", "verify", str(archive), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["runtime"]["engine"] == "tflite_runtime" and doc["selftest"]["passed"]


def test_bench_in_legacy_environment(digits_bundle: Path):
    proc = legacy("-m", "edgekit_agent.cli", "bench", str(digits_bundle), "--json", "--runs", "30", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["runtime"]["engine"] == "tflite_runtime" and doc["runtime"]["version"].startswith("2.14")
    # tflite-runtime 2.14 takes the XNNPACK request but runs int8 on builtin kernels: the report says so
    assert doc["runtime"]["requested_delegate"] == "xnnpack" and doc["runtime"]["delegate"] == "none"
    assert doc["steady"]["count"] == 30 and doc["selftest"]["passed"]


def test_a_truncated_model_is_refused_before_tflite_runtime_can_crash(digits_bundle: Path, tmp_path: Path):
    """tflite-runtime 2.14 does not verify flatbuffers (a truncated model segfaulted it here); the agent's
    structural check refuses the file first, with exit status 5 and one error line."""
    from tamper import copy_bundle, rehash

    d = copy_bundle(digits_bundle, tmp_path)
    data = (d / "model.tflite").read_bytes()
    (d / "model.tflite").write_bytes(data[: len(data) - 100])
    rehash(d)  # consistent hashes: only the structure check stands between the file and the interpreter
    proc = legacy("-m", "edgekit_agent.cli", "verify", str(d))
    assert proc.returncode == 5, (proc.returncode, proc.stderr)
    assert "not a valid TFLite model" in proc.stderr and "Traceback" not in proc.stderr
