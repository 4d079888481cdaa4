"""The golden-sample self-test on the real digits bundle: passes as built, fails (saying by how much) when
the workstation's recorded outputs are altered and the manifest hashes are rewritten to match."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.bundle.selftest import run_selftest
from edgekit_agent.contract.errors import BundleError, SelfTestError
from edgekit_agent.contract.manifest import dump_manifest

from tamper import copy_bundle, rehash


def rewrite_golden(src: Path, tmp_path: Path, **arrays: np.ndarray) -> Path:
    d = copy_bundle(src, tmp_path)
    with np.load(d / "golden.npz") as npz:
        golden = {k: npz[k] for k in npz.files}
    golden.update(arrays)
    buf = io.BytesIO()
    np.savez_compressed(buf, **golden)
    (d / "golden.npz").write_bytes(buf.getvalue())
    rehash(d)
    return d


def golden(d: Path) -> dict[str, np.ndarray]:
    with np.load(d / "golden.npz") as npz:
        return {k: npz[k] for k in npz.files}


def test_selftest_passes_on_the_real_bundle(digits_bundle: Path):
    b = load_bundle(digits_bundle)
    r = run_selftest(b)
    g = golden(digits_bundle)
    assert r.passed and r.samples == len(g["labels"]) >= 8
    assert 0 <= r.max_abs_diff <= r.tolerance == 1 and r.mismatches == 0
    assert r.agreement == 1.0
    # label accuracy is recomputed from the workstation's own outputs: same top-1, same accuracy
    assert r.label_accuracy == pytest.approx(float((g["outputs"].argmax(axis=1) == g["labels"]).mean()))
    assert r.engine == "litert" and json.dumps(r.to_dict())


def test_selftest_agrees_without_xnnpack(digits_bundle: Path):
    """Builtin kernels vs the XNNPACK outputs recorded on the workstation: within the tolerance."""
    b = load_bundle(digits_bundle)
    with b.open_runtime(num_threads=1, delegate="none") as rt:
        r = run_selftest(b, rt)
    assert r.passed and r.delegate == "none"


def test_altered_golden_outputs_fail_and_say_by_how_much(digits_bundle: Path, tmp_path: Path):
    outputs = golden(digits_bundle)["outputs"].astype(np.int16)
    i, j = 3, 5
    outputs[i, j] += 7 if outputs[i, j] < 100 else -7
    d = rewrite_golden(digits_bundle, tmp_path, outputs=outputs.astype(np.int8))
    b = load_bundle(d)  # hashes are consistent: only the self-test can notice
    n = len(outputs)
    with pytest.raises(
        SelfTestError, match=rf"by up to 7 raw units \(tolerance 1\) on 1 of {n} golden samples \(worst: sample 3\)"
    ) as info:
        run_selftest(b)
    assert info.value.result.max_abs_diff == 7 and not info.value.result.passed
    assert "--skip-selftest" in str(info.value)


def test_a_swapped_top1_lowers_agreement(digits_bundle: Path, tmp_path: Path):
    g = golden(digits_bundle)
    outputs = g["outputs"].copy()
    outputs[0] = outputs[0][::-1].copy()  # a different class wins on sample 0
    d = rewrite_golden(digits_bundle, tmp_path, outputs=outputs)
    with pytest.raises(SelfTestError) as info:
        run_selftest(load_bundle(d))
    assert info.value.result.agreement < 1.0


def test_golden_inputs_of_the_wrong_shape_are_a_bundle_error(digits_bundle: Path, tmp_path: Path):
    g = golden(digits_bundle)
    d = rewrite_golden(digits_bundle, tmp_path, inputs=g["inputs"][:, :4])
    with pytest.raises(BundleError, match="golden.npz does not belong to this model"):
        run_selftest(load_bundle(d))


def test_a_bundle_without_golden_section_cannot_be_self_tested(digits_bundle: Path, tmp_path: Path):
    d = copy_bundle(digits_bundle, tmp_path)
    doc = json.loads((d / "manifest.json").read_bytes())
    del doc["golden"]
    (d / "manifest.json").write_bytes(dump_manifest(doc))
    with pytest.raises(BundleError, match="no 'golden' section.*--skip-selftest"):
        run_selftest(load_bundle(d))
