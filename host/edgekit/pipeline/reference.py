"""Reference statistics for drift monitoring, written into ``manifest["reference"]`` at build time.

The device agent compares each telemetry window against these with PSI. The layout is the agreed contract::

    {"input_mean": {"edges": [11 floats], "freq": [10 floats]},
     "class_freq": [one float per label],
     "confidence": {"edges": [0.0, 0.1, ..., 1.0], "freq": [10 floats]}}

* ``input_mean``: per sample, the mean of the preprocessed float input tensor (before quantisation);
  10 equal-width bins between the 0.5th and 99.5th percentile of the training data, values outside
  counted in the first/last bin (so a shifted input shows up in the edge bins instead of vanishing).
* ``class_freq``: the int8 model's predicted-class distribution on held-out data (multi-label: per label,
  the share of predictions that hold it; these need not sum to 1).
* ``confidence``: histogram of the top-1 probability (softmax of the dequantised outputs when the model
  outputs logits; ``outputs_are`` says which); for a sigmoid head, the probability of the class chosen; for a
  multi-label head, the least sure of its per-label decisions.

The numbers are computed with the device's own runtime and quantisation code (``edgekit_agent``), so the
device's live statistics and this reference are measured the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit_agent.contract.errors import DatasetError, ModelError
from edgekit_agent.contract.manifest import HeadSpec, OutputsAre, TensorSpec
from edgekit_agent.infer.classify import decide
from edgekit_agent.infer.preprocess import dequantize, quantize
from edgekit_agent.infer.runtime import Runtime

BINS = 10
PSI_FLOOR = 1e-4  # fractions are floored here before the log (an empty bin would make PSI infinite)
CONFIDENCE_EDGES: tuple[float, ...] = tuple(round(i / BINS, 10) for i in range(BINS + 1))


@dataclass(frozen=True, slots=True)
class Histogram:
    """Bin edges (``len(freq) + 1`` of them) and the fraction of samples in each bin (sums to 1)."""

    edges: tuple[float, ...]
    freq: tuple[float, ...]

    def to_dict(self) -> dict[str, list[float]]:
        return {"edges": list(self.edges), "freq": list(self.freq)}


@dataclass(frozen=True, slots=True)
class Reference:
    """The drift reference of one model (see the module docstring for the meaning of each part)."""

    input_mean: Histogram
    class_freq: tuple[float, ...]
    confidence: Histogram
    outputs_are: OutputsAre
    samples: int  # held-out samples behind class_freq and confidence

    def to_dict(self) -> dict[str, Any]:
        """The ``manifest["reference"]`` object (``outputs_are`` is a field of the manifest itself)."""
        return {
            "input_mean": self.input_mean.to_dict(),
            "class_freq": list(self.class_freq),
            "confidence": self.confidence.to_dict(),
            "samples": self.samples,
        }


def input_means(x: np.ndarray) -> np.ndarray:
    """Per-sample mean of float inputs shaped (N, H, W, C) (or any (N, ...))."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2 or len(x) == 0:
        raise DatasetError(f"need a non-empty batch of inputs (N, ...) for reference statistics, got shape {x.shape}.")
    return x.reshape(len(x), -1).mean(axis=1)


def histogram(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Fractions of ``values`` per bin; values below the first or above the last edge count in the end bins."""
    edges_arr = np.asarray(edges, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) == 0:
        return np.zeros(len(edges_arr) - 1)
    # searchsorted on the inner edges gives the bin index directly, and clipping is implicit.
    idx = np.searchsorted(edges_arr[1:-1], values, side="right")
    counts = np.bincount(idx, minlength=len(edges_arr) - 1).astype(np.float64)
    return counts / counts.sum()


def equal_width_edges(values: np.ndarray, bins: int = BINS, lo_pct: float = 0.5, hi_pct: float = 99.5) -> np.ndarray:
    """``bins`` equal-width bins between two percentiles of ``values`` (widened if the values are constant)."""
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), [lo_pct, hi_pct])
    if not hi > lo:  # constant inputs: a tiny span keeps the edges strictly increasing
        span = max(abs(lo) * 1e-6, 1e-6)
        lo, hi = lo - span, hi + span
    return np.linspace(lo, hi, bins + 1)


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)  # shift for numerical stability
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def detect_outputs_are(real_outputs: np.ndarray, atol: float = 0.05) -> OutputsAre:
    """``probabilities`` when every row is non-negative and sums to 1 (within int8 rounding), else ``logits``."""
    y = np.asarray(real_outputs, dtype=np.float64)
    if y.size and (y >= -1e-6).all() and np.allclose(y.sum(axis=-1), 1.0, atol=atol):
        return "probabilities"
    return "logits"


def psi(actual: Sequence[float], expected: Sequence[float], floor: float = PSI_FLOOR) -> float:
    """Population stability index ``sum((a - e) * ln(a / e))`` with both fractions floored at ``floor``."""
    a = np.maximum(np.asarray(actual, dtype=np.float64), floor)
    e = np.maximum(np.asarray(expected, dtype=np.float64), floor)
    if a.shape != e.shape:
        raise ValueError(f"PSI needs histograms of the same length, got {a.shape} and {e.shape}.")
    return float(np.sum((a - e) * np.log(a / e)))


def run_int8(tflite: bytes, x_float: np.ndarray, *, model_name: str = "model.tflite") -> tuple[np.ndarray, np.ndarray]:
    """Quantise float inputs, run them one by one through the device runtime; (raw outputs, real outputs)."""
    rt = Runtime(tflite, num_threads=1, model_name=model_name)
    details_in = rt.interpreter.get_input_details()[0]
    details_out = rt.interpreter.get_output_details()[0]
    tin = _spec(details_in)
    tout = _spec(details_out)
    want = tuple(tin.shape[1:])
    if tuple(x_float.shape[1:]) != want:
        raise ModelError(f"{model_name}: inputs of shape {x_float.shape[1:]} given, the model wants {want}.")
    raw = np.stack([rt.invoke(quantize(x, tin)[None, ...])[0] for x in np.asarray(x_float, dtype=np.float32)])
    rt.close()
    return raw, dequantize(raw, tout)


def _spec(d: dict[str, Any]) -> TensorSpec:
    scale, zero = d["quantization"]
    return TensorSpec(
        str(d["name"]), tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]).name, float(scale), int(zero)
    )


def compute_reference(
    tflite: bytes,
    train_x: np.ndarray,
    heldout_x: np.ndarray,
    num_classes: int,
    *,
    outputs_are: OutputsAre | None = None,
    head: HeadSpec | None = None,
) -> Reference:
    """Drift reference for an int8 model: input means from ``train_x``, predictions from ``heldout_x``.

    ``outputs_are`` is detected from the held-out outputs when not given (rows of non-negative values
    summing to 1 are probabilities). ``head`` (default: softmax) decides the class and its confidence as the
    device does (:func:`edgekit_agent.infer.classify.decide`). Both arrays are preprocessed float inputs
    (N, H, W, C).
    """
    means = input_means(train_x)
    edges = equal_width_edges(means)
    input_hist = Histogram(tuple(float(e) for e in edges), tuple(float(f) for f in histogram(means, edges)))

    _, real = run_int8(tflite, heldout_x)
    head = head or HeadSpec()
    units = 2 if head.kind == "sigmoid" and real.shape[-1] == 1 else real.shape[-1]
    if units != num_classes:
        raise ModelError(f"the model has {real.shape[-1]} outputs but the dataset has {num_classes} classes.")
    kind: OutputsAre = outputs_are or detect_outputs_are(real)
    predicted, confidence = decide(real, head, kind)
    if head.kind == "multilabel":  # per label: the share of predictions that hold it (telemetry counts the same)
        class_freq = ((predicted[:, None] >> np.arange(num_classes)) & 1).sum(axis=0) / len(predicted)
    else:
        class_freq = np.bincount(predicted, minlength=num_classes) / len(predicted)
    conf = histogram(confidence, CONFIDENCE_EDGES)
    return Reference(
        input_mean=input_hist,
        class_freq=tuple(float(f) for f in class_freq),
        confidence=Histogram(CONFIDENCE_EDGES, tuple(float(f) for f in conf)),
        outputs_are=kind,
        samples=int(len(heldout_x)),
    )
