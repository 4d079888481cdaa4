#!/usr/bin/env python3
"""Fuzz figures for docs/trust.md: how many hostile inputs the fuzz suites ran, and how many crashed.

Runs the four fuzz test files (manifest parser, bundle archive extraction, .tflite loader, command
handler) under pytest with ``EDGEKIT_FUZZ_SCALE`` (default 10: ten times the CI counts) and hypothesis'
statistics, and counts per file: generated cases (passing + failing + invalid-and-discarded are reported
separately), fixed hostile cases (parametrized tests), and the .tflite child-process cases. A "crash" is
any failing case: an exception other than the typed ``EdgekitError`` the test expects, a write outside
the data directory, a missing answer or a dead process.

``--costs`` measures instead what the worst archives cost to refuse: each hostile archive of
``tests/hostile_archives.py`` (a sparse 2 GiB member, gzip bombs) goes through `edgekit inspect` and
`edgekit-agent verify` in a fresh process, and the wall time and that process's peak RSS are reported.

Usage: .venv/bin/python scripts/bench_fuzz.py [--scale 10] [--json]
       .venv/bin/python scripts/bench_fuzz.py --costs [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
SUITES = {
    "manifest parser": "tests/device/test_fuzz_manifest.py",
    "bundle archives": "tests/device/test_fuzz_archive.py",
    ".tflite loader": "tests/device/test_fuzz_tflite.py",
    "command handler": "tests/device/test_fuzz_commands.py",
}
CASES = re.compile(r"(\d+) passing, (\d+) failing, and (\d+) invalid")
SUMMARY = re.compile(r"(\d+) (passed|failed|error)")


def run_suite(path: str, scale: float) -> dict[str, float]:
    env = {**os.environ, "EDGEKIT_FUZZ_SCALE": str(scale)}
    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hypothesis-show-statistics", path],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    out = proc.stdout
    passing = failing = invalid = 0
    for p, f, i in CASES.findall(out):
        passing, failing, invalid = passing + int(p), failing + int(f), invalid + int(i)
    tail = out.strip().splitlines()[-1] if out.strip() else ""
    counts = {kind: int(n) for n, kind in SUMMARY.findall(tail)}
    hypothesis_tests = len(CASES.findall(out))
    fixed = counts.get("passed", 0) + counts.get("failed", 0) - hypothesis_tests  # parametrized and plain tests
    child = int(150 * scale) if "tflite" in path else 0
    return {
        "generated": passing + failing,
        "discarded": invalid,
        "fixed": max(0, fixed),
        "child_process": child,
        "crashes": failing + counts.get("failed", 0) + counts.get("error", 0),
        "seconds": round(time.monotonic() - t, 1),
        "exit": proc.returncode,
    }


def hostile_archives(directory: Path) -> dict[str, Path]:
    """The archives whose refusal cost is measured: each is a few KB to 1 MB on disk."""
    import hostile_archives as H

    manifest = ("digits/manifest.json", b'{"format": "edgekit.bundle/1"}')
    return {
        "sparse 2 GiB member": H.sparse_archive(directory / "sparse.tar.gz", "digits/model.tflite", before=[manifest]),
        "gzip bomb, 1 GiB member": H.zeros_members_archive(
            directory / "member.tar.gz", [manifest], {"digits/model.tflite": H.GiB}
        ),
        "gzip bomb, 1 GiB after the last member": H.bomb_archive(directory / "tail.tar.gz", [manifest], H.GiB),
    }


def costs(repeat: int) -> dict[str, dict[str, dict[str, object]]]:
    """Per archive and tool: median seconds and peak RSS (MB) of a fresh process, its exit code and stderr."""
    from hostile_archives import run_measured

    bindir = Path(sys.executable).parent
    tools = {
        "edgekit inspect": [str(bindir / "edgekit"), "inspect"],
        "edgekit-agent verify": [str(bindir / "edgekit-agent"), "verify", "--allow-unsigned"],
    }
    out: dict[str, dict[str, dict[str, object]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        for case, archive in hostile_archives(Path(tmp)).items():
            for tool, argv in tools.items():
                runs = []
                for _ in range(repeat):
                    t = time.monotonic()
                    code, rss, err = run_measured([*argv, str(archive)])
                    runs.append((time.monotonic() - t, rss, code, err))
                out.setdefault(case, {})[tool] = {
                    "seconds": round(statistics.median(r[0] for r in runs), 2),
                    "seconds_range": [round(min(r[0] for r in runs), 2), round(max(r[0] for r in runs), 2)],
                    "peak_rss_mb": round(statistics.median(r[1] for r in runs)),
                    "exit": runs[-1][2],
                    "stderr": runs[-1][3],
                }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=10.0, help="multiplier of the CI example counts (default 10)")
    ap.add_argument("--costs", action="store_true", help="measure the refusal cost of the worst archives instead")
    ap.add_argument("--repeat", type=int, default=3, help="runs per archive and tool with --costs (default 3)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.costs:
        table = costs(a.repeat)
        if a.json:
            print(json.dumps(table, indent=2))
        else:
            for case, tools in table.items():
                print(case)
                for tool, r in tools.items():
                    print(
                        f"  {tool:22s} {r['seconds']:>7.2f} s {r['peak_rss_mb']:>6} MB  exit {r['exit']}  {r['stderr']}"
                    )
        return 0
    rows = {name: run_suite(path, a.scale) for name, path in SUITES.items()}
    total = {
        k: sum(r[k] for r in rows.values())
        for k in ("generated", "discarded", "fixed", "child_process", "crashes", "seconds")
    }
    if a.json:
        print(json.dumps({"scale": a.scale, "suites": rows, "total": total}, indent=2))
        return 0 if total["crashes"] == 0 else 1
    print(f"fuzz suites at EDGEKIT_FUZZ_SCALE={a.scale:g}:")
    print(f"  {'suite':18s} {'generated':>10s} {'fixed':>6s} {'child':>6s} {'crashes':>8s} {'seconds':>8s}")
    for name, r in [*rows.items(), ("total", total)]:
        print(
            f"  {name:18s} {r['generated']:>10,d} {r['fixed']:>6d} {r['child_process']:>6d} "
            f"{r['crashes']:>8d} {r['seconds']:>8.1f}"
        )
    return 0 if total["crashes"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
