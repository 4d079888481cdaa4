"""The import graph of ``edgekit`` and ``edgekit_agent``, read from the source (no module is imported): no cycles,
and the device package never names the host package, TensorFlow or Keras, not even inside a function.

An import inside a function counts like one at the top: it runs the first time the function does, and a cycle
hidden that way still ties the two modules into one. Imports under ``if TYPE_CHECKING:`` never run and do not
count for cycles (they do for the direction rule: a device module typed against the host would not type-check on
a device). The implicit import of a parent package (``a.b`` runs ``a/__init__``) is not an edge: a package that
re-exports from its children would otherwise be a cycle with each of them.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOTS = {"edgekit": ROOT / "host" / "edgekit", "edgekit_agent": ROOT / "device" / "edgekit_agent"}
DEVICE_FORBIDDEN = ("edgekit", "tensorflow", "keras", "tf_keras")


@dataclass(frozen=True, slots=True)
class Import:
    importer: str
    target: str  # a module of ours when it resolves to one, else the dotted name as written
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`


def _modules() -> dict[str, Path]:
    found = {}
    for name, base in ROOTS.items():
        for path in base.rglob("*.py"):
            parts = path.relative_to(base).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((name, *parts))] = path
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str) -> str:
    """The longest prefix of ``name`` that is one of our modules (``a.b.func`` -> ``a.b``), else ``name``."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in MODULES:
            return candidate
    return name


def _imports(module: str, source: str, *, is_package: bool = False) -> list[Import]:
    found: list[Import] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, _resolve(alias.name), node.lineno, type_only))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # `from pkg import sub` imports the module pkg.sub; `from mod import name` imports mod.
                found.append(Import(module, _resolve(f"{source}.{alias.name}"), node.lineno, type_only))
        for child in ast.iter_child_nodes(node):
            visit(child, type_only)

    visit(ast.parse(source, module), False)
    return found


ALL_IMPORTS = [
    imp
    for module, path in sorted(MODULES.items())
    for imp in _imports(module, path.read_text(encoding="utf-8"), is_package=path.name == "__init__.py")
]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in ALL_IMPORTS:
        if not imp.type_only and imp.target in MODULES and imp.target != imp.importer:
            graph[imp.importer].add(imp.target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one cycle through them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_path_through(graph, c) for c in components]


def _path_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One cycle inside ``component`` (a shortest one back to its first module), to name in the failure."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def _where(a: str, b: str) -> str:
    lines = sorted({imp.line for imp in ALL_IMPORTS if imp.importer == a and imp.target == b and not imp.type_only})
    return f"{MODULES[a].relative_to(ROOT)}:{','.join(map(str, lines))}"


def test_the_reader_sees_function_level_and_relative_imports_but_not_type_checking_blocks() -> None:
    """The reader itself (a blind one would pass everything), on a module written for it."""
    source = """
import edgekit_agent.serve.telemetry
from edgekit_agent.serve import sysinfo
from . import config
from ..ota.slots import Slot
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from edgekit_agent.serve.agent import Agent
else:
    import edgekit_agent.mqtt.link
def f():
    from edgekit_agent.bundle.load import load_bundle
"""
    found = {(i.target, i.type_only) for i in _imports("edgekit_agent.serve.handlers", source)}
    assert found == {
        ("edgekit_agent.serve.telemetry", False),
        ("edgekit_agent.serve.sysinfo", False),
        ("edgekit_agent.serve.config", False),
        ("edgekit_agent.ota.slots", False),
        ("typing.TYPE_CHECKING", False),
        ("edgekit_agent.serve.agent", True),
        ("edgekit_agent.mqtt.link", False),
        ("edgekit_agent.bundle.load", False),
    }
    in_package = {i.target for i in _imports("edgekit_agent.cli", "from .app import main", is_package=True)}
    assert in_package == {"edgekit_agent.cli.app"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_ota_talks_to_the_agent_through_its_interface_only() -> None:
    """ota/ names neither the serving loop nor the command handlers, not even for annotations
    (ota.target.UpdateTarget is what it may use of the agent)."""
    bad = [
        f"{MODULES[i.importer].relative_to(ROOT)}:{i.line} imports {i.target}"
        for i in ALL_IMPORTS
        if i.importer.startswith("edgekit_agent.ota")
        and i.target in ("edgekit_agent.serve.agent", "edgekit_agent.serve.handlers")
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    described = [
        " -> ".join(c) + "  (" + "; ".join(_where(a, b) for a, b in zip(c, c[1:], strict=False)) + ")" for c in cycles
    ]
    assert not cycles, "import cycles (break them; a TYPE_CHECKING import is fine for annotations):\n" + "\n".join(
        described
    )


def test_the_device_package_never_imports_the_host_tensorflow_or_keras() -> None:
    """Statically, so an import inside a function that no test calls cannot slip through
    (tests/device/test_import_isolation.py checks what importing every module actually loads)."""
    bad = [
        f"{MODULES[i.importer].relative_to(ROOT)}:{i.line} imports {i.target}"
        for i in ALL_IMPORTS
        if i.importer.split(".")[0] == "edgekit_agent" and i.target.split(".")[0] in DEVICE_FORBIDDEN
    ]
    assert not bad, "the device package must not depend on the host side:\n" + "\n".join(bad)
