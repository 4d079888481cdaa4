"""A real mosquitto for tests: started from a config file on a free loopback port, restartable on the same port.

With ``users`` it runs the documented secure set-up (``edgekit.fleet.dev_broker.secure_listeners``): the
device listener on :attr:`Mosquitto.port` (client id = user name, per-device ACL) and the fleet listener on
:attr:`Mosquitto.fleet_port`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from edgekit.fleet.dev_broker import BrokerUsers, secure_listeners


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if not found:
        raise RuntimeError(
            "mosquitto is not installed: run scripts/test.sh (it installs it) or apt-get install mosquitto"
        )
    return found


class Mosquitto:
    """``extra_config`` lines go into the config file (password_file, acl_file, TLS listener, ...); with
    ``users``, ``tls`` lines go into both listeners."""

    def __init__(
        self,
        workdir: Path,
        extra_config: str = "",
        allow_anonymous: bool = True,
        users: BrokerUsers | None = None,
        tls: tuple[str, ...] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.extra_config = extra_config
        self.allow_anonymous = allow_anonymous
        self.users = users
        self.tls = tls
        self.fleet_port = free_port() if users is not None else self.port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def fleet_url(self) -> str:
        return f"mqtt://{self.host}:{self.fleet_port}"

    def write_config(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        if self.users is None:
            listeners = [f"listener {self.port} {self.host}", f"allow_anonymous {str(self.allow_anonymous).lower()}"]
        else:
            listeners = secure_listeners(
                self.workdir, f"{self.port} {self.host}", f"{self.fleet_port} {self.host}", self.users, self.tls
            )
        conf.write_text(
            "\n".join(
                [
                    "user root",
                    *listeners,
                    "persistence false",
                    "max_queued_messages 100000",
                    # As docs/fleet.md recommends: without it every request/response round trip waits ~40 ms
                    # for a delayed ACK (Nagle's algorithm on the broker's side).
                    "set_tcp_nodelay true",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    self.extra_config,
                    "",
                ]
            )
        )
        return conf

    def start(self, timeout: float = 10.0) -> Mosquitto:
        conf = self.write_config()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
