"""The layout is part of the contract: every sub-package ships, and imports run host -> device only."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOTS = {"edgekit": ROOT / "host" / "edgekit", "edgekit_agent": ROOT / "device" / "edgekit_agent"}


def _packages() -> set[str]:
    found = set()
    for name, base in ROOTS.items():
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            found.add(".".join((name, *rel)))
    return found


def test_every_package_ships_in_the_wheel() -> None:
    """A sub-package missing from pyproject's list would work in the editable checkout and be absent from the wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert _packages() <= listed, f"add to [tool.setuptools] packages: {sorted(_packages() - listed)}"
    assert listed - _packages() == {"edgekit.firmware_profiles"}


def test_what_the_tour_writes_is_git_ignored() -> None:
    """The README's tour runs in the checkout: its private key and its data must not end up in a commit."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tour = ["keys/edgekit.key", "keys/edgekit.pub", "data/digits/0/0.png", "inbox/3/x.png", "bench-reports/b.json"]
    tour += ["out/digits-raspberry-pi-4.tar.gz", "elsewhere/release.key"]
    done = subprocess.run(["git", "check-ignore", "--no-index", *tour], cwd=ROOT, capture_output=True, text=True)
    assert sorted(done.stdout.split()) == sorted(tour), done.stdout + done.stderr
    kept = ["firmware_profiles/esp32-s3.toml", "host/edgekit/pipeline/data.py", "tests/device/test_cli.py"]
    done = subprocess.run(["git", "check-ignore", "--no-index", *kept], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout == "", done.stdout


def test_module_names_do_not_collide() -> None:
    """A module name means one thing: no name on both sides and none that is a standard-library module (the CLI
    sub-packages are exempt: a module there is named after the command it implements)."""
    import sys

    def names(base: Path) -> dict[str, Path]:
        return {
            p.stem: p
            for p in base.rglob("*.py")
            if p.stem not in ("__init__", "__main__") and "cli" not in p.relative_to(base).parts
        }

    host, device = names(ROOTS["edgekit"]), names(ROOTS["edgekit_agent"])
    both = sorted(set(host) & set(device))
    assert not both, f"the same module name on host and device: {both}"
    stdlib = sorted(n for n in {*host, *device} if n in sys.stdlib_module_names)
    assert not stdlib, f"module names that are standard-library modules: {stdlib}"
