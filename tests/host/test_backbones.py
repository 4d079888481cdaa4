"""Transfer learning from a pretrained backbone (edgekit.pipeline.backbones, `build --backbone`).

The backbone is pretrained here, on another task (drawn shapes, tests/synthetic_images.py): nothing is
downloaded. A MobileNetV2-0.35 at 32x32 keeps the session's TensorFlow work to about a minute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic_images import PRETRAIN_SHAPES, TARGET_SHAPES, write_shapes

from edgekit_agent.contract.errors import DatasetError, ModelError, UsageError, WeightsUnavailableError

SIZE = (32, 32)


def _base_weights(path: Path, alpha: float = 0.35) -> list[np.ndarray]:
    """The weights a fresh base holds after loading ``path`` (what the file says, through Keras)."""
    import keras

    base = keras.applications.MobileNetV2(input_shape=(*SIZE, 3), alpha=alpha, include_top=False, weights=None)
    base.load_weights(str(path))
    return base.get_weights()


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MobileNetV2-0.35 base pretrained one epoch on six pretraining shapes, saved as .weights.h5."""
    import keras

    from edgekit.pipeline import backbones

    root = tmp_path_factory.mktemp("pretrain")
    choice = backbones.BackboneChoice("mobilenet_v2", 0.35, SIZE, weights=None)
    ds = backbones.load_dataset(write_shapes(root / "shapes", PRETRAIN_SHAPES, 20, SIZE[0], seed=1), choice)
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(input_shape=(*SIZE, 3), alpha=0.35, include_top=False, weights=None)
    out = keras.layers.Dense(len(ds.labels), activation="softmax")(keras.layers.GlobalAveragePooling2D()(base.output))
    model = keras.Model(base.inputs, out)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(ds.x, ds.y, epochs=1, batch_size=32, verbose=0)
    path = root / "shapes.weights.h5"
    base.save_weights(str(path))
    return path


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The target task: four other shapes, 12 images each (a few per split)."""
    return write_shapes(tmp_path_factory.mktemp("target") / "shapes4", TARGET_SHAPES, 12, SIZE[0], seed=2)


@pytest.fixture(scope="session")
def built(pretrained: Path, target: Path, tmp_path_factory: pytest.TempPathFactory):
    """`edgekit.build` with --backbone mobilenet_v2 --backbone-weights FILE for raspberry-pi-4 (no fine-tuning)."""
    from edgekit.build import build

    out = tmp_path_factory.mktemp("transfer-out")
    return build(
        target,
        ["raspberry-pi-4"],
        out,
        backbone="mobilenet_v2",
        backbone_weights=pretrained,
        alpha=0.35,
        image_size=SIZE,
        epochs=3,
    )


def test_build_starts_from_the_file_and_keeps_the_base_frozen(built, pretrained: Path) -> None:
    from edgekit.pipeline import backbones, train

    model = train.load_model(built.model_file)
    got = [w for layer in backbones.base_layers(model) for w in layer.get_weights()]
    want = _base_weights(pretrained)
    assert len(got) == len(want) > 200
    # Every base weight, batch-norm statistics included, is the file's: loaded, then never trained.
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    assert built.arch == "mobilenet_v2_a0.35"
    assert all(layer.trainable for layer in model.layers)  # an ordinary model for pruning and QAT


def test_a_model_file_from_a_backbone_gets_its_scaling_back(built, target: Path) -> None:
    from edgekit.cli.datasets import model_and_splits
    from edgekit.pipeline import backbones

    # `build --model OUT/NAME.keras`, `convert` and `prune` calibrate and measure on [-1, 1] images, as trained.
    model, splits = model_and_splits(built.model_file, target, seed=0, quiet=True)
    assert backbones.choice_of(model) == backbones.BackboneChoice("mobilenet_v2", 0.35, SIZE)
    assert splits.spec.scale == pytest.approx(1 / 127.5) and splits.train.x.min() < -0.5


def test_manifest_records_the_backbone_scaling_and_the_device_computes_the_same_tensors(built, target: Path) -> None:
    from edgekit.pipeline import backbones
    from edgekit_agent.bundle.load import load_bundle
    from edgekit_agent.bundle.selftest import run_selftest
    from edgekit_agent.infer.preprocess import Preprocessor

    bundle = load_bundle(built.profiles[0].directory)
    m = bundle.manifest
    assert (m.preprocess.width, m.preprocess.height, m.preprocess.color_mode) == (32, 32, "RGB")
    assert m.preprocess.scale == pytest.approx(1 / 127.5) and m.preprocess.mean == (1.0, 1.0, 1.0)
    assert m.preprocess.std == (1.0, 1.0, 1.0)
    assert m.metrics["backbone"]["name"] == "mobilenet_v2" and m.metrics["backbone"]["alpha"] == 0.35
    assert m.metrics["backbone"]["weights"].endswith("shapes.weights.h5")
    assert m.metrics["backbone"]["fine_tune_epochs"] == 0
    # The device turns a photo into exactly the tensor the host trained on: pixels / 127.5 - 1.
    choice = backbones.BackboneChoice("mobilenet_v2", 0.35, SIZE)
    ds = backbones.load_dataset(target, choice)
    device = Preprocessor(m.preprocess, m.inputs[0]).floats(ds.files[0])
    np.testing.assert_array_equal(device, ds.x[0])
    assert ds.x.min() < -0.5 and ds.x.max() > 0.5
    assert run_selftest(bundle).passed


def test_fine_tuning_trains_the_top_of_the_base_only(pretrained: Path, target: Path) -> None:
    import keras

    from edgekit.pipeline import backbones
    from edgekit.pipeline.data import Splits, split_dataset

    choice = backbones.choose("mobilenet_v2", alpha=0.35, size=SIZE, weights=pretrained)
    s = split_dataset(backbones.load_dataset(target, choice), seed=0)
    # No validation split: the last fine-tuned epoch is kept, whatever its accuracy.
    splits = Splits(train=s.train, val=s.train.subset(np.array([], dtype=np.int64)), test=s.test)
    result = backbones.train_transfer(splits, choice, epochs=1, fine_tune=1)
    assert result.epochs == 2 and len(result.history["loss"]) == 2
    model_layers = backbones.base_layers(result.model)
    fresh = keras.applications.MobileNetV2(input_shape=(*SIZE, 3), alpha=0.35, include_top=False, weights=None)
    fresh.load_weights(str(pretrained))
    start = int(len(model_layers) * (1 - backbones.FINE_TUNE_FRACTION))
    changed = []
    for i, (layer, ref) in enumerate(zip(model_layers, fresh.layers)):
        same = all(np.array_equal(a, b) for a, b in zip(layer.get_weights(), ref.get_weights()))
        if i < start or isinstance(layer, keras.layers.BatchNormalization):
            assert same, f"{layer.name} changed but is below the fine-tuned top or a batch norm"
        elif layer.get_weights() and not same:
            changed.append(layer.name)
    assert len(changed) >= 5, changed


def test_weights_for_another_width_are_refused_naming_the_file(pretrained: Path) -> None:
    from edgekit.pipeline import backbones

    choice = backbones.choose("mobilenet_v2", alpha=0.5, size=SIZE, weights=pretrained)
    with pytest.raises(ModelError, match=r"shapes\.weights\.h5: these weights do not fit mobilenet_v2 at alpha 0\.5"):
        backbones.build_transfer_model(choice, 3)


def test_imagenet_weights_come_from_keras_cache_or_say_what_to_fetch(
    pretrained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tf_keras

    from edgekit.pipeline import backbones

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    choice = backbones.choose("mobilenet_v2", alpha=0.35, size=SIZE)  # no file: ImageNet's
    url = backbones.backbone("mobilenet_v2").imagenet_url(0.35, SIZE)
    assert url.endswith("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5")  # 32 has no file
    cached = backbones.keras_cache() / url.rsplit("/", 1)[1]
    try:
        assert backbones.imagenet_weights(choice, timeout=20) == cached  # online: fetched into the cache
    except WeightsUnavailableError as exc:  # this machine is offline: the message says what to do
        assert url in str(exc) and str(cached) in str(exc) and "--backbone-weights FILE" in str(exc)
        # Do what it says: put a file of Keras' own .h5 layout (tf_keras writes it) where Keras caches it.
        legacy = tf_keras.applications.MobileNetV2(input_shape=(*SIZE, 3), alpha=0.35, include_top=False, weights=None)
        legacy.set_weights(_base_weights(pretrained))
        cached.parent.mkdir(parents=True, exist_ok=True)
        legacy.save_weights(str(cached))
        model = backbones.build_transfer_model(choice, 4)
        got = [w for layer in backbones.base_layers(model) for w in layer.get_weights()]
        assert all(np.array_equal(a, b) for a, b in zip(got, _base_weights(pretrained)))


def test_npz_pixels_are_scaled_like_the_image_files(target: Path, tmp_path: Path) -> None:
    from PIL import Image

    from edgekit.pipeline import backbones

    choice = backbones.BackboneChoice("mobilenet_v2", 0.35, SIZE)
    folder = backbones.load_dataset(target, choice)
    pixels = np.stack([np.asarray(Image.open(f)) for f in folder.files])
    np.savez(tmp_path / "u8.npz", x=pixels, y=folder.y)
    np.testing.assert_array_equal(backbones.load_dataset(tmp_path / "u8.npz", choice).x, folder.x)
    np.savez(tmp_path / "f.npz", x=pixels.astype(np.float32) / 255, y=folder.y)
    with pytest.raises(DatasetError, match="uint8"):
        backbones.load_dataset(tmp_path / "f.npz", choice)


def test_backbone_options_are_checked_before_any_work(target: Path, tmp_path: Path) -> None:
    from edgekit.build import build
    from edgekit.pipeline import backbones

    with pytest.raises(UsageError, match="--backbone mobilenet_v2"):
        build(target, ["raspberry-pi-4"], tmp_path, fine_tune=2)
    (tmp_path / "user.keras").touch()
    with pytest.raises(UsageError, match="does not combine with --model"):
        build(target, ["raspberry-pi-4"], tmp_path, backbone="mobilenet_v2", model=tmp_path / "user.keras")
    with pytest.raises(UsageError, match="ImageNet weights for mobilenet_v2 only at alpha"):
        backbones.choose("mobilenet_v2", alpha=0.6)
    with pytest.raises(ModelError, match="no such backbone weights file"):
        backbones.choose("mobilenet_v2", weights=tmp_path / "missing.weights.h5")


def test_profiles_suggest_a_width_and_size() -> None:
    from edgekit.pipeline import backbones
    from edgekit.profiles import load_profile

    pi4, zero, esp = (load_profile(n) for n in ("raspberry-pi-4", "raspberry-pi-zero-2w", "esp32-s3"))
    assert backbones.suggest([pi4]) > backbones.suggest([zero]) > backbones.suggest([esp])
    assert backbones.suggest([pi4, esp]) == backbones.suggest([esp])  # one model for all: the smallest
    assert backbones.choose("mobilenet_v3_small", profiles=[pi4]).alpha == 0.75  # its smallest ImageNet width
