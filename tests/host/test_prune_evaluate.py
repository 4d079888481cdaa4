"""edgekit.pipeline.prune (tfmot, schedule from the real step count) and edgekit.pipeline.evaluate's per-layer
errors and helpers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgekit_agent.contract.errors import ModelError, UsageError


@pytest.mark.parametrize("n_train,batch,epochs", [(1259, 32, 2), (100, 32, 1), (50_000, 64, 3)])
def test_schedule_steps_reach_the_target_within_the_fine_tune(n_train, batch, epochs):
    from edgekit.pipeline.prune import PRUNING_UPDATES, schedule_steps

    steps, end_step, frequency = schedule_steps(n_train, batch, epochs)
    assert steps == epochs * -(-n_train // batch)
    assert 1 <= frequency and end_step % frequency == 0 and end_step <= steps
    # Several updates inside the fine-tune, where tfmot's default (every 100 steps) would make none.
    assert end_step // frequency >= min(PRUNING_UPDATES, end_step)


def test_prune_reaches_the_sparsity_and_shows_it_after_compression(digits_model, digits_splits):
    from edgekit.pipeline.prune import prune_model
    from edgekit.pipeline.train import load_model

    model = load_model(digits_model)
    before = [w.copy() for w in model.get_weights()]
    small = replace(digits_splits, train=digits_splits.train.subset(np.arange(0, len(digits_splits.train), 2)))
    res = prune_model(model, small, sparsity=0.5, epochs=1, seed=0)
    assert all(abs(layer.sparsity - 0.5) < 0.02 for layer in res.layers), res.to_dict()["layers"]
    assert {layer.layer for layer in res.layers} >= {"conv1", "dense", "predictions"}
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights())), "the input model was modified"
    # The result is the caller's kind of model (Keras 3), with the batch of 1 for export, and really sparse.
    assert type(res.model).__module__.startswith("keras") and res.model.inputs[0].shape[0] == 1
    kernel = np.asarray(res.model.get_layer("dense").kernel)
    assert abs(float(np.mean(kernel == 0)) - 0.5) < 0.02
    # Raw int8 size barely moves; gzip shows the zeros.
    assert abs(res.int8_bytes_after - res.int8_bytes_before) / res.int8_bytes_before < 0.02
    assert res.int8_gzip_after < 0.8 * res.int8_gzip_before
    assert res.accuracy_after > res.accuracy_before - 0.10


def test_prune_rejects_nonsense(digits_model, digits_splits):
    from edgekit.pipeline.prune import prune_model
    from edgekit.pipeline.train import load_model

    with pytest.raises(UsageError):
        prune_model(load_model(digits_model), digits_splits, sparsity=1.5)


def test_per_layer_errors_rank_real_layers(digits_model, digits_splits):
    from edgekit.pipeline.convert import per_layer_errors
    from edgekit.pipeline.train import load_model

    rows = per_layer_errors(load_model(digits_model), digits_splits.train.x, top=3, num_samples=30)
    assert len(rows) == 3
    assert {r.op for r in rows} <= {"CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "RESHAPE", "SOFTMAX"}
    values = [r.rmse_over_scale for r in rows]
    assert values == sorted(values, reverse=True) and all(np.isfinite(values)) and values[0] > 0


def test_evaluate_keras_fixed_batch_equals_free_batch(digits_model, digits_splits):
    from edgekit.pipeline import zoo
    from edgekit.pipeline.evaluate import confusion_matrix, evaluate_keras
    from edgekit.pipeline.train import load_model

    model = load_model(digits_model)
    assert model.inputs[0].shape[0] == 1
    x, y = digits_splits.test.x, digits_splits.test.y
    res = evaluate_keras(model, x, y)
    direct = np.argmax(zoo.with_fixed_batch(model, None).predict(x, verbose=0), axis=-1)
    assert res.predictions.tolist() == direct.tolist()
    assert res.confusion == confusion_matrix(y, direct, 10) and res.correct == int(np.sum(direct == y))


def test_load_model_names_the_file(tmp_path):
    from edgekit.pipeline.train import load_model

    bad = tmp_path / "m.h5"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="m.h5"):
        load_model(bad)
    with pytest.raises(ModelError, match="no such model"):
        load_model(tmp_path / "none.keras")
    with pytest.raises(ModelError, match="unknown model format"):
        load_model(bad.with_suffix(".onnx").write_bytes(b"x") and bad.with_suffix(".onnx"))


def test_tf_keras_copy_is_exact(digits_model):
    from edgekit.pipeline import zoo
    from edgekit.pipeline.train import load_model

    model = load_model(digits_model)
    twin = zoo.to_tf_keras(model)
    assert zoo.is_tf_keras(twin) and not zoo.is_tf_keras(model)
    x = np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32)
    assert np.array_equal(np.asarray(twin(x, training=False)), np.asarray(model(x, training=False)))


def test_zoo_builds_both_architectures():
    from edgekit.pipeline import zoo

    cnn = zoo.build_model("auto", (28, 28, 1), 5, batch_size=1)
    assert zoo.arch_of(cnn) == zoo.ZooModel("cnn", dense=512) and cnn.output_shape == (1, 5)
    mnv2 = zoo.build_model("auto", (32, 32, 3), 4, alpha=0.5)
    assert zoo.arch_of(mnv2) == zoo.ZooModel("mobilenetv2", alpha=0.5) and mnv2.output_shape == (None, 4)
    assert zoo.outputs_are(mnv2) == zoo.outputs_are(cnn) == "probabilities"
    with pytest.raises(UsageError, match="at least 32"):
        zoo.build_model("mobilenetv2", (8, 8, 3), 4)
    with pytest.raises(UsageError, match="unknown architecture"):
        zoo.build_model("resnet", (8, 8, 1), 4)
