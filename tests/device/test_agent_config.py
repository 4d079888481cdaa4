"""Agent settings from TOML and flags; broker URLs; the CLI's `run` options reach the settings."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from edgekit_agent.contract.errors import UsageError
from edgekit_agent.contract.topics import Topics, parse_topic
from edgekit_agent.mqtt.client import BrokerSettings, cap, check_rc
from edgekit_agent.serve.config import PASSWORD_ENV, load_settings

CONFIG = """
bundle = "/opt/b.tar.gz"
device_id = "pi-kitchen"
data_dir = "{data}"
window_s = 60
num_threads = 2

[broker]
url = "mqtts://broker.lan"
username = "pi-kitchen"
keepalive = 20
inflight = 4

[watch]
dir = "/srv/camera"
processed = "keep"
poll_s = 0.25

[outbox]
max_messages = 500
max_mb = 8.5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_toml_is_read_into_typed_settings(tmp_path):
    s = load_settings(write(tmp_path, CONFIG.format(data=tmp_path / "d")))
    assert s.device_id == "pi-kitchen" and s.window_s == 60 and s.num_threads == 2 and s.outbox_max == 500
    assert (
        s.outbox_max_mb == 8.5
        and load_settings(write(tmp_path, CONFIG.format(data=tmp_path)), outbox_max_mb=2).outbox_max_mb == 2
    )
    assert s.watch_dir == Path("/srv/camera") and s.processed == "keep" and s.poll_s == 0.25
    assert s.bundle == Path("/opt/b.tar.gz") and s.data_dir == tmp_path / "d"
    b = s.broker
    assert b is not None and b.keepalive == 20 and b.inflight == 4
    assert b.address.tls and b.address.port == 8883 and b.address.host == "broker.lan"


def test_flags_override_the_file_and_the_environment_supplies_the_password(tmp_path, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    s = load_settings(
        write(tmp_path, CONFIG.format(data=tmp_path)), window_s=1.5, broker="mqtt://10.0.0.2:1999", device_id="pi-2"
    )
    assert s.window_s == 1.5 and s.device_id == "pi-2"
    assert s.broker is not None
    a = s.broker.address
    assert (a.host, a.port, a.tls) == ("10.0.0.2", 1999, False)
    assert a.password == "s3cret" and "s3cret" not in repr(s.broker)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('device_id = "a"\nwindow = 5\n', "Did you mean 'window_s'"),
        ('device_id = "a"\n[broker]\nurl = "mqtt://h"\npasword = "x"\n', "Did you mean 'password'"),
        ('device_id = "a"\nwindow_s = "ten"\n', "'window_s' must be int or float"),
        ('device_id = "a"\nskip_selftest = 1\n', "'skip_selftest' must be bool"),
        ('device_id = "a/b"\n', "no '/'"),
        ('device_id = "a"\nwindow_s = 0\n', "window_s must be between"),
        ('device_id = "a"\n[watch]\nprocessed = "shred"\n', "must be one of move, delete, keep"),
        ('device_id = "a"\n[broker]\nurl = "http://h"\n', "mqtt://HOST:PORT"),
        ('device_id = "a"\nbroker = "mqtt://h"\n', r"must be a \[broker\] section"),
        ("device_id = \n", "not valid TOML"),
        ("window_s = 5\n", "a device id is needed"),
    ],
)
def test_config_mistakes_name_the_file_and_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UsageError, match=message) as info:
        load_settings(path)
    assert str(path) in str(info.value) or "command line" in str(info.value)


def test_client_certificate_needs_both_halves_and_files_must_exist(tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(UsageError, match="both tls_cert and tls_key"):
        load_settings(None, device_id="a", broker="mqtt://h", tls_cert=str(cert))
    with pytest.raises(UsageError, match="does not exist"):
        load_settings(None, device_id="a", broker="mqtt://h", tls_ca=str(tmp_path / "missing.pem"))


def test_broker_url_forms():
    assert BrokerSettings.from_url("mqtt://u:p%40ss@host:1884").address.password == "p@ss"
    assert BrokerSettings.from_url("mqtt://u:p@host", password="given").address.password == "given"  # options win
    assert BrokerSettings.from_url("host").address.port == 1883
    a = BrokerSettings.from_url("mqtt://host", tls_ca="/ca.pem").address
    assert a.tls and a.port == 8883  # a CA switches TLS on
    assert BrokerSettings.from_url("mqtt://u:p@h:1").url == "mqtt://h:1"  # no credentials in logs/meta
    with pytest.raises(UsageError, match="port"):
        BrokerSettings.from_url("mqtt://host:99999")


def test_topics_caps_and_return_codes():
    t = Topics("pi-1")
    assert t.status == "edge/v1/pi-1/status" and t.telemetry == "edge/v1/pi-1/telemetry/inference"
    assert (
        t.commands == "edge/v1/pi-1/cmd/+"
        and t.bench("r1") == "edge/v1/pi-1/bench/r1/report"
        and t.res("ops") == "edge/v1/pi-1/res/ops"
        and t.command("ping") == "edge/v1/pi-1/cmd/ping"
    )
    assert t.command_name("edge/v1/pi-1/cmd/ping") == "ping" and t.command_name("edge/v1/pi-1/cmd/a/b") is None
    assert t.command_name("edge/v1/pi-2/cmd/ping") is None
    assert parse_topic(t.telemetry) == ("pi-1", "telemetry/inference") and parse_topic("xedge/v1/pi-1/meta") is None
    assert len(cap(b"x" * 10_000)) < 250 and cap("short") == "short"
    check_rc(0, "ok")  # MQTT_ERR_SUCCESS
    check_rc(4, "queued while offline")  # MQTT_ERR_NO_CONN: paho keeps QoS 1 and sends it later
    from edgekit_agent.contract.errors import BrokerError

    with pytest.raises(BrokerError, match="publishing"):
        check_rc(9, "publishing")  # MQTT_ERR_PAYLOAD_SIZE


def test_run_flags_reach_the_settings(tmp_path):
    from edgekit_agent.cli import run as agent_cli

    parser = argparse.ArgumentParser()
    agent_cli.Run.add_arguments(parser)
    args = parser.parse_args(
        [
            "b.tar.gz",
            "--broker",
            "mqtt://h:1",
            "--device-id",
            "d1",
            "--window",
            "2",
            "--watch",
            str(tmp_path),
            "--username",
            "d1",
            "--password",
            "pw",
            "--data-dir",
            str(tmp_path / "data"),
            "--skip-selftest",
            "--outbox-max-mb",
            "16",
        ]
    )
    s = agent_cli._settings(args)  # noqa: SLF001
    assert s.outbox_max_mb == 16
    assert s.window_s == 2 and s.skip_selftest and s.watch_dir == tmp_path and s.bundle == Path("b.tar.gz")
    assert s.broker is not None and s.broker.address.username == "d1" and s.broker.address.password == "pw"
    # an unset flag does not override the config file
    cfg = write(tmp_path, 'device_id = "d1"\nskip_selftest = true\nwindow_s = 7\n')
    s2 = agent_cli._settings(parser.parse_args(["--config", str(cfg)]))  # noqa: SLF001
    assert s2.skip_selftest and s2.window_s == 7


def test_the_outbox_budget_is_checked(tmp_path):
    with pytest.raises(UsageError, match="outbox.max_mb"):
        load_settings(write(tmp_path, CONFIG.format(data=tmp_path).replace("max_mb = 8.5", "max_mb = 0")))
