"""paho-mqtt imported without the modules a plain-TCP client never calls: ``ssl``, ``hashlib`` and ``urllib.request``.

paho's ``client`` module imports them at module level: ``ssl`` for TLS, ``hashlib`` for the WebSocket handshake,
``urllib.request`` for proxies from the environment (only with PySocks installed). Together they load OpenSSL
(libssl, libcrypto), ``http.client`` and ``email``: about 6 MiB of the agent's resident set (issue 15) that an
agent on ``mqtt://`` never uses. While paho's module runs, each of them (unless something imported it already)
is a :class:`_Deferred` stand-in that imports the real module on first attribute access, so paho works
unchanged: TLS (``tls_set``), WebSockets and proxies import what they need when they are used.

One exception, because paho names them on every failed socket read or write (``except ssl.SSLWantReadError``):
``ssl.SSLWantReadError`` and ``ssl.SSLWantWriteError`` are an exception nothing raises for as long as no SSL
socket can exist, that is while OpenSSL's ``_ssl`` is not loaded; from then on they are the real classes.

:mod:`edgekit_agent.mqtt` imports this first, so every module of the package sees the lean paho.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_SSL_ERRORS = ("SSLWantReadError", "SSLWantWriteError")


class _NoSslSocket(Exception):
    """What ``ssl.SSLWantReadError`` is to paho while no SSL socket can exist: never raised."""


class _Deferred(types.ModuleType):
    """Stands for a module in paho's globals; the real module is imported when an attribute is first read."""

    def __getattr__(self, name: str) -> Any:
        if self.__name__ == "ssl" and name in _SSL_ERRORS and "_ssl" not in sys.modules:
            return _NoSslSocket
        return getattr(importlib.import_module(self.__name__), name)


def _import_paho() -> types.ModuleType:
    if "paho.mqtt.client" in sys.modules:
        return sys.modules["paho.mqtt.client"]
    import urllib

    deferred = {name: _Deferred(name) for name in ("ssl", "hashlib", "urllib.request") if name not in sys.modules}
    sys.modules.update(deferred)
    if "urllib.request" in deferred:
        # ``import urllib.request`` binds ``urllib`` and reads ``urllib.request`` when called; the first real
        # import of urllib.request (by anyone) replaces this attribute.
        urllib.request = deferred["urllib.request"]  # type: ignore[attr-defined]
    try:
        import paho.mqtt.client
    finally:
        for name, stand_in in deferred.items():
            if sys.modules.get(name) is stand_in:  # only paho holds them: others import the real modules
                del sys.modules[name]
    return paho.mqtt.client


_import_paho()
