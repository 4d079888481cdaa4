"""Keyword spotting end to end: espeak-ng speaks a small keyword set, `edgekit build` trains the DS-CNN on the
device's log-mel features, converts it to full int8 and bundles it for the two MCU profiles, with the exact TFLite
Micro arena and a `features.h` that carries the feature parameters. A bundle's own preprocessor computes, from
a WAV file, exactly the features the model was trained and measured on."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from edgekit.build import SPLIT, build
from edgekit.fit.mcu import FEATURES_H, MODEL_DATA_H
from edgekit.pipeline import audio_data
from edgekit.pipeline.data import load_dataset, split_dataset
from edgekit.pipeline.speech import SILENCE, write_keywords
from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.bundle.selftest import run_selftest
from edgekit_agent.contract.manifest import AudioSpec

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt install espeak-ng): no speech to train on",
)
MCU_PROFILES = ("arduino-nano-33-ble-sense", "esp32-s3")
WORDS = ("yes", "no", "left")


@pytest.fixture(scope="session")
def kws(tmp_path_factory):
    root = tmp_path_factory.mktemp("kws")
    data = root / "keywords"
    write_keywords(data, words=WORDS, per_class=24, unknown=False, seed=1)
    result = build(data, list(MCU_PROFILES), root / "out", epochs=15, seed=0)
    return data, result


def test_synthetic_set_layout(kws):
    data, _ = kws
    classes = sorted(p.name for p in data.iterdir())
    assert classes == sorted([*WORDS, SILENCE, audio_data.BACKGROUND_NOISE])
    clip = next((data / "yes").glob("*.wav"))
    from edgekit_agent.infer.audio import read_wav

    sound = read_wav(clip)
    assert sound.rate == 16000 and sound.samples.shape == (16000, 1)  # written at 16 kHz mono, 1 s
    assert float(np.abs(sound.samples).max()) > 0.2  # a word, not silence


def test_int8_accuracy_well_above_chance_and_fits_both_mcus(kws):
    _, result = kws
    assert result.arch == "dscnn"  # chosen for audio input without --arch
    assert [p.profile for p in result.profiles] == list(MCU_PROFILES)
    for p in result.profiles:
        assert p.fits, p.fit_summary
        assert p.int8_accuracy >= p.chance + 0.4, (p.int8_accuracy, p.chance)
        assert abs(p.float_accuracy - p.int8_accuracy) <= 0.15
        fit = p.manifest.fit
        assert fit["target"] == "mcu" and 0 < fit["arena_bytes"] < fit["arena_with_margin"] <= 192 * 1024
        header = (p.directory / MODEL_DATA_H).read_text()
        assert f"kTensorArenaMeasuredSize = {fit['arena_bytes']};" in header


def test_manifest_and_features_header_carry_the_feature_parameters(kws):
    _, result = kws
    for p in result.profiles:
        spec = p.manifest.preprocess
        assert isinstance(spec, AudioSpec) and spec.std != 1.0 and spec.mean != 0.0  # from the training split
        text = (p.directory / FEATURES_H).read_text()
        consts = dict(re.findall(r"constexpr \w+ (k\w+) = ([-0-9.e]+)f?;", text))
        tin = p.manifest.inputs[0]
        assert int(consts["kSampleRate"]) == spec.sample_rate and int(consts["kClipSamples"]) == spec.clip_samples
        assert int(consts["kFrameLength"]) == spec.frame_length and int(consts["kFrameStep"]) == spec.frame_step
        assert int(consts["kFftLength"]) == spec.fft_length and int(consts["kMelCount"]) == spec.n_mels
        assert int(consts["kFrameCount"]) == spec.frames and tin.shape == (1, spec.frames, spec.n_mels, 1)
        assert float(consts["kMelLowHz"]) == spec.fmin and float(consts["kMelHighHz"]) == spec.fmax
        assert float(consts["kLogOffset"]) == spec.log_offset
        assert np.float32(consts["kFeatureMean"]) == np.float32(spec.mean)
        assert np.float32(consts["kFeatureStd"]) == np.float32(spec.std)
        assert np.float32(consts["kInputScale"]) == np.float32(tin.scale)
        assert int(consts["kInputZeroPoint"]) == tin.zero_point


def test_bundle_preprocessor_on_a_wav_equals_the_training_features(kws):
    data, result = kws
    built = result.profiles[0]
    bundle = load_bundle(built.archive)
    run_selftest(bundle)  # the golden samples pass on the device's runtime
    pre = bundle.preprocessor()
    assert pre.suffixes == (".wav",)
    # The features the build measured on: the dataset split and normalised as `build` does.
    splits = audio_data.normalise(split_dataset(load_dataset(data), seed=0, **SPLIT))
    assert splits.spec == bundle.manifest.preprocess
    test = splits.test
    assert len(test.y) > 0 and not test.augmented.any()
    for i in range(len(test.y)):
        assert np.array_equal(pre.floats(test.files[i]), test.x[i]), test.files[i]
    # Served from the WAV files with the profile's kernels, the bundle scores the held-out accuracy `build`
    # reported.
    rt = bundle.open_runtime()
    try:
        assert rt.info.delegate == "none"
        hits = [int(np.argmax(rt.invoke(pre(f))[0])) == y for f, y in zip(test.files, test.y)]
    finally:
        rt.close()
    assert np.mean(hits) == pytest.approx(built.int8_accuracy)


def test_evaluate_re_creates_the_held_out_clips(kws, capsys):
    from edgekit.cli import main

    data, result = kws
    built = result.profiles[0]
    assert main(["evaluate", str(built.archive), "--dataset", str(data), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    # The same clean clips (noisy copies never held out), with the MCU profile's kernels: the build's figure.
    assert doc["samples"] == built.samples
    assert doc["accuracy"] == pytest.approx(built.int8_accuracy)


def test_datasets_keywords_command(tmp_path, capsys):
    from edgekit.cli import main

    out = tmp_path / "kw"
    assert main(["datasets", "keywords", str(out), "--clips", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["synthetic"] is True and doc["clips"] == 8 and doc["background_noise_files"] == 4
    assert sorted(p.parent.name for p in out.rglob("*.wav")) == sorted(
        [*doc["classes"], *[audio_data.BACKGROUND_NOISE] * 4]
    )
