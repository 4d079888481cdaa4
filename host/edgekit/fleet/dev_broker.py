"""A development MQTT broker on loopback, so ``edgekit demo`` needs nothing else on a fresh machine.

Two engines, chosen by a table:

* ``mosquitto`` — the real thing (MQTT 5: shared subscriptions, request/response properties, message
  expiry), started as a subprocess with a generated config when the ``mosquitto`` binary is on PATH.
* ``amqtt`` — a pure-Python asyncio broker from PyPI (``edgekit[host]``), run in a background thread.
  amqtt 0.12 speaks **MQTT 3.1.1 only**: it refuses MQTT 5 clients (CONNACK "unsupported protocol
  version"), has no ``$share`` shared subscriptions and carries no MQTT 5 properties. Retained messages,
  the last will and QoS 1 work. The fleet tools and the agent fall back to 3.1.1 against it by themselves
  (request/response fields then travel in the JSON payload), so the demo runs on it too.

``engine="auto"`` prefers mosquitto, because the edge/v1 contract is MQTT 5. Neither is a production
broker: no TLS, loopback only by default, and no authentication unless :class:`BrokerUsers` is given
(mosquitto only). Then the broker runs the set-up docs/trust.md documents, from :func:`secure_listeners`:

* a **device listener** where the client id *is* the user name (``use_username_as_clientid``): one
  device's credentials cannot take over, disconnect or wipe another device's session, whatever client id
  they send; its ACL lets user ``X`` use ``edge/v1/X/#`` only;
* a **fleet listener** on its own port with its own password file (the fleet tools' users, which may read
  and command every device and run several tools at once, each with its own client id). Device
  credentials do not work there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit_agent.contract.errors import BrokerError, UsageError

BANNER = (
    "edgekit development broker: no authentication, no TLS. "
    "For development only; use mosquitto/EMQX with ACLs in production."
)
SECURE_BANNER = (
    "edgekit development broker with authentication (no TLS): devices connect on the device port as "
    "their own user (client id = user name), fleet tools on the fleet port. For development only."
)


@dataclass(frozen=True, slots=True)
class BrokerUsers:
    """mosquitto password files (``mosquitto_passwd``): ``devices`` (user name = device id) and ``fleet``."""

    devices: Path
    fleet: Path
    fleet_port: int = 0  # 0: a free port


def secure_listeners(
    workdir: Path,
    device_listener: str,
    fleet_listener: str,
    users: BrokerUsers,
    tls: tuple[str, ...] = (),
) -> list[str]:
    """The mosquitto config lines of the documented broker set-up (docs/trust.md, "Broker security"):
    ``per_listener_settings true``, then the device listener and the fleet listener (``"PORT HOST"``),
    each with its password file and the ACL written into ``workdir``. ``tls``: the cafile/certfile/keyfile
    lines both listeners get."""
    for path in (users.devices, users.fleet):
        if not Path(path).is_file():
            raise UsageError(f"{path}: no such password file; create it with `mosquitto_passwd -c {path} USER`.")
    device_acl, fleet_acl = workdir / "devices.acl", workdir / "fleet.acl"
    # %u is the user name, which is also the client id there: a device reaches its own topics only.
    device_acl.write_text("pattern readwrite edge/v1/%u/#\n")
    # A pattern applies to every user (a bare topic line before any user line would apply to anonymous ones only).
    fleet_acl.write_text("pattern readwrite edge/v1/#\n")
    return [
        "per_listener_settings true",
        f"listener {device_listener}",
        "allow_anonymous false",
        f"password_file {Path(users.devices).resolve()}",
        f"acl_file {device_acl}",
        "use_username_as_clientid true",
        *tls,
        f"listener {fleet_listener}",
        "allow_anonymous false",
        f"password_file {Path(users.fleet).resolve()}",
        f"acl_file {fleet_acl}",
        *tls,
    ]


def mosquitto_path() -> str | None:
    """The mosquitto binary, if installed (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def port_in_use(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _wait_listening(host: str, port: int, timeout: float, alive: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        if port_in_use(host, port):
            return True
        time.sleep(0.05)
    return False


@dataclass
class DevBroker:
    """A running development broker; :meth:`stop` (or leaving the ``with`` block) shuts it down."""

    host: str
    port: int
    engine: str
    mqtt5: bool
    _stop: Callable[[], None] = field(repr=False)
    _stopped: bool = field(default=False, repr=False)
    fleet_port: int | None = None  # with BrokerUsers: the fleet tools' listener

    @property
    def url(self) -> str:
        """mqtt://HOST:PORT of this broker (with BrokerUsers: the devices' listener)."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def fleet_url(self) -> str:
        """mqtt://HOST:PORT for the fleet tools (the same as :attr:`url` without BrokerUsers)."""
        return f"mqtt://{self.host}:{self.fleet_port or self.port}"

    def stop(self) -> None:
        """Stop the broker (idempotent); its clients see the connection close."""
        if not self._stopped:
            self._stopped = True
            self._stop()

    def __enter__(self) -> DevBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _start_mosquitto(host: str, port: int, timeout: float, users: BrokerUsers | None = None) -> DevBroker:
    binary = mosquitto_path()
    if binary is None:
        raise BrokerError("mosquitto is not installed (apt-get install mosquitto); use --engine amqtt instead.")
    workdir = Path(tempfile.mkdtemp(prefix="edgekit-broker-"))
    conf = workdir / "mosquitto.conf"
    fleet_port = None
    if users is None:
        listeners = [f"listener {port} {host}", "allow_anonymous true"]
    else:
        fleet_port = users.fleet_port or _free_port(host)
        listeners = secure_listeners(workdir, f"{port} {host}", f"{fleet_port} {host}", users)
    lines = [
        *listeners,
        "persistence false",
        "max_queued_messages 100000",
        "set_tcp_nodelay true",  # small request/response packets: no Nagle delay (amqtt, asyncio, has none either)
        "log_dest stderr",
        "log_type error",
        "log_type warning",
    ]
    if os.geteuid() == 0:
        lines.insert(0, "user root")  # mosquitto started as root would drop to a user that cannot read workdir
    conf.write_text("\n".join(lines) + "\n")
    log_file = open(workdir / "mosquitto.log", "ab")  # noqa: SIM115 - closed in stop()
    # Own process group: Ctrl-C in the terminal reaches us, and we stop the broker in order.
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log_file.close()
        shutil.rmtree(workdir, ignore_errors=True)

    if not _wait_listening(host, port, timeout, lambda: proc.poll() is None):
        tail = (workdir / "mosquitto.log").read_text(errors="replace")[-500:]
        stop()
        raise BrokerError(f"mosquitto did not start on {host}:{port}: {tail.strip() or 'no log output'}")
    return DevBroker(host, port, "mosquitto", True, stop, fleet_port=fleet_port)


def _start_amqtt(host: str, port: int, timeout: float) -> DevBroker:
    from amqtt.broker import Broker

    # amqtt logs every connection at INFO and tracebacks for refused MQTT 5 clients; keep it quiet.
    logging.getLogger("amqtt").setLevel(logging.CRITICAL)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []
    holder: dict[str, Any] = {}
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        # Only anonymous auth: the default plugin set adds a $SYS publisher and per-packet logging.
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            broker = Broker(config)
            await broker.start()
            holder["broker"] = broker

        try:
            loop.run_until_complete(boot())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name="edgekit-amqtt", daemon=True)
    thread.start()
    if not ready.wait(timeout) or failure:
        raise BrokerError(f"amqtt could not listen on {host}:{port}: {failure[0] if failure else 'timed out'}")

    def stop() -> None:
        fut = asyncio.run_coroutine_threadsafe(holder["broker"].shutdown(), loop)
        try:
            fut.result(10)
        except Exception:  # noqa: BLE001 - shutting down anyway
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return DevBroker(host, port, "amqtt", False, stop)


ENGINES: dict[str, Callable[[str, int, float], DevBroker]] = {"mosquitto": _start_mosquitto, "amqtt": _start_amqtt}


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_dev_broker(
    host: str = "127.0.0.1",
    port: int = 1883,
    *,
    engine: str = "auto",
    timeout: float = 10.0,
    users: BrokerUsers | None = None,
) -> DevBroker:
    """Start a development broker on ``host:port`` and return once it accepts connections.

    ``engine``: ``auto`` (mosquitto when installed, else amqtt), ``mosquitto`` or ``amqtt``.
    ``port=0`` picks a free port. ``users``: authentication, the client id bound to the user name, the
    per-device ACL and a separate fleet port (mosquitto only; see the module docstring). Raises
    :class:`BrokerError` when the port is taken or the broker fails.
    """
    if engine == "auto":
        engine = "mosquitto" if mosquitto_path() else "amqtt"
    if engine not in ENGINES:
        raise UsageError(f"unknown broker engine '{engine}'; choose auto, {', '.join(ENGINES)}.")
    if users is not None and engine != "mosquitto":
        raise UsageError("broker users (--users/--fleet-users) need the mosquitto engine; amqtt has no ACLs.")
    if port == 0:
        port = _free_port(host)
    elif port_in_use(host, port):
        raise BrokerError(
            f"{host}:{port} is already in use (another broker?); pass --port N, or use the running broker with --broker mqtt://{host}:{port}."
        )
    if users is not None:
        return _start_mosquitto(host, port, timeout, users)
    return ENGINES[engine](host, port, timeout)
