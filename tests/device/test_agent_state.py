"""The agent's state stays whole under hostile input and concurrent changes (found by a concurrency review):
a non-finite tensor, a refused bundle, a runtime opened for a bundle that is no longer active."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.contract.errors import EdgekitError, InputError
from edgekit_agent.contract.manifest import dump_manifest
from edgekit_agent.mqtt.outbox import Outbox
from edgekit_agent.serve.agent import SMALL_INPUT, Agent
from edgekit_agent.serve.config import AgentSettings


@pytest.fixture()
def agent(digits_bundle: Path, tmp_path: Path) -> Agent:
    return Agent(
        load_bundle(digits_bundle), AgentSettings(device_id="state", data_dir=tmp_path / "data", num_threads=1)
    )


def test_a_non_finite_tensor_is_refused_and_the_window_stays_valid_json(agent: Agent) -> None:
    h, w, c = agent.manifest.inputs[0].shape[1:]
    hostile = np.zeros((h, w, c))
    hostile[0, 0, 0] = 1e39  # inf once it is float32
    with pytest.raises(InputError, match="not finite"):
        agent.serve_array(hostile.tolist())
    with pytest.raises(InputError, match="not finite"):
        agent.serve_array([[[float("nan")] * c] * w] * h)
    pred = agent.serve_array(np.full((1, h, w, c), 0.5).tolist())  # a batch axis of 1 is accepted
    assert 0 <= pred.index < len(agent.labels)
    agent.recorder.record(1000, 10, 900, 0, 0.9, -1, math.inf)  # an infinite input mean never becomes a statistic
    body = agent.recorder.snapshot_and_reset()
    json.dumps(body, allow_nan=False)
    # Refused requests count as requests with an error: 2 refused + 1 served + 1 recorded by hand.
    assert body["counts"]["requests"] == 4 and body["counts"]["errors"] == {"INPUT_INVALID": 2}


def test_the_outbox_sends_null_for_numbers_json_cannot_carry(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as box:
        box.put("edge/v1/d/telemetry/inference", {"mean": float("inf"), "xs": [1.0, float("nan")], "n": 3})
        (entry,) = box.head(1)
        doc = json.loads(entry.payload)
    assert (doc["mean"], doc["xs"], doc["n"]) == (None, [1.0, None], 3)


def test_a_bundle_refused_while_activating_changes_nothing(agent: Agent, digits_bundle: Path, tmp_path: Path) -> None:
    bad_dir = tmp_path / "bad" / digits_bundle.name
    shutil.copytree(digits_bundle, bad_dir)
    (bad_dir / "manifest.sig").unlink(missing_ok=True)
    doc = json.loads((bad_dir / "manifest.json").read_text())
    doc["version"] = "6.6.6"
    doc["labels"] = list(reversed(doc["labels"]))
    doc["preprocess"]["height"] = doc["preprocess"]["height"] * 2  # no longer the model's input shape
    (bad_dir / "manifest.json").write_bytes(dump_manifest(doc))
    bad = load_bundle(bad_dir)
    before = (
        agent.bundle,
        agent.manifest,
        agent.runtime,
        agent.labels,
        agent.label_index,
        agent.preprocessor,
        agent.recorder,
        agent._hot,
    )  # noqa: SLF001
    with pytest.raises(EdgekitError):
        agent.activate(bad, bad.open_runtime(num_threads=1))
    after = (
        agent.bundle,
        agent.manifest,
        agent.runtime,
        agent.labels,
        agent.label_index,
        agent.preprocessor,
        agent.recorder,
        agent._hot,
    )  # noqa: SLF001
    assert all(a is b for a, b in zip(before, after))
    assert agent.bundle_info()["version"] != "6.6.6"


def test_a_runtime_for_a_bundle_no_longer_active_is_not_swapped_in(agent: Agent, digits_bundle: Path) -> None:
    other = load_bundle(digits_bundle)  # what an OTA switch or rollback made active meanwhile
    stale = agent.bundle
    agent.activate(other, other.open_runtime(num_threads=1))
    serving = agent.runtime
    assert agent.swap_runtime(stale.open_runtime(num_threads=1), stale) is False
    assert agent.runtime is serving
    assert agent.swap_runtime(other.open_runtime(num_threads=1), other) is True
    assert agent.runtime is not serving


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize("size", [1, 64, SMALL_INPUT, SMALL_INPUT + 1, 4096])
def test_the_sampled_input_mean_is_the_exact_mean_whichever_way_it_is_summed(
    agent: Agent, dtype: str, size: int
) -> None:
    """The drift statistic of a tensor: a sum of its bytes up to SMALL_INPUT elements, numpy's sum above; both
    must give the mean of the dequantised input (an int8 byte is read as its value, not as 0..255)."""
    info = np.iinfo(dtype)
    x = np.random.default_rng(size).integers(info.min, info.max, size=(1, size), endpoint=True).astype(dtype)
    x[0, 0] = info.min  # the extremes, where a wrong shift shows
    x[0, -1] = info.max
    want = (float(x.astype(np.float64).mean()) - agent._in_zero) * agent._in_scale  # noqa: SLF001
    assert agent._input_mean(x) == pytest.approx(want, rel=1e-12, abs=1e-12)  # noqa: SLF001
