"""Both MQTT links send each packet at once (TCP_NODELAY).

With Nagle's algorithm on, a small packet written while an earlier one is unacknowledged (a PUBACK, then a
command's answer) waits for the peer's delayed ACK: ~40 ms on every request/response round trip. The figures
are in docs/mqtt311.md (scripts/bench_mqtt311.py); here we check the socket option itself on real connections.
"""

from __future__ import annotations

import socket
from pathlib import Path

from edgekit.link import MqttLink
from edgekit_agent.link import BrokerSettings, Link, no_delay
from edgekit_agent.outbox import Outbox


def _nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_agent_and_fleet_links_switch_nagle_off(mosquitto, tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    agent = Link(BrokerSettings.from_url(mosquitto.url), "dev-1", "boot-1", outbox, on_message=lambda _m: None)
    agent.start()
    try:
        assert agent.connected.wait(10), "the agent's link did not connect"
        assert _nodelay(agent._client.socket()) == 1  # noqa: SLF001 - the socket paho opened is the unit under test
        with MqttLink(mosquitto.url).start(timeout=10) as fleet:
            assert _nodelay(fleet._client.socket()) == 1  # noqa: SLF001
    finally:
        agent.close()
        outbox.close()


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
