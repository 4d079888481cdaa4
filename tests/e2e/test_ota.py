"""OTA with real agents (``edgekit-agent run`` processes), a real mosquitto and real signed bundles:
a successful update of two agents that keep serving, refusals, a rollback forced by a failing health
window, and ``kill -9`` at each stage of an update."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgekit.fleet.deploy import deploy
from edgekit.package.keys import new_keypair
from edgekit_agent.contract.errors import ExitStatus
from edgekit_agent.contract.limits import OTA_CHUNK_BYTES
from edgekit_agent.contract.topics import topic
from edgekit_agent.ota.slots import read_pointer

from ota_support import AgentProc, Feeder, Observer, counted, make_variant, pending, served_ok, version_of

GOOD_HEALTH = {"window_s": 2.0, "max_p99_ratio": 20.0, "max_accuracy_drop": 0.3}


@pytest.fixture(scope="module")
def bundles(digits_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ota-bundles")
    key = new_keypair(root / "keys", "release")
    rogue = new_keypair(root / "rogue-key", "rogue")
    trusted = root / "trusted"
    trusted.mkdir()
    shutil.copyfile(key.public_path, trusted / key.public_path.name)
    labels = json.loads((digits_bundle / "manifest.json").read_text())["labels"]
    out: dict[str, Path] = {"trusted": trusted}
    specs = {
        "v1": dict(version="1.0.0", key=key.private_path),
        "v2": dict(version="2.0.0", key=key.private_path),
        "v3": dict(version="3.0.0", key=key.private_path),
        # Same model, labels rotated: the self-test passes (it compares raw outputs), accuracy collapses.
        "bad": dict(version="2.0.0-bad", key=key.private_path, labels=labels[1:] + labels[:1]),
        "unsigned": dict(version="2.0.0", key=None),
        "rogue": dict(version="2.0.0", key=rogue.private_path),
        "tampered": dict(version="2.0.0", key=key.private_path, tamper_model=True),
    }
    for name, spec in specs.items():
        (root / name).mkdir()
        out[name] = make_variant(digits_bundle, root / name, **spec)  # type: ignore[arg-type]
    return out


@pytest.fixture()
def fleet(mosquitto, bundles, tmp_path):
    obs = Observer(mosquitto.url)
    agents: list[AgentProc] = []

    def agent(device_id: str, bundle: str = "v1") -> AgentProc:
        a = AgentProc(device_id, bundles[bundle], mosquitto.url, tmp_path, bundles["trusted"])
        agents.append(a)
        return a

    yield obs, agent
    for a in agents:
        if a.proc is not None and a.proc.poll() is None:
            a.kill9()
    obs.close()


# --- tests --------------------------------------------------------------------------------------------------------
def test_ota_to_two_agents_commits_keeps_serving_and_survives_restart(mosquitto, bundles, fleet):
    obs, agent = fleet
    a, b = agent("ota-a"), agent("ota-b")
    assert version_of(a.start(obs)) == version_of(b.start(obs)) == "1.0.0"
    with Feeder([a.watch, b.watch]) as feeder:
        time.sleep(2.0)  # some labelled traffic on v1: the health window compares against it
        report = deploy(
            bundles["v2"], ["ota-a", "ota-b"], mosquitto.url, health=GOOD_HEALTH, chunk_bytes=32 * 1024, timeout=120
        )
        time.sleep(1.0)
    outcomes = {d.device_id: d.outcome for d in report.devices}
    assert outcomes == {"ota-a": "committed", "ota-b": "committed"}, [d.to_dict() for d in report.devices]
    for d in report.devices:
        assert d.chunks > 1 and d.resumed_chunks == 0
        assert 0 < d.transfer_s <= d.activate_s <= d.committed_s
        assert d.stages[:3] == ("received", "verified", "selftested")
        assert d.health["verdict"] == "passed" and d.health["stats"]["requests"] > 0
    for ag in (a, b):
        p = read_pointer(ag.data)
        assert p.current.version == "2.0.0" and p.previous.version == "1.0.0" and p.state == "committed"
        meta = obs.all(lambda t, d, ag=ag: t == topic(ag.device_id, "meta"))[-1]
        assert [(x["version"], x["active"]) for x in meta["bundles"]] == [("2.0.0", True), ("1.0.0", False)]
        assert meta["bundles"][0]["state"] == "committed"
        activated = obs.wait(
            lambda t, d, ag=ag: (
                t == topic(ag.device_id, "events")
                and d.get("event") == "bundle_activated"
                and d.get("phase") == "trial"
            )
        )
        assert activated["bundle"]["version"] == "2.0.0" and activated["bundle"]["signed_by"]

    # Nothing was lost while the interpreter changed under the serving loop.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (pending(a.watch) or pending(b.watch)):
        time.sleep(0.2)
    time.sleep(2.5)  # the last telemetry windows
    for ag in (a, b):
        written = feeder.written[ag.watch]
        assert counted(ag.watch, ".failed") == 0
        assert counted(ag.watch, ".processed") == written
        assert served_ok(obs, ag.device_id) == written
    windows = obs.all(lambda t, d: t == topic("ota-a", "telemetry/inference"))
    assert {w["bundle"]["version"] for w in windows} == {"1.0.0", "2.0.0"}

    # A restart with the same bundle on the command line serves the installed one…
    a.stop()
    assert version_of(a.start(obs)) == "2.0.0"
    # …but an operator who starts it with another bundle gets that one (the latest decision wins).
    a.stop()
    a.bundle = bundles["v3"]
    assert version_of(a.start(obs)) == "3.0.0"
    p = read_pointer(a.data)
    assert p.current.version == "3.0.0" and p.previous is None and p.state == "committed"


@pytest.mark.parametrize(
    "variant,code,words",
    [
        ("unsigned", "SIGNATURE_INVALID", "not signed"),
        ("rogue", "SIGNATURE_INVALID", "unknown key id"),
        ("tampered", "CHECKSUM_MISMATCH", "model.tflite"),
    ],
)
def test_refused_bundles_leave_the_old_one_serving(mosquitto, bundles, fleet, variant, code, words):
    obs, agent = fleet
    a = agent(f"ota-{variant}")
    a.start(obs)
    report = deploy(bundles[variant], [a.device_id], mosquitto.url, health=GOOD_HEALTH, timeout=60)
    (d,) = report.devices
    assert d.outcome == "failed" and d.error["code"] == code and words in d.error["message"], d.to_dict()
    ev = obs.wait(lambda t, e: t == topic(a.device_id, "events") and e.get("event") == "bundle_rejected")
    assert words in ev["reason"]
    assert read_pointer(a.data).current.version == "1.0.0"
    assert not any((a.data / "ota" / "staging").iterdir())  # the refused archive is not kept…
    assert not any((a.data / "ota" / "store").iterdir())  # …nor what was extracted from it


def test_corrupt_chunk_is_refused_and_can_be_resent(mosquitto, bundles, fleet):
    obs, agent = fleet
    a = agent("ota-chunk")
    a.start(obs)
    data = bundles["v2"].read_bytes()
    tid, size = "t-corrupt", OTA_CHUNK_BYTES
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    begin = obs.final(
        a.device_id,
        obs.command(
            a.device_id,
            {
                "action": "begin",
                "transfer_id": tid,
                "archive_bytes": len(data),
                "archive_sha256": hashlib.sha256(data).hexdigest(),
                "chunk_bytes": size,
            },
        ),
    )
    assert begin["state"] == "succeeded" and begin["result"]["have"] == [], begin.get("error")

    def send(i: int, payload: bytes) -> dict[str, Any]:
        return obs.final(
            a.device_id,
            obs.command(
                a.device_id,
                {
                    "action": "chunk",
                    "transfer_id": tid,
                    "index": i,
                    "data": base64.b64encode(payload).decode(),
                    "sha256": hashlib.sha256(chunks[i]).hexdigest(),
                },
            ),
        )

    bad = bytearray(chunks[0])
    bad[10] ^= 1
    ans = send(0, bytes(bad))
    assert (
        ans["state"] == "failed"
        and ans["error"]["code"] == "CHECKSUM_MISMATCH"
        and "chunk 0" in ans["error"]["message"]
    )
    for i in range(1, len(chunks)):
        assert send(i, chunks[i])["state"] == "succeeded"
    ans = obs.final(a.device_id, obs.command(a.device_id, {"action": "commit", "transfer_id": tid}))
    assert ans["error"]["code"] == "INVALID_ARGS" and "misses chunks [0]" in ans["error"]["message"]
    status = obs.final(a.device_id, obs.command(a.device_id, {"action": "status"}))["result"]
    assert status["transfers"] == [{"transfer_id": tid, "chunks": len(chunks), "have": len(chunks) - 1}]
    assert status["active"]["version"] == "1.0.0" and status["trial"] is None
    assert send(0, chunks[0])["state"] == "succeeded"
    ans = obs.final(
        a.device_id, obs.command(a.device_id, {"action": "commit", "transfer_id": tid, "health": {"window_s": 0.5}})
    )
    assert ans["state"] == "succeeded" and ans["result"]["phase"] == "trial"
    obs.wait(
        lambda t, e: (
            t == topic(a.device_id, "events") and e.get("event") == "health_check" and e.get("verdict") == "passed"
        )
    )

    # The fleet can still go back by hand: the previous bundle is kept for exactly that.
    ans = obs.final(a.device_id, obs.command(a.device_id, {"action": "rollback"}))
    assert ans["state"] == "succeeded" and ans["result"]["rolled_back_to"]["version"] == "1.0.0"
    p = read_pointer(a.data)
    assert (p.current.version, p.previous.version, p.state) == ("1.0.0", "2.0.0", "committed")
    ev = obs.wait(lambda t, e: t == topic(a.device_id, "events") and e.get("event") == "rollback")
    assert "requested by the fleet" in ev["reason"] and ev["bundle"]["version"] == "1.0.0"
    # A begun transfer can be abandoned.
    obs.final(
        a.device_id,
        obs.command(
            a.device_id,
            {
                "action": "begin",
                "transfer_id": "t-abort",
                "archive_bytes": 5000,
                "archive_sha256": "0" * 64,
                "chunk_bytes": 4096,
            },
        ),
    )
    assert obs.final(a.device_id, obs.command(a.device_id, {"action": "abort", "transfer_id": "t-abort"}))["result"][
        "aborted"
    ]
    assert obs.final(a.device_id, obs.command(a.device_id, {"action": "status"}))["result"]["transfers"] == []


def test_failing_health_window_rolls_back_by_itself(mosquitto, bundles, fleet):
    obs, agent = fleet
    a = agent("ota-bad")
    a.start(obs)
    with Feeder([a.watch]):
        time.sleep(2.0)
        report = deploy(
            bundles["bad"],
            [a.device_id],
            mosquitto.url,
            health={"window_s": 3.0, "max_accuracy_drop": 0.3},
            timeout=120,
        )
    (d,) = report.devices
    assert d.outcome == "rolled_back", d.to_dict()
    assert d.error["code"] == "HEALTH_CHECK_FAILED" and "accuracy" in d.error["message"]
    assert d.health["verdict"] == "failed"
    acc = next(c for c in d.health["checks"] if c["name"] == "accuracy")
    assert not acc["passed"] and acc["value"] < acc["limit"]
    assert d.rollback["to"]["version"] == "1.0.0" and d.rollback["took_ms"] >= 0
    p = read_pointer(a.data)
    assert p.current.version == "1.0.0" and p.state == "committed"
    time.sleep(1.0)
    metas = obs.all(lambda t, m: t == topic(a.device_id, "meta"))
    assert [version_of(m) for m in metas][-2:] == ["2.0.0-bad", "1.0.0"]  # switched, then back


@pytest.mark.parametrize("stage", ["staging", "selftested", "switched", "health_window"])
def test_kill_9_during_an_update_leaves_a_working_bundle(mosquitto, bundles, fleet, stage):
    obs, agent = fleet
    a = agent(f"ota-kill-{stage}")
    pause = {"selftested": "selftested:60", "switched": "switched:60"}.get(stage)
    a.start(obs, env={"EDGEKIT_OTA_PAUSE": pause} if pause else None)
    data = bundles["v2"].read_bytes()
    size = 64 * 1024
    tid = f"{hashlib.sha256(data).hexdigest()[:16]}-{size}"  # what `edgekit deploy` uses: it can resume
    n = -(-len(data) // size)
    assert n >= 3
    ans = obs.final(
        a.device_id,
        obs.command(
            a.device_id,
            {
                "action": "begin",
                "transfer_id": tid,
                "archive_bytes": len(data),
                "archive_sha256": hashlib.sha256(data).hexdigest(),
                "chunk_bytes": size,
            },
        ),
    )
    assert ans["state"] == "succeeded"
    sent = n // 2 if stage == "staging" else n
    for i in range(sent):
        chunk = data[i * size : (i + 1) * size]
        ans = obs.final(
            a.device_id,
            obs.command(
                a.device_id,
                {
                    "action": "chunk",
                    "transfer_id": tid,
                    "index": i,
                    "data": base64.b64encode(chunk).decode(),
                    "sha256": hashlib.sha256(chunk).hexdigest(),
                },
            ),
        )
        assert ans["state"] == "succeeded"
    if stage != "staging":
        obs.command(a.device_id, {"action": "commit", "transfer_id": tid, "health": {"window_s": 60}})
        if stage == "selftested":
            obs.wait(
                lambda t, d: (
                    t == topic(a.device_id, "res", "tester") and (d.get("progress") or {}).get("stage") == "selftested"
                )
            )
        else:  # the pointer says "trial": the switch happened (paused right after it, or in the health window)
            deadline = time.monotonic() + 60
            while (p := read_pointer(a.data)) is None or p.state != "trial":
                assert time.monotonic() < deadline, "the switch never happened"
                time.sleep(0.05)
            if stage == "health_window":
                obs.wait(
                    lambda t, e: (
                        t == topic(a.device_id, "events")
                        and e.get("event") == "bundle_activated"
                        and e.get("phase") == "trial"
                    )
                )
    a.kill9()

    meta = a.start(obs)  # no pause this time
    assert version_of(meta) == "1.0.0"
    p = read_pointer(a.data)
    assert p.current.version == "1.0.0" and p.state == "committed"
    if stage in ("switched", "health_window"):
        ev = obs.wait(
            lambda t, e: (
                t == topic(a.device_id, "events")
                and e.get("event") == "rollback"
                and e.get("boot_id") == a.boot_ids[-1]
            )
        )
        assert "restarted during the health window" in ev["reason"] and ev["from"]["version"] == "2.0.0"
    store = a.data / "ota" / "store"
    assert not store.is_dir() or not any(store.iterdir())  # the half-installed bundle was cleaned up

    # The device still takes the update afterwards (and resumes an interrupted transfer).
    report = deploy(
        bundles["v2"], [a.device_id], mosquitto.url, health={"window_s": 0.5}, chunk_bytes=size, timeout=120
    )
    (d,) = report.devices
    assert d.outcome == "committed", d.to_dict()
    if stage == "staging":
        assert d.resumed_chunks == n // 2  # the chunks received before the kill were kept
    assert read_pointer(a.data).current.version == "2.0.0"


def test_deploy_cli_exit_codes_and_json(mosquitto, bundles, fleet, capsys):
    from edgekit.cli import main
    from edgekit_agent.contract.errors import ExitStatus

    obs, agent = fleet
    a = agent("ota-cli")
    a.start(obs)
    base = ["--device", a.device_id, "--broker", mosquitto.url, "--health-window", "0.5", "--json"]
    assert main(["deploy", str(bundles["unsigned"]), *base]) == ExitStatus.BUNDLE_REJECTED
    (dev,) = json.loads(capsys.readouterr().out)["devices"]
    assert dev["outcome"] == "failed" and dev["error"]["code"] == "SIGNATURE_INVALID"
    assert main(["deploy", str(bundles["v2"]), *base]) == ExitStatus.OK
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["ok"] and report["devices"][0]["outcome"] == "committed"
    # The wait on "trial" is explained once: what the device waits for and how long.
    assert (
        " ".join(captured.err.split()).count("ota-cli: serving the new bundle; waiting out its 0.5 s health window")
        == 1
    )
    assert (
        main(
            [
                "deploy",
                str(bundles["v2"]),
                "--device",
                "nobody-home",
                "--broker",
                mosquitto.url,
                "--timeout",
                "2",
                "--json",
            ]
        )
        == ExitStatus.UNAVAILABLE
    )
    (dev,) = json.loads(capsys.readouterr().out)["devices"]
    assert dev["outcome"] == "timeout" and "nobody-home" in dev["error"]["message"]


# --- every command gets a final answer: kill -9 while deploy runs -----------------------------------------------
def _deploy_in_background(bundle: Path, device: str, url: str, **kw: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        out["report"] = deploy(bundle, [device], url, **kw)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_kill_9_during_the_chunk_transfer_ends_with_the_outcome_not_a_timeout(mosquitto, bundles, fleet):
    """The agent dies holding accepted chunk commands (paused before storing them): at the restart it answers them
    canceled/AGENT_RESTARTED, deploy sends them again and the update commits (before this, deploy waited out its
    timeout: "timeout")."""
    obs, agent = fleet
    a = agent("ota-kill-chunk")
    a.start(obs, env={"EDGEKIT_OTA_PAUSE": "chunk:120"})
    t, out = _deploy_in_background(
        bundles["v2"], a.device_id, mosquitto.url, health={"window_s": 0.5}, chunk_bytes=1024, timeout=300
    )
    obs.wait(
        lambda t_, d: (
            t_.startswith(topic(a.device_id, "res/deploy-"))
            and d.get("state") == "accepted"
            and d.get("name") == "swap_bundle"
            and _is_chunk_answer(obs, d)
        )
    )
    time.sleep(0.5)  # the other chunks of the window reach the agent's queue (accepted, never run)
    a.kill9()
    a.start(obs)
    t.join(300)
    (d,) = out["report"].devices
    assert d.outcome == "committed", d.to_dict()
    assert d.restarts >= 1 and d.resent >= 1
    canceled = obs.all(
        lambda t_, d_: (
            t_.startswith(topic(a.device_id, "res/deploy-"))
            and d_.get("state") == "canceled"
            and (d_.get("error") or {}).get("code") == "AGENT_RESTARTED"
        )
    )
    assert canceled  # the restarted agent answered what it had accepted
    assert read_pointer(a.data).current.version == "2.0.0"


def _is_chunk_answer(obs: Observer, answer: dict[str, Any]) -> bool:
    """An answer to a chunk command (answers do not carry the arguments: the request, seen on cmd/, does)."""
    return bool(
        obs.all(
            lambda t, d: (
                t.endswith("/cmd/swap_bundle")
                and d.get("cmd_id") == answer.get("cmd_id")
                and (d.get("args") or {}).get("action") == "chunk"
            )
        )
    )


def test_kill_9_right_after_the_switch_deploy_reports_the_rollback(mosquitto, bundles, fleet, tmp_path):
    """The real `edgekit deploy` process: the device switched, died, came back on the old bundle and said why;
    deploy reports "rolled back: <reason>" and exits 5 instead of timing out."""
    obs, agent = fleet
    a = agent("ota-kill-switch")
    a.start(obs, env={"EDGEKIT_OTA_PAUSE": "switched:120"})
    cli = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from edgekit.cli import main; sys.exit(main())",
            "deploy",
            str(bundles["v2"]),
            "--device",
            a.device_id,
            "--broker",
            mosquitto.url,
            "--health-window",
            "30",
            "--timeout",
            "300",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while (p := read_pointer(a.data)) is None or p.state != "trial":
            assert time.monotonic() < deadline and cli.poll() is None, "the switch never happened"
            time.sleep(0.05)
        a.kill9()
        a.start(obs)
        out, _ = cli.communicate(timeout=120)  # well before deploy's own 300 s
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == ExitStatus.BUNDLE_REJECTED, out
    (dev,) = json.loads(out)["devices"]
    assert dev["outcome"] == "rolled_back" and dev["restarts"] >= 1, dev
    assert dev["error"]["code"] == "ROLLED_BACK"
    assert dev["error"]["message"].startswith("rolled back: the agent restarted during the health window")
    assert read_pointer(a.data).current.version == "1.0.0"
