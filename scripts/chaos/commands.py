"""Chaos scenarios for issue 9, items 3 and 4: every command gets a final answer, a device is only itself.

Run by ``scripts/bench_chaos.py`` (each scenario gets a ``ChaosEnv``: workdir, mosquitto, python, repo, quick).
Real ``edgekit-agent run`` processes killed with SIGKILL, the real ``edgekit.fleet.deploy``, a private mosquitto
from ``tests/brokers.py`` (anonymous, or the documented secure set-up with ``users``).

For these scenarios the common keys mean: ``fed`` what was sent (deploys, or commands), ``counted`` what ended
with the device's true outcome (or arrived), ``duplicates`` answers a device sent again from its store for a
resent ``cmd_id`` (expected, harmless), ``dropped_reported`` commands the restarted agent answered
``canceled``/``AGENT_RESTARTED`` (or messages the broker refused), ``recover_s`` the median seconds from the
device being back online (or from the request) to deploy's answer.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "tests") not in sys.path:  # brokers, ota_support and the fixture models: shared with the tests
    sys.path.insert(0, str(REPO / "tests"))

from edgekit.fleet.deploy import deploy  # noqa: E402
from edgekit.fleet.dev_broker import BrokerUsers  # noqa: E402
from edgekit_agent.contract.topics import topic  # noqa: E402
from edgekit_agent.ota.slots import read_pointer  # noqa: E402

from brokers import Mosquitto  # noqa: E402
from ota_support import AgentProc, Observer, make_variant  # noqa: E402

_BUNDLE_CACHE = Path(tempfile.gettempdir()) / "edgekit-chaos-commands-bundle"


def _bundles(workdir: Path) -> dict[str, Path]:
    """v1 and v2 of the digits bundle, signed by a fresh key (the digits bundle is built once and cached)."""
    from edgekit.package.keys import new_keypair

    from fixtures_models import build_digits_bundle, current_digits_bundle

    src = current_digits_bundle(_BUNDLE_CACHE) or build_digits_bundle(_BUNDLE_CACHE)
    key = new_keypair(workdir / "keys", "release")
    trusted = workdir / "trusted"
    trusted.mkdir()
    (trusted / key.public_path.name).write_bytes(key.public_path.read_bytes())
    out = {"trusted": trusted}
    for version in ("1.0.0", "2.0.0"):
        (workdir / version).mkdir()
        out[version] = make_variant(src, workdir / version, version=version, key=key.private_path)
    return out


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 2) if xs else None


class _Deploy(threading.Thread):
    """deploy() of one archive to one device in the background; ``ended`` is its monotonic end."""

    def __init__(self, archive: Path, device: str, url: str, **kw: Any) -> None:
        super().__init__(daemon=True)
        self.args, self.kw = (archive, [device], url), kw
        self.report: Any = None
        self.ended = 0.0

    def run(self) -> None:
        self.report = deploy(*self.args, **self.kw)
        self.ended = time.monotonic()


def _answers(obs: Observer, device: str, pred: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    return obs.all(lambda t, d: t.startswith(topic(device, "res/deploy-")) and pred(d))


# --- OTA: kill -9 during the chunk transfer, and right after the switch ----------------------------------------
def _ota_kill(env: Any, *, after_switch: bool) -> dict[str, Any]:
    work = Path(env.workdir)
    bundles = _bundles(work)
    tries = 1 if env.quick else (3 if after_switch else 6)
    chunks = -(-bundles["2.0.0"].stat().st_size // 1024)
    outcomes: list[str] = []
    recover: list[float] = []
    canceled = duplicates = 0
    with Mosquitto(work / "broker") as broker:
        obs = Observer(broker.url)
        try:
            for k in range(tries):
                a = AgentProc(f"chaos-ota-{k}", bundles["1.0.0"], broker.url, work, bundles["trusted"])
                a.start(obs, env={"EDGEKIT_OTA_PAUSE": "switched:120"} if after_switch else None)
                job = _Deploy(
                    bundles["2.0.0"],
                    a.device_id,
                    broker.url,
                    health={"window_s": 30 if after_switch else 0.5, "max_p99_ratio": 20.0},
                    chunk_bytes=1024,
                    timeout=300,
                )
                job.start()
                if after_switch:
                    deadline = time.monotonic() + 120
                    while (p := read_pointer(a.data)) is None or p.state != "trial":
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{a.device_id}: the switch never happened; see {a.log}")
                        time.sleep(0.02)
                else:  # a different moment each try, spread over the transfer
                    stored = max(2, chunks * (k + 1) // (tries + 1))
                    obs.wait(
                        lambda t, d, dev=a.device_id, n=stored: (
                            t.startswith(topic(dev, "res/deploy-")) and (d.get("result") or {}).get("received", -1) >= n
                        ),
                        120,
                    )
                a.kill9()
                a.start(obs)
                back = time.monotonic()
                job.join(320)
                (d,) = job.report.devices
                outcomes.append(d.outcome if d.outcome != "rolled_back" else f"rolled back: {d.rollback.get('reason')}")
                if d.outcome != "timeout":
                    recover.append(job.ended - back)
                canceled += len(
                    _answers(
                        obs,
                        a.device_id,
                        lambda x: (
                            x.get("state") == "canceled" and (x.get("error") or {}).get("code") == "AGENT_RESTARTED"
                        ),
                    )
                )
                duplicates += len(_answers(obs, a.device_id, lambda x: x.get("duplicate") is True))
                a.stop()
        finally:
            obs.close()
    want = "rolled_back" if after_switch else "committed"
    true = sum(o.startswith("rolled back") if after_switch else o == want for o in outcomes)
    return {
        "fault": "agent kill -9 right after the OTA switch"
        if after_switch
        else "agent kill -9 during an OTA chunk transfer (1 KiB chunks)",
        "fed": tries,
        "counted": true,
        "duplicates": duplicates,
        "dropped_reported": canceled,
        "recover_s": _median(recover),
        "recover_each_s": [round(x, 2) for x in recover],
        "outcome": f"{true}/{tries} deploys ended {want} (no timeout); " + "; ".join(sorted(set(outcomes))),
    }


def ota_kill_during_chunks(env: Any) -> dict[str, Any]:
    return _ota_kill(env, after_switch=False)


def ota_kill_after_switch(env: Any) -> dict[str, Any]:
    return _ota_kill(env, after_switch=True)


# --- a device is only itself -------------------------------------------------------------------------------------
DEVICES = {"dev-a": "pw-a", "dev-b": "pw-b"}
FLEET = ("fleet", "pw-fleet")


def _users(work: Path) -> BrokerUsers:
    work.mkdir(parents=True, exist_ok=True)
    files = {"devices": work / "devices.passwd", "fleet": work / "fleet.passwd"}
    for name, users in (("devices", DEVICES.items()), ("fleet", [FLEET])):
        files[name].write_text("")
        for user, password in users:
            subprocess.run(
                ["mosquitto_passwd", "-b", str(files[name]), user, password], check=True, capture_output=True
            )
    return BrokerUsers(files["devices"], files["fleet"])


def _old_setup(work: Path) -> Mosquitto:
    """The broker as docs/trust.md described it before: one listener, one password file, %u ACL, any client id."""
    users = _users(work)
    passwd = work / "all.passwd"
    passwd.write_text(users.devices.read_text() + users.fleet.read_text())
    acl = work / "old.acl"
    acl.write_text("pattern readwrite edge/v1/%u/#\n\nuser fleet\ntopic readwrite edge/v1/#\n")
    return Mosquitto(work / "broker", extra_config=f"password_file {passwd}\nacl_file {acl}", allow_anonymous=False)


def _paho(broker: Mosquitto, port: int, user: str, password: str, client_id: str, clean: bool) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, password)
    c.got, c.kicked, c.up = [], [], threading.Event()
    c.on_connect = lambda cl, u, f, rc, p=None: (c.up.set(), cl.subscribe(f"edge/v1/{client_id}/cmd/#", 1))
    c.on_disconnect = lambda cl, u, f, rc, p=None: (c.up.clear(), c.kicked.append(str(rc)))
    c.on_message = lambda cl, u, m: c.got.append(m.payload)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0 if clean else 600
    c.connect_async(broker.host, port, clean_start=clean, properties=props)
    c.loop_start()
    c.up.wait(5)
    return c


def _impersonate(broker: Mosquitto, commands: int, seconds: float) -> dict[str, Any]:
    """dev-b online (persistent session); dev-a's credentials connect with client id dev-b, clean start, again
    and again, while the fleet sends dev-b commands."""
    b = _paho(broker, broker.port, "dev-b", DEVICES["dev-b"], "dev-b", clean=False)
    fleet = _paho(broker, broker.fleet_port, *FLEET, "fleet-chaos", clean=True)
    b.kicked.clear()
    end, sent, attempts = time.monotonic() + seconds, 0, 0
    while time.monotonic() < end:
        a = _paho(broker, broker.port, "dev-a", DEVICES["dev-a"], "dev-b", clean=True)
        attempts += 1
        if sent < commands:
            fleet.publish("edge/v1/dev-b/cmd/ping", json.dumps({"n": sent}), qos=1)
            sent += 1
        time.sleep(seconds / max(1, commands))
        a.disconnect()
        a.loop_stop()
    while sent < commands:
        fleet.publish("edge/v1/dev-b/cmd/ping", json.dumps({"n": sent}), qos=1)
        sent += 1
    time.sleep(1.0)
    b2 = b if b.up.is_set() else _paho(broker, broker.port, "dev-b", DEVICES["dev-b"], "dev-b", clean=False)
    time.sleep(1.0)
    got = {json.loads(p)["n"] for p in b.got + (b2.got if b2 is not b else [])}
    kicked = len(b.kicked)
    for c in {id(x): x for x in (b, b2, fleet)}.values():
        c.disconnect()
        c.loop_stop()
    return {"sent": sent, "received": len(got), "kicked": kicked, "attempts": attempts}


def impersonation(env: Any) -> dict[str, Any]:
    work = Path(env.workdir)
    commands, seconds = (10, 3.0) if env.quick else (30, 8.0)
    with Mosquitto(work / "new", users=_users(work / "new")) as new:
        now = _impersonate(new, commands, seconds)
    with _old_setup(work / "old") as old:
        before = _impersonate(old, commands, seconds)
    return {
        "fault": "device A's credentials with client id = device B, clean start, reconnecting",
        "fed": now["sent"],
        "counted": now["received"],
        "duplicates": 0,
        "dropped_reported": 0,
        "recover_s": None,
        "outcome": f"B kicked {now['kicked']} times in {now['attempts']} attempts, got {now['received']}/"
        f"{now['sent']} commands (the old set-up: kicked {before['kicked']} times, got {before['received']}/"
        f"{before['sent']})",
        "old_setup": before,
    }


def unauthorized_deploy(env: Any) -> dict[str, Any]:
    """dev-b's credentials deploy to dev-a: the broker refuses the first request (PUBACK 0x87)."""
    work = Path(env.workdir)
    archive = work / "six-chunks.tar.gz"
    archive.write_bytes(os.urandom(6 * 1024))  # refused before any device reads it
    tries = 3 if env.quick else 10
    took, outcomes = [], []
    with Mosquitto(work / "broker", users=_users(work)) as broker:
        url = f"mqtt://dev-b:{DEVICES['dev-b']}@{broker.host}:{broker.port}"
        for _ in range(tries):
            t0 = time.monotonic()
            (d,) = deploy(archive, ["dev-a"], url, chunk_bytes=1024, timeout=15).devices
            took.append(time.monotonic() - t0)
            outcomes.append(f"{d.outcome} ({(d.error or {}).get('code')})")
    ok = sum(o.startswith("not_authorized") for o in outcomes)
    return {
        "fault": "deploy with credentials the ACL does not let command that device",
        "fed": tries,
        "counted": ok,
        "duplicates": 0,
        "dropped_reported": ok,
        "recover_s": _median(took),
        "outcome": f"{ok}/{tries} ended {', '.join(sorted(set(outcomes)))} in a median {_median(took)} s "
        "(was: timeout after 15 s, 'chunks sent 6/6')",
    }


SCENARIOS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "ota_kill_during_chunks": ota_kill_during_chunks,
    "ota_kill_after_switch": ota_kill_after_switch,
    "impersonation": impersonation,
    "unauthorized_deploy": unauthorized_deploy,
}
