"""Accuracy of the float Keras model and of the int8 TFLite model, side by side.

The int8 side runs through :class:`edgekit_agent.infer.runtime.Runtime` and :mod:`edgekit_agent.infer.preprocess`
(quantise the float input with the model's own scale and zero point, invoke one sample at a time, and the
head's decision of :func:`edgekit_agent.infer.classify.decide`), i.e. the code a device runs, so the figure is
the device's figure. A model with one output is a binary sigmoid head (docs/pipeline.md, Classifier heads). A
multi-label head is measured per label (accuracy, precision, recall, a 2×2 confusion each) and by exact match;
its ``accuracy`` is the mean per-label accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit_agent.contract.errors import DatasetError, ModelError
from edgekit_agent.contract.manifest import HeadSpec, OutputsAre, TensorSpec
from edgekit_agent.infer.classify import decide, sigmoid_probabilities
from edgekit_agent.infer.preprocess import dequantize, quantize
from edgekit_agent.infer.runtime import Runtime

ProgressFn = Callable[[int, int], None]
# Held-out accuracy less than this far above chance is "near chance": the model has not learned the classes.
NEAR_CHANCE_MARGIN = 0.10


@dataclass(frozen=True, slots=True)
class EvalResult:
    """Accuracy (fraction in [0, 1]) on ``samples`` inputs, the confusion matrix (rows: true class) and predictions."""

    accuracy: float
    samples: int
    confusion: list[list[int]] = field(repr=False)
    predictions: np.ndarray = field(repr=False)
    # Multi-label only: (tn, fp, fn, tp) per label, and the share of samples whose whole label set is right.
    label_confusion: tuple[tuple[int, int, int, int], ...] = ()
    exact_match: float | None = None

    @property
    def multilabel(self) -> bool:
        return bool(self.label_confusion)

    @property
    def correct(self) -> int:
        """Samples predicted right (multi-label: whose whole label set is right)."""
        if self.multilabel:
            return int(round((self.exact_match or 0.0) * self.samples))
        return int(sum(self.confusion[i][i] for i in range(len(self.confusion))))

    @property
    def chance(self) -> float:
        """The accuracy of guessing: the larger of 1/classes and the share of the most common true class
        (multi-label: each label guessed as its more common answer, averaged over labels)."""
        if self.multilabel:
            n = self.samples
            return float(np.mean([max(tn + fp, fn + tp) / n for tn, fp, fn, tp in self.label_confusion]))
        rows = [sum(row) for row in self.confusion]
        return max(1.0 / len(rows), max(rows) / self.samples) if rows and self.samples else float("nan")

    def per_label(self) -> list[dict[str, Any]]:
        """Multi-label: per label its accuracy, precision and recall (None where undefined) and counts."""
        out = []
        for tn, fp, fn, tp in self.label_confusion:
            out.append(
                {
                    "accuracy": (tn + tp) / self.samples if self.samples else None,
                    "precision": tp / (tp + fp) if tp + fp else None,
                    "recall": tp / (tp + fn) if tp + fn else None,
                    "confusion": [[tn, fp], [fn, tp]],
                }
            )
        return out

    @property
    def near_chance(self) -> bool:
        """Accuracy within :data:`NEAR_CHANCE_MARGIN` of :attr:`chance` (or below it)."""
        return bool(self.accuracy < self.chance + NEAR_CHANCE_MARGIN)

    def per_class_accuracy(self) -> list[float | None]:
        """Recall per true class (None for a class with no samples); multi-label: accuracy per label."""
        if self.multilabel:
            return [row["accuracy"] for row in self.per_label()]
        return [(row[i] / sum(row)) if sum(row) else None for i, row in enumerate(self.confusion)]

    def to_dict(self) -> dict[str, Any]:
        d = {
            "accuracy": self.accuracy,
            "samples": self.samples,
            "correct": self.correct,
            "confusion": self.confusion,
            "chance_accuracy": self.chance,
            "near_chance": self.near_chance,
        }
        if self.multilabel:
            d.update(exact_match=self.exact_match, per_label=self.per_label())
        return d


@dataclass(frozen=True, slots=True)
class ComparisonReport:
    """Float against int8 on the same samples; ``drop_points`` = (float - int8) × 100."""

    float_result: EvalResult | None
    int8_result: EvalResult
    int8_bytes: int
    float_bytes: int | None = None  # the Keras file or float .tflite, when known

    @property
    def float_accuracy(self) -> float | None:
        return self.float_result.accuracy if self.float_result else None

    @property
    def int8_accuracy(self) -> float:
        return self.int8_result.accuracy

    @property
    def drop_points(self) -> float | None:
        if self.float_result is None:
            return None
        return round(100.0 * (self.float_result.accuracy - self.int8_result.accuracy), 3)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "accuracy": self.int8_accuracy,
            "samples": self.int8_result.samples,
            "int8_accuracy": self.int8_accuracy,
            "chance_accuracy": self.int8_result.chance,
            "near_chance": self.int8_result.near_chance,
            "confusion": self.int8_result.confusion,
            "int8_bytes": self.int8_bytes,
        }
        if self.float_result is not None:
            d.update(
                float_accuracy=self.float_accuracy,
                drop_points=self.drop_points,
                float_confusion=self.float_result.confusion,
            )
        if self.int8_result.multilabel:
            d.update(exact_match=self.int8_result.exact_match, per_label=self.int8_result.per_label())
        if self.float_bytes is not None:
            d["float_bytes"] = self.float_bytes
        return d


def confusion_matrix(y: np.ndarray, pred: np.ndarray, num_classes: int) -> list[list[int]]:
    """Counts with rows = true class and columns = predicted class."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return m.tolist()


def _result(y: np.ndarray, pred: np.ndarray, num_classes: int) -> EvalResult:
    y = np.asarray(y, dtype=np.int64)
    acc = float(np.mean(pred == y)) if len(y) else float("nan")
    return EvalResult(
        accuracy=acc, samples=int(len(y)), confusion=confusion_matrix(y, pred, num_classes), predictions=pred
    )


def multilabel_result(y: np.ndarray, probabilities: np.ndarray, threshold: float) -> EvalResult:
    """A multi-label :class:`EvalResult` of true 0/1 rows ``y`` (N, labels) and per-label probabilities."""
    truth = np.asarray(y).reshape(len(y), -1) == 1
    hit = np.asarray(probabilities).reshape(len(y), -1) >= threshold
    counts = tuple(
        (int(np.sum(~t & ~h)), int(np.sum(~t & h)), int(np.sum(t & ~h)), int(np.sum(t & h)))
        for t, h in zip(truth.T, hit.T)
    )
    masks = (hit.astype(np.int64) << np.arange(hit.shape[1], dtype=np.int64)).sum(axis=1)
    n = len(truth)
    return EvalResult(
        accuracy=float(np.mean(truth == hit)) if n else float("nan"),
        samples=int(n),
        confusion=[],
        predictions=masks,
        label_confusion=counts,
        exact_match=float(np.mean((truth == hit).all(axis=1))) if n else float("nan"),
    )


def _check(x: np.ndarray, y: np.ndarray) -> None:
    if len(x) != len(y):
        raise DatasetError(f"{len(x)} inputs but {len(y)} labels.")
    if len(y) == 0:
        raise DatasetError("no samples to evaluate on; use a larger dataset or --split all.")


def _tensor_spec(details: dict[str, Any]) -> TensorSpec:
    scale, zero = details["quantization"]
    return TensorSpec(
        name=str(details["name"]),
        shape=tuple(int(s) for s in details["shape"]),
        dtype=np.dtype(details["dtype"]).name,
        scale=float(scale),
        zero_point=int(zero),
    )


def predict_tflite(
    tflite_or_path: bytes | str | Path,
    x: np.ndarray,
    *,
    num_threads: int | None = None,
    delegate: str = "xnnpack",
    on_progress: ProgressFn | None = None,
) -> np.ndarray:
    """Dequantised outputs (N, classes) of a TFLite model for float inputs ``x`` (N, H, W, C), one at a time,
    with LiteRT's ``delegate`` (``none``: builtin kernels, as a microcontroller profile's device computes)."""
    name = "<bytes>" if isinstance(tflite_or_path, bytes) else str(tflite_or_path)
    rt = Runtime(
        tflite_or_path if isinstance(tflite_or_path, bytes) else Path(tflite_or_path),
        num_threads=num_threads,
        delegate=delegate,
        model_name=name,
    )
    try:
        interp = rt.interpreter
        tin = _tensor_spec(interp.get_input_details()[0])
        tout = _tensor_spec(interp.get_output_details()[0])
        if tuple(x.shape[1:]) != tin.shape[1:]:
            raise ModelError(
                f"{name}: the model wants inputs of shape {tin.shape[1:]}, the data is {tuple(x.shape[1:])}; "
                "load the dataset with the model's preprocessing (image size, colour mode)."
            )
        out = np.empty((len(x), int(np.prod(tout.shape[1:]))), dtype=np.float32)
        for i in range(len(x)):
            q = quantize(x[i], tin)[None, ...]
            out[i] = dequantize(rt.invoke(q), tout).reshape(-1)
            if on_progress is not None:
                on_progress(i + 1, len(x))
        return out
    finally:
        rt.close()


def evaluate_tflite(
    tflite_or_path: bytes | str | Path,
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_threads: int | None = None,
    num_classes: int | None = None,
    head: HeadSpec | None = None,
    outputs_are: OutputsAre | None = None,
    delegate: str = "xnnpack",
    on_progress: ProgressFn | None = None,
) -> EvalResult:
    """Accuracy of a (quantised) TFLite model through the device's runtime and preprocessing code.

    ``head`` defaults to what the output width says (one output: sigmoid); ``outputs_are`` matters only for a
    sigmoid head and defaults to probabilities when every output is in [0, 1] (a bundle's manifest says which)."""
    _check(x, y)
    out = predict_tflite(tflite_or_path, x, num_threads=num_threads, delegate=delegate, on_progress=on_progress)
    head = head or head_for_width(out.shape[1])
    if outputs_are is None:
        outputs_are = "probabilities" if ((out >= 0) & (out <= 1)).all() else "logits"
    if head.kind == "multilabel":
        return multilabel_result(y, sigmoid_probabilities(out, outputs_are), head.threshold)
    return _result(y, decide(out, head, outputs_are)[0], num_classes or head_classes(head, out.shape[1]))


def head_for_width(outputs: int) -> HeadSpec:
    """The head a model with ``outputs`` output units has: one output is a binary sigmoid head."""
    return HeadSpec("sigmoid") if outputs == 1 else HeadSpec()


def head_classes(head: HeadSpec, outputs: int) -> int:
    """How many classes a head with ``outputs`` output units tells apart."""
    return 2 if head.kind == "sigmoid" else outputs


def evaluate_keras(
    model: Any, x: np.ndarray, y: np.ndarray, *, num_classes: int | None = None, head: HeadSpec | None = None
) -> EvalResult:
    """Accuracy of a Keras model (Keras 3 or tf_keras, any batch size) on float inputs; whether it outputs
    logits is read from the model, its head too unless given (a multilabel head cannot be told by its width)."""
    _check(x, y)
    from edgekit.pipeline.zoo import outputs_are, with_fixed_batch

    kind = outputs_are(model)
    fixed_batch = model.inputs[0].shape[0]
    if fixed_batch:  # a batch-1 export model: predict with a free-batch twin (same weights), or sample by sample
        try:
            model = with_fixed_batch(model, None)
        except ModelError:
            probs = np.concatenate(
                [np.asarray(model(x[i : i + fixed_batch], training=False)) for i in range(0, len(x), fixed_batch)]
            )
            return _keras_result(y, probs, kind, num_classes, head)
    return _keras_result(y, np.asarray(model.predict(x, batch_size=256, verbose=0)), kind, num_classes, head)


def _keras_result(
    y: np.ndarray, out: np.ndarray, kind: OutputsAre, num_classes: int | None, head: HeadSpec | None
) -> EvalResult:
    out = out.reshape(len(out), -1)
    head = head or head_for_width(out.shape[1])
    if head.kind == "multilabel":
        return multilabel_result(y, sigmoid_probabilities(out, kind), head.threshold)
    return _result(y, decide(out, head, kind)[0], num_classes or head_classes(head, out.shape[1]))


def compare(
    tflite_or_path: bytes | str | Path,
    x: np.ndarray,
    y: np.ndarray,
    *,
    model: Any | None = None,
    num_threads: int | None = None,
    num_classes: int | None = None,
    head: HeadSpec | None = None,
    outputs_are: OutputsAre | None = None,
    float_bytes: int | None = None,
    delegate: str = "xnnpack",
    on_progress: ProgressFn | None = None,
) -> ComparisonReport:
    """Int8 accuracy of the TFLite model (with LiteRT's ``delegate``) and, when ``model`` is given, float
    accuracy of the Keras model."""
    int8 = evaluate_tflite(
        tflite_or_path,
        x,
        y,
        num_threads=num_threads,
        num_classes=num_classes,
        head=head,
        outputs_are=outputs_are,
        delegate=delegate,
        on_progress=on_progress,
    )
    flt = evaluate_keras(model, x, y, num_classes=num_classes, head=head) if model is not None else None
    size = len(tflite_or_path) if isinstance(tflite_or_path, bytes) else Path(tflite_or_path).stat().st_size
    return ComparisonReport(float_result=flt, int8_result=int8, int8_bytes=size, float_bytes=float_bytes)
