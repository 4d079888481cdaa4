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
