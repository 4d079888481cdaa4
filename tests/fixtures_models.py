"""Small real models and bundles for tests (real Keras training, real TFLite converter)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 handwritten digits as float32 (N, 8, 8, 1) in [0, 1] and int labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype("float32")[..., None], d.target.astype("int64")


def build_digits_bundle(out: Path) -> Path:
    # Interim implementation until `edgekit.build` exists; then this calls the real pipeline.
    import keras
    import tensorflow as tf

    from edgekit.bundle import write_bundle
    from edgekit.profiles import load_profile
    from edgekit_agent.manifest import PreprocessSpec

    x, y = digits_arrays()
    keras.utils.set_random_seed(0)
    m = keras.Sequential(
        [
            keras.Input((8, 8, 1), batch_size=1),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    m.fit(x[:1400], y[:1400], epochs=8, batch_size=32, verbose=0)
    c = tf.lite.TFLiteConverter.from_keras_model(m)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: ([x[i : i + 1]] for i in range(200))
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = tf.int8
    c.inference_output_type = tf.int8
    tflite = c.convert()
    info = write_bundle(
        out,
        name="digits",
        profile=load_profile("raspberry-pi-4"),
        tflite=tflite,
        preprocess=PreprocessSpec(width=8, height=8, color_mode="L", resize="bilinear", scale=1 / 255),
        labels=[str(i) for i in range(10)],
        golden_x=x[1400:1416],
        golden_y=y[1400:1416],
    )
    return info.directory
