"""`edgekit pack`: its error paths on the real CLI (exit code and a message that says what to do), and the
contents of real packs built offline from the aarch64 wheels scripts/setup-arm64.sh caches (skipped without
them). Installing a pack on an emulated Pi is tests/e2e/test_arm64_pack.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from edgekit.package.keys import new_keypair
from edgekit.package.pack import make_pack
from edgekit_agent.contract.errors import ExitStatus

CACHE = Path(os.environ.get("EDGEKIT_ARM64_CACHE", "/var/cache/edgekit/arm64"))
LITERT = CACHE / "wheels-linux-aarch64-cp311-litert"
TFLITE_RUNTIME = CACHE / "wheels-linux-aarch64-cp311-tflite-runtime"
needs_wheels = pytest.mark.skipif(
    not (LITERT / ".edgekit-ready").exists() or not (TFLITE_RUNTIME / ".edgekit-ready").exists(),
    reason=f"no cached aarch64 wheels in {CACHE}: run scripts/setup-arm64.sh as root (CI does)",
)


def pack(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "edgekit", "pack", *args], capture_output=True, text=True, env=env, timeout=300
    )


def archive_of(bundle: Path) -> Path:
    return bundle.parent / f"{bundle.name}.tar.gz"


@pytest.mark.parametrize(
    ("platform", "python", "said"),
    [
        ("linux-riscv64", "3.11", "unknown platform 'linux-riscv64': choose one of linux-aarch64, linux-x86_64"),
        ("linux-armv7l", "3.11", "use --platform linux-aarch64"),
        ("linux-aarch64", "3.12", "choose 3.11 (bookworm), 3.13 (trixie)"),
    ],
)
def test_a_target_without_wheels_is_a_usage_error_that_names_the_choices(
    platform: str, python: str, said: str, tmp_path: Path
) -> None:
    proc = pack("b.tar.gz", "--platform", platform, "--python", python, "--out", str(tmp_path / "p.tar.gz"))
    assert proc.returncode == ExitStatus.USAGE, proc.stderr
    assert said in " ".join(proc.stderr.split())
    assert not (tmp_path / "p.tar.gz").exists()


def test_a_missing_bundle_exits_3_and_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope-raspberry-pi-4.tar.gz"
    proc = pack(str(missing), "--platform", "linux-aarch64", "--python", "3.11", "--out", str(tmp_path / "p.tar.gz"))
    assert proc.returncode == ExitStatus.BAD_INPUT, proc.stderr
    assert "nope-raspberry-pi-4.tar.gz: no such bundle" in " ".join(proc.stderr.split())


def test_no_out_and_fetch_with_bundles_are_usage_errors(tmp_path: Path) -> None:
    proc = pack("b.tar.gz", "--platform", "linux-aarch64", "--python", "3.11")
    assert proc.returncode == ExitStatus.USAGE and "--out" in proc.stderr
    proc = pack("b.tar.gz", "--platform", "linux-aarch64", "--python", "3.11", "--fetch-wheels", str(tmp_path))
    assert proc.returncode == ExitStatus.USAGE and "give no BUNDLE" in " ".join(proc.stderr.split())


def test_wheels_missing_for_the_platform_exit_3_with_the_command_that_fetches_them(
    digits_bundle: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "wheels"
    empty.mkdir()
    out = tmp_path / "p.tar.gz"
    proc = pack(
        str(archive_of(digits_bundle)), "--platform", "linux-aarch64", "--python", "3.13", "--wheels", str(empty),
        "--out", str(out),
    )  # fmt: skip
    said = " ".join(proc.stderr.split())
    assert proc.returncode == ExitStatus.BAD_INPUT, said
    assert f"no complete set of wheels for linux-aarch64, CPython 3.13 in {empty}" in said
    assert f"edgekit pack --fetch-wheels {empty} --platform linux-aarch64 --python 3.13" in said
    assert not out.exists()
    proc = pack(
        str(archive_of(digits_bundle)), "--platform", "linux-aarch64", "--python", "3.11", "--wheels",
        str(tmp_path / "absent"), "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == ExitStatus.BAD_INPUT and "no such wheel directory" in proc.stderr


def test_an_unsigned_bundle_with_trusted_keys_is_refused_as_the_device_would(
    digits_bundle: Path, tmp_path: Path
) -> None:
    key = new_keypair(tmp_path / "keys")
    proc = pack(
        str(digits_bundle), "--platform", "linux-aarch64", "--python", "3.11", "--trusted-keys",
        str(key.public_path.parent), "--out", str(tmp_path / "p.tar.gz"),
    )  # fmt: skip
    assert proc.returncode == ExitStatus.BUNDLE_REJECTED, proc.stderr
    assert "sign" in proc.stderr.lower()


def members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return {m.name: m for m in tar.getmembers()}


def read(path: Path, name: str) -> str:
    with tarfile.open(path) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read().decode()


@needs_wheels
def test_auto_picks_litert_where_it_has_wheels_and_falls_back_to_tflite_runtime(
    digits_bundle: Path, tmp_path: Path
) -> None:
    litert = make_pack(
        [archive_of(digits_bundle)], tmp_path / "a.tar.gz", platform="linux-aarch64", python="3.11", wheels=LITERT
    )
    assert (litert.runtime, litert.runtime_version) == ("litert", "2.3.0")
    # A directory with only tflite-runtime's wheels stands for a target LiteRT has none for.
    legacy = make_pack(
        [digits_bundle], tmp_path / "t.tar.gz", platform="linux-aarch64", python="3.11", wheels=TFLITE_RUNTIME
    )
    assert (legacy.runtime, legacy.runtime_version) == ("tflite-runtime", "2.14.0")
    names = [w.name for w in legacy.wheels]
    assert any(n.startswith("wheels/numpy-1.") for n in names), names
    assert not any("ai_edge_litert" in n or "tensorflow" in n for n in names)
    manifest = json.loads(read(legacy.path, "pack.json"))
    assert manifest["runtime"] == "tflite-runtime" and manifest["extra"] == "device-legacy"
    assert manifest["platform"] == "linux-aarch64" and manifest["python"] == "3.11"
    assert [b["name"] for b in manifest["bundles"]] == ["bundles/digits-raspberry-pi-4.tar.gz"]


@needs_wheels
def test_a_pack_holds_the_agent_its_wheels_bundles_config_unit_and_install_sh_at_its_root(
    digits_bundle: Path, tmp_path: Path
) -> None:
    res = make_pack(
        [archive_of(digits_bundle)],
        tmp_path / "p.tar.gz",
        platform="linux-aarch64",
        python="3.11",
        runtime="litert",
        wheels=LITERT,
        broker="mqtt://broker.lan:1883",
    )
    got = members(res.path)
    assert got["install.sh"].mode & 0o111
    for name in ("pack.json", "agent.toml", "edgekit-agent.service", "bundles/digits-raspberry-pi-4.tar.gz"):
        assert name in got, sorted(got)
    wheels = [n for n in got if n.startswith("wheels/")]
    assert any(n.startswith("wheels/edgekit-0.1.0-py3-none-any") for n in wheels)
    assert any(n.startswith("wheels/pip-") for n in wheels)  # install.sh needs no python3-venv
    assert all(n.endswith(("none-any.whl", "aarch64.whl")) for n in wheels), wheels
    assert not any("tensorflow" in n or "x86_64" in n for n in wheels)
    script = read(res.path, "install.sh")
    assert "@@" not in script.replace("@@DEVICE_ID@@", "")
    assert 'found" = "linux-aarch64 3.11"' in script and "edgekit-0.1.0-py3-none-any.whl[device]" in script
    config = read(res.path, "agent.toml")
    assert 'bundle = "/opt/edgekit/bundles/digits-raspberry-pi-4.tar.gz"' in config
    assert 'url = "mqtt://broker.lan:1883"' in config and "allow_unsigned = true" in config
    assert sum(w.bytes for w in res.wheels) < res.bytes * 1.1
