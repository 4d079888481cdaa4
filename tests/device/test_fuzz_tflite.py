"""Truncated and corrupt .tflite files into the loader: typed errors (ModelError/IntegrityError/SelfTestError)
or a model that loads; never another exception, never a crashed process.

The interpreter is native code, so the part that reaches LiteRT runs in a child process: a segmentation
fault there fails this test instead of killing the test run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit_agent.bundle.tflite_file import check_tflite
from edgekit_agent.contract.errors import ModelError

from fuzzing import fuzz_examples

FUZZ = settings(max_examples=fuzz_examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHILD_CASES = fuzz_examples(150)


def _model(digits_bundle: Path) -> bytes:
    return (digits_bundle / "model.tflite").read_bytes()


def test_real_model_passes_the_structural_check(digits_bundle):
    check_tflite(_model(digits_bundle))


@FUZZ
@given(st.data())
def test_structural_check_on_truncated_and_flipped_models(digits_bundle, data):
    model = bytearray(_model(digits_bundle))
    if data.draw(st.booleans()):
        model = model[: data.draw(st.integers(0, len(model) - 1))]
    for _ in range(data.draw(st.integers(0, 6))):
        if model:
            model[data.draw(st.integers(0, len(model) - 1))] ^= data.draw(st.integers(1, 255))
    try:
        check_tflite(bytes(model), "fuzz.tflite")
    except ModelError as exc:
        assert "fuzz.tflite" in str(exc)


@FUZZ
@given(st.binary(max_size=4096))
def test_structural_check_on_random_bytes(data):
    try:
        check_tflite(data)
    except ModelError:
        pass


def test_every_truncation_point_of_the_model_is_refused(digits_bundle):
    model = _model(digits_bundle)
    step = max(1, len(model) // 400)
    for cut in range(0, len(model), step):
        try:
            check_tflite(model[:cut])
        except ModelError:
            continue
        raise AssertionError(f"a model cut at {cut} of {len(model)} bytes passed the structural check")


CHILD = textwrap.dedent(
    """
    import hashlib, json, random, shutil, sys, tempfile
    from pathlib import Path
    from edgekit_agent.bundle.load import load_bundle
    from edgekit_agent.contract.errors import EdgekitError
    from edgekit_agent.contract.manifest import dump_manifest
    from edgekit_agent.bundle.selftest import run_selftest

    src, seed, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    model = (src / "model.tflite").read_bytes()
    doc = json.loads((src / "manifest.json").read_text())
    outcomes = {}
    for i in range(n):
        b = bytearray(model)
        mode = rng.choice(["truncate", "flip", "flip_header", "zero_block"])
        if mode == "truncate":
            b = b[: rng.randrange(len(b))]
        elif mode == "flip":
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] ^= rng.randint(1, 255)
        elif mode == "flip_header":
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(min(len(b), 512))] ^= rng.randint(1, 255)
        else:
            start = rng.randrange(len(b))
            b[start : start + rng.randint(1, 256)] = bytes(min(len(b) - start, 256))[: len(b[start : start + 256])]
        rehash = rng.random() < 0.8  # mostly as a careless/hostile builder would ship it: hashes that match
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp) / "b"
            shutil.copytree(src, d)
            (d / "manifest.sig").unlink(missing_ok=True)
            (d / "model.tflite").write_bytes(bytes(b))
            if rehash:
                m = json.loads(json.dumps(doc))
                entry = {"bytes": len(b), "sha256": hashlib.sha256(bytes(b)).hexdigest()}
                m["files"]["model.tflite"] = entry
                m["model"].update(entry)
                (d / "manifest.json").write_bytes(dump_manifest(m))
            try:
                bundle = load_bundle(d)
                with bundle.open_runtime(num_threads=1) as rt:
                    run_selftest(bundle, rt)
                key = "loaded_and_passed_selftest"
            except EdgekitError as exc:
                key = type(exc).__name__
            except BaseException as exc:  # what the test is looking for
                key = "UNEXPECTED " + type(exc).__name__ + ": " + str(exc)[:200]
        outcomes[key] = outcomes.get(key, 0) + 1
    print(json.dumps(outcomes))
    """
)


def test_corrupt_models_in_bundles_give_typed_errors_in_a_child_process(digits_bundle, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run(
        [sys.executable, str(script), str(digits_bundle), "7", str(CHILD_CASES)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"the loader crashed (exit {proc.returncode}): {proc.stderr[-2000:]}"
    outcomes = json.loads(proc.stdout.strip().splitlines()[-1])
    unexpected = {k: v for k, v in outcomes.items() if k.startswith("UNEXPECTED")}
    assert not unexpected, unexpected
    assert sum(outcomes.values()) == CHILD_CASES
    assert outcomes.get("IntegrityError", 0) > 0  # the structural check and the hashes did refuse some
