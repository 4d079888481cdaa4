"""Train a zoo model on a dataset split, and load/save user models (.keras, .h5, SavedModel).

Training uses Keras 3 with a free batch dimension; the returned model is rebuilt with a fixed batch of 1
(weights copied, docs/pipeline.md, Train) so that every later step — conversion, pruning, the bundle — sees the
shape the device runs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.pipeline.data import Dataset, Splits, image_input, peek, shape_text, spec_for_input
from edgekit_agent.contract.errors import EdgekitError, ModelError, UsageError
from edgekit_agent.contract.manifest import HeadKind, HeadSpec, OutputsAre, PreprocessSpec
from edgekit_agent.infer.classify import decide, sigmoid_probabilities

# Epochs per architecture. The CNN trains on the images plus four shifted copies (see augment_shifts), so
# one epoch is five passes; 6 epochs take the digits demo to about 99 % float test accuracy.
DEFAULT_EPOCHS = {"cnn": 6, "mobilenetv2": 30, "dscnn": 20}
EpochFn = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True, slots=True)
class TrainResult:
    """A trained model (fixed batch 1) and how it got there. Accuracies are fractions in [0, 1]."""

    model: Any
    arch: str
    epochs: int
    history: dict[str, list[float]] = field(repr=False)
    float_accuracy: float
    test_samples: int
    outputs_are: OutputsAre = "probabilities"
    head: HeadSpec = HeadSpec()
    # On splits.val, measured as evaluate_keras does (None without a validation split): the figure the convert
    # step compares int8 against, so it need not predict the validation split again.
    val_accuracy: float | None = None


def augment_shifts(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The images plus copies shifted up, down, left and right by 1/8 of their size (zero fill).

    Small centred images (digits) are where a model overfits to pixel positions; shifted copies lift the
    digits demo's worst seed from 97.0 % to 99.3 % test accuracy for the same number of passes (every seed of
    scripts/bench_pipeline.py at or above 98.9 %).
    """
    h, w = x.shape[1:3]
    dy, dx = max(1, h // 8), max(1, w // 8)
    copies = [x]
    for sy, sx in ((dy, 0), (-dy, 0), (0, dx), (0, -dx)):
        out = np.zeros_like(x)
        out[:, max(sy, 0) : h + min(sy, 0), max(sx, 0) : w + min(sx, 0)] = x[
            :, max(-sy, 0) : h + min(-sy, 0), max(-sx, 0) : w + min(-sx, 0)
        ]
        copies.append(out)
    return np.concatenate(copies), np.concatenate([y] * len(copies))


def _seed_everything(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)  # python, numpy and the backend in one call


def _epoch_callback(on_epoch: EpochFn | None, epochs: int) -> list[Any]:
    import keras

    if on_epoch is None:
        return []

    class _Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            on_epoch(epoch, epochs, {k: float(v) for k, v in (logs or {}).items()})

    return [_Report()]


def head_for_dataset(ds: Dataset, kind: HeadKind | None = None, threshold: float | None = None) -> HeadSpec:
    """The head to train for ``ds``: ``kind``, or by default multilabel for a multi-label dataset and softmax
    otherwise. A sigmoid head needs exactly two classes; a multi-label dataset only a multilabel head;
    ``threshold`` (default 0.5) is a :class:`UsageError` on a softmax head, which has none."""
    kind = kind or ("multilabel" if ds.multilabel else "softmax")
    if ds.multilabel and kind != "multilabel":
        raise UsageError(f"the dataset is multi-label ({', '.join(ds.labels)}): it trains a multilabel head only.")
    if kind == "multilabel" and not ds.multilabel:
        raise UsageError(
            "a multilabel head needs a multi-label dataset: an image folder with a labels.csv of file,label1;label2 "
            "rows, or an .npz whose y is (N, labels) of 0/1 (docs/pipeline.md, Classifier heads)."
        )
    if kind == "sigmoid" and len(ds.labels) != 2:
        raise UsageError(
            f"a sigmoid head tells two classes apart; the dataset has {len(ds.labels)} ({', '.join(ds.labels)}): "
            "use the default softmax head."
        )
    if threshold is None:
        return HeadSpec(kind)
    if kind == "softmax":
        raise UsageError(
            f"--threshold {threshold:g}: the head is softmax, which takes the largest output and has no threshold; "
            "a threshold is for a sigmoid head (one output, --head sigmoid on two classes) or a multi-label dataset."
        )
    if not 0.0 < threshold < 1.0:
        raise UsageError(f"--threshold is a probability strictly between 0 and 1, got {threshold:g}.")
    return HeadSpec(kind, threshold)


def head_targets(head: HeadSpec, y: np.ndarray) -> np.ndarray:
    """What a head trains on: class indices (softmax), (N, 1) floats (sigmoid) or (N, labels) floats."""
    if head.kind == "sigmoid":
        return y.astype(np.float32)[:, None]
    return y.astype(np.float32) if head.kind == "multilabel" else y


def train_model(
    splits: Splits,
    *,
    head: HeadSpec | None = None,
    arch: str = "auto",
    epochs: int | None = None,
    seed: int = 0,
    alpha: float = 0.35,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    augment: bool | None = None,
    on_epoch: EpochFn | None = None,
) -> TrainResult:
    """Train ``arch`` (a zoo key or ``auto``) on ``splits.train``, keep the epoch with the best validation
    accuracy, and measure float accuracy on ``splits.test``. ``head`` defaults to :func:`head_for_dataset`'s:
    a sigmoid or multilabel head ends in sigmoid outputs trained with binary cross-entropy (its accuracy is
    per output, at the head's threshold; for multi-label the mean over labels).

    ``augment`` adds shifted copies of the training images (:func:`augment_shifts`); None means on for the
    CNN, off for MobileNetV2. ``on_epoch(epoch, epochs, logs)`` is called after every epoch (``logs`` has
    loss, accuracy, val_*).
    """
    import keras

    from edgekit.pipeline import zoo
    from edgekit.pipeline.evaluate import evaluate_keras

    train, val, test = splits.train, splits.val, splits.test
    shape = tuple(int(s) for s in train.x.shape[1:])
    name = zoo.choose_arch(shape, splits.spec.kind) if arch == "auto" else arch
    epochs = int(epochs if epochs is not None else DEFAULT_EPOCHS.get(name, 20))
    if epochs < 1:
        raise UsageError(f"epochs must be at least 1, got {epochs}.")
    head = head or head_for_dataset(train)
    _seed_everything(seed)
    units = 1 if head.kind == "sigmoid" else len(train.labels)
    activation = "softmax" if head.kind == "softmax" else "sigmoid"
    model = zoo.build_model(name, shape, units, alpha=alpha, activation=activation)
    x_train, y_train = (
        augment_shifts(train.x, train.y) if (augment if augment is not None else name == "cnn") else (train.x, train.y)
    )
    y_train = head_targets(head, y_train)
    # Cosine decay: a high rate early, a small one for the last epochs, without a tuning knob per dataset.
    steps = epochs * int(np.ceil(len(y_train) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate * 2, decay_steps=max(steps, 1), alpha=0.05)
    if head.kind == "softmax":
        model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy", metrics=["accuracy"])
    else:  # named "accuracy" so that val_accuracy picks the best epoch and reports progress as for softmax
        metric = keras.metrics.BinaryAccuracy(name="accuracy", threshold=head.threshold)
        model.compile(keras.optimizers.Adam(schedule), "binary_crossentropy", metrics=[metric])
    has_val = len(val.y) > 0
    callbacks = _epoch_callback(on_epoch, epochs)
    with tempfile.TemporaryDirectory(prefix="edgekit-train-") as tmp:
        best = os.path.join(tmp, "best.weights.h5")
        if has_val:  # keep the epoch with the best validation accuracy, not merely the last one
            callbacks.append(
                keras.callbacks.ModelCheckpoint(
                    best, monitor="val_accuracy", save_best_only=True, save_weights_only=True, verbose=0
                )
            )
        hist = model.fit(
            x_train,
            y_train,
            epochs=epochs,
            batch_size=batch_size,
            shuffle=True,
            verbose=0,
            validation_data=(val.x, head_targets(head, val.y)) if has_val else None,
            callbacks=callbacks,
        )
        if has_val and os.path.exists(best):
            model.load_weights(best)
    fixed = zoo.with_fixed_batch(model, 1)
    accuracy = _accuracy(model, test.x, test.y, head) if len(test.y) else float("nan")
    val_accuracy = (
        evaluate_keras(model, val.x, val.y, num_classes=len(train.labels), head=head).accuracy if has_val else None
    )
    return TrainResult(
        model=fixed,
        arch=name,
        epochs=epochs,
        history={k: [float(v) for v in vals] for k, vals in hist.history.items()},
        float_accuracy=accuracy,
        test_samples=int(len(test.y)),
        outputs_are=zoo.outputs_are(fixed),
        head=head,
        val_accuracy=val_accuracy,
    )


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray, head: HeadSpec) -> float:
    """Float accuracy as the device decides (multi-label: the mean of the per-label accuracies)."""
    from edgekit.pipeline import zoo

    out = np.asarray(model.predict(x, batch_size=256, verbose=0)).reshape(len(x), -1)
    kind = zoo.outputs_are(model)
    if head.kind == "multilabel":
        return float(np.mean((sigmoid_probabilities(out, kind) >= head.threshold) == (y == 1)))
    return float(np.mean(decide(out, head, kind)[0] == y))


def save_model(model: Any, path: str | Path) -> Path:
    """Save a Keras model; the format follows the suffix (``.keras`` or ``.h5``)."""
    path = Path(path)
    if path.suffix not in (".keras", ".h5"):
        raise ModelError(f"{path}: save the model as .keras or .h5.")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        model.save(path)
    except OSError as exc:
        raise ModelError(f"{path}: cannot write the model ({exc}); choose a writable path.") from None
    return path


def _load_keras3(path: Path) -> Any:
    import keras

    return keras.models.load_model(path, compile=False)


def _load_tf_keras(path: Path) -> Any:
    import tf_keras

    return tf_keras.models.load_model(path, compile=False)


def _load_saved_model(path: Path) -> Any:
    # A SavedModel directory: Keras 3 cannot load it as a model; tf_keras can if Keras wrote it.
    return _load_tf_keras(path)


def load_model(path: str | Path) -> Any:
    """Load a user model: ``.keras`` (Keras 3, else tf_keras), ``.h5`` (Keras 3, else tf_keras) or a SavedModel dir.

    Raises :class:`ModelError` naming the file and saying what to do when none of them can read it.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such model file; give a .keras, .h5 file or a SavedModel directory.")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ModelError(f"{path}: a directory but not a SavedModel (no saved_model.pb).")
        loaders = [_load_saved_model]
    elif path.suffix in (".keras", ".h5", ".hdf5"):
        loaders = [_load_keras3, _load_tf_keras]
    else:
        raise ModelError(
            f"{path}: unknown model format '{path.suffix}'; give a .keras, .h5 file or a SavedModel directory."
        )
    errors = []
    for loader in loaders:
        try:
            model = loader(path)
        except Exception as exc:  # noqa: BLE001 - loaders raise ValueError, OSError, TypeError, KeyError...
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        if not (hasattr(model, "inputs") and hasattr(model, "layers")):
            # e.g. a SavedModel that Keras did not write (Keras 3 model.export, tf.saved_model.save): tf_keras
            # restores it as a bare trackable object with functions but no layers, inputs or outputs.
            raise ModelError(
                f"{path}: loads as a {type(model).__name__}, not a Keras model (a SavedModel written by "
                "model.export() or tf.saved_model.save has no layers edgekit can prune, train or check). "
                "Save the model with model.save('model.keras') and give that file."
            )
        return model
    raise ModelError(
        f"{path}: cannot load this model ({'; '.join(errors)}). Save it with model.save('model.keras') "
        "(Keras 3) or model.save('model.h5') (tf_keras) and make sure custom layers are registered."
    )


def _shapes(tensors: Any) -> list[tuple[int | None, ...]]:
    return [tuple(None if d is None else int(d) for d in t.shape) for t in tensors]


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What a classifier takes and gives: one image input (batch, H, W, C) and one output whose last
    dimension is the number of classes, or 1 for a binary sigmoid head. ``path`` is the model file (named in
    errors), ``activation`` the one its last layer ends in."""

    path: Path
    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]
    activation: str = ""

    @property
    def classes(self) -> int | None:
        """How many classes the model tells apart (2 for one sigmoid output), None when its output is open."""
        units = self.output_shape[-1] if self.output_shape else None
        return 2 if units == 1 else units

    @property
    def head(self) -> HeadSpec:
        return HeadSpec("sigmoid") if self.output_shape and self.output_shape[-1] == 1 else HeadSpec()

    def head_for(self, ds: Dataset) -> HeadSpec:
        """The head on ``ds``: one sigmoid per label for a multi-label dataset, else what the output says."""
        return HeadSpec("multilabel") if ds.multilabel else self.head

    def dataset_spec(self, dataset: str | Path) -> PreprocessSpec | None:
        """The spec to load ``dataset`` with so its images become this model's input (None for an ``.npz``:
        its arrays are what they are, :meth:`check` compares them)."""
        if Path(dataset).suffix.lower() == ".npz":
            return None
        return spec_for_input(self.input_shape, str(self.path), dataset)

    def check(self, ds: Dataset, dataset: str | Path) -> None:
        """:class:`ModelError` unless ``ds`` (loaded from ``dataset``) fits the input and the output has one
        unit per class."""
        want = self.input_shape[1:]
        have = tuple(int(d) for d in ds.x.shape[1:])
        if any(w is not None and w != h for w, h in zip(want, have)):
            raise ModelError(
                f"{self.path}: the model takes inputs of shape (height, width, channels) = {shape_text(want)}, "
                f"but the dataset {dataset} gives {shape_text(have)}; give a dataset of that size and colour mode, "
                f"or a model for {shape_text(have)} inputs."
            )
        n = len(ds.labels)
        units = self.output_shape[-1] if self.output_shape else None
        if ds.multilabel:
            if "softmax" in self.activation or units not in (None, n):
                raise ModelError(
                    f"{self.path}: the model has {units} output(s) ending in {self.activation or 'no activation'}, "
                    f"but the dataset {dataset} is multi-label with {n} labels ({', '.join(ds.labels)}); a multi-label "
                    f"model ends in Dense({n}, activation='sigmoid') (or Dense({n}) for logits): one output per label."
                )
            return
        if self.head.kind == "sigmoid":
            if "softmax" in self.activation:
                raise ModelError(
                    f"{self.path}: the model ends in a softmax over one output, which is always 1.0 whatever the "
                    "image; a binary classifier ends in Dense(1, activation='sigmoid') (or Dense(1) for a logit), "
                    "a classifier of N classes in Dense(N, activation='softmax')."
                )
            if n != 2:
                raise ModelError(
                    f"{self.path}: the model has one output (a binary sigmoid classifier), but the dataset {dataset} "
                    f"has {n} classes ({', '.join(ds.labels)}); give a dataset of exactly two class folders (the "
                    "first in sorted order is the output's 0, the second its 1), or a model with one output per "
                    "class."
                )
        elif self.classes is not None and self.classes != n:
            two = " or, for two classes, one sigmoid output (Dense(1, activation='sigmoid'))" if n == 2 else ""
            raise ModelError(
                f"{self.path}: the model has {self.classes} outputs (output shape {shape_text(self.output_shape)}), "
                f"but the dataset {dataset} has {n} classes ({', '.join(ds.labels)}); "
                f"give a model with one output per class (e.g. a last Dense layer of that many units){two}, "
                "or a dataset with one class folder per output."
            )


def model_shape(model: Any, path: str | Path, dataset: str | Path | None = None) -> ModelShape:
    """Check that ``model`` (loaded from ``path``) is an image classifier edgekit can feed: exactly one input of
    rank 4 (batch, H, W, C) with 1 or 3 channels and exactly one output of shape (batch, classes).

    Raises :class:`ModelError` naming the file, what the model has and what it needs; with ``dataset`` the
    message also says what a model for that dataset takes and gives.
    """
    path = Path(path)
    try:
        return _model_shape(model, path)
    except ModelError as exc:
        if dataset is None:
            raise
        raise ModelError(f"{exc} {_dataset_needs(dataset)}".rstrip()) from None


def _model_shape(model: Any, path: Path) -> ModelShape:
    try:
        inputs, outputs = _shapes(model.inputs), _shapes(model.outputs)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ModelError(
            f"{path}: cannot read the model's inputs and outputs ({exc}); "
            "save a built Keras model with model.save('model.keras')."
        ) from None
    if len(inputs) != 1:
        raise ModelError(
            f"{path}: the model has {len(inputs)} inputs {', '.join(map(shape_text, inputs))}; "
            "edgekit feeds one image: give a model with exactly one input of shape (batch, height, width, channels)."
        )
    if len(outputs) != 1 or len(outputs[0]) != 2:
        raise ModelError(
            f"{path}: the model has {len(outputs)} output(s) {', '.join(map(shape_text, outputs))}; "
            "a classifier for edgekit needs exactly one output of shape (batch, classes)."
        )
    image_input(inputs[0], str(path))  # rank 4, 1 or 3 channels
    from edgekit.pipeline.zoo import last_activation

    return ModelShape(path=path, input_shape=inputs[0], output_shape=outputs[0], activation=last_activation(model))


def _dataset_needs(dataset: str | Path) -> str:
    try:
        (h, w, c), labels = peek(dataset)
    except EdgekitError:
        return ""  # the dataset's own problem is reported when it is loaded
    return (
        f"The dataset {dataset} has {len(labels)} classes of {w}x{h} {'grey' if c == 1 else 'RGB'} images: "
        f"a model for it takes (batch, {h}, {w}, {c}) and gives (batch, {len(labels)})"
        + (" or, binary, (batch, 1) from a sigmoid." if len(labels) == 2 else ".")
    )
