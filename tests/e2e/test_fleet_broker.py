"""The development broker: mosquitto (MQTT 5) when installed, amqtt (MQTT 3.1.1 only) otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgekit.fleet.connection import FleetLink
from edgekit.fleet.dev_broker import mosquitto_path, start_dev_broker
from edgekit.fleet.watch import FleetWatcher
from edgekit_agent.contract.errors import BrokerError


def _eventually(pred, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


def publish_retained(url: str, protocol: int, device: str) -> None:
    host, port = url.removeprefix("mqtt://").split(":")
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=protocol)
    c.connect(host, int(port))
    c.loop_start()
    doc = {"state": "online", "boot_id": "b", "epoch": "e", "seq": 1, "ts": int(time.time() * 1000)}
    c.publish(f"edge/v1/{device}/status", json.dumps(doc), qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


def test_amqtt_broker_refuses_mqtt5_and_watch_falls_back_to_311():
    with start_dev_broker(port=0, engine="amqtt") as broker:
        assert broker.engine == "amqtt" and not broker.mqtt5
        with pytest.raises(BrokerError, match="refused"):
            FleetLink(broker.url, protocol="5").start(timeout=5)
        publish_retained(broker.url, mqtt.MQTTv311, "pi-amqtt")
        with FleetWatcher(broker.url) as w:
            assert not w.link.mqtt5  # fell back
            assert w.sync(5)
            assert [(r.device_id, r.status) for r in w.snapshot()] == [("pi-amqtt", "online")]
        from edgekit.fleet.exporter import Exporter

        with Exporter(broker.url, port=0) as exp:  # "$share/G/..." becomes a plain subscription on 3.1.1
            assert not exp.link.mqtt5
            host, port = broker.url.removeprefix("mqtt://").split(":")
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pi-amqtt", protocol=mqtt.MQTTv311)
            c.connect(host, int(port))
            c.loop_start()
            doc = {
                "epoch": "e",
                "seq": 2,
                "ts": int(time.time() * 1000),
                "counts": {"requests": 6, "ok": 6, "errors": {}},
            }
            c.publish("edge/v1/pi-amqtt/telemetry/inference", json.dumps(doc), qos=1).wait_for_publish(5)
            c.disconnect()
            c.loop_stop()
            assert _eventually(lambda: getattr(exp.state.devices.get("pi-amqtt"), "requests", 0) == 6)


@pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed")
def test_auto_engine_prefers_mosquitto_with_mqtt5_and_refuses_a_taken_port():
    with start_dev_broker(port=0) as broker:
        assert broker.engine == "mosquitto" and broker.mqtt5
        publish_retained(broker.url, mqtt.MQTTv5, "pi-5")
        with FleetWatcher(broker.url) as w:
            assert w.link.mqtt5 and w.sync(5)
            assert [r.device_id for r in w.snapshot()] == ["pi-5"]
        with pytest.raises(BrokerError, match="already in use"):
            start_dev_broker(port=broker.port)


def test_broker_cli_prints_its_url_and_stops_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit", "broker", "--port", "0", "--engine", "amqtt"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("mqtt://127.0.0.1:")
        link = FleetLink(url).start(timeout=5)
        assert not link.mqtt5
        link.close()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "development" in err.lower()


def test_unreachable_broker_is_a_typed_error_with_advice():
    with pytest.raises(BrokerError, match="edgekit broker"):
        FleetLink("mqtt://127.0.0.1:1").start(timeout=1)
    # Refused connections end the wait early (a 60 s timeout would say "no answer ... within 60 s") and say why.
    with pytest.raises(BrokerError, match="cannot reach .*127.0.0.1:1: Connection refused"):
        FleetLink("mqtt://127.0.0.1:1").start(timeout=60)


def test_a_plain_socket_that_is_no_mqtt_broker_is_told_apart(tmp_path):
    """Something listens but never speaks MQTT (here: a socket that closes at once): the error says the port
    accepts connections, so the fix is the scheme or the address, not starting a broker."""
    import socket
    import threading

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def refuse_politely() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=refuse_politely, daemon=True).start()
    try:
        with pytest.raises(BrokerError, match="accepts connections but the MQTT handshake failed"):
            FleetLink(f"mqtt://127.0.0.1:{port}").start(timeout=60)
    finally:
        srv.close()


def test_fleet_tools_on_a_secured_broker_tls_password_acl(tmp_path, monkeypatch):
    """mosquitto with TLS (a test CA) in the documented set-up of the security tests (device and fleet listeners)."""
    from test_security_broker import make_pki, make_users  # the same PKI and users the broker-security tests use

    from edgekit.fleet.exporter import Exporter

    from brokers import Mosquitto

    pki = make_pki(tmp_path / "pki")
    tls = (f"cafile {pki['ca']}", f"certfile {pki['server_cert']}", f"keyfile {pki['server_key']}")
    broker = Mosquitto(tmp_path / "broker", users=make_users(tmp_path), tls=tls)
    with broker:
        url = f"mqtts://fleet@127.0.0.1:{broker.fleet_port}"
        # A device publishes its retained birth under its own topic (the ACL allows edge/v1/dev-a/#).
        dev = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev-a", protocol=mqtt.MQTTv5)
        dev.username_pw_set("dev-a", "pw-a")
        dev.tls_set(ca_certs=str(pki["ca"]))
        dev.connect("127.0.0.1", broker.port)
        dev.loop_start()
        doc = {"state": "online", "boot_id": "b", "epoch": "e", "seq": 1, "ts": int(time.time() * 1000)}
        dev.publish("edge/v1/dev-a/status", json.dumps(doc), qos=1, retain=True).wait_for_publish(5)
        dev.disconnect()
        dev.loop_stop()

        with pytest.raises(BrokerError, match="user name and password"):
            FleetLink(url.replace("fleet@", "fleet:wrong@"), tls_ca=str(pki["ca"])).start(timeout=5)
        with pytest.raises(
            BrokerError, match="TLS handshake failed"
        ):  # the rogue CA did not sign the broker's certificate
            FleetLink(url.replace("fleet@", "fleet:pw-fleet@"), tls_ca=str(pki["rogue_ca"])).start(timeout=60)
        monkeypatch.setenv("EDGEKIT_MQTT_PASSWORD", "pw-fleet")  # the password from the environment, not the URL
        with FleetWatcher(url, tls_ca=str(pki["ca"])) as w:
            t0 = time.monotonic()
            assert w.sync(5) is False  # the ACL refuses the sync marker: noticed at once (PUBACK 0x87), no 5 s wait
            assert time.monotonic() - t0 < 3
            assert [(r.device_id, r.status) for r in w.snapshot()] == [("dev-a", "online")]
        with Exporter(url, port=0, tls_ca=str(pki["ca"])) as exp:
            assert exp.link.mqtt5
