#!/usr/bin/env python3
"""Fit table across every shipped profile for two models, and how long checking all profiles takes.

Models (random weights: arena, flash and operators depend on structure, not on trained values):
  - the digits CNN of edgekit's zoo (8x8x1, 10 classes), full int8;
  - MobileNetV2, width 0.35, 96x96x3, 2 classes (a person-detection-sized model), full int8.

For each model: the verdict table (arena/RAM bytes, flash bytes, ops, verdict) and the wall time of
``check_fit`` over all profiles, cold (caches cleared, so the TFLite Micro arena search runs) and warm,
as medians of ``--repeats`` runs. Also the ratio of the naive activation sum (no memory reuse) to the
arena TFLite Micro actually plans.

    .venv/bin/python scripts/bench_fit.py [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_models() -> dict[str, bytes]:
    import keras
    from sklearn.datasets import load_digits

    from edgekit.pipeline.zoo import build_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fit_models import int8_tflite as _convert  # the tests' in-process int8 converter

    keras.utils.set_random_seed(0)
    digits = (load_digits().images / 16.0).astype("float32")[..., None]
    cnn = build_model("cnn", (8, 8, 1), 10, batch_size=1)
    mnv2 = build_model("mobilenetv2", (96, 96, 3), 2, alpha=0.35, batch_size=1)
    rng = np.random.default_rng(0)
    images = rng.random((32, 96, 96, 3), dtype=np.float32)
    models = {
        "digits-cnn": _convert(cnn, digits[:100]),
        "mobilenetv2-0.35-96 (random init)": _convert(mnv2, images),
    }
    # Random init makes activations vanish through 17 blocks (softmax input scale ~1e-8), which TFLite Micro
    # aborts on. Setting each BatchNorm's moving statistics from one batch (weights stay random) gives the
    # ranges a trained network has, so the same architecture can be measured.
    for layer in mnv2.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    mnv2(images, training=True)
    models["mobilenetv2-0.35-96 (BN-calibrated)"] = _convert(mnv2, images)
    return models


def _clear_caches() -> None:
    from edgekit.fit import edgetpu, tflite_graph, tflm

    tflm._measure_cached.cache_clear()  # noqa: SLF001 - the cold figure must include the arena search
    tflite_graph._read_graph_cached.cache_clear()  # noqa: SLF001
    edgetpu._compile.cache_clear()  # noqa: SLF001


def bench(name: str, tflite: bytes, repeats: int) -> dict:
    from edgekit.fit.check import check_fit
    from edgekit.fit.tflite_graph import read_graph
    from edgekit.fit.tflm import measure_arena
    from edgekit.profiles import load_all_profiles
    from edgekit_agent.contract.errors import ModelError

    profiles = load_all_profiles()
    cold, warm, search = [], [], []
    arena, crash = None, ""
    reports = []
    for _ in range(repeats):
        _clear_caches()
        t0 = time.perf_counter()
        try:
            arena = measure_arena(tflite, name).bytes
        except ModelError as exc:  # TFLite Micro aborted: the check reports it as a failed arena row
            arena, crash = None, str(exc)
        search.append(time.perf_counter() - t0)
        _clear_caches()
        t0 = time.perf_counter()
        reports = [check_fit(tflite, p, name=name) for p in profiles]
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        [check_fit(tflite, p, name=name) for p in profiles]
        warm.append(time.perf_counter() - t0)
    graph = read_graph(tflite, name)
    rows = []
    for r in reports:
        mem = r.row("arena") if r.target == "mcu" else r.row("ram")
        flash = r.row("flash") if r.target == "mcu" else r.row("storage")
        ops_row = r.row("edgetpu") if r.edgetpu is not None else r.row("ops")
        ops = (
            ops_row.measured
            if r.edgetpu is not None
            else ("ok" if str(ops_row.verdict) != "fail" else ops_row.detail.split(": ", 1)[-1].rstrip("."))
        )
        failed = [x.check for x in r.failures()]
        rows.append(
            {
                "profile": r.profile,
                "target": r.target,
                "arena_or_ram": mem.measured,
                "ram_budget": mem.budget,
                "flash": flash.measured,
                "flash_budget": flash.budget,
                "ops": str(ops),
                "verdict": "fits" if r.fits else "does not fit (" + ", ".join(failed) + ")",
            }
        )
    return {
        "model": name,
        "model_bytes": len(tflite),
        "ops": list(graph.op_names()),
        "operators": len(graph.operators),
        "tflm_arena_bytes": arena,
        "tflm_error": crash,
        "naive_activation_bytes": graph.activation_bytes(),
        "naive_to_arena_ratio": round(graph.activation_bytes() / arena, 2) if arena else None,
        "profiles": len(profiles),
        "repeats": repeats,
        "check_all_cold_s_median": round(statistics.median(cold), 3),
        "check_all_warm_s_median": round(statistics.median(warm), 4),
        "arena_search_s_median": round(statistics.median(search), 3),
        "rows": rows,
    }


def _n(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _markdown(result: dict) -> str:
    out = [
        f"**{result['model']}** — {result['model_bytes']:,} bytes, {result['operators']} operators "
        f"({', '.join(result['ops'])}); "
        + (
            f"TFLite Micro arena {result['tflm_arena_bytes']:,} B (naive activation sum "
            f"{result['naive_activation_bytes']:,} B, ×{result['naive_to_arena_ratio']})."
            if result["tflm_arena_bytes"]
            else f"TFLite Micro could not load it: {result['tflm_error']}"
        ),
        "",
        (
            "| profile | target | arena (MCU, +margin) / RAM (B) | budget (B) "
            "| flash / storage (B) | budget (B) | ops | verdict |"
        ),
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in result["rows"]:
        out.append(
            f"| {r['profile']} | {r['target']} | {_n(r['arena_or_ram'])} | {r['ram_budget']:,} | {r['flash']:,} | "
            f"{r['flash_budget']:,} | {r['ops']} | {r['verdict']} |"
        )
    out += [
        "",
        f"Checking all {result['profiles']} profiles: median {result['check_all_cold_s_median']} s cold "
        f"(the TFLite Micro arena search alone, timed separately: {result['arena_search_s_median']} s), "
        f"{result['check_all_warm_s_median']} s warm (arena cached); {result['repeats']} runs.",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per model for the medians (default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown tables")
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):  # the converter prints its SavedModel signature on stdout
        models = build_models()
    results = [bench(name, tflite, args.repeats) for name, tflite in models.items()]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        ratio = results[-1]["check_all_cold_s_median"] / max(results[0]["check_all_cold_s_median"], 1e-9)
        print("\n\n".join(_markdown(r) for r in results))
        print(f"\nCold check time of all profiles, MobileNetV2 (BN-calibrated) vs digits CNN: ×{ratio:.1f}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
