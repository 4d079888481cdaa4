"""A multi-label head on the device, without TensorFlow: the manifest's check, the decision (a bit mask of the
labels at or above the threshold; the least sure per-label decision as confidence), "+"-joined label sets as
the truth of a watched folder, and the telemetry window (exact-match accuracy, per-label counts)."""

from __future__ import annotations

import numpy as np
import pytest
from test_fuzz_manifest import VALID

from edgekit_agent.contract.errors import BundleError
from edgekit_agent.contract.manifest import MAX_MULTILABELS, HeadSpec, Manifest, TensorSpec
from edgekit_agent.infer.classify import LabelSets, MultiLabel, decide, label_set
from edgekit_agent.serve.telemetry import WindowRecorder

LABELS = ("cat", "dog", "bird")


def test_the_manifest_checks_a_multilabel_head_and_keeps_its_threshold() -> None:
    doc = {**VALID, "head": {"kind": "multilabel", "threshold": 0.3}}
    assert Manifest.from_dict(doc).head == HeadSpec("multilabel", 0.3)
    one = {**doc, "labels": ["a", "b"], "outputs": [{**VALID["outputs"][0], "shape": [1, 3]}]}
    with pytest.raises(BundleError, match="one output per label"):
        Manifest.from_dict(one)
    many = [str(i) for i in range(MAX_MULTILABELS + 1)]
    wide = {**doc, "labels": many, "outputs": [{**VALID["outputs"][0], "shape": [1, len(many)]}]}
    with pytest.raises(BundleError, match=f"2 to {MAX_MULTILABELS}"):
        Manifest.from_dict(wide)


def test_the_decision_is_the_set_at_or_above_the_threshold() -> None:
    # uint8 probabilities, scale 1/256: 0.75, 0.25, 0.5
    tensor = TensorSpec("out", (1, 3), "uint8", 1 / 256, 0)
    decide_one = MultiLabel(tensor, "probabilities", LABELS, threshold=0.5)
    raw = np.array([[192, 64, 128]], dtype=np.uint8)
    p = decide_one(raw)
    assert p.index == 0b101 and p.labels == ("cat", "bird") and p.label == "cat+bird"
    assert p.probabilities == {"cat": 0.75, "dog": 0.25, "bird": 0.5}
    assert p.confidence == 0.5  # bird at exactly the threshold is the least sure decision
    assert p.to_dict()["labels"] == ["cat", "bird"]
    assert MultiLabel(tensor, "probabilities", LABELS, threshold=0.8)(raw).label == ""  # no label at all
    masks, conf = decide(np.array([[0.75, 0.25, 0.5], [0.1, 0.9, 0.2]]), HeadSpec("multilabel"), "probabilities")
    assert masks.tolist() == [0b101, 0b010] and conf.tolist() == pytest.approx([0.5, 0.8])
    logits, _ = decide(np.array([[2.0, -2.0, 0.0]]), HeadSpec("multilabel", 0.6), "logits")
    assert label_set(int(logits[0]), LABELS) == ("cat",)  # sigmoid(0) = 0.5 < 0.6


def test_label_sets_resolve_plus_joined_names_in_any_order() -> None:
    sets = LabelSets(LABELS)
    assert sets.get("bird+cat") == sets.get("cat+bird") == 0b101 and sets.get("dog") == 0b010
    assert sets.get("cat+fish") == -1 and "cat+fish" not in sets and "dog+bird" in sets
    assert LabelSets(("a+b", "c")).get("a+b") == 0b01  # a label that holds a "+" is itself first


def test_telemetry_counts_each_label_and_accuracy_is_the_exact_match_rate() -> None:
    rec = WindowRecorder(LABELS, {"class_freq": [0.5, 0.5, 0.5]}, multilabel=True)
    rec.record(1000, 10, 900, 0b101, 0.9, 0b101)  # right
    rec.record(1000, 10, 900, 0b001, 0.8, 0b011)  # dog missed
    rec.record(1000, 10, 900, 0b110, 0.7)  # unlabelled
    body = rec.snapshot_and_reset()
    assert body["predictions"]["class_counts"] == {"cat": 2, "dog": 1, "bird": 2}
    acc = body["accuracy"]
    assert (acc["labeled"], acc["correct"], acc["accuracy"]) == (2, 1, 0.5)
    assert acc["per_class"] == {
        "cat": {"labeled": 2, "correct": 2},
        "dog": {"labeled": 2, "correct": 1},
        "bird": {"labeled": 2, "correct": 2},
    }
    assert body["drift"]["predicted_class"]["psi"] is not None
