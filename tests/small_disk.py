"""A real small file system for disk-full tests: a tmpfs of a few MB mounted on a test's directory.

Mounting needs root (CI runs as root); elsewhere :func:`mount_error` says why it cannot, and the tests skip
with that reason. :func:`fill` leaves a chosen number of bytes free with a filler file; deleting the filler
gives the space back.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path


def mount_error(where: Path, size: str = "2m") -> str | None:
    """Mount a tmpfs of ``size`` on ``where`` (created); None when mounted, else why not."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run mount ({exc})"
    if done.returncode != 0:
        return f"cannot mount a {size} tmpfs (needs root, as in CI): {done.stderr.strip() or done.returncode}"
    return None


def unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=20, check=False)


def free_bytes(where: Path) -> int:
    st = os.statvfs(where)
    return st.f_bavail * st.f_frsize


def fill(where: Path, leave: int = 0, name: str = "filler") -> Path:
    """Write a filler file in ``where`` until at most ``leave`` bytes stay free (0: until ENOSPC)."""
    path = where / name
    chunk = b"\0" * 4096
    with open(path, "ab") as f:
        try:
            while free_bytes(where) > leave:
                f.write(chunk[: max(1, min(len(chunk), free_bytes(where) - leave))])
                f.flush()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return path
