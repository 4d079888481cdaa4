"""The agent serves sound clips and sensor recordings as it serves images: a real ``edgekit-agent run`` process
and a real mosquitto, .wav and .csv files dropped in labelled folders of the watched directory (counted in
telemetry, accuracy from the folder name), ``infer`` with raw ``samples`` and with a file's bytes over MQTT, the
tflite-runtime / numpy 1 environment, and a switch between bundles of different kinds in one agent."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from test_agent_mqtt import LEGACY_PYTHON, Subscriber, agent_process, status, sum_windows, telemetry

from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.contract.errors import ExitStatus
from edgekit_agent.contract.manifest import dump_manifest
from edgekit_agent.serve.agent import Agent
from edgekit_agent.serve.config import AgentSettings

from media_models import GESTURES, SENSOR_SPEC, TONES, gesture, tone, write_files

SUFFIX = {"audio": ".wav", "sensor": ".csv"}


def expected(bundle_dir: Path, files: list[tuple[Path, str]]) -> tuple[list[str], int]:
    """What the model predicts for these files, computed with the preprocessor and runtime directly (not through
    the agent), and how many match their folder's label."""
    b = load_bundle(bundle_dir)
    pre = b.preprocessor()
    with b.open_runtime(num_threads=1) as rt:
        got = [b.manifest.labels[int(np.argmax(rt.invoke(pre(p))))] for p, _ in files]
    return got, sum(g == label for g, (_, label) in zip(got, files))


def served(fleet: Subscriber, n: int, timeout: float = 60.0) -> list:
    deadline = time.monotonic() + timeout
    while sum_windows(fleet.matching(telemetry), lambda d: d["counts"]["requests"]) < n:
        assert time.monotonic() < deadline, [m.doc["counts"] for m in fleet.matching(telemetry)]
        time.sleep(0.2)
    return fleet.matching(telemetry)


def stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == ExitStatus.OK, proc.stderr.read()[-2000:]


@pytest.mark.parametrize("kind", ["audio", "sensor"])
def test_a_real_agent_serves_dropped_files_and_infer_samples(
    kind: str, request: pytest.FixtureRequest, mosquitto, tmp_path: Path
):
    bundle = request.getfixturevalue(f"{kind}_bundle")
    watch = tmp_path / "watch"
    files = write_files(kind, watch, per_class=4, seed=11)
    (watch / "broken").mkdir()
    (watch / "broken" / f"bad{SUFFIX[kind]}").write_bytes(
        b"RIFF\x00\x00\x00\x00WAVE" if kind == "audio" else b"\xff\xfe"
    )
    (watch / "photo.png").write_bytes(b"not for this bundle")  # another kind of input: left alone
    predicted, correct = expected(bundle, files)
    first_file = base64.b64encode(files[0][0].read_bytes()).decode()  # read before the agent moves it
    fleet = Subscriber(mosquitto)
    proc = agent_process(bundle, mosquitto.url, tmp_path / "data", "--window", "0.5", "--watch", str(watch))
    try:
        meta = fleet.wait_for(lambda m: m.topic.endswith("/meta") and m.doc.get("selftest"), timeout=60)[0].doc
        assert meta["selftest"]["passed"] and meta["selftest"]["input_max_abs_diff"] is not None
        assert meta["capabilities"]["input"] == {"kind": kind, "suffixes": [SUFFIX[kind]]}
        windows = served(fleet, len(files) + 1)
        assert sum_windows(windows, lambda d: d["counts"]["ok"]) == len(files)
        assert sum_windows(windows, lambda d: d["counts"]["errors"].get("INPUT_INVALID", 0)) == 1
        assert sum_windows(windows, lambda d: d["accuracy"]["labeled"]) == len(files)
        assert sum_windows(windows, lambda d: d["accuracy"]["correct"]) == correct >= len(files) * 0.75
        for label in TONES if kind == "audio" else GESTURES:
            got = sum_windows(windows, lambda d, label=label: d["predictions"]["class_counts"].get(label, 0))
            assert got == predicted.count(label), label
        assert windows[0].doc["latency_ms"]["preprocess"]["p50"] > 0
        # drift bins the mean of the preprocessed float input, as the reference did on the training features
        drift = [m.doc["drift"]["input_mean"] for m in windows if m.doc.get("drift")]
        assert sum(d["n"] for d in drift) == len(files) and all(d["psi"] is None or d["psi"] >= 0 for d in drift)
        means = [d["mean"] for d in drift if d["n"]]
        edges = drift[0]["edges"]
        assert means and all(edges[0] - 1 < m < edges[-1] + 1 for m in means), (means, edges)
        assert (watch / "photo.png").is_file() and (watch / ".failed" / "broken" / f"bad{SUFFIX[kind]}").is_file()
        assert len(list((watch / ".processed").rglob(f"*{SUFFIX[kind]}"))) == len(files)

        rng = np.random.default_rng(5)
        label = "high" if kind == "audio" else "shake"
        # audio: whole numbers are 16-bit PCM values; sensors: rows of the manifest's channels
        if kind == "audio":
            samples = (tone(label, rng) * 32767).round().astype(int).tolist()
        else:
            samples = gesture(label, rng, rows=40).tolist()
        fleet.command("infer", {"cmd_id": "s1", "args": {"samples": samples, "label": label}})
        answer = fleet.final("s1")
        assert answer["state"] == "succeeded" and answer["result"]["label"] == label, answer
        # the bytes of a WAV or CSV file go in 'image', as an image's do
        fleet.command("infer", {"cmd_id": "f1", "args": {"image": first_file}})
        answer = fleet.final("f1")
        assert answer["state"] == "succeeded" and answer["result"]["label"] == predicted[0], answer
        too_many = [0] * 70_000
        fleet.command("infer", {"cmd_id": "s2", "args": {"samples": too_many}})
        answer = fleet.final("s2")
        assert answer["state"] == "rejected" and "at most 65536 raw samples" in answer["error"]["message"]
        bad = [[0.1, 0.2]] * 40 if kind == "sensor" else ["a"] * 10
        fleet.command("infer", {"cmd_id": "s3", "args": {"samples": bad}})
        answer = fleet.final("s3")
        assert answer["state"] == "failed" and answer["error"]["code"] == "INVALID_ARGS", answer
        assert answer["error"]["message"].startswith("infer: the samples must be")
        deadline = time.monotonic() + 20
        while sum_windows(fleet.matching(telemetry), lambda d: d["accuracy"]["labeled"]) < len(files) + 1:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    windows = fleet.matching(telemetry)
    assert sum_windows(windows, lambda d: d["counts"]["requests"]) == len(files) + 1 + 3  # s1, f1, s3 (s2 refused)
    fleet.close()


@pytest.mark.skipif(not LEGACY_PYTHON.exists(), reason="no .venv-legacy (scripts/setup-legacy.sh makes it)")
def test_the_agent_serves_wav_files_on_tflite_runtime_with_numpy_1(audio_bundle: Path, mosquitto, tmp_path: Path):
    """The features computed by numpy 1.26 pass the self-test against the workstation's (numpy 2)."""
    watch = tmp_path / "watch"
    files = write_files("audio", watch, per_class=3, seed=12)
    predicted, correct = expected(audio_bundle, files)
    fleet = Subscriber(mosquitto)
    proc = agent_process(
        audio_bundle,
        mosquitto.url,
        tmp_path / "data",
        "--window",
        "0.5",
        "--watch",
        str(watch),
        python=str(LEGACY_PYTHON),
    )
    try:
        fleet.wait_for(status("online"), timeout=60)
        windows = served(fleet, len(files))
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    meta = fleet.wait_for(lambda m: m.topic.endswith("/meta") and m.doc.get("selftest"))[0].doc
    assert meta["runtime"]["engine"] == "tflite_runtime" and meta["selftest"]["passed"]
    assert sum_windows(windows, lambda d: d["counts"]["ok"]) == len(files)
    assert sum_windows(windows, lambda d: d["accuracy"]["correct"]) == correct


def test_a_switch_between_kinds_serves_the_new_kind_and_leaves_the_old_one(
    audio_bundle: Path, sensor_bundle: Path, tmp_path: Path
):
    """Under the audio bundle the watched folder serves .wav files only; after a switch to the sensor bundle (what
    an OTA update does) the .csv files, scored with the new bundle's labels; .wav files left are not failed."""
    inbox = tmp_path / "inbox"
    wavs = write_files("audio", inbox, per_class=2, seed=13)
    csvs = write_files("sensor", inbox, per_class=2, seed=14)
    past = time.time() - 60  # settled files
    for p, _ in wavs + csvs:
        os.utime(p, (past, past))
    sensor = load_bundle(sensor_bundle)
    _, correct = expected(sensor_bundle, csvs)
    agent = Agent(
        load_bundle(audio_bundle), AgentSettings(device_id="swap", data_dir=tmp_path / "data", watch_dir=inbox)
    )
    assert agent.scan_once() == len(wavs)
    body = agent.recorder.snapshot_and_reset()
    assert body["counts"]["ok"] == body["accuracy"]["labeled"] == len(wavs)
    assert all(p.is_file() for p, _ in csvs)

    # A batch listed under the audio bundle, served after the switch: the .wav files wait, nothing fails.
    for p, _ in wavs[:2]:
        (inbox / ".processed" / p.parent.name / p.name).rename(p)
    listed = agent._candidates(inbox)
    agent.activate(sensor, sensor.open_runtime(num_threads=1))
    found = agent._candidates
    agent._candidates = lambda root: listed + found(root)  # type: ignore[method-assign]
    assert agent.scan_once() == len(csvs)
    body = agent.recorder.snapshot_and_reset()
    assert body["counts"]["ok"] == body["accuracy"]["labeled"] == len(csvs) and not body["counts"]["errors"]
    assert body["accuracy"]["correct"] == correct and set(body["predictions"]["class_counts"]) <= set(GESTURES)
    assert all(p.is_file() for p, _ in wavs[:2]) and not (inbox / ".failed").exists()
    assert SENSOR_SPEC.channels == sensor.manifest.preprocess.channels


def test_a_real_agent_refuses_a_bundle_whose_features_it_computes_differently(
    audio_bundle: Path, mosquitto, tmp_path: Path
):
    """The spec's mean changed in the manifest: the agent's self-test computes other features from the raw
    samples, publishes ``selftest_failed`` saying by how much, and exits 5 without serving."""

    bundle = tmp_path / audio_bundle.name
    shutil.copytree(audio_bundle, bundle)
    doc = json.loads((bundle / "manifest.json").read_bytes())
    doc["preprocess"]["mean"] += 0.5  # manifest.json is not among the hashed files: no hash to rewrite
    (bundle / "manifest.json").write_bytes(dump_manifest(doc))
    fleet = Subscriber(mosquitto)
    proc = agent_process(bundle, mosquitto.url, tmp_path / "data", "--window", "0.5")
    try:
        assert proc.wait(60) == ExitStatus.BUNDLE_REJECTED
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "the audio features this device computes from the golden raw samples differ" in proc.stderr.read()
    event = fleet.wait_for(lambda m: m.topic.endswith("/events") and m.doc.get("event") == "selftest_failed")[0].doc
    assert "of 8 samples, by up to" in event["message"]
    assert not sum_windows(fleet.matching(telemetry), lambda d: d["counts"]["requests"])
    fleet.close()
