"""Pretrained backbones: MobileNetV2/V3 started from learnt weights, with a new classifier head.

The weights come from Keras' ImageNet files (fetched once into Keras' cache, ``~/.keras/models``) or from a
file the user gives. Training has two phases (docs/pipeline.md, Pretrained backbones): the head alone on the
frozen base, then optionally (``fine_tune`` epochs) the top third of the base too, at a tenth of the learning
rate. The backbone's input scaling ([-1, 1]) is the dataset's preprocessing spec, so the manifest records it
and the device scales each image exactly as training did.
"""

from __future__ import annotations

import os
import re
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.pipeline.zoo import PREFIX
from edgekit_agent.contract.errors import DatasetError, ModelError, UsageError, WeightsUnavailableError
from edgekit_agent.contract.manifest import HeadSpec, PreprocessSpec

if TYPE_CHECKING:
    from edgekit.pipeline.data import Dataset, Splits
    from edgekit.pipeline.train import EpochFn, TrainResult
    from edgekit.profiles import Profile

HEAD_EPOCHS = 10
FINE_TUNE_FRACTION = 1 / 3  # of the base's layers, from the top: the most task-specific features
FINE_TUNE_LR_FACTOR = 0.1
_KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
_HEAD = ("transfer_dropout", "predictions")


@dataclass(frozen=True, slots=True)
class Backbone:
    """One pretrained family: the Keras application, the widths Keras has ImageNet weights for, its files."""

    name: str
    description: str
    keras_name: str
    imagenet_alphas: tuple[float, ...]

    def base(self, K: Any, input_tensor: Any, alpha: float) -> Any:
        """The base network (no classifier top) on ``input_tensor``, randomly initialised."""
        app = getattr(K.applications, self.keras_name)
        extra = {} if self.name == "mobilenet_v2" else {"include_preprocessing": False}  # inputs are in [-1, 1]
        return app(input_tensor=input_tensor, alpha=alpha, include_top=False, weights=None, **extra)

    def imagenet_url(self, alpha: float, size: tuple[int, int]) -> str:
        """Where Keras publishes this base's ImageNet weights (the same files ``weights="imagenet"`` fetches)."""
        if self.name == "mobilenet_v2":
            h, w = size
            rows = h if h == w and h in (96, 128, 160, 192, 224) else 224  # Keras' own choice of file
            stem = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels"
            return f"{_KERAS_URL}mobilenet_v2/{stem}_{float(alpha)}_{rows}_no_top.h5"
        kind = self.name.rsplit("_", 1)[1]
        return f"{_KERAS_URL}mobilenet_v3/weights_mobilenet_v3_{kind}_224_{alpha}_float_no_top_v2.h5"


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("mobilenet_v2", "MobileNetV2, width 0.35-1.4", "MobileNetV2", (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)),
        Backbone(
            "mobilenet_v3_small", "MobileNetV3-Small (hard-swish), width 0.75/1.0", "MobileNetV3Small", (0.75, 1.0)
        ),
        Backbone(
            "mobilenet_v3_large", "MobileNetV3-Large (hard-swish), width 0.75/1.0", "MobileNetV3Large", (0.75, 1.0)
        ),
    )
}


def backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise UsageError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}.")
    return BACKBONES[name]


@dataclass(frozen=True, slots=True)
class BackboneChoice:
    """What to start from: ``weights`` is a file, or None for Keras' ImageNet weights."""

    name: str
    alpha: float
    size: tuple[int, int]  # (height, width)
    weights: Path | None = None

    @property
    def spec(self) -> PreprocessSpec:
        """MobileNet's scaling, pixels / 127.5 - 1, in the manifest's terms (x * scale - mean) / std."""
        h, w = self.size
        return PreprocessSpec(width=w, height=h, color_mode="RGB", scale=1 / 127.5, mean=(1.0,) * 3, std=(1.0,) * 3)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "alpha": self.alpha,
            "input": list(self.size),
            "weights": str(self.weights) if self.weights is not None else "imagenet",
        }


# (alpha, square input size) per device class: the smallest network and the smallest ImageNet file for an MCU
# (MobileNetV2-0.35 is ~600 KB as int8: it fits the flash of the 2 MB MCU profiles, 0.5 needs ~940 KB), more
# width and resolution where RAM and storage are plentiful (docs/pipeline.md, Pretrained backbones).
_SUGGESTED = {"mcu": (0.35, 96), "small_cpu": (0.35, 128), "cpu": (0.5, 160), "edgetpu": (0.5, 160)}
_SMALL_CPU_RAM = 128 * 1024 * 1024


def suggest(profiles: Sequence[Profile]) -> tuple[float, int]:
    """The width and input size for a build over ``profiles``: the smallest any of them suggests (one model is
    trained for all), (0.35, 96) without a profile."""
    picks = []
    for p in profiles:
        kind = str(p.target)
        if kind == "cpu" and p.ram_bytes < _SMALL_CPU_RAM:
            kind = "small_cpu"
        picks.append(_SUGGESTED.get(kind, _SUGGESTED["mcu"]))
    return min(picks) if picks else _SUGGESTED["mcu"]


def choose(
    name: str,
    *,
    alpha: float | None = None,
    size: tuple[int, int] | None = None,
    weights: str | Path | None = None,
    profiles: Sequence[Profile] = (),
) -> BackboneChoice:
    """A checked :class:`BackboneChoice`; ``alpha``/``size`` default to :func:`suggest` for ``profiles``."""
    b = backbone(name)
    default_alpha, default_size = suggest(profiles)
    if alpha is None:
        alpha = default_alpha if default_alpha in b.imagenet_alphas or weights else b.imagenet_alphas[0]
    if alpha <= 0:
        raise UsageError(f"the width multiplier alpha must be positive, got {alpha}.")
    size = size or (default_size, default_size)
    if min(size) < 32:
        raise UsageError(f"{name} needs images of at least 32x32, got {size[1]}x{size[0]}; use --arch cnn.")
    if weights is None and alpha not in b.imagenet_alphas:
        raise UsageError(
            f"Keras has ImageNet weights for {name} only at alpha {', '.join(f'{a:g}' for a in b.imagenet_alphas)}, "
            f"not {alpha:g}; choose one of those or give --backbone-weights FILE."
        )
    path = None if weights is None else Path(weights)
    if path is not None and not path.is_file():
        raise ModelError(f"{path}: no such backbone weights file; give a .weights.h5 or Keras .h5 weights file.")
    return BackboneChoice(name, float(alpha), (int(size[0]), int(size[1])), path)


def keras_cache() -> Path:
    """Keras' download cache (``KERAS_HOME`` or ``~/.keras``) + ``models``: where ``weights="imagenet"`` looks."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


def imagenet_weights(choice: BackboneChoice, *, timeout: float = 60.0) -> Path:
    """The ImageNet weights file for ``choice``: from Keras' cache, else downloaded into it.

    Raises :class:`WeightsUnavailableError` saying which file to fetch on another machine and where to put it
    when this one cannot reach Google's storage (offline, or only package registries reachable).
    """
    url = backbone(choice.name).imagenet_url(choice.alpha, choice.size)
    target = keras_cache() / url.rsplit("/", 1)[1]
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a fixed https URL
            data = response.read()
        part = target.with_name(target.name + ".part")
        part.write_bytes(data)
        part.replace(target)  # never a half-written file under the name Keras trusts
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WeightsUnavailableError(
            f"cannot fetch the ImageNet weights of {choice.name} (alpha {choice.alpha:g}) from {url} ({reason}). "
            f"On a machine with internet access download that file, then either copy it to {target} or give it "
            "with --backbone-weights FILE; --backbone-weights also takes weights you pretrained yourself "
            "(edgekit.pipeline.backbones.save_backbone_weights)."
        ) from None
    return target


def build_transfer_model(
    choice: BackboneChoice, num_classes: int, *, batch_size: int | None = None, keras_module: Any | None = None
) -> Any:
    """The base with its pretrained weights loaded and a new head: global average pool, dropout, softmax.

    ImageNet weights are fetched first when ``choice.weights`` is None (:func:`imagenet_weights`).
    """
    if keras_module is None:
        import keras as keras_module
    K = keras_module
    weights = choice.weights if choice.weights is not None else imagenet_weights(choice)
    inp = K.Input(shape=(*choice.size, 3), batch_size=batch_size)
    base = backbone(choice.name).base(K, inp, choice.alpha)
    _load_base_weights(base, weights, choice)
    x = K.layers.GlobalAveragePooling2D(name="transfer_pool")(base.output)
    x = K.layers.Dropout(0.2, name="transfer_dropout")(x)
    out = K.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return K.Model(inp, out, name=f"{PREFIX}{choice.name}_a{choice.alpha:g}")


def _load_base_weights(base: Any, path: Path, choice: BackboneChoice) -> None:
    try:
        with warnings.catch_warnings():
            # Keras 3.15 warns about every weightless op container (add, multiply) of a base built on an
            # input tensor; the layers with weights load, and a real mismatch raises.
            warnings.filterwarnings("ignore", message="Skipping nested container")
            base.load_weights(str(path))
    except Exception as exc:  # noqa: BLE001 - h5py and Keras raise ValueError, KeyError, OSError...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(
            f"{path}: these weights do not fit {choice.name} at alpha {choice.alpha:g} ({first[:300]}). Give the "
            "backbone and --alpha the file was saved with; the file holds the base only (include_top=False), as "
            "Keras' *_no_top.h5 files and save_backbone_weights() write it."
        ) from None


def base_layers(model: Any) -> list[Any]:
    """The layers of a transfer model that came from the backbone (everything before the pooled head)."""
    names = [layer.name for layer in model.layers]
    if "transfer_pool" not in names:
        raise ModelError(f"model '{model.name}' has no backbone (no 'transfer_pool' layer); build it with a backbone.")
    return model.layers[: names.index("transfer_pool")]


def backbone_of(model: Any) -> tuple[str, float] | None:
    """(backbone name, alpha) of a model :func:`build_transfer_model` made, from its name; None otherwise."""
    name = getattr(model, "name", None)  # a float .tflite or ONNX model (pipeline.foreign) has none: no backbone
    m = re.fullmatch(rf"{PREFIX}({'|'.join(BACKBONES)})_a([0-9.]+)", name) if isinstance(name, str) else None
    return (m.group(1), float(m.group(2))) if m else None


def choice_of(model: Any) -> BackboneChoice | None:
    """The backbone a model file was trained on (its name and input size), so that `--model`, `convert` and
    `prune` load its dataset with the [-1, 1] scaling it was trained with; None for any other model."""
    found = backbone_of(model)
    if found is None:
        return None
    h, w = (int(d) for d in model.inputs[0].shape[1:3])
    return BackboneChoice(found[0], found[1], (h, w))


def save_backbone_weights(model: Any, path: str | Path) -> Path:
    """Save the base of a transfer model as a ``.weights.h5`` file that ``--backbone-weights`` takes.

    This is how a backbone pretrained on one task starts another: train with a backbone, then save its base.
    """
    import keras

    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise UsageError(f"{path}: backbone weights are saved as NAME.weights.h5 (Keras' weights format).")
    found = backbone_of(model)
    if found is None:
        raise ModelError(f"model '{model.name}' was not built with a backbone (build_transfer_model).")
    fresh = backbone(found[0]).base(keras, keras.Input(shape=tuple(model.inputs[0].shape[1:])), found[1])
    fresh.set_weights([w for layer in base_layers(model) for w in layer.get_weights()])
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh.save_weights(str(path))
    return path


def load_dataset(path: str | Path, choice: BackboneChoice, *, strict: bool = False) -> Dataset:
    """A dataset preprocessed for the backbone: an image folder through the backbone's spec, or an ``.npz`` of
    uint8 pixels passed image by image through the same device code (its float arrays are already scaled
    for some other model, so they are refused)."""
    from PIL import Image

    from edgekit.pipeline import data
    from edgekit_agent.infer.preprocess import image_to_float

    if Path(path).suffix.lower() != ".npz":
        return data.load_dataset(path, choice.spec, strict=strict)
    with np.load(path, allow_pickle=False) as npz:
        raw = npz["x"] if "x" in npz.files else None
    ds = data.load_npz(path)  # every other check of the arrays
    if raw is None or raw.dtype != np.uint8:
        raise DatasetError(
            f"{path}: a backbone needs the images' pixels (uint8 x) to scale them to [-1, 1], but x is already "
            "float; save the uint8 pixels in the .npz, or give an image folder."
        )
    x = np.stack([image_to_float(Image.fromarray(a.squeeze()), choice.spec) for a in raw])
    return data.Dataset(x=x, y=ds.y, labels=ds.labels, spec=choice.spec)


def _report(on_epoch: EpochFn | None, first: int, total: int) -> list[Any]:
    import keras

    if on_epoch is None:
        return []

    class _Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            on_epoch(first + epoch, total, {k: float(v) for k, v in (logs or {}).items()})

    return [_Report()]


def train_transfer(
    splits: Splits,
    choice: BackboneChoice,
    *,
    epochs: int | None = None,
    fine_tune: int = 0,
    seed: int = 0,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    on_epoch: EpochFn | None = None,
) -> TrainResult:
    """Train a head on the frozen pretrained base (``epochs``), then the top of the base (``fine_tune`` epochs,
    at a tenth of the rate); keep the epoch with the best validation accuracy across both phases.

    The frozen phase runs the base once per image and trains the head on those features: with the base frozen
    (its batch norms in inference mode) that is the same computation, and each epoch costs almost nothing.
    """
    import keras

    from edgekit.pipeline import train, zoo

    epochs = HEAD_EPOCHS if epochs is None else int(epochs)
    if epochs < 1 or fine_tune < 0:
        raise UsageError(f"epochs must be at least 1 and fine-tune epochs at least 0, got {epochs} and {fine_tune}.")
    if splits.train.multilabel:
        raise UsageError("a pretrained backbone trains a softmax head: train a multi-label dataset without --backbone.")
    shape = tuple(int(s) for s in splits.train.x.shape[1:])
    if shape != (*choice.size, 3):
        raise DatasetError(f"the dataset gives {shape} tensors but the backbone takes {(*choice.size, 3)}.")
    train._seed_everything(seed)
    model = build_transfer_model(choice, len(splits.labels))
    base = base_layers(model)
    for layer in base:
        layer.trainable = False
    tr, val = splits.train, splits.val
    has_val = len(val.y) > 0

    features = keras.Model(model.inputs, model.get_layer("transfer_pool").output)
    head_in = keras.Input(shape=features.outputs[0].shape[1:])
    head = keras.Model(head_in, model.get_layer("predictions")(model.get_layer("transfer_dropout")(head_in)))
    f_train = features.predict(tr.x, batch_size=64, verbose=0)
    f_val = features.predict(val.x, batch_size=64, verbose=0) if has_val else None
    steps = epochs * int(np.ceil(len(tr.y) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(steps, 1), alpha=0.05)
    head.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy", metrics=["accuracy"])
    total = epochs + fine_tune
    with tempfile.TemporaryDirectory(prefix="edgekit-transfer-") as tmp:
        best_head, best_full = os.path.join(tmp, "head.weights.h5"), os.path.join(tmp, "full.weights.h5")
        callbacks = _report(on_epoch, 0, total)
        if has_val:
            callbacks.append(_keep_best(best_head))
        hist = head.fit(
            f_train,
            tr.y,
            epochs=epochs,
            batch_size=batch_size,
            shuffle=True,
            verbose=0,
            validation_data=(f_val, val.y) if has_val else None,
            callbacks=callbacks,
        ).history
        if has_val and os.path.exists(best_head):
            head.load_weights(best_head)
        if fine_tune:
            hist = _merge(
                hist,
                _fine_tune(
                    model, base, splits, fine_tune, epochs, total, learning_rate, batch_size, best_full, hist, on_epoch
                ),
            )
    for layer in model.layers:  # the result is an ordinary model: pruning and QAT may train every layer
        layer.trainable = True
    fixed = zoo.with_fixed_batch(model, 1)
    test = splits.test
    from edgekit.pipeline.train import TrainResult

    return TrainResult(
        model=fixed,
        arch=f"{choice.name}_a{choice.alpha:g}",
        epochs=total,
        history={k: [float(v) for v in vals] for k, vals in hist.items()},
        float_accuracy=train._accuracy(model, test.x, test.y, HeadSpec()) if len(test.y) else float("nan"),
        test_samples=int(len(test.y)),
        outputs_are=zoo.outputs_are(fixed),
    )


def _keep_best(path: str, above: float | None = None) -> Any:
    import keras

    return keras.callbacks.ModelCheckpoint(
        path,
        monitor="val_accuracy",
        save_best_only=True,
        save_weights_only=True,
        initial_value_threshold=above,
        verbose=0,
    )


def _fine_tune(
    model: Any,
    base: list[Any],
    splits: Splits,
    epochs: int,
    first: int,
    total: int,
    learning_rate: float,
    batch_size: int,
    best_file: str,
    head_history: dict[str, list[float]],
    on_epoch: EpochFn | None,
) -> dict[str, list[float]]:
    """Unfreeze the top of the base (batch norms stay frozen: their statistics from the pretraining are better
    than a few small batches') and train the whole model at a low rate. A fine-tuned epoch is kept only when it
    beats the head's best validation accuracy; otherwise the head's weights stay."""
    import keras

    start = int(len(base) * (1 - FINE_TUNE_FRACTION))
    for layer in base[start:]:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    tr, val = splits.train, splits.val
    has_val = len(val.y) > 0
    model.compile(
        keras.optimizers.Adam(learning_rate * FINE_TUNE_LR_FACTOR),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    before = model.get_weights()
    callbacks = _report(on_epoch, first, total)
    if has_val:
        callbacks.append(_keep_best(best_file, above=max(head_history.get("val_accuracy", [0.0]))))
    hist = model.fit(
        tr.x,
        tr.y,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        verbose=0,
        validation_data=(val.x, val.y) if has_val else None,
        callbacks=callbacks,
    ).history
    if has_val:
        if os.path.exists(best_file):
            model.load_weights(best_file)
        else:
            model.set_weights(before)
    return hist


def _merge(a: dict[str, list[float]], b: dict[str, list[float]]) -> dict[str, list[float]]:
    return {k: list(a.get(k, [])) + list(b.get(k, [])) for k in {*a, *b}}
