"""The manifest's writer and reader are one type: a filled :class:`Manifest` turns into bytes that parse back
to the same values, ``outputs_are`` is a validated field, and a manifest the build wrote re-serialises to the
very bytes on disk (what a signature covers)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from test_fuzz_manifest import VALID

from edgekit_agent.contract.errors import BundleError
from edgekit_agent.contract.manifest import (
    FileEntry,
    GoldenSpec,
    HeadSpec,
    Manifest,
    PreprocessSpec,
    TensorSpec,
    dump_manifest,
)


def filled(**changes) -> Manifest:
    model = FileEntry("model.tflite", 608456, "ab" * 32)
    fields = dict(
        name="digits",
        version="1.2.3",
        created="2026-01-01T00:00:00Z",
        profile={"name": "raspberry-pi-4", "target": "cpu", "runtime": {"num_threads": 4, "delegate": "xnnpack"}},
        model=model,
        inputs=(TensorSpec("in", (1, 8, 8, 1), "int8", 0.00390625, -128),),
        outputs=(TensorSpec("out", (1, 10), "int8", 0.00390625, -128),),
        preprocess=PreprocessSpec(width=8, height=8, mean=(0.5,), std=(0.25,)),
        labels=tuple(str(i) for i in range(10)),
        files=(FileEntry("golden.npz", 1115, "cd" * 32), model),
        outputs_are="probabilities",
        golden=GoldenSpec("golden.npz", 16, 1),
        metrics={"int8_accuracy": 0.98, "split": {"seed": 0}},
        fit=None,
        reference={"class_freq": [0.1] * 10},
    )
    fields.update(changes)
    return Manifest(**fields)


def test_a_filled_manifest_round_trips_through_its_bytes():
    m = filled()
    data = m.to_bytes()
    back = Manifest.from_bytes(data)
    assert back == m
    assert (back.outputs_are, back.golden, back.fit, back.profile_name, back.target) == (
        "probabilities",
        GoldenSpec("golden.npz", 16, 1),
        None,
        "raspberry-pi-4",
        "cpu",
    )
    assert back.to_bytes() == data
    assert json.loads(data)["fit"] is None  # "no fit checker" is written as null, as before


def test_outputs_are_defaults_to_logits_and_is_validated():
    assert "outputs_are" not in VALID and Manifest.from_bytes(dump_manifest(VALID)).outputs_are == "logits"
    for value in ("logits", "probabilities"):
        assert Manifest.from_dict({**VALID, "outputs_are": value}).outputs_are == value
    for value in ("softmax", "", None, ["logits"]):
        with pytest.raises(BundleError, match="'outputs_are' should be one of"):
            Manifest.from_dict({**VALID, "outputs_are": value})


def test_head_defaults_to_softmax_and_a_sigmoid_head_is_validated():
    assert "head" not in VALID and Manifest.from_bytes(dump_manifest(VALID)).head == HeadSpec("softmax", 0.5)
    binary = {**VALID, "labels": ["no", "yes"], "outputs": [{**VALID["outputs"][0], "shape": [1, 1]}]}
    head = Manifest.from_dict({**binary, "head": {"kind": "sigmoid", "threshold": 0.7}}).head
    assert head == HeadSpec("sigmoid", 0.7)
    one = (TensorSpec("out", (1, 1), "int8", 0.00390625, -128),)
    written = filled(head=head, labels=("no", "yes"), outputs=one).to_bytes()
    assert Manifest.from_bytes(written).head == head and json.loads(written)["head"]["kind"] == "sigmoid"
    bad = [
        ({**binary, "head": {"kind": "multiclass"}}, "'kind' should be one of"),
        ({**binary, "head": {"kind": "sigmoid", "threshold": 1.0}}, "'threshold' should be a probability"),
        ({**binary, "head": "sigmoid"}, "head should be an object"),
        ({**VALID, "head": {"kind": "sigmoid"}}, "needs one output and two labels; the model has 10 output"),
    ]
    for doc, message in bad:
        with pytest.raises(BundleError, match=message):
            Manifest.from_dict(doc)


@pytest.mark.parametrize(
    "golden, message",
    [
        ({"file": "golden.npz", "tolerance": 1}, "'samples' is missing"),
        ({"file": "golden.npz", "samples": 16, "tolerance": -1}, "'tolerance' should be a number >= 0"),
        ({"file": "golden.npz", "samples": 16, "tolerance": True}, "'tolerance' should be a number >= 0"),
        ({"file": 3, "samples": 16}, "'file' should be str"),
        ([], "golden should be an object"),
    ],
)
def test_a_malformed_golden_section_names_the_key(golden, message):
    with pytest.raises(BundleError, match=message):
        Manifest.from_dict({**VALID, "golden": golden})


def test_optional_sections_must_be_objects():
    m = Manifest.from_dict(VALID)
    assert (m.metrics, m.reference, m.fit) == ({}, {}, None)
    for key in ("metrics", "reference", "fit"):
        doc = copy.deepcopy(VALID)
        doc[key] = [1]
        with pytest.raises(BundleError, match=f"'{key}' should be an object"):
            Manifest.from_dict(doc)


def test_the_built_manifest_is_exactly_what_the_type_writes(digits_bundle: Path):
    """The build's manifest.json re-serialises byte for byte: the bytes a signature covers come from the type,
    and reading a bundle never depends on ``raw`` for a key the type knows."""
    data = (digits_bundle / "manifest.json").read_bytes()
    m = Manifest.from_bytes(data)
    assert m.to_bytes() == data
    assert set(m.raw) == set(m.to_dict())  # every key the build writes is a field
