"""Hostile manifests: random bytes and well-formed JSON with wrong types or missing keys must end in a
BundleError (never KeyError, TypeError, ValueError from deep inside, or RecursionError)."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit_agent.contract.errors import BundleError, EdgekitError
from edgekit_agent.contract.manifest import Manifest, dump_manifest

from fuzzing import fuzz_examples

VALID: dict[str, Any] = {
    "format": "edgekit-bundle/1",
    "name": "digits",
    "version": "1.0.0",
    "created": "2026-01-01T00:00:00Z",
    "profile": {"name": "raspberry-pi-4", "target": "cpu", "runtime": {"num_threads": 4, "delegate": "xnnpack"}},
    "model": {"file": "model.tflite", "bytes": 10, "sha256": "0" * 64},
    "inputs": [{"name": "in", "shape": [1, 8, 8, 1], "dtype": "int8", "scale": 0.0039, "zero_point": -128}],
    "outputs": [{"name": "out", "shape": [1, 10], "dtype": "int8", "scale": 0.1, "zero_point": 3}],
    "preprocess": {
        "width": 8,
        "height": 8,
        "color_mode": "L",
        "resize": "bilinear",
        "scale": 0.0039,
        "mean": [0.0],
        "std": [1.0],
    },
    "labels": [str(i) for i in range(10)],
    "golden": {"file": "golden.npz", "samples": 16, "tolerance": 1},
    "files": {"model.tflite": {"bytes": 10, "sha256": "0" * 64}, "golden.npz": {"bytes": 5, "sha256": "1" * 64}},
}

FUZZ = settings(max_examples=fuzz_examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys/indices) into a JSON document."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


ALL_PATHS = [p for p in _paths(VALID) if p]


def _parse(data: bytes) -> None:
    try:
        Manifest.from_bytes(data, "fuzz/manifest.json")
    except BundleError:
        pass  # the expected refusal; any other exception fails the test


def test_valid_manifest_parses():
    m = Manifest.from_bytes(dump_manifest(VALID))
    assert m.inputs[0].shape == (1, 8, 8, 1) and m.model.name == "model.tflite"


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes):
    _parse(data)


@FUZZ
@given(json_values)
def test_random_json_documents(doc: Any):
    _parse(json.dumps(doc).encode())


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(ALL_PATHS), st.sampled_from(["delete", "replace"]), json_values),
        min_size=1,
        max_size=4,
    )
)
def test_valid_manifest_with_keys_deleted_or_retyped(edits):
    doc = copy.deepcopy(VALID)
    for path, action, value in edits:
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            if action == "delete" and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or retyped this path
    _parse(json.dumps(doc).encode())


@FUZZ
@given(st.integers(0, len(dump_manifest(VALID))), st.binary(min_size=1, max_size=8))
def test_valid_manifest_with_bytes_spliced_in(pos: int, junk: bytes):
    data = dump_manifest(VALID)
    _parse(data[:pos] + junk + data[pos + len(junk) :])


def test_deeply_nested_json_is_a_bundle_error():
    for depth in (1_000, 100_000):
        try:
            Manifest.from_bytes(b"[" * depth + b"]" * depth)
        except EdgekitError:
            continue
        raise AssertionError("a nested array is not a manifest")
