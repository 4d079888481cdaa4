"""Raw output tensor → the top-1 :class:`Prediction` and class probabilities (like pycoral's adapters/classify.py).

Whether the model ends in logits or probabilities is the manifest's ``outputs_are``; softmax is applied
only to logits, so confidences on the device mean the same as the drift reference's confidence histogram.
The manifest's ``head`` says how outputs become a class: :class:`TopOne` (one output per class, the largest
wins), :class:`Binary` (one sigmoid output against a threshold) or :class:`MultiLabel` (one sigmoid output per
label: the set of labels at or above the threshold, as a bit mask). :func:`top_one` picks the one for a
manifest: the agent builds it once per bundle and calls it on every inference. :func:`decide` does the same
for a batch of dequantised outputs (the workstation's accuracy, drift reference and the self-test).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from edgekit_agent.contract.manifest import HeadSpec, Manifest, OutputsAre, TensorSpec
from edgekit_agent.infer.preprocess import dequantize

SMALL_OUTPUT = 64  # top-1 in pure Python below this many classes (cheaper than numpy's call overhead)


class Prediction(NamedTuple):
    """The top-1 class of one inference; a served one (the agent's) also says where the time went.

    A multi-label head's prediction is a set: ``index`` is its bit mask (bit i: ``labels[i]`` of the bundle),
    ``label`` the labels joined by "+" ("" for none), ``labels`` the set and ``probabilities`` every label's.

    An immutable named tuple rather than a frozen dataclass: the agent builds one per inference, and a frozen
    dataclass's ``__init__`` (one ``object.__setattr__`` per field) costs ~1 µs more (docs/agent.md, "Serving
    figures")."""

    index: int
    label: str
    confidence: float  # top-1 probability in [0, 1] (softmax of dequantised logits, or the dequantised probability)
    latency_ms: float | None = None  # total: preprocess + invoke + top-1
    preprocess_ms: float | None = None
    invoke_ms: float | None = None
    labels: tuple[str, ...] | None = None  # multi-label only
    probabilities: Mapping[str, float] | None = None  # multi-label only

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index, "label": self.label, "confidence": self.confidence}
        if self.labels is not None:
            d.update(labels=list(self.labels), probabilities=dict(self.probabilities or {}))
        if self.latency_ms is not None:
            d.update(latency_ms=self.latency_ms, preprocess_ms=self.preprocess_ms, invoke_ms=self.invoke_ms)
        return d


class TopOne:
    """Top-1 index and confidence of one sample's raw output tensor, set up once per bundle.

    For a quantised output, softmax's top-1 probability is ``1 / sum(exp(-(q_top - q) * scale))``: the
    exponential of every possible raw gap is tabulated here, so an inference costs table look-ups (in pure
    Python below :data:`SMALL_OUTPUT` classes, where numpy's per-call overhead is the larger cost).
    """

    __slots__ = ("labels", "_logits", "_scale", "_zero", "_table", "_table_np")

    def __init__(self, tensor: TensorSpec, outputs_are: OutputsAre, labels: tuple[str, ...] = ()) -> None:
        self.labels = labels
        self._logits = outputs_are == "logits"
        self._scale, self._zero = float(tensor.scale or 0.0), int(tensor.zero_point)
        qmin, qmax = tensor.qmin, tensor.qmax
        span = qmax - qmin if self._scale and qmin is not None and qmax is not None else 0
        self._table = [math.exp(-d * self._scale) for d in range(span + 1)] if span else []
        self._table_np = np.asarray(self._table, dtype=np.float64) if span else None

    @classmethod
    def of(cls, manifest: Manifest) -> TopOne:
        return cls(manifest.outputs[0], manifest.outputs_are, manifest.labels)

    def index_confidence(self, out: np.ndarray) -> tuple[int, float]:
        """(class index, top-1 probability) of one raw output (any shape holding one sample's classes)."""
        if not self._table or out.size > SMALL_OUTPUT:
            return self._index_confidence_numpy(out)
        values = out.ravel().tolist()
        top = max(values)
        index = values.index(top)
        if not self._logits:
            return index, min(1.0, max(0.0, (top - self._zero) * self._scale))
        table = self._table
        total = 0.0
        for v in values:
            total += table[top - v]
        return index, 1.0 / total

    def _index_confidence_numpy(self, out: np.ndarray) -> tuple[int, float]:
        flat = out.ravel()
        index = int(flat.argmax())
        if self._table_np is not None:
            top = int(flat[index])
            if not self._logits:
                return index, min(1.0, max(0.0, (top - self._zero) * self._scale))
            return index, float(1.0 / self._table_np[top - flat.astype(np.int64)].sum())
        real = flat.astype(np.float64)  # a float output tensor
        if self._scale:  # an integer tensor with no table (int32): dequantised like preprocess.dequantize
            real = (real - self._zero) * self._scale
        if not self._logits:
            return index, float(min(1.0, max(0.0, real[index])))
        return index, float(1.0 / np.exp(real - real[index]).sum())

    def __call__(self, out: np.ndarray) -> Prediction:
        index, confidence = self.index_confidence(out)
        return Prediction(index, self.labels[index] if index < len(self.labels) else str(index), confidence)


class _Sigmoid:
    """What the sigmoid heads share: the labels, whether outputs are logits, the output's quantisation and the
    threshold."""

    __slots__ = ("labels", "_logits", "_scale", "_zero", "_threshold")

    def __init__(
        self, tensor: TensorSpec, outputs_are: OutputsAre, labels: tuple[str, ...] = (), threshold: float = 0.5
    ) -> None:
        self.labels = labels
        self._logits = outputs_are == "logits"
        self._scale, self._zero = float(tensor.scale or 0.0), int(tensor.zero_point)
        self._threshold = threshold


class Binary(_Sigmoid):
    """One sigmoid output (the probability of ``labels[1]``): class 1 at or above ``threshold``, else class 0,
    with the probability of the class chosen as its confidence."""

    __slots__ = ()

    def index_confidence(self, out: np.ndarray) -> tuple[int, float]:
        real = float(out.flat[0])
        if self._scale:
            real = (real - self._zero) * self._scale
        if self._logits:
            p = 1.0 / (1.0 + math.exp(-real)) if real > -700.0 else 0.0
        else:
            p = min(1.0, max(0.0, real))
        return (1, p) if p >= self._threshold else (0, 1.0 - p)

    def __call__(self, out: np.ndarray) -> Prediction:
        index, confidence = self.index_confidence(out)
        return Prediction(index, self.labels[index] if index < len(self.labels) else str(index), confidence)


class MultiLabel(_Sigmoid):
    """One sigmoid output per label: the set of labels at or above ``threshold`` as a bit mask (bit i:
    ``labels[i]``), and as confidence the least sure of the per-label decisions (max(p, 1 - p)), since the set
    is right only when every label is."""

    __slots__ = ()

    def probabilities(self, out: np.ndarray) -> list[float]:
        real = np.asarray(out, dtype=np.float64).ravel()
        if self._scale:
            real = (real - self._zero) * self._scale
        return sigmoid_probabilities(real, "logits" if self._logits else "probabilities").tolist()

    def index_confidence(self, out: np.ndarray) -> tuple[int, float]:
        mask, confidence, t = 0, 1.0, self._threshold
        for i, p in enumerate(self.probabilities(out)):
            if p >= t:
                mask |= 1 << i
                confidence = min(confidence, p)
            else:
                confidence = min(confidence, 1.0 - p)
        return mask, confidence

    def prediction(self, out: np.ndarray, mask: int, confidence: float, *timings: float) -> Prediction:
        """The :class:`Prediction` of an output already decided (``mask``, ``confidence``), with its timings."""
        chosen = label_set(mask, self.labels)
        probs = dict(zip(self.labels, self.probabilities(out)))
        return Prediction(mask, "+".join(chosen), confidence, *timings, labels=chosen, probabilities=probs)

    def __call__(self, out: np.ndarray) -> Prediction:
        return self.prediction(out, *self.index_confidence(out))


def label_set(mask: int, labels: Sequence[str]) -> tuple[str, ...]:
    """The labels of a multi-label bit mask, in the bundle's order."""
    return tuple(label for i, label in enumerate(labels) if mask >> i & 1)


class LabelSets:
    """A multi-label bundle's true label set from a name: labels joined by "+" (``cat+dog``, any order) give
    their bit mask; anything else is unlabelled. It answers ``get`` and ``in`` as the ``{label: index}`` of the
    other heads does, where the agent resolves the label of a watched folder or an ``infer`` request."""

    __slots__ = ("_bit",)

    def __init__(self, labels: Sequence[str]) -> None:
        self._bit = {label: 1 << i for i, label in enumerate(labels)}

    def get(self, name: str, default: int = -1) -> int:
        if name in self._bit:  # a label that itself holds a "+"
            return self._bit[name]
        parts = name.split("+")
        if not all(part in self._bit for part in parts):
            return default
        mask = 0
        for part in parts:
            mask |= self._bit[part]
        return mask

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) >= 0


def top_one(manifest: Manifest) -> TopOne | Binary | MultiLabel:
    """The per-inference decision for a bundle's head (built once, called on every output)."""
    if manifest.head.kind == "sigmoid":
        return Binary(manifest.outputs[0], manifest.outputs_are, manifest.labels, manifest.head.threshold)
    if manifest.head.kind == "multilabel":
        return MultiLabel(manifest.outputs[0], manifest.outputs_are, manifest.labels, manifest.head.threshold)
    return TopOne.of(manifest)


def truth_index(manifest: Manifest) -> Mapping[str, int] | LabelSets:
    """How a label name becomes the index telemetry compares predictions with: the class index, or for a
    multi-label head the bit mask of a "+"-joined label set (accuracy is then the exact-match rate)."""
    if manifest.head.kind == "multilabel":
        return LabelSets(manifest.labels)
    return {name: i for i, name in enumerate(manifest.labels)}


def top1(raw: np.ndarray, manifest: Manifest) -> Prediction:
    """The top-1 :class:`Prediction` for one sample's raw output (:func:`top_one` serves many faster)."""
    return top_one(manifest)(raw)


def decide(real: np.ndarray, head: HeadSpec, outputs_are: OutputsAre) -> tuple[np.ndarray, np.ndarray]:
    """(class index, confidence) per sample of dequantised outputs (N, outputs), as :func:`top_one` decides
    one: the workstation's accuracy, confusion and drift reference and the device's self-test use this."""
    y = np.asarray(real, dtype=np.float64).reshape(len(real), -1)
    if head.kind == "multilabel":
        p = sigmoid_probabilities(y, outputs_are)
        hit = p >= head.threshold
        masks = (hit.astype(np.int64) << np.arange(y.shape[1], dtype=np.int64)).sum(axis=1)
        return masks, np.where(hit, p, 1.0 - p).min(axis=1)
    if head.kind == "sigmoid":
        with np.errstate(over="ignore"):
            p = 1.0 / (1.0 + np.exp(-y[:, 0])) if outputs_are == "logits" else np.clip(y[:, 0], 0.0, 1.0)
        classes = (p >= head.threshold).astype(np.int64)
        return classes, np.where(classes == 1, p, 1.0 - p)
    classes = y.argmax(axis=-1).astype(np.int64)
    if outputs_are == "logits":
        z = np.exp(y - y.max(axis=-1, keepdims=True))
        return classes, 1.0 / z.sum(axis=-1)
    return classes, np.clip(y.max(axis=-1), 0.0, 1.0)


def sigmoid_probabilities(real: np.ndarray, outputs_are: OutputsAre) -> np.ndarray:
    """Per-output probabilities of dequantised sigmoid outputs (any shape): the sigmoid of logits, or clipped."""
    y = np.asarray(real, dtype=np.float64)
    if outputs_are == "logits":
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-y))
    return np.clip(y, 0.0, 1.0)


def softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64) - np.max(x)
    e = np.exp(z)
    return (e / e.sum()).astype(np.float32)


def probabilities(raw: np.ndarray, tensor: TensorSpec, kind: OutputsAre = "logits") -> np.ndarray:
    """Every class's probability (1-D) from a raw (quantised) output tensor of one sample."""
    real = dequantize(np.asarray(raw).reshape(-1), tensor)
    return softmax(real) if kind == "logits" else np.clip(real, 0.0, 1.0)
