"""A device pack on an emulated 64-bit Raspberry Pi OS: Debian bookworm arm64 under qemu-user (binfmt_misc).

scripts/setup-arm64.sh (CI runs it as root) caches the root file system and the aarch64 wheels; here packs are
built offline from that cache (`edgekit pack --wheels`), installed with their own install.sh in fresh copies of
the root (scripts/arm64-root.sh), and the installed agent verifies, benchmarks, serves a labelled folder to a
mosquitto on the host and takes an `edgekit deploy`, once with LiteRT and once with tflite-runtime + numpy < 2.
Emulated Python is slow (seconds per start): the emulated part stays to a few agent processes per runtime.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.package.keys import new_keypair
from edgekit.package.pack import make_pack

from brokers import Mosquitto
from ota_support import Observer, make_variant

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "arm64-root.sh"
CACHE = Path(os.environ.get("EDGEKIT_ARM64_CACHE", "/var/cache/edgekit/arm64"))
RUNTIMES = {"litert": "litert", "tflite-runtime": "tflite_runtime"}  # pack runtime -> agent's engine name
DEVICE = "pi-arm64"
BUNDLE = "/opt/edgekit/bundles/digits-raspberry-pi-4.tar.gz"
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def wheels(runtime: str) -> Path:
    return CACHE / f"wheels-linux-aarch64-cp311-{runtime}"


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (chroot, mount); CI runs as root"
    entry = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    flags = entry.read_text() if entry.exists() else ""
    if "enabled" not in flags or not any(line.startswith("flags:") and "F" in line for line in flags.splitlines()):
        return (
            "qemu-aarch64 is not registered in binfmt_misc with the F flag (scripts/setup-arm64.sh registers it as "
            "root; an unprivileged container cannot)"
        )
    if not (CACHE / "bookworm-root" / ".edgekit-ready").exists():
        return f"no cached arm64 root in {CACHE}: run scripts/setup-arm64.sh as root"
    missing = [r for r in RUNTIMES if not (wheels(r) / ".edgekit-ready").exists()]
    if missing:
        return f"no cached aarch64 wheels for {missing} in {CACHE}: run scripts/setup-arm64.sh as root"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(why_not() is not None, reason=str(why_not()))]


def inside(root: Path, *cmd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chroot", str(root), *cmd], env=ENV, capture_output=True, text=True, timeout=timeout)


def timed(label: str, t0: float) -> None:
    print(f"arm64: {label} {time.monotonic() - t0:.1f} s", file=sys.stderr)


@pytest.fixture(scope="module")
def signed(digits_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The digits bundle signed as version 1.0.0 (packed) and 2.0.0 (deployed over the air), and the key."""
    out = tmp_path_factory.mktemp("arm64-bundles")
    key = new_keypair(out / "keys")
    trusted = out / "trusted"
    trusted.mkdir()
    (trusted / key.public_path.name).write_bytes(key.public_path.read_bytes())
    v1 = make_variant(digits_bundle, out / "v1", version="1.0.0", key=key.private_path)
    v2 = make_variant(digits_bundle, out / "v2", version="2.0.0", key=key.private_path)
    return {"v1": v1, "v2": v2, "trusted": trusted}


@pytest.fixture(scope="module")
def devices(signed: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """One emulated Pi per runtime, each with its pack installed by install.sh; both install at once (qemu runs
    one core per process, and installing is most of the emulated time)."""
    base = tmp_path_factory.mktemp("arm64")
    made: dict[str, dict] = {}
    procs = {}
    try:
        for runtime in RUNTIMES:
            t0 = time.monotonic()
            pack = make_pack(
                [signed["v1"]],
                base / f"pack-{runtime}.tar.gz",
                platform="linux-aarch64",
                python="3.11",
                runtime=runtime,
                wheels=wheels(runtime),
                trusted_keys=signed["trusted"],
            )
            timed(f"pack {runtime}", t0)
            root = base / f"root-{runtime}"
            subprocess.run(["bash", str(SCRIPT), "new", str(root)], check=True, timeout=300)
            made[runtime] = {"root": root, "pack": pack, "t0": time.monotonic()}
            procs[runtime] = subprocess.Popen(
                ["bash", str(SCRIPT), "install", str(root), str(pack.path)],
                env=dict(ENV, EDGEKIT_ARM64_CACHE=str(CACHE)),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        for runtime, proc in procs.items():
            out, _ = proc.communicate(timeout=900)
            made[runtime]["install_s"] = time.monotonic() - made[runtime]["t0"]
            made[runtime]["install_log"] = out
            timed(f"install {runtime}", made[runtime]["t0"])
            assert proc.returncode == 0, out
        yield made
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        for d in made.values():
            subprocess.run(["bash", str(SCRIPT), "remove", str(d["root"])], timeout=300)


@pytest.mark.parametrize("runtime", list(RUNTIMES))
def test_install_is_offline_in_its_own_venv_and_skips_systemd_in_a_chroot(devices, runtime: str):
    d = devices[runtime]
    root, log = d["root"], d["install_log"]
    assert "systemd is not running here" in log and "not enabled" in log
    assert os.readlink(root / "usr/local/bin/edgekit-agent") == "/opt/edgekit/bin/edgekit-agent"
    assert json.loads((root / "opt/edgekit/pack.json").read_text())["runtime"] == runtime
    config = (root / "etc/edgekit/agent.toml").read_text()
    assert f'bundle = "{BUNDLE}"' in config and 'trusted_keys = "/etc/edgekit/keys"' in config
    assert list((root / "etc/edgekit/keys").glob("*.pub"))
    assert (root / "etc/systemd/system/edgekit-agent.service").is_file()
    # Nothing in the system Python: only the venv has numpy.
    assert inside(root, "python3", "-c", "import numpy").returncode != 0
    du = subprocess.run(["du", "-sm", str(root / "opt/edgekit")], capture_output=True, text=True, check=True)
    print(
        f"arm64 {runtime}: pack {d['pack'].bytes / 2**20:.1f} MiB, installed {du.stdout.split()[0]} MiB, "
        f"install {d['install_s']:.0f} s",
        file=sys.stderr,
    )


@pytest.mark.parametrize("runtime", list(RUNTIMES))
def test_verify_self_tests_against_the_x86_golden_outputs(devices, runtime: str):
    t0 = time.monotonic()
    proc = inside(
        devices[runtime]["root"], "edgekit-agent", "verify", BUNDLE, "--trusted-keys", "/etc/edgekit/keys", "--json"
    )
    timed(f"verify {runtime}", t0)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["runtime"]["engine"] == RUNTIMES[runtime]
    assert report["signed_by"], "the pack's trusted key checked the signature"
    assert report["selftest"]["passed"], report["selftest"]


@pytest.mark.parametrize("runtime", list(RUNTIMES))
def test_bench_json_on_the_emulated_device(devices, runtime: str):
    t0 = time.monotonic()
    proc = inside(devices[runtime]["root"], "edgekit-agent", "bench", BUNDLE, "--json", "--runs", "30")
    timed(f"bench {runtime}", t0)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["runtime"]["engine"] == RUNTIMES[runtime]
    print(
        f"arm64 {runtime}: bench {json.dumps({k: report[k] for k in report if 'rss' in k or 'memory' in k})}",
        file=sys.stderr,
    )


@pytest.mark.parametrize("runtime", list(RUNTIMES))
def test_run_reports_telemetry_to_the_host_and_takes_a_deploy(devices, signed, runtime: str, tmp_path: Path):
    from test_agent_mqtt import write_digits

    root = devices[runtime]["root"]
    broker = Mosquitto(tmp_path / "broker").start()
    fleet = Observer(broker.url)
    labelled = write_digits(root / "srv/camera", range(1500, 1512))
    base = f"edge/v1/{DEVICE}"
    log = open(tmp_path / "agent.log", "w")  # noqa: SIM115 - closed in finally
    t0 = time.monotonic()
    agent = subprocess.Popen(
        [
            "chroot",
            str(root),
            "edgekit-agent",
            "run",
            "--config",
            "/etc/edgekit/agent.toml",
            "--broker",
            broker.url,
            "--device-id",
            DEVICE,
            "--window",
            "1",
        ],
        env=ENV,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        fleet.wait(lambda t, d: t == f"{base}/status" and d.get("state") == "online", timeout=120)
        timed(f"run {runtime}: online", t0)

        def windows() -> list[dict]:
            return fleet.all(lambda t, d: t == f"{base}/telemetry/inference")

        deadline = time.monotonic() + 120
        while sum(w["counts"]["ok"] for w in windows()) < len(labelled) and time.monotonic() < deadline:
            time.sleep(0.5)
        got = windows()
        timed(f"run {runtime}: {len(labelled)} images served", t0)
        assert sum(w["counts"]["ok"] for w in got) == len(labelled)
        assert sum(w["accuracy"]["labeled"] for w in got) == len(labelled)
        assert sum(w["accuracy"]["correct"] for w in got) >= len(labelled) - 2  # the digits CNN is ~98 % accurate
        assert {w["runtime"]["engine"] for w in got} == {RUNTIMES[runtime]}
        print(f"arm64 {runtime}: agent RSS {max(w['system']['rss_mb'] for w in got):.0f} MiB", file=sys.stderr)

        t1 = time.monotonic()
        deploy = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgekit",
                "deploy",
                str(signed["v2"]),
                "--device",
                DEVICE,
                "--broker",
                broker.url,
                "--health-window",
                "3",
                "--timeout",
                "240",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        timed(f"deploy {runtime}", t1)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        assert [d["outcome"] for d in json.loads(deploy.stdout)["devices"]] == ["committed"]

        agent.send_signal(signal.SIGTERM)
        assert agent.wait(120) == 0
        fleet.wait(lambda t, d: t == f"{base}/status" and d.get("reason") == "shutdown", timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(30)
        log.close()
        fleet.close()
        broker.stop()
        print((tmp_path / "agent.log").read_text()[-3000:], file=sys.stderr)


def test_a_second_install_upgrades_in_place_and_keeps_the_config(devices):
    root, pack = devices["litert"]["root"], devices["litert"]["pack"]
    config = root / "etc/edgekit/agent.toml"
    config.write_text(config.read_text().replace("window_s = 60", "window_s = 30"))
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SCRIPT), "install", str(root), str(pack.path)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    timed("re-install litert", t0)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "kept your /etc/edgekit/agent.toml" in proc.stderr
    assert "window_s = 30" in config.read_text()
    assert inside(root, "edgekit-agent", "--version").stdout.startswith("edgekit-agent ")


def test_uninstall_removes_the_venv_command_and_unit_and_keeps_config_and_state(devices):
    root = devices["litert"]["root"]
    proc = inside(root, "sh", "/tmp/pack/install.sh", "--uninstall")
    assert proc.returncode == 0, proc.stderr
    assert not (root / "opt/edgekit").exists()
    assert not os.path.lexists(root / "usr/local/bin/edgekit-agent")
    assert not (root / "etc/systemd/system/edgekit-agent.service").exists()
    assert (root / "etc/edgekit/agent.toml").is_file() and (root / "var/lib/edgekit-agent").is_dir()
