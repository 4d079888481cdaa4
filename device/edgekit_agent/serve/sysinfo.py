"""Small, dependency-free facts about the device: memory, temperature, load, hardware and OS.

Every function degrades to ``None`` (or "unknown") where the platform does not expose the value —
a laptop has no ``/sys/class/thermal``, macOS has no ``/proc`` — instead of raising: telemetry must
never fail because a sensor is absent. Used by the benchmark, the telemetry ``system`` block and the
retained ``meta`` message.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_PROC_STATUS = Path("/proc/self/status")
_THERMAL = Path("/sys/class/thermal")
_DT_MODEL = Path("/proc/device-tree/model")  # Raspberry Pi and other device-tree boards
_DMI_PRODUCT = Path("/sys/class/dmi/id/product_name")  # x86 PCs and VMs
_OS_RELEASE = Path("/etc/os-release")


def _status_kib(key: str) -> int | None:
    try:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_mb() -> float | None:
    """Resident memory of this process now, in MiB (``VmRSS``); None where /proc is absent."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process, in MiB (``VmHWM``, else ``getrusage``)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib / 1024
    try:
        import resource  # POSIX only

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError, ValueError):
        return None
    # ru_maxrss is KiB on Linux, bytes on macOS
    return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024


def cpu_temp_c() -> float | None:
    """CPU temperature in °C from the first ``cpu``/``soc`` thermal zone (else the first zone); None when absent."""
    try:
        zones = sorted(_THERMAL.glob("thermal_zone*"))
    except OSError:
        return None
    preferred = []
    for zone in zones:
        try:
            kind = (zone / "type").read_text().strip().lower()
        except OSError:
            kind = ""
        # a Pi reports "cpu-thermal"; x86 boards "x86_pkg_temp"; others "soc_thermal"
        preferred.append((0 if any(k in kind for k in ("cpu", "soc", "pkg")) else 1, zone))
    for _, zone in sorted(preferred):
        try:
            return int((zone / "temp").read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
    return None


def load1() -> float | None:
    """One-minute load average; None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip("\x00\n ") or None
    except OSError:
        return None


def hardware_model() -> str:
    """'Raspberry Pi 4 Model B Rev 1.5', a DMI product name, or the CPU model — whichever the machine tells."""
    for source in (_DT_MODEL, _DMI_PRODUCT):
        found = _read(source)
        if found:
            return found
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def os_description() -> str:
    """'Debian GNU/Linux 12 (bookworm)' from /etc/os-release, else ``platform.platform()``."""
    text = _read(_OS_RELEASE)
    if text:
        for line in text.splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return platform.platform()


@dataclass(frozen=True, slots=True)
class SystemInfo:
    """What a device is: for the retained ``meta`` message and benchmark reports."""

    hardware: str
    machine: str  # aarch64, armv7l, x86_64
    os: str
    kernel: str
    python: str
    cpu_count: int
    mem_total_mb: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mem_total_mb() -> float | None:
    """Physical memory in MiB (``MemTotal`` from /proc/meminfo)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def system_info() -> SystemInfo:
    """A description of this machine (cheap: a handful of small file reads)."""
    return SystemInfo(
        hardware=hardware_model(),
        machine=platform.machine(),
        os=os_description(),
        kernel=platform.release(),
        python=platform.python_version(),
        cpu_count=os.cpu_count() or 1,
        mem_total_mb=mem_total_mb(),
    )


def system_stats() -> dict[str, float | None]:
    """The telemetry ``system`` block: ``{cpu_temp_c, rss_mb, load1}`` (None for what is unavailable)."""
    rss = rss_mb()
    return {"cpu_temp_c": cpu_temp_c(), "rss_mb": None if rss is None else round(rss, 1), "load1": load1()}
