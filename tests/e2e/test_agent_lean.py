"""The serving agent stays lean (issue 15): on plain ``mqtt://`` with an unsigned bundle it never loads OpenSSL,
``urllib.request``, ``http.client`` or ``email`` (paho imports them at module level; see
``edgekit_agent.mqtt.paho_import``), and paho still gets the real modules once something needs them.
TLS itself is tested against a real broker in ``test_agent_secure.py``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

HEAVY = ("ssl", "_ssl", "hashlib", "_hashlib", "urllib.request", "http.client", "email")
# What a real import of ssl or hashlib maps into the process.
OPENSSL_FILES = ("libssl.so", "libcrypto.so", "/_ssl.", "/_hashlib.")


def test_importing_the_agent_loads_no_openssl_and_paho_gets_the_real_modules_on_use():
    code = (
        "import json, sys\n"
        "import edgekit_agent.serve.agent, edgekit_agent.cli.run, edgekit_agent.ota.slots\n"
        f"before = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "import paho.mqtt.client as m\n"
        "no_socket = m.ssl.SSLWantReadError\n"  # what paho's except clauses name while no SSL socket can exist
        "import hashlib, ssl, urllib.request\n"
        "from edgekit_agent.contract.digest import sha256\n"
        "print(json.dumps({'before': before,\n"
        "  'fake_before_ssl': no_socket is not ssl.SSLWantReadError,\n"
        "  'real_after': [m.ssl.SSLWantReadError is ssl.SSLWantReadError, m.ssl.SSLWantWriteError is\n"
        "                 ssl.SSLWantWriteError, m.ssl.create_default_context is ssl.create_default_context,\n"
        "                 m.hashlib.sha1 is hashlib.sha1, m.urllib.request.getproxies is urllib.request.getproxies],\n"
        "  'digest': sha256(b'edgekit').hexdigest() == hashlib.sha256(b'edgekit').hexdigest()}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["before"] == [], f"the serving agent's imports load {got['before']}"
    assert got["fake_before_ssl"] and all(got["real_after"]) and got["digest"], got


def test_a_serving_agent_on_plain_mqtt_never_maps_openssl(mosquitto, digits_bundle, digits_dataset, tmp_path: Path):
    inbox = tmp_path / "inbox"
    (inbox / "7").mkdir(parents=True)
    windows: list[dict] = []
    got_window = threading.Event()

    def on_message(_c, _u, m: mqtt.MQTTMessage) -> None:
        doc = json.loads(m.payload)
        if doc["counts"]["requests"] > 0:
            windows.append(doc)
            got_window.set()

    fleet = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    fleet.on_message = on_message
    fleet.on_connect = lambda c, *a: c.subscribe("edge/v1/lean-01/telemetry/inference", qos=1)
    fleet.connect(mosquitto.host, mosquitto.port)
    fleet.loop_start()
    argv = [sys.executable, "-m", "edgekit_agent", "run", str(digits_bundle), "--allow-unsigned"]
    argv += ["--broker", mosquitto.url, "--device-id", "lean-01", "--data-dir", str(tmp_path / "data")]
    argv += ["--watch", str(inbox), "--window", "1"]
    agent = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        image = sorted((digits_dataset / "7").iterdir())[0]
        shutil.copyfile(image, inbox / "7" / image.name)
        deadline = time.monotonic() + 60
        while not got_window.wait(0.2):
            assert agent.poll() is None, agent.communicate()[1]
            assert time.monotonic() < deadline, "no telemetry window with the served image within 60 s"
        assert not (inbox / "7" / image.name).exists()
        maps = Path(f"/proc/{agent.pid}/maps").read_text()
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        fleet.loop_stop()
        fleet.disconnect()
    loaded = sorted({line.split()[-1] for line in maps.splitlines() if any(f in line for f in OPENSSL_FILES)})
    assert loaded == [], f"the agent mapped {loaded}"
    assert agent.returncode == 0, agent.stderr.read() if agent.stderr else ""
