"""Importing any edgekit_agent module pulls in no TensorFlow, Keras or host package (fresh interpreter)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import edgekit_agent

FORBIDDEN = ("tensorflow", "keras", "tf_keras", "edgekit")


def agent_modules() -> list[str]:
    # __main__ runs the CLI when imported; build_parser() below imports what it would
    return sorted(
        m.name
        for m in pkgutil.walk_packages(edgekit_agent.__path__, "edgekit_agent.")
        if not m.name.endswith("__main__")
    )


def test_every_agent_module_imports_without_tensorflow_or_edgekit():
    modules = agent_modules()
    assert {
        "edgekit_agent.bundle.load",
        "edgekit_agent.bundle.selftest",
        "edgekit_agent.infer.benchmark",
        "edgekit_agent.cli",
    } <= set(modules)
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import edgekit_agent.cli as c; c.build_parser()\n"  # resolving the command table imports the commands too
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r})\n"
        "print(json.dumps(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"forbidden modules imported: {proc.stdout}"
