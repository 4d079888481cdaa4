"""The MQTT links' sockets: each packet is sent at once (TCP_NODELAY; not by the pure consumers), and an
unreachable broker is explained.

With Nagle's algorithm on, a small packet written while an earlier one is unacknowledged (a PUBACK, then a
command's answer) waits for the peer's delayed ACK: ~40 ms on every request/response round trip. The figures
are in docs/mqtt311.md (scripts/bench_mqtt311.py); here we check the socket option itself on real connections.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

from edgekit.fleet.connection import FleetLink
from edgekit.fleet.exporter import Exporter
from edgekit.fleet.watch import FleetWatcher
from edgekit_agent.mqtt.client import BrokerSettings, no_delay
from edgekit_agent.mqtt.link import Link
from edgekit_agent.mqtt.outbox import Outbox


def _nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_agent_and_fleet_links_switch_nagle_off(mosquitto, tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    agent = Link(BrokerSettings.from_url(mosquitto.url), "dev-1", "boot-1", outbox, on_message=lambda _m: None)
    agent.start()
    try:
        assert agent.connected.wait(10), "the agent's link did not connect"
        assert _nodelay(agent._client.socket()) == 1  # noqa: SLF001 - the socket paho opened is the unit under test
        with FleetLink(mosquitto.url).start(timeout=10) as fleet:
            assert _nodelay(fleet._client.socket()) == 1  # noqa: SLF001
    finally:
        agent.close()
        outbox.close()


def test_pure_consumers_leave_nagle_on(mosquitto) -> None:
    """watch and the exporter send only PUBACKs (and watch one sync marker): with Nagle on, a burst's PUBACKs
    share segments, as a bare paho consumer's do (issue 15, scripts/bench_fleet.py)."""
    watcher = FleetWatcher(mosquitto.url).start(timeout=10)
    try:
        assert _nodelay(watcher.link._client.socket()) == 0  # noqa: SLF001
        assert watcher.sync(timeout=5.0), "the sync marker did not come back"
    finally:
        watcher.close()
    with Exporter(mosquitto.url, port=0) as exporter:
        assert _nodelay(exporter.link._client.socket()) == 0  # noqa: SLF001


def test_no_delay_leaves_a_socket_that_is_not_tcp_alone() -> None:
    a, b = socket.socketpair()  # AF_UNIX: TCP_NODELAY does not apply; paho may hand us such a socket via a proxy
    try:
        no_delay(a)  # must not raise
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            assert _nodelay(tcp) == 0
            no_delay(tcp)
            assert _nodelay(tcp) == 1
        finally:
            tcp.close()
    finally:
        a.close()
        b.close()


def test_agent_says_once_per_outage_why_the_broker_is_unreachable(tmp_path: Path, caplog) -> None:
    """The agent serves without a broker; the log says why it cannot connect (once, not at every retry)."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # a port that was free a moment ago: nothing listens there now
    outbox = Outbox(tmp_path / "outbox.sqlite")
    settings = BrokerSettings.from_url(f"mqtt://127.0.0.1:{port}", reconnect_min_s=1, reconnect_max_s=1)
    agent = Link(settings, "dev-1", "boot-1", outbox, on_message=lambda _m: None)
    with caplog.at_level(logging.WARNING, logger="edgekit_agent.mqtt.client"):
        agent.start()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "cannot reach" not in caplog.text:
                time.sleep(0.05)
            time.sleep(2.5)  # at least two more failed attempts (1 s apart)
        finally:
            agent.close(timeout=0.5)
            outbox.close()
    said = [r.getMessage() for r in caplog.records if "cannot reach" in r.getMessage()]
    assert len(said) == 1, said
    assert f"mqtt://127.0.0.1:{port}" in said[0] and "refused" in said[0].lower() and "outbox" in said[0]


def test_a_message_mqtt_cannot_carry_is_dropped_not_retried_forever(mosquitto, tmp_path: Path, caplog) -> None:
    """An outbox entry paho refuses to publish (a wildcard topic) is dropped with an error in the log; what
    comes after it is delivered (before, it stayed first in line and blocked the outbox, even across restarts)."""
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.put("edge/v1/dev-2/res/+", {"answer": 1}, priority=1, sequenced=False)
    outbox.put("edge/v1/dev-2/events", {"event": "after"})
    with FleetLink(mosquitto.url, subscriptions=[("edge/v1/dev-2/events", 1)]).start(timeout=10) as fleet:
        agent = Link(BrokerSettings.from_url(mosquitto.url), "dev-2", "boot-2", outbox, on_message=lambda _m: None)
        with caplog.at_level(logging.ERROR, logger="edgekit_agent.mqtt.link"):
            agent.start()
            try:
                assert agent.connected.wait(10)
                msg = fleet.messages.get(timeout=10)
                assert b'"after"' in msg.payload
                assert agent.flush(10) and outbox.depth == 0
            finally:
                agent.close()
                outbox.close()
    assert any("cannot carry" in r.getMessage() and "res/+" in r.getMessage() for r in caplog.records)
