"""The agent's settings: typed, validated, from a TOML file and/or command-line flags (flags win).

An ``agent.toml``::

    bundle = "/opt/edgekit/digits-raspberry-pi-4.tar.gz"
    device_id = "pi-kitchen"              # = the MQTT user name; [A-Za-z0-9_.-], no '/', '+', '#'
    data_dir = "/var/lib/edgekit-agent"   # outbox.sqlite and commands.sqlite
    window_s = 60
    num_threads = 2
    skip_selftest = false

    [broker]
    url = "mqtts://broker.lan:8883"
    username = "pi-kitchen"
    password = "…"                        # or EDGEKIT_MQTT_PASSWORD in the environment
    tls_ca = "/etc/edgekit/ca.pem"
    keepalive = 30
    reconnect_min_s = 1
    reconnect_max_s = 3
    inflight = 8
    mqtt_version = "auto"                 # auto (MQTT 5, else 3.1.1 when the broker refuses 5), "5" or "3.1.1"

    [watch]
    dir = "/srv/camera"
    processed = "move"                    # move (into DIR/.processed/), delete, or keep (remembered in memory)
    poll_s = 0.5

    [outbox]
    max_messages = 10000
    max_mb = 64                           # bytes of stored messages; the oldest telemetry goes first

Unknown keys are errors with a "did you mean"; every message names the file and the key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgekit_agent.contract.broker import PASSWORD_ENV
from edgekit_agent.contract.errors import UsageError
from edgekit_agent.mqtt.client import BrokerSettings

DEVICE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
PROCESSED_MODES = ("move", "delete", "keep")

# section -> key -> accepted types ("" = top level).
_SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "": {
        "bundle": (str,),
        "device_id": (str,),
        "data_dir": (str,),
        "window_s": (int, float),
        "num_threads": (int,),
        "skip_selftest": (bool,),
        "trusted_keys": (str,),
        "require_signature": (bool,),
        "drift_every": (int,),
        "allow_unsigned": (bool,),
    },
    "broker": {
        "url": (str,),
        "username": (str,),
        "password": (str,),
        "tls_ca": (str,),
        "tls_cert": (str,),
        "tls_key": (str,),
        "keepalive": (int,),
        "reconnect_min_s": (int,),
        "reconnect_max_s": (int,),
        "inflight": (int,),
        "session_expiry_s": (int,),
        "mqtt_version": (str,),
    },
    "watch": {"dir": (str,), "processed": (str,), "poll_s": (int, float)},
    "outbox": {"max_messages": (int,), "max_mb": (int, float)},
}


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Everything ``edgekit-agent run`` needs besides the bundle itself."""

    device_id: str
    data_dir: Path
    broker: BrokerSettings | None = None  # None: serve and record without a fleet channel (benchmarks)
    window_s: float = 10.0
    watch_dir: Path | None = None
    processed: str = "move"
    poll_s: float = 0.5
    num_threads: int | None = None
    skip_selftest: bool = False
    outbox_max: int = 10_000
    outbox_max_mb: float = 64.0
    # Input statistics for drift on every Nth pre-quantised tensor (images: always, their floats exist anyway).
    # A mean over a small int8 tensor costs ~3-8 µs in numpy, as much as a tiny model's invoke; 1 in 16
    # still gives hundreds of samples per window at tensor rates, plenty for a 10-bin PSI.
    drift_every: int = 16
    bundle: Path | None = None
    trusted_keys: Path | None = None
    require_signature: bool = False
    allow_unsigned: bool = (
        False  # with trusted_keys: accept bundles without manifest.sig (signed ones are still checked)
    )

    def __post_init__(self) -> None:
        if not DEVICE_ID.match(self.device_id):
            raise UsageError(
                f"device id '{self.device_id}' must be 1-64 characters of A-Z a-z 0-9 _ . - "
                "(it is an MQTT topic level and user name: no '/', '+', '#')."
            )
        if not 0.05 <= self.window_s <= 86_400:
            raise UsageError(f"window_s must be between 0.05 and 86400 seconds, got {self.window_s}.")
        if self.processed not in PROCESSED_MODES:
            raise UsageError(f"watch.processed '{self.processed}' must be one of {', '.join(PROCESSED_MODES)}.")
        if not 0.01 <= self.poll_s <= 60:
            raise UsageError(f"watch.poll_s must be between 0.01 and 60 seconds, got {self.poll_s}.")
        if self.num_threads is not None and not 1 <= self.num_threads <= 64:
            raise UsageError(f"num_threads must be between 1 and 64, got {self.num_threads}.")
        if self.outbox_max < 10:
            raise UsageError(f"outbox.max_messages must be at least 10, got {self.outbox_max}.")
        if not 0.01 <= self.outbox_max_mb <= 1_000_000:
            raise UsageError(f"outbox.max_mb must be between 0.01 and 1000000 MB, got {self.outbox_max_mb}.")
        if self.drift_every < 1:
            raise UsageError(f"drift_every must be at least 1, got {self.drift_every}.")
        if self.broker is not None and not 1 <= self.broker.inflight <= 100:
            raise UsageError(f"broker.inflight must be between 1 and 100, got {self.broker.inflight}.")

    def with_changes(self, **changes: Any) -> AgentSettings:
        """A validated copy (used by the ``set_config`` command)."""
        return replace(self, **changes)


def default_data_dir(device_id: str) -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "edgekit-agent" / device_id


def _check(doc: Mapping[str, Any], where: str) -> None:
    import difflib  # here and tomllib below: only with a config file, ~0.3 MiB of RSS otherwise (issue 15)

    for key, value in doc.items():
        if key in _SCHEMA and key != "":
            if not isinstance(value, dict):
                raise UsageError(f"{where}: '{key}' must be a [{key}] section.")
            for sub, subval in value.items():
                allowed = _SCHEMA[key]
                if sub not in allowed:
                    hint = difflib.get_close_matches(sub, list(allowed), n=1)
                    extra = f" Did you mean '{hint[0]}'?" if hint else f" Known keys: {', '.join(allowed)}."
                    raise UsageError(f"{where}: unknown key '{key}.{sub}'.{extra}")
                _type(subval, allowed[sub], where, f"{key}.{sub}")
        elif key in _SCHEMA[""]:
            _type(value, _SCHEMA[""][key], where, key)
        else:
            known = list(_SCHEMA[""]) + [k for k in _SCHEMA if k]
            hint = difflib.get_close_matches(key, known, n=1)
            extra = f" Did you mean '{hint[0]}'?" if hint else f" Known keys and sections: {', '.join(known)}."
            raise UsageError(f"{where}: unknown key '{key}'.{extra}")


def _type(value: Any, types: tuple[type, ...], where: str, key: str) -> None:
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        names = " or ".join(t.__name__ for t in types)
        raise UsageError(f"{where}: '{key}' must be {names}, got {type(value).__name__}.")


def read_config(path: str | Path) -> dict[str, Any]:
    """Parse and check an agent TOML file (keys only; values are validated by :func:`load_settings`)."""
    import tomllib

    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such config file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the config ({exc}).") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc}).") from None
    _check(doc, str(path))
    return doc


def load_settings(config: str | Path | None = None, **flags: Any) -> AgentSettings:
    """Settings from ``config`` (TOML) overridden by ``flags`` whose value is not None.

    Flag names: ``bundle, device_id, data_dir, window_s, num_threads, skip_selftest, trusted_keys,
    require_signature, drift_every, broker (URL), username, password, tls_ca, tls_cert, tls_key,
    keepalive, reconnect_min_s, reconnect_max_s, inflight, mqtt_version, watch (dir), processed, poll_s, outbox_max,
    outbox_max_mb``.
    """
    doc = read_config(config) if config else {}
    where = str(config) if config else "command line"
    bro, watch, outbox = doc.get("broker", {}), doc.get("watch", {}), doc.get("outbox", {})

    def pick(flag: str, value: Any) -> Any:
        return flags[flag] if flags.get(flag) is not None else value

    device_id = pick("device_id", doc.get("device_id"))
    if not device_id:
        raise UsageError(f'{where}: a device id is needed (--device-id ID or device_id = "…" in the config).')
    url = pick("broker", bro.get("url"))
    broker = None
    if url:
        password = pick("password", bro.get("password")) or os.environ.get(PASSWORD_ENV)
        options = {
            "username": pick("username", bro.get("username")),
            "password": password,
            "tls_ca": pick("tls_ca", bro.get("tls_ca")),
            "tls_cert": pick("tls_cert", bro.get("tls_cert")),
            "tls_key": pick("tls_key", bro.get("tls_key")),
            "mqtt_version": pick("mqtt_version", bro.get("mqtt_version")) or "auto",
        }
        numbers = {
            k: pick(k, bro.get(k))
            for k in ("keepalive", "reconnect_min_s", "reconnect_max_s", "inflight", "session_expiry_s")
        }
        for key, value in numbers.items():
            if value is not None and value < (1 if key != "session_expiry_s" else 0):
                raise UsageError(f"{where}: broker.{key} must be positive, got {value}.")
        for key in ("tls_ca", "tls_cert", "tls_key"):
            if options[key] and not Path(options[key]).is_file():
                raise UsageError(f"{where}: {key} file '{options[key]}' does not exist.")
        if bool(options["tls_cert"]) != bool(options["tls_key"]):
            raise UsageError(f"{where}: a client certificate needs both tls_cert and tls_key.")
        try:
            broker = BrokerSettings.from_url(url, **options, **{k: v for k, v in numbers.items() if v is not None})
        except UsageError as exc:
            raise UsageError(f"{where}: {exc}") from None
    watch_dir = pick("watch", watch.get("dir"))
    data_dir = pick("data_dir", doc.get("data_dir"))
    bundle = pick("bundle", doc.get("bundle"))
    trusted = pick("trusted_keys", doc.get("trusted_keys"))
    values: dict[str, Any] = {
        "window_s": pick("window_s", doc.get("window_s")),
        "processed": pick("processed", watch.get("processed")),
        "poll_s": pick("poll_s", watch.get("poll_s")),
        "num_threads": pick("num_threads", doc.get("num_threads")),
        "skip_selftest": pick("skip_selftest", doc.get("skip_selftest")),
        "outbox_max": pick("outbox_max", outbox.get("max_messages")),
        "outbox_max_mb": pick("outbox_max_mb", outbox.get("max_mb")),
        "drift_every": pick("drift_every", doc.get("drift_every")),
        "require_signature": pick("require_signature", doc.get("require_signature")),
        "allow_unsigned": pick("allow_unsigned", doc.get("allow_unsigned")),
    }
    try:
        return AgentSettings(
            device_id=str(device_id),
            data_dir=Path(data_dir).expanduser() if data_dir else default_data_dir(str(device_id)),
            broker=broker,
            watch_dir=Path(watch_dir).expanduser() if watch_dir else None,
            bundle=Path(bundle).expanduser() if bundle else None,
            trusted_keys=Path(trusted).expanduser() if trusted else None,
            **{k: v for k, v in values.items() if v is not None},
        )
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None
