"""A labelled image is scored against the labels of the bundle that serves it, not of the one that was active
when its folder was scanned: an OTA switch (or rollback) between the two must not turn right answers wrong.

bench_ota found it: a batch scanned under a bundle with other labels, served after the rollback, made the next
update's health baseline 1 correct in 14 and let a bad bundle pass its accuracy check.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.serve.agent import Agent
from edgekit_agent.serve.config import AgentSettings

from fixtures_models import digits_arrays
from ota_support import make_variant


def test_labels_are_resolved_when_served(digits_bundle: Path, tmp_path: Path) -> None:
    good = load_bundle(digits_bundle)
    labels = list(good.manifest.labels)
    make_variant(digits_bundle, tmp_path / "rot", version="9.9.9", key=None, labels=labels[1:] + labels[:1])
    rotated = load_bundle(tmp_path / "rot" / digits_bundle.name)

    inbox = tmp_path / "inbox"
    x, y = digits_arrays()
    n = 40
    for i in range(n):
        d = inbox / labels[int(y[i])]
        d.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray((x[i, :, :, 0] * 255).round().astype(np.uint8), "L").save(buf, "PNG")
        (d / f"{i:03d}.png").write_bytes(buf.getvalue())
    past = time.time() - 60  # settled files
    for p in inbox.rglob("*.png"):
        os.utime(p, (past, past))

    # What the good bundle scores on these images when nothing switches: the figure to reproduce exactly.
    ref = Agent(good, AgentSettings(device_id="ref", data_dir=tmp_path / "ref"))
    for p in sorted(inbox.rglob("*.png")):
        ref.serve_file(p.read_bytes(), label_name=p.parent.name)
    expected = ref.recorder.snapshot_and_reset()["accuracy"]

    agent = Agent(rotated, AgentSettings(device_id="swap", data_dir=tmp_path / "data", watch_dir=inbox))
    pre = agent.preprocessor
    floats = pre.floats
    switched = []

    def switch_while_preprocessing(source):
        # The batch was scanned under the rotated bundle, and the switch to the good one (what an OTA rollback
        # does) lands while the first image is being preprocessed for the rotated bundle: the worst moment.
        if not switched:
            switched.append(True)
            agent.activate(good, good.open_runtime(num_threads=1))
        return floats(source)

    pre.floats = switch_while_preprocessing
    assert agent.scan_once() == n
    body = agent.recorder.snapshot_and_reset()
    # Every image, the one in flight too, is scored with the labels of the bundle that served it.
    assert body["accuracy"]["labeled"] == n == expected["labeled"], body["accuracy"]
    assert body["accuracy"]["correct"] == expected["correct"] and expected["accuracy"] > 0.9, (
        body["accuracy"],
        expected,
    )
    assert body["counts"]["requests"] == n and not body["counts"]["errors"]
