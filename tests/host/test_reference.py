"""Drift reference statistics (manifest["reference"]): histogram rules, PSI, and the reference of a real
int8 model cross-checked with an independent interpreter (TensorFlow's own)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.pipeline.reference import (
    CONFIDENCE_EDGES,
    compute_reference,
    detect_outputs_are,
    equal_width_edges,
    histogram,
    input_means,
    psi,
    softmax,
)
from edgekit_agent.contract.manifest import HeadSpec
from edgekit_agent.infer.classify import decide


def test_histogram_counts_outside_values_in_the_end_bins() -> None:
    edges = [0.0, 1.0, 2.0, 3.0]
    f = histogram(np.array([-5.0, 0.5, 1.0, 1.5, 2.5, 99.0]), edges)
    # -5 → bin 0 (below), 0.5 → 0, 1.0 and 1.5 → 1 (left-closed bins), 2.5 and 99 → 2 (above).
    assert f.tolist() == pytest.approx([2 / 6, 2 / 6, 2 / 6])
    assert histogram(np.array([]), edges).tolist() == [0.0, 0.0, 0.0]


def test_equal_width_edges_span_the_central_99_percent() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=20_000)
    e = equal_width_edges(v)
    assert len(e) == 11 and np.allclose(np.diff(e), np.diff(e)[0])
    assert e[0] == pytest.approx(np.percentile(v, 0.5)) and e[-1] == pytest.approx(np.percentile(v, 99.5))
    const = equal_width_edges(np.full(10, 0.3))
    assert (np.diff(const) > 0).all() and const[0] < 0.3 < const[-1]


def test_psi_properties() -> None:
    a = np.array([0.1] * 10)
    assert psi(a, a) == 0.0
    b = np.array([0.5, 0.5] + [0.0] * 8)
    assert psi(b, a) > 1.0 and np.isfinite(psi(b, a))  # empty bins are floored, not infinite
    assert psi(b, a) == pytest.approx(psi(a, b))  # symmetric by construction
    with pytest.raises(ValueError):
        psi([0.5, 0.5], a)


def test_outputs_kind_detection_and_confidence() -> None:
    logits = np.array([[2.0, -1.0, 0.5], [0.1, 3.0, -2.0]])
    probs = softmax(logits)
    assert detect_outputs_are(logits) == "logits" and detect_outputs_are(probs) == "probabilities"
    assert decide(logits, HeadSpec(), "logits")[1] == pytest.approx(probs.max(axis=1))
    assert decide(probs, HeadSpec(), "probabilities")[1] == pytest.approx(probs.max(axis=1))


def _tf_predictions(tflite: bytes, x: np.ndarray) -> np.ndarray:
    """Real-valued outputs from TensorFlow's interpreter (not LiteRT, not edgekit_agent): an independent check."""
    import tensorflow as tf

    it = tf.lite.Interpreter(model_content=tflite)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    (si, zi), (so, zo) = i["quantization"], o["quantization"]
    out = []
    for sample in x:
        q = np.clip(np.round(sample / si) + zi, -128, 127).astype(i["dtype"])
        it.set_tensor(i["index"], q[None])
        it.invoke()
        out.append((it.get_tensor(o["index"])[0].astype(np.int64) - zo) * so)
    return np.array(out)


@pytest.fixture(scope="module")
def digits_model_and_data(digits_bundle: Path) -> tuple[bytes, np.ndarray, np.ndarray, list[str]]:
    from fixtures_models import digits_arrays

    x, _ = digits_arrays()
    manifest = json.loads((digits_bundle / "manifest.json").read_text())
    spec = manifest["preprocess"]
    assert (spec["height"], spec["width"]) == x.shape[1:3]
    # Shuffled: scikit-learn's digits are grouped by writer, and later writers differ a little.
    idx = np.random.default_rng(0).permutation(len(x))
    return (digits_bundle / "model.tflite").read_bytes(), x[idx[:1200]], x[idx[1200:1500]], manifest["labels"]


def test_reference_of_a_real_model(digits_model_and_data: tuple[bytes, np.ndarray, np.ndarray, list[str]]) -> None:
    tflite, train_x, held_x, labels = digits_model_and_data
    ref = compute_reference(tflite, train_x, held_x, len(labels))
    d = ref.to_dict()
    assert set(d) >= {"input_mean", "class_freq", "confidence"}
    assert len(d["input_mean"]["edges"]) == 11 and len(d["input_mean"]["freq"]) == 10
    assert sum(d["input_mean"]["freq"]) == pytest.approx(1.0)
    assert d["confidence"]["edges"] == list(CONFIDENCE_EDGES) and sum(d["confidence"]["freq"]) == pytest.approx(1.0)
    assert len(d["class_freq"]) == len(labels) and sum(d["class_freq"]) == pytest.approx(1.0)
    json.dumps(d)  # plain JSON types only

    # The same statistics from TensorFlow's interpreter and plain numpy.
    real = _tf_predictions(tflite, held_x)
    assert ref.outputs_are == detect_outputs_are(real)
    expected_class = np.bincount(real.argmax(1), minlength=len(labels)) / len(held_x)
    assert np.abs(np.array(d["class_freq"]) - expected_class).max() <= 2 / len(held_x)  # at most a tie or two differ
    means = train_x.reshape(len(train_x), -1).mean(1)
    assert d["input_mean"]["edges"][0] == pytest.approx(np.percentile(means, 0.5))
    assert d["input_mean"]["edges"][-1] == pytest.approx(np.percentile(means, 99.5))


def test_reference_separates_drifted_from_fresh_inputs(
    digits_model_and_data: tuple[bytes, np.ndarray, np.ndarray, list[str]],
) -> None:
    """The point of the reference: fresh data of the same kind scores a low PSI, brightened data a high one."""
    tflite, train_x, held_x, labels = digits_model_and_data
    ref = compute_reference(tflite, train_x, held_x, len(labels))
    edges, expected = ref.input_mean.edges, ref.input_mean.freq
    fresh = psi(histogram(input_means(held_x), edges), expected)
    drifted = psi(histogram(input_means(np.clip(held_x + 0.25, 0, 1)), edges), expected)
    assert fresh < 0.1 < 0.25 < drifted
