"""Where a broker listens: ``mqtt://[user[:password]@]host[:port]`` (``mqtts://`` for TLS), parsed once for
the agent and the fleet tools, so both sides read an address (and its default port) the same way."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from edgekit_agent.contract.errors import UsageError

#: A user name without a password in the URL takes the password from here (not in shell history or ``ps``).
PASSWORD_ENV = "EDGEKIT_MQTT_PASSWORD"


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """A parsed broker URL: host, port, TLS and the credentials it carried (``url`` leaves them out)."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str, *, tls: bool = False, password_env: bool = False) -> BrokerAddress:
        """``tls``: TLS even for ``mqtt://`` (a CA or client certificate was given; the default port is then
        8883). ``password_env``: a user name without a password takes the password from
        :data:`PASSWORD_ENV`."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise UsageError(f"broker URL '{url}' must look like mqtt://HOST:PORT (or mqtts://HOST:PORT for TLS).")
        tls = tls or parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise UsageError(f"broker URL '{url}': the port is not a number between 1 and 65535.") from None
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if password is None and username and password_env:
            password = os.environ.get(PASSWORD_ENV)
        return cls(parts.hostname, port, tls, username, password)

    @property
    def url(self) -> str:
        """The address without credentials (safe for logs and meta)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"
