#!/usr/bin/env python3
"""Chaos benchmark (issue 9): faults injected on a private mosquitto, with real agent processes fed images.

    .venv/bin/python scripts/bench_chaos.py [--quick] [--only NAME ...] [--json] [--keep]

Runs every scenario of every module ``scripts/chaos/*.py`` (names not starting with ``_``). A module defines
``SCENARIOS: dict[str, Callable[[ChaosEnv], dict]]``; each scenario gets a fresh working directory in a
:class:`ChaosEnv` (``scripts/chaos/_common.py``) and returns a dict with at least ``fault``, ``fed``,
``counted``, ``duplicates``, ``dropped_reported``, ``recover_s`` and ``outcome``. Printed: one table per
module (``--json``: every result as JSON on stdout instead). ``--only`` keeps the scenarios whose
``module/name`` contains one of the strings. A scenario that raises is reported as such; the rest still run.
Figures in docs/trust.md, "Chaos".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHAOS = REPO / "scripts" / "chaos"
sys.path.insert(0, str(CHAOS))

from _common import ChaosEnv, mosquitto_binary  # noqa: E402

COLUMNS = ("scenario", "fed", "counted", "duplicates", "dropped_reported", "recover_s", "outcome")


def load_modules() -> dict[str, Any]:
    mods = {}
    for path in sorted(CHAOS.glob("*.py")):
        if path.name.startswith("_"):
            continue
        spec = importlib.util.spec_from_file_location(f"chaos_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mods[path.stem] = mod
    return mods


def table(rows: list[dict[str, Any]]) -> str:
    cells = [[str(r.get(c, "")) if r.get(c) is not None else "-" for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS[:-1])]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS[:-1], widths)) + "  outcome"]
    for r, row in zip(rows, cells):
        lines.append("  ".join(v.ljust(w) for v, w in zip(row[:-1], widths)) + "  " + row[-1])
        lines.append("    fault: " + str(r.get("fault", "")))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and shorter outages")
    ap.add_argument("--only", nargs="*", default=[], help="run only module/scenario names containing these")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    ap.add_argument("--keep", action="store_true", help="keep each scenario's working directory (logs)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    binary = mosquitto_binary()
    results: dict[str, list[dict[str, Any]]] = {}
    for name, mod in load_modules().items():
        for scenario, run in mod.SCENARIOS.items():
            full = f"{name}/{scenario}"
            if a.only and not any(s in full for s in a.only):
                continue
            workdir = Path(tempfile.mkdtemp(prefix=f"chaos-{name}-{scenario}-"))
            env = ChaosEnv(workdir=workdir, mosquitto=binary, python=sys.executable, repo=REPO, quick=a.quick)
            t0 = time.monotonic()
            try:
                res = dict(run(env))
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others' figures
                traceback.print_exc()
                res = {"fault": "?", "outcome": f"scenario failed: {exc}"}
            res["scenario"], res["took_s"] = scenario, round(time.monotonic() - t0, 1)
            results.setdefault(name, []).append(res)
            if a.keep:
                print(f"{full}: kept {workdir}", file=sys.stderr)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
            if not a.json:
                print(f"{full}: {res.get('outcome')} ({res['took_s']} s)", file=sys.stderr, flush=True)
    if a.json:
        print(json.dumps(results, indent=2))
    else:
        for name, rows in results.items():
            print(f"\n## {name}\n{table(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
