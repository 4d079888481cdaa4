"""Tiny int8 models for the fit-check tests, made with tf.keras and the real TFLite converter.

Weights are random (the fit checks measure structure, not accuracy), so nothing is trained. Each model
is built once per test session (cached here, so several test files share them).
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _convert(model, shape: tuple[int, ...], seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return int8_tflite(model, rng.random((32, *shape), dtype=np.float32))


def int8_tflite(model, samples: np.ndarray) -> bytes:
    """Full-int8 TFLite of a Keras model, calibrated on ``samples``, in this process (test and benchmark
    models only: edgekit's own path is edgekit.pipeline.convert, which runs the converter in a child process)."""
    import tensorflow as tf

    c = tf.lite.TFLiteConverter.from_keras_model(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: ([samples[i : i + 1]] for i in range(len(samples)))
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = tf.int8
    c.inference_output_type = tf.int8
    return c.convert()


def _seq(shape: tuple[int, ...], layers: list) -> bytes:
    import keras

    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input(shape, batch_size=1), *layers])
    return _convert(m, shape)


@cache
def tiny_cnn() -> bytes:
    """CONV_2D, MAX_POOL_2D, RESHAPE, FULLY_CONNECTED on 8x8x1: fits every profile."""
    import keras

    L = keras.layers
    return _seq(
        (8, 8, 1), [L.Conv2D(8, 3, activation="relu", padding="same"), L.MaxPooling2D(), L.Flatten(), L.Dense(10)]
    )


@cache
def wide_cnn() -> bytes:
    """96x96x3 -> 24-channel conv at full resolution: about 240 KB of live activations, too much for the Nano."""
    import keras

    L = keras.layers
    return _seq(
        (96, 96, 3), [L.Conv2D(24, 3, padding="same", activation="relu"), L.MaxPooling2D(8), L.Flatten(), L.Dense(2)]
    )


@cache
def gap_cnn() -> bytes:
    """Conv + GlobalAveragePooling2D (a MEAN operator, which the Nano's op set leaves out) + Dense."""
    import keras

    L = keras.layers
    return _seq((16, 16, 1), [L.Conv2D(8, 3, activation="relu"), L.GlobalAveragePooling2D(), L.Dense(3)])


@cache
def float_island_cnn() -> bytes:
    """Conv -> cumsum -> Dense: TFLITE_BUILTINS_INT8 silently keeps CUMSUM in float (DEQUANTIZE/CUMSUM/QUANTIZE)."""
    import keras
    import tensorflow as tf

    L = keras.layers

    class CumSum(L.Layer):
        def call(self, x):
            return tf.math.cumsum(x, axis=-1)

    return _seq((8, 8, 1), [L.Conv2D(4, 3, activation="relu"), L.Flatten(), CumSum(), L.Dense(3)])


@cache
def batch2_cnn() -> bytes:
    """The tiny CNN with a fixed batch of 2: the Edge TPU runs batch 1 only."""
    import keras

    L = keras.layers
    keras.utils.set_random_seed(0)
    m = keras.Sequential(
        [keras.Input((8, 8, 1), batch_size=2), L.Conv2D(4, 3, activation="relu"), L.Flatten(), L.Dense(3)]
    )
    import tensorflow as tf

    rng = np.random.default_rng(0)
    samples = rng.random((16, 2, 8, 8, 1), dtype=np.float32)
    c = tf.lite.TFLiteConverter.from_keras_model(m)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: ([s] for s in samples)
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = tf.int8
    c.inference_output_type = tf.int8
    return c.convert()


@cache
def dead_logits_cnn() -> bytes:
    """Logits with no range (zero dense weights) before a softmax: TFLite Micro aborts in SOFTMAX's prepare."""
    import keras

    L = keras.layers
    return _seq(
        (8, 8, 1),
        [
            L.Conv2D(4, 3, activation="relu"),
            L.Flatten(),
            L.Dense(3, kernel_initializer="zeros", bias_initializer="zeros"),
            L.Softmax(),
        ],
    )


@cache
def heavy_dense() -> bytes:
    """32x32x1 -> Dense(800) -> Dense(4): about 820 KB of int8 weights, a small arena but too much flash
    for the Nano."""
    import keras

    L = keras.layers
    return _seq((32, 32, 1), [L.Flatten(), L.Dense(800, activation="relu"), L.Dense(4)])
