"""Device packs: one archive that installs the agent, its runtime and bundles on a device with no network.

A pack (``edgekit pack``) holds, at the archive's root:

- ``install.sh``: run as root on the device. It makes a venv in ``/opt/edgekit`` (nothing goes into the
  system Python), puts ``edgekit-agent`` on PATH, installs the bundles, keys, config and the systemd unit, and
  enables the service where systemd runs. Run again from a newer pack, it upgrades in place;
  ``install.sh --uninstall`` removes it.
- ``pack.json``: what is inside: platform, Python, runtime and its version, every wheel and bundle.
- ``wheels/``: the agent (a wheel built from this checkout) and every dependency for one platform and Python,
  plus pip's own wheel (Debian's ``python3`` has no pip without ``python3-venv``; the pack needs neither).
- ``bundles/`` (the first one is the one ``agent.toml`` serves), ``keys/`` (trusted ``*.pub``, optional),
  ``agent.toml``, ``edgekit-agent.service`` and the device docs.

Wheels come from the package index through ``pip download`` with the target's tags, or, on a workstation with
no network, from a directory that :func:`fetch_wheels` filled elsewhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import edgekit
from edgekit_agent.bundle.load import ARCHIVE_SUFFIXES, load_bundle
from edgekit_agent.contract.errors import PackError, UsageError

PACK_FORMAT = "edgekit-pack/1"
PREFIX = "/opt/edgekit"
#: platform (as ``sysconfig.get_platform()`` says on the device) -> machine.
PLATFORMS = {"linux-aarch64": "aarch64", "linux-x86_64": "x86_64"}
#: Python -> (the Debian / Raspberry Pi OS release that ships it, its glibc minor version). The glibc bounds the
#: manylinux tags a wheel may carry (tflite-runtime's aarch64 wheel needs 2.34; bookworm has 2.36).
PYTHONS = {"3.11": ("bookworm", 36), "3.13": ("trixie", 41)}


@dataclass(frozen=True, slots=True)
class RuntimeChoice:
    extra: str  # the pyproject extra that pins it
    project: str  # its name on the package index
    wheel_prefix: str  # its wheels' file-name prefix


#: In the order ``runtime="auto"`` tries them: LiteRT where it has a wheel, else tflite-runtime with numpy < 2.
RUNTIMES = {
    "litert": RuntimeChoice("device", "ai-edge-litert", "ai_edge_litert-"),
    "tflite-runtime": RuntimeChoice("device-legacy", "tflite-runtime", "tflite_runtime-"),
}
_NOT_FOUND = re.compile(r"No matching distribution found for ([^\s;]+)")


@dataclass(frozen=True, slots=True)
class PackedFile:
    name: str  # path inside the pack
    bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class WheelSet:
    """The wheels :func:`fetch_wheels` put in ``directory`` for one target and runtime."""

    directory: Path
    platform: str
    python: str
    runtime: str
    runtime_version: str
    wheels: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "directory": str(self.directory)}


@dataclass(frozen=True, slots=True)
class PackResult:
    path: Path
    bytes: int
    platform: str
    python: str
    runtime: str  # litert or tflite-runtime
    runtime_version: str
    agent_version: str
    bundles: tuple[PackedFile, ...]
    wheels: tuple[PackedFile, ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _check_target(platform: str, python: str, runtime: str) -> None:
    if platform == "linux-armv7l":
        raise UsageError(
            "linux-armv7l (32-bit Raspberry Pi OS) has no wheels to pack: LiteRT has none, and tflite-runtime's stop "
            "at 2.13 for CPython 3.9/3.10 (none for 3.11 or 3.13). Install 64-bit Raspberry Pi OS (any Pi from "
            "the 3 on) and use --platform linux-aarch64; see the platform table in README.md."
        )
    if platform not in PLATFORMS:
        raise UsageError(f"unknown platform '{platform}': choose one of {', '.join(PLATFORMS)}.")
    if python not in PYTHONS:
        known = ", ".join(f"{v} ({d})" for v, (d, _) in PYTHONS.items())
        raise UsageError(f"unsupported Python '{python}': choose {known}, the Python of the device's OS release.")
    if runtime != "auto" and runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime '{runtime}': choose auto, {', '.join(RUNTIMES)}.")


def _pip_target_args(platform: str, python: str) -> list[str]:
    machine = PLATFORMS[platform]
    glibc = PYTHONS[python][1]
    # pip matches these tags exactly and does not widen them: list every manylinux tag the device's glibc accepts.
    tags = [f"manylinux2014_{machine}"] + [f"manylinux_2_{minor}_{machine}" for minor in range(17, glibc + 1)]
    abi = "cp" + python.replace(".", "")
    args = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    for tag in tags:
        args += ["--platform", tag]
    return args + ["--abi", abi, "--abi", "abi3", "--abi", "none"]


def _source_checkout() -> Path:
    root = Path(edgekit.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / "device" / "edgekit_agent").is_dir():
        raise PackError(
            f"edgekit is installed from a wheel ({Path(edgekit.__file__).parent}), but `edgekit pack` builds the "
            "agent from a source checkout: run it from a clone of the repository (pip install -e '.[host]')."
        )
    return root


def build_agent_wheel(dest: Path) -> Path:
    """The agent (the ``edgekit`` distribution) as a wheel built from this checkout, with no dependencies."""
    root = _source_checkout()
    with tempfile.TemporaryDirectory(prefix="edgekit-agent-src-") as tmp:
        # A copy: setuptools writes build/ and *.egg-info into the tree it builds.
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, src / name)
        junk = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in ("host", "device", "firmware_profiles"):
            shutil.copytree(root / name, src / name, ignore=junk)
        dest.mkdir(parents=True, exist_ok=True)
        # No build isolation: it would fetch setuptools from the index, and packs can be made offline.
        proc = _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dest), str(src))
    if proc.returncode != 0:
        raise PackError(
            f"building the agent wheel from {root} failed (it needs setuptools and wheel in {sys.prefix}: "
            f"pip install setuptools wheel):\n{_tail(proc.stderr)}"
        )
    wheels = sorted(dest.glob("edgekit-*.whl"))
    if not wheels:
        raise PackError(f"pip wheel wrote no edgekit wheel into {dest}:\n{_tail(proc.stdout + proc.stderr)}")
    return wheels[-1]


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _download(
    agent_wheel: Path, runtime: str, platform: str, python: str, dest: Path, wheels: Path | None
) -> subprocess.CompletedProcess[str]:
    source = ["--no-index", "--find-links", str(wheels)] if wheels is not None else []
    return _pip(
        "download",
        *source,
        *_pip_target_args(platform, python),
        "--dest",
        str(dest),
        f"{agent_wheel}[{RUNTIMES[runtime].extra}]",
        "pip",
    )


def _resolve(
    agent_wheel: Path, runtime: str, platform: str, python: str, dest: Path, wheels: Path | None
) -> tuple[str, str]:
    """Download (or copy from ``wheels``) everything into ``dest``; return (runtime, its version)."""
    tried: list[str] = []
    for choice in RUNTIMES if runtime == "auto" else (runtime,):
        proc = _download(agent_wheel, choice, platform, python, dest, wheels)
        if proc.returncode == 0:
            prefix = RUNTIMES[choice].wheel_prefix
            found = sorted(p.name for p in dest.glob(f"{prefix}*.whl"))
            return choice, found[-1].split("-")[1] if found else "?"
        missing = _NOT_FOUND.findall(proc.stderr)
        tried.append(f"{choice}: no wheel for {missing[-1]}" if missing else f"{choice}: {_tail(proc.stderr, 4)}")
        if runtime != "auto" or not missing or re.split(r"[\[<>=!~ ]", missing[-1])[0] != RUNTIMES[choice].project:
            break
        for stale in dest.glob("*.whl"):  # the next choice starts from an empty directory
            stale.unlink()
    offline = any(m in proc.stderr for m in ("NewConnectionError", "ConnectTimeout", "Temporary failure in name"))
    where = f"in {wheels}" if wheels is not None else "on the package index"
    where += " (which could not be reached)" if offline and wheels is None else ""
    fix = (
        f"fill it on a machine with network: edgekit pack --fetch-wheels {wheels} --platform {platform} "
        f"--python {python} --runtime {runtime}"
        if wheels is not None
        else "check the network, or give --wheels DIR filled with `edgekit pack --fetch-wheels DIR` elsewhere"
    )
    raise PackError(
        f"no complete set of wheels for {platform}, CPython {python} {where}: {'; '.join(tried)}. To fix: {fix}."
    )


def fetch_wheels(dest: str | Path, *, platform: str, python: str, runtime: str = "auto") -> WheelSet:
    """Download every wheel a pack for this target needs (but the agent's own, built at pack time) into ``dest``,
    for a later ``make_pack(..., wheels=dest)`` on a machine with no network."""
    _check_target(platform, python, runtime)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgekit-fetch-") as tmp:
        agent = build_agent_wheel(Path(tmp))
        chosen, version = _resolve(agent, runtime, platform, python, dest, None)
    (dest / agent.name).unlink(missing_ok=True)
    names = tuple(sorted(p.name for p in dest.glob("*.whl")))
    return WheelSet(dest, platform, python, chosen, version, names)


def _packed(path: Path, name: str) -> PackedFile:
    data = path.read_bytes()
    return PackedFile(name, len(data), hashlib.sha256(data).hexdigest())


def _add_bundles(bundles: Sequence[Path], trusted_keys: Path | None, dest: Path, scratch: Path) -> list[Path]:
    """Copy each bundle's archive to ``dest``, refusing what the device would refuse (hashes, signature)."""
    out: list[Path] = []
    for path in bundles:
        if not path.exists():
            raise PackError(
                f"{path}: no such bundle; give a bundle directory or its .tar.gz archive (`edgekit build` writes both)."
            )
        load_bundle(path, trusted_keys=trusted_keys, workdir=scratch)
        stem = next((path.name[: -len(s)] for s in ARCHIVE_SUFFIXES if path.name.endswith(s)), path.name)
        target = dest / f"{stem}.tar.gz"
        if target.exists():
            raise UsageError(f"two bundles are named {stem}: pack each name once.")
        if path.is_dir():
            from edgekit.package.writer import write_archive

            write_archive(path, target)
        else:
            shutil.copyfile(path, target)
        out.append(target)
    return out


def _agent_config(first_bundle: str, broker: str | None, signed: bool) -> str:
    lines = [
        "# Written by `edgekit pack`. install.sh copies it to /etc/edgekit/agent.toml on the first install only;",
        "# later packs leave your edits alone. Every key: docs/agent.md; the broker password goes in",
        "# /etc/edgekit/agent.env as EDGEKIT_MQTT_PASSWORD=... (chmod 600).",
        f'bundle = "{PREFIX}/bundles/{first_bundle}"',
        'device_id = "@@DEVICE_ID@@"',
        'data_dir = "/var/lib/edgekit-agent"',
        "window_s = 60",
        'trusted_keys = "/etc/edgekit/keys"' if signed else "allow_unsigned = true  # no --trusted-keys at pack time",
    ]
    if broker:
        lines += ["", "[broker]", f'url = "{broker}"', 'username = "@@DEVICE_ID@@"']
    lines += ["", "[watch]", 'dir = "/srv/camera"  # new images are served; /srv/camera/LABEL/x.png counts as labelled']
    return "\n".join(lines) + "\n"


def _render_install(platform: str, python: str, runtime: str, extra: str, agent_wheel: str) -> str:
    text = resources.files("edgekit.package").joinpath("install.sh").read_text()
    for key, value in {
        "PLATFORM": platform,
        "PYTHON": python,
        "RUNTIME": runtime,
        "EXTRA": extra,
        "AGENT_WHEEL": agent_wheel,
        "PREFIX": PREFIX,
    }.items():
        text = text.replace(f"@@{key}@@", value)
    return text


def _write_tar(stage: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        for path in sorted(p for p in stage.rglob("*") if p.is_file()):
            data = path.read_bytes()
            info = tarfile.TarInfo(path.relative_to(stage).as_posix())
            info.size, info.mtime = len(data), int(time.time())
            info.mode = 0o755 if path.name == "install.sh" else 0o644
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(out)


def make_pack(
    bundles: Sequence[str | Path],
    out: str | Path,
    *,
    platform: str,
    python: str,
    runtime: str = "auto",
    wheels: str | Path | None = None,
    broker: str | None = None,
    trusted_keys: str | Path | None = None,
) -> PackResult:
    """Write the device pack ``out`` (a ``.tar.gz``) for ``bundles`` on ``platform`` with CPython ``python``.

    ``wheels``: a directory of wheels (:func:`fetch_wheels`) to use instead of the package index. ``broker`` goes
    into the agent config; ``trusted_keys`` (a directory of ``*.pub``) ships to ``/etc/edgekit/keys``, and then every
    bundle must be signed by one of them, as the device will require.
    """
    t0 = time.monotonic()
    _check_target(platform, python, runtime)
    if not bundles:
        raise UsageError("a pack needs at least one bundle: edgekit pack BUNDLE... --platform ... --out PACK.tar.gz")
    out = Path(out)
    if not out.name.endswith(".tar.gz"):
        raise UsageError(f"{out}: name the pack NAME.tar.gz.")
    wheel_dir = Path(wheels) if wheels is not None else None
    if wheel_dir is not None and not wheel_dir.is_dir():
        raise PackError(f"{wheel_dir}: no such wheel directory; fill one with `edgekit pack --fetch-wheels DIR`.")
    keys_dir = Path(trusted_keys) if trusted_keys is not None else None
    keys = sorted(keys_dir.glob("*.pub")) if keys_dir is not None and keys_dir.is_dir() else []
    if keys_dir is not None and not keys:
        raise PackError(f"{keys_dir}: no *.pub keys there; give the directory of `edgekit keys new`'s public key.")
    with tempfile.TemporaryDirectory(prefix="edgekit-pack-") as tmp:
        stage, scratch = Path(tmp) / "stage", Path(tmp) / "scratch"
        for d in (stage / "wheels", stage / "bundles", stage / "docs", scratch):
            d.mkdir(parents=True)
        archives = _add_bundles([Path(b) for b in bundles], keys_dir, stage / "bundles", scratch)
        agent = build_agent_wheel(scratch / "agent")
        chosen, version = _resolve(agent, runtime, platform, python, stage / "wheels", wheel_dir)
        if keys:
            (stage / "keys").mkdir()
            for key in keys:
                shutil.copyfile(key, stage / "keys" / key.name)
        (stage / "agent.toml").write_text(_agent_config(archives[0].name, broker, bool(keys)))
        root = _source_checkout()
        shutil.copyfile(root / "scripts" / "edgekit-agent.service", stage / "edgekit-agent.service")
        for doc in ("agent.md", "fleet.md"):
            shutil.copyfile(root / "docs" / doc, stage / "docs" / doc)
        extra = RUNTIMES[chosen].extra
        (stage / "install.sh").write_text(_render_install(platform, python, chosen, extra, agent.name))
        wheel_files = tuple(_packed(p, f"wheels/{p.name}") for p in sorted((stage / "wheels").glob("*.whl")))
        bundle_files = tuple(_packed(p, f"bundles/{p.name}") for p in archives)
        agent_version = agent.name.split("-")[1]
        manifest = {
            "format": PACK_FORMAT,
            "platform": platform,
            "python": python,
            "os_release": PYTHONS[python][0],
            "runtime": chosen,
            "runtime_version": version,
            "extra": extra,
            "agent_version": agent_version,
            "agent_wheel": agent.name,
            "bundles": [asdict(b) for b in bundle_files],
            "wheels": [asdict(w) for w in wheel_files],
            "keys": [k.name for k in keys],
            "created_by": f"edgekit {edgekit.__version__}",
        }
        (stage / "pack.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _write_tar(stage, out)
    return PackResult(
        out,
        out.stat().st_size,
        platform,
        python,
        chosen,
        version,
        agent_version,
        bundle_files,
        wheel_files,
        time.monotonic() - t0,
    )
