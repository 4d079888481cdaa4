"""The model zoo: a compact CNN for small grey images and MobileNetV2 with a width multiplier.

Models are built with random weights (nothing is downloaded) by Keras 3 by default, or by tf_keras
(``keras_module``) for tensorflow-model-optimization, which accepts only tf_keras models (docs/pipeline.md, Prune).
Training uses a free batch dimension; :func:`with_fixed_batch` rebuilds any Keras model with a batch of 1
and copies the weights, because a dynamic batch turns Flatten into SHAPE/STRIDED_SLICE/PACK ops that
split XNNPACK partitions, are not allowed on the Edge TPU and cost TFLite Micro arena (docs/pipeline.md, Train).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from edgekit_agent.contract.errors import ModelError, UsageError
from edgekit_agent.contract.manifest import OutputsAre

PREFIX = "edgekit_"


@dataclass(frozen=True, slots=True)
class Arch:
    """One zoo entry: how to build it and what it suits."""

    name: str
    description: str
    build: Callable[..., Any]


def _keras(module: Any | None) -> Any:
    if module is not None:
        return module
    import keras

    return keras


def is_tf_keras(model: Any) -> bool:
    """True for a tf_keras (Keras 2) model, False for a Keras 3 one."""
    return type(model).__module__.startswith("tf_keras")


def _cnn(
    K: Any,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    batch_size: int | None,
    dense: int = 512,
    activation: str = "softmax",
    **_: Any,
) -> Any:
    """Conv 32 → conv 64 → pool, then conv 64 + pool until about 4×4, dense 512, softmax (or ``activation``).

    The dense layer holds most of the weights on purpose: per-channel quantisation parameters are a fixed
    cost per channel, so a model dominated by a few wide layers gets an int8 file close to a quarter of
    its float32 file (the digits CNN: 0.259).
    """
    L = K.layers
    layers = [
        K.Input(shape=input_shape, batch_size=batch_size),
        L.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
        L.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),
        L.MaxPooling2D(name="pool1"),
    ]
    h, w = input_shape[0] // 2, input_shape[1] // 2
    block = 2
    while min(h, w) > 4 and block < 6:
        layers += [
            L.Conv2D(64, 3, padding="same", activation="relu", name=f"conv{block + 1}"),
            L.MaxPooling2D(name=f"pool{block}"),
        ]
        h, w, block = h // 2, w // 2, block + 1
    layers += [
        L.Conv2D(64, 3, padding="same", activation="relu", name=f"conv{block + 1}"),
        L.Flatten(name="flatten"),
        L.Dropout(0.25, name="dropout"),
        L.Dense(dense, activation="relu", name="dense"),
        L.Dense(num_classes, activation=activation, name="predictions"),
    ]
    return K.Sequential(layers, name=f"{PREFIX}cnn")


def _mobilenetv2(
    K: Any,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    batch_size: int | None,
    alpha: float = 0.35,
    activation: str = "softmax",
    **_: Any,
) -> Any:
    """Keras' MobileNetV2 (random init) with width multiplier ``alpha`` and a softmax (or ``activation``) head."""
    if min(input_shape[:2]) < 32:
        raise UsageError(
            f"mobilenetv2 needs images of at least 32×32, got {input_shape[1]}×{input_shape[0]}; use --arch cnn."
        )
    inp = K.Input(shape=input_shape, batch_size=batch_size)
    base = K.applications.MobileNetV2(
        input_tensor=inp, alpha=alpha, weights=None, classes=num_classes, classifier_activation=activation
    )
    # The alpha is kept in the name so a saved model can be rebuilt for tf_keras (prune, QAT).
    return K.Model(base.inputs, base.outputs, name=f"{PREFIX}mobilenetv2_a{alpha:g}")


def _dscnn(
    K: Any, input_shape: tuple[int, int, int], num_classes: int, *, batch_size: int | None, filters: int = 64, **_: Any
) -> Any:
    """A depthwise-separable CNN for keyword spotting (DS-CNN, "Hello Edge", Zhang et al. 2017): a 10×4 conv with
    stride 2 over (frames, mels), four depthwise 3×3 + pointwise 1×1 blocks, average pooling over the map, softmax.

    Conv → BatchNorm → ReLU in that order: the converter folds BatchNorm into the conv, and tfmot's QAT knows
    the pattern. About 22 K weights at 64 filters; the arena is about two 25×20×64 int8 activations.
    """
    L = K.layers
    layers = [
        K.Input(shape=input_shape, batch_size=batch_size),
        L.Conv2D(filters, (10, 4), strides=2, padding="same", use_bias=False, name="conv"),
        L.BatchNormalization(momentum=0.9, name="conv_bn"),
        L.ReLU(name="conv_relu"),
    ]
    for i in range(1, 5):
        layers += [
            L.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{i}"),
            L.BatchNormalization(momentum=0.9, name=f"dw{i}_bn"),
            L.ReLU(name=f"dw{i}_relu"),
            L.Conv2D(filters, 1, use_bias=False, name=f"pw{i}"),
            L.BatchNormalization(momentum=0.9, name=f"pw{i}_bn"),
            L.ReLU(name=f"pw{i}_relu"),
        ]
    layers += [
        # A pooling window over the whole map, not GlobalAveragePooling2D: that becomes MEAN, which the MCU
        # profiles' op sets (micro_speech's too) do not register.
        L.AveragePooling2D(((input_shape[0] + 1) // 2, (input_shape[1] + 1) // 2), name="pool"),
        L.Flatten(name="flatten"),
        L.Dropout(0.2, name="dropout"),
        L.Dense(num_classes, activation="softmax", name="predictions"),
    ]
    return K.Sequential(layers, name=f"{PREFIX}dscnn")


def _conv1d(K: Any, input_shape: tuple[int, ...], num_classes: int, *, batch_size: int | None, **_: Any) -> Any:
    """For sensor windows (window, channels): three 1-D convolutions with pooling, an average over time, softmax.

    The convolutions are Conv2D with (k, 1) kernels on the window reshaped to (window, 1, channels): the same
    arithmetic as Conv1D, but tensorflow-model-optimization can prune and quantisation-aware-train Conv2D and
    not Conv1D. It converts to RESHAPE, CONV_2D, MAX_POOL_2D, AVERAGE_POOL_2D and FULLY_CONNECTED, kernels every
    MCU profile registers (Keras' global average would be MEAN, which the Nano 33 BLE's does not); a few
    thousand weights, an arena of a few KB on a 2 s window of 6 channels.
    """
    L = K.layers
    window, channels = input_shape
    return K.Sequential(
        [
            K.Input(shape=input_shape, batch_size=batch_size),
            L.Reshape((window, 1, channels), name="as_image"),
            L.Conv2D(16, (5, 1), padding="same", activation="relu", name="conv1"),
            L.MaxPooling2D((2, 1), name="pool1"),
            L.Conv2D(32, (5, 1), padding="same", activation="relu", name="conv2"),
            L.MaxPooling2D((2, 1), name="pool2"),
            L.Conv2D(32, (3, 1), padding="same", activation="relu", name="conv3"),
            L.AveragePooling2D((max(1, window // 4), 1), name="average"),
            L.Flatten(name="flatten"),
            # Windows of one recording look alike: without dropout the net learns each training recording
            # (synthetic gestures, 3 split seeds: 94 % mean held-out accuracy without, 100 % with).
            L.Dropout(0.3, name="dropout"),
            L.Dense(num_classes, activation="softmax", name="predictions"),
        ],
        name=f"{PREFIX}conv1d",
    )


ARCHITECTURES: dict[str, Arch] = {
    "cnn": Arch("cnn", "compact CNN for small grey images (digits, 8×8 to 64×64)", _cnn),
    "mobilenetv2": Arch(
        "mobilenetv2", "MobileNetV2 with a width multiplier (alpha), colour or larger images, ≥32×32", _mobilenetv2
    ),
    "dscnn": Arch("dscnn", "depthwise-separable CNN for keyword spotting on log-mel features (audio)", _dscnn),
    "conv1d": Arch("conv1d", "small 1-D CNN for sensor windows (window, channels)", _conv1d),
}


def choose_arch(input_shape: tuple[int, ...], kind: str = "image") -> str:
    """What ``auto`` means: the DS-CNN for audio features, the 1-D CNN for sensor windows (window, channels),
    the CNN for small or grey images, MobileNetV2 for colour images of 32×32 and up. ``kind`` is the input
    spec's."""
    if kind == "audio":
        return "dscnn"
    if len(input_shape) == 2:
        return "conv1d"
    h, w, c = input_shape
    return "mobilenetv2" if c == 3 and min(h, w) >= 32 else "cnn"


def build_model(
    arch: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    alpha: float = 0.35,
    batch_size: int | None = None,
    keras_module: Any | None = None,
    activation: str = "softmax",
) -> Any:
    """A freshly initialised zoo model (not compiled). ``arch`` is a key of :data:`ARCHITECTURES` or ``auto``.
    ``num_classes`` is the number of outputs: with ``activation="sigmoid"`` 1 (binary) or one per label."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) not in (2, 3):
        raise UsageError(f"input_shape must be (height, width, channels) or (window, channels), got {shape}.")
    if num_classes < (1 if activation == "sigmoid" else 2):
        raise UsageError(f"a classifier needs at least two classes, got {num_classes}.")
    name = choose_arch(shape) if arch == "auto" else arch
    if name not in ARCHITECTURES:
        raise UsageError(f"unknown architecture '{arch}'; choose one of {['auto', *ARCHITECTURES]}.")
    return ARCHITECTURES[name].build(
        _keras(keras_module), shape, int(num_classes), batch_size=batch_size, alpha=alpha, activation=activation
    )


@dataclass(frozen=True, slots=True)
class ZooModel:
    """The zoo architecture a model was built with and the options to rebuild it (each builder takes the
    ones it knows: ``alpha`` for MobileNetV2, ``dense`` for the CNN)."""

    arch: str
    alpha: float = 0.35
    dense: int = 512


def arch_of(model: Any) -> ZooModel | None:
    """The zoo architecture and options a model was built with (from its name), or None for a user model."""
    m = re.fullmatch(rf"{PREFIX}(cnn|mobilenetv2|dscnn|conv1d)(?:_a([0-9.]+))?", model.name)
    if not m:
        return None
    found = ZooModel(m.group(1))
    if m.group(2):
        found = replace(found, alpha=float(m.group(2)))
    if m.group(1) == "cnn":
        found = replace(found, dense=int(model.get_layer("dense").units))
    return found


def last_activation(model: Any) -> str:
    """The name of the activation the model ends in (``softmax``, ``sigmoid``, ``linear``…), lower case."""
    last = model.layers[-1]
    act = getattr(last, "activation", None)
    return (getattr(act, "__name__", "") or type(last).__name__).lower()


def outputs_are(model: Any) -> OutputsAre:
    """``"probabilities"`` when the last layer ends in softmax or sigmoid, else ``"logits"``."""
    name = last_activation(model)
    return "probabilities" if "softmax" in name or "sigmoid" in name else "logits"


def head_loss(model: Any, losses: Any, multilabel: bool = False) -> tuple[Any, Callable[[Any], Any]]:
    """The loss to fine-tune ``model`` with (``losses``: its Keras' loss module, e.g. ``tf_keras.losses``) and
    how class indices become the targets it wants: binary cross-entropy on (N, 1) floats for one sigmoid
    output, on the (N, labels) 0/1 rows for a ``multilabel`` head, else sparse categorical cross-entropy on
    the indices; from logits when the model outputs logits."""
    logits = outputs_are(model) == "logits"
    if multilabel:
        return losses.BinaryCrossentropy(from_logits=logits), lambda y: y.astype("float32")
    if int(model.outputs[0].shape[-1]) == 1:
        return losses.BinaryCrossentropy(from_logits=logits), lambda y: y.astype("float32")[:, None]
    return losses.SparseCategoricalCrossentropy(from_logits=logits), lambda y: y


def _fixed_batch_config(cfg: Any, batch: int | None) -> Any:
    """Set the batch dimension of every InputLayer in a (Keras 3 or tf_keras) model config."""
    if isinstance(cfg, dict):
        if cfg.get("class_name") == "InputLayer":
            inner = cfg["config"]
            for key in ("batch_shape", "batch_input_shape"):
                if key in inner and inner[key] is not None:
                    inner[key] = [batch, *list(inner[key])[1:]]  # batch None makes it free again
        for value in cfg.values():
            _fixed_batch_config(value, batch)
    elif isinstance(cfg, list):
        for value in cfg:
            _fixed_batch_config(value, batch)
    return cfg


def with_fixed_batch(model: Any, batch_size: int | None = 1) -> Any:
    """The same model (architecture and weights) with a fixed batch dimension, for export and conversion.

    ``batch_size=None`` does the reverse: a free batch, for fast batched prediction and training.
    """
    if model.inputs and all(t.shape[0] == batch_size for t in model.inputs):
        return model
    cfg = _fixed_batch_config(copy.deepcopy(model.get_config()), batch_size)
    try:
        clone = type(model).from_config(cfg)
        clone.set_weights(model.get_weights())
    except Exception as exc:  # noqa: BLE001 - from_config raises anything a custom layer raises
        raise ModelError(
            f"model '{model.name}': cannot rebuild it with a fixed batch of {batch_size} "
            f"({type(exc).__name__}: {exc}); "
            "build it with keras.Input(shape, batch_size=1) yourself."
        ) from None
    return clone


def _tf_keras_config(cfg: Any) -> Any:
    """Translate a Keras 3 config to tf_keras: dtype policies become names, InputLayer keys are renamed."""
    if isinstance(cfg, dict):
        if cfg.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and "config" in cfg:
            return cfg["config"].get("name", "float32")
        out = {k: _tf_keras_config(v) for k, v in cfg.items() if k not in ("optional",)}
        if "batch_shape" in out:
            out["batch_input_shape"] = out.pop("batch_shape")
        return out
    if isinstance(cfg, (list, tuple)):
        return [_tf_keras_config(v) for v in cfg]
    return cfg


def to_tf_keras(model: Any, *, batch_size: int | None = None) -> Any:
    """A tf_keras copy of a Keras 3 model (same weights), for tensorflow-model-optimization.

    Zoo models are rebuilt by architecture; other Sequential/functional models through their config.
    A tf_keras model is returned as a fresh clone (tfmot changes weights in place: docs/pipeline.md, Prune).
    """
    import tf_keras

    if is_tf_keras(model):
        clone = tf_keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        return clone
    found = arch_of(model)
    try:
        if found is not None:
            shape = tuple(int(s) for s in model.inputs[0].shape[1:])
            built = ARCHITECTURES[found.arch].build(
                tf_keras,
                shape,
                int(model.outputs[0].shape[-1]),
                batch_size=batch_size,
                alpha=found.alpha,
                dense=found.dense,
                activation="sigmoid" if "sigmoid" in last_activation(model) else "softmax",
            )
        else:
            cfg = _fixed_batch_config(_tf_keras_config(model.get_config()), batch_size)
            cls = tf_keras.Sequential if type(model).__name__ == "Sequential" else tf_keras.Model
            built = cls.from_config(cfg)
        built.set_weights(model.get_weights())
    except (ModelError, UsageError):
        raise
    except Exception as exc:  # noqa: BLE001 - deserialisation errors come in every type
        raise ModelError(
            f"model '{model.name}': cannot rebuild it with tf_keras for pruning/quantisation-aware training "
            f"({type(exc).__name__}: {exc}); use a zoo architecture or save the model with tf_keras (.h5)."
        ) from None
    return built


def to_keras3(model: Any, *, like: Any) -> Any:
    """Copy a tf_keras model's weights back into a Keras 3 model shaped like ``like`` (the inverse of to_tf_keras)."""
    import keras

    clone = keras.models.clone_model(like)
    clone.set_weights(model.get_weights())
    return clone


def import_tfmot() -> Any:
    """Import tensorflow-model-optimization without leaking its ``TF_USE_LEGACY_KERAS=1`` side effect.

    tfmot 0.8.1 sets that variable at import (docs/pipeline.md, Prune) and binds tf_keras for itself; left set, it
    would switch ``tf.keras`` to tf_keras for the rest of this process and for every child process
    (including the converter worker, which loads Keras 3 models).
    """
    import os

    before = os.environ.get("TF_USE_LEGACY_KERAS")
    import tensorflow_model_optimization as tfmot

    if before is None:
        os.environ.pop("TF_USE_LEGACY_KERAS", None)
    else:
        os.environ["TF_USE_LEGACY_KERAS"] = before
    return tfmot
