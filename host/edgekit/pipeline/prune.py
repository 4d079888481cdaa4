"""Magnitude pruning to a target sparsity with tensorflow-model-optimization, measured honestly.

tfmot 0.8.1 accepts only tf_keras models (docs/pipeline.md, Prune): a Keras 3 model is rebuilt with tf_keras (weights
copied exactly), pruned, stripped of its wrappers and copied back, so later steps get the kind of model
they were given. The schedule's end step and frequency come from the real number of fine-tune steps: the
default frequency (every 100 steps) silently prunes nothing in a short fine-tune (docs/pipeline.md, Prune).
Sparsity does not shrink a raw .tflite file (zeros are stored like any other int8); it shows only after
compression, so both sizes are reported.
"""

from __future__ import annotations

import gzip
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekit.pipeline.data import Splits
from edgekit_agent.contract.errors import ModelError, UsageError
from edgekit_agent.contract.manifest import HeadSpec

EpochFn = Callable[[int, int, dict[str, float]], None]
# Pruning happens in this many steps between 0 and the target, then the mask is held while fine-tuning.
PRUNING_UPDATES = 10
# Fraction of the fine-tune spent raising sparsity; the rest recovers accuracy at the final sparsity.
RAMP_FRACTION = 0.7


@dataclass(frozen=True, slots=True)
class LayerSparsity:
    """Zeros in one layer's kernel after pruning."""

    layer: str
    weights: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.weights if self.weights else 0.0


@dataclass(frozen=True, slots=True)
class PruneResult:
    """The pruned model (wrappers stripped) and what pruning did. Accuracies are fractions on the test split."""

    model: Any = field(repr=False)
    target_sparsity: float
    layers: tuple[LayerSparsity, ...]
    accuracy_before: float
    accuracy_after: float
    steps: int
    end_step: int
    frequency: int
    int8_bytes_before: int | None = None
    int8_bytes_after: int | None = None
    int8_gzip_before: int | None = None
    int8_gzip_after: int | None = None
    seconds: float = 0.0

    @property
    def sparsity(self) -> float:
        """Overall sparsity of the pruned layers' kernels."""
        total = sum(layer.weights for layer in self.layers)
        return sum(layer.zeros for layer in self.layers) / total if total else 0.0

    @property
    def accuracy_drop(self) -> float:
        return round(100.0 * (self.accuracy_before - self.accuracy_after), 3)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_sparsity": self.target_sparsity,
            "sparsity": round(self.sparsity, 4),
            "layers": [
                {"layer": s.layer, "weights": s.weights, "zeros": s.zeros, "sparsity": round(s.sparsity, 4)}
                for s in self.layers
            ],
            "accuracy_before": self.accuracy_before,
            "accuracy_after": self.accuracy_after,
            "accuracy_drop_points": self.accuracy_drop,
            "steps": self.steps,
            "end_step": self.end_step,
            "frequency": self.frequency,
            "int8_bytes_before": self.int8_bytes_before,
            "int8_bytes_after": self.int8_bytes_after,
            "int8_gzip_before": self.int8_gzip_before,
            "int8_gzip_after": self.int8_gzip_after,
            "seconds": round(self.seconds, 2),
        }


def gzip_size(data: bytes) -> int:
    """Bytes after gzip -9 (mtime 0, so the figure is reproducible)."""
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def schedule_steps(n_train: int, batch_size: int, epochs: int) -> tuple[int, int, int]:
    """(total steps, end step, frequency) for a fine-tune of ``epochs`` over ``n_train`` samples.

    The end step is a multiple of the frequency, so the last pruning update lands exactly on the target.
    """
    steps = epochs * math.ceil(n_train / batch_size)
    frequency = max(1, int(steps * RAMP_FRACTION) // PRUNING_UPDATES)
    end_step = max(frequency, (int(steps * RAMP_FRACTION) // frequency) * frequency)
    return steps, end_step, frequency


def kernel_sparsity(model: Any) -> tuple[LayerSparsity, ...]:
    """Zeros per kernel of every Conv/Dense layer (the layers magnitude pruning touches)."""
    out = []
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None) if type(layer).__name__ != "DepthwiseConv2D" else layer.depthwise_kernel
        if kernel is None:
            continue
        w = np.asarray(kernel)
        out.append(LayerSparsity(layer=layer.name, weights=int(w.size), zeros=int(np.sum(w == 0))))
    return tuple(out)


def prune_model(
    model: Any,
    splits: Splits,
    *,
    sparsity: float = 0.5,
    epochs: int = 2,
    seed: int = 0,
    batch_size: int = 32,
    learning_rate: float = 3e-4,
    schedule: str = "polynomial",
    measure_sizes: bool = True,
    on_epoch: EpochFn | None = None,
) -> PruneResult:
    """Prune the Conv/Dense kernels of ``model`` to ``sparsity`` while fine-tuning ``epochs`` on ``splits.train``.

    ``schedule`` is ``polynomial`` (sparsity rises from 0) or ``constant`` (the target from the first update).
    The input model is not modified. Raises :class:`ModelError` if the achieved sparsity falls short.
    """
    if not 0.0 < sparsity < 1.0:
        raise UsageError(f"sparsity is a fraction in (0, 1), got {sparsity}.")
    if epochs < 1:
        raise UsageError(f"pruning needs at least one fine-tune epoch, got {epochs}.")
    if schedule not in ("polynomial", "constant"):
        raise UsageError(f"schedule must be 'polynomial' or 'constant', got '{schedule}'.")
    from edgekit.pipeline import zoo
    from edgekit.pipeline.evaluate import evaluate_keras

    start = time.perf_counter()
    tfmot = zoo.import_tfmot()
    import tf_keras

    tf_keras.utils.set_random_seed(seed)
    sp = tfmot.sparsity.keras
    steps, end_step, frequency = schedule_steps(len(splits.train.y), batch_size, epochs)
    if schedule == "polynomial":
        sched = sp.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0, end_step=end_step, frequency=frequency
        )
    else:
        sched = sp.ConstantSparsity(sparsity, begin_step=0, end_step=end_step, frequency=frequency)
    # A fresh copy: prune_low_magnitude changes weights in place (docs/pipeline.md, Prune).
    base = zoo.to_tf_keras(model)
    try:
        wrapped = sp.prune_low_magnitude(base, pruning_schedule=sched)
    except ValueError as exc:
        raise ModelError(f"model '{model.name}': tfmot cannot prune it ({exc}).") from None
    loss, targets = zoo.head_loss(base, tf_keras.losses, multilabel=splits.train.multilabel)
    wrapped.compile(tf_keras.optimizers.Adam(learning_rate), loss, metrics=["accuracy"])
    callbacks: list[Any] = [sp.UpdatePruningStep()]
    if on_epoch is not None:

        class _Report(tf_keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                on_epoch(epoch, epochs, {k: float(v) for k, v in (logs or {}).items()})

        callbacks.append(_Report())
    val = (splits.val.x, targets(splits.val.y)) if len(splits.val.y) else None
    wrapped.fit(
        splits.train.x,
        targets(splits.train.y),
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        verbose=0,
        validation_data=val,
        callbacks=callbacks,
    )
    stripped = sp.strip_pruning(wrapped)
    layers = kernel_sparsity(stripped)
    pruned = stripped if zoo.is_tf_keras(model) else zoo.to_keras3(stripped, like=model)
    achieved = sum(s.zeros for s in layers) / max(1, sum(s.weights for s in layers))
    if achieved < sparsity - 0.05:
        raise ModelError(
            f"pruning reached only {achieved:.1%} sparsity of the {sparsity:.0%} asked for ({steps} fine-tune steps, "
            f"update every {frequency}); fine-tune longer (--epochs) or on more data."
        )
    test = splits.test if len(splits.test.y) else splits.val
    head = HeadSpec("multilabel") if splits.train.multilabel else None  # else the output width tells
    before = evaluate_keras(model, test.x, test.y, num_classes=len(splits.labels), head=head).accuracy
    after = evaluate_keras(pruned, test.x, test.y, num_classes=len(splits.labels), head=head).accuracy
    sizes: dict[str, int | None] = dict.fromkeys(
        ("int8_bytes_before", "int8_bytes_after", "int8_gzip_before", "int8_gzip_after")
    )
    if measure_sizes:  # both models in one converter process, calibrated on the same sample
        from edgekit.pipeline.convert import convert_int8_many

        results = convert_int8_many(
            [model, pruned],
            splits.train.x,
            seed=seed,
            strict=False,
            with_float=False,
            names=[f"{model.name} (before pruning)", f"{model.name} (after pruning)"],
        )
        for tag, res in zip(("before", "after"), results):
            sizes[f"int8_bytes_{tag}"], sizes[f"int8_gzip_{tag}"] = len(res.tflite), gzip_size(res.tflite)
    return PruneResult(
        model=pruned,
        target_sparsity=sparsity,
        layers=layers,
        accuracy_before=before,
        accuracy_after=after,
        steps=steps,
        end_step=end_step,
        frequency=frequency,
        seconds=time.perf_counter() - start,
        **sizes,
    )
