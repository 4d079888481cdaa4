"""FleetState rules that need a clock: lost after 3 windows, stale last wills, de-dup and histogram sums."""

from __future__ import annotations

import json

import pytest

from edgekit.fleet.state import Deduper, FleetState
from edgekit_agent.contract.broker import BrokerAddress
from edgekit_agent.contract.errors import UsageError
from edgekit_agent.contract.topics import parse_topic
from edgekit_agent.mqtt.client import Message

T0 = 1_800_000_000.0


def msg(device: str, kind: str, doc: dict, *, at: float, retain: bool = False) -> Message:
    return Message(f"edge/v1/{device}/{kind}", json.dumps(doc).encode(), retain, at)


def status(state: str, boot: str, seq: int, ts: float, **kw) -> dict:
    return {"state": state, "boot_id": boot, "epoch": "e1", "seq": seq, "ts": int(ts * 1000), **kw}


def telemetry(
    seq: int, ts: float, window_s: float = 10.0, requests: int = 5, le=(1.0, 10.0, "+Inf"), cum=(2, 4, 5)
) -> dict:
    return {
        "epoch": "e1",
        "seq": seq,
        "ts": int(ts * 1000),
        "window": {"start": int((ts - window_s) * 1000), "end": int(ts * 1000)},
        "counts": {"requests": requests, "ok": requests, "errors": {}},
        "latency_ms": {
            "total": {"count": cum[-1], "sum": 12.5, "p50": 1.0, "p99": 9.0, "le": list(le), "cum": list(cum)}
        },
    }


def test_online_device_becomes_lost_after_three_silent_windows():
    st = FleetState()
    st.apply(msg("d", "status", status("online", "b1", 1, T0), at=T0))
    st.apply(msg("d", "telemetry/inference", telemetry(2, T0 + 2, window_s=2.0), at=T0 + 2))
    assert st.row("d", now=T0 + 2 + 5.9).status == "online"  # 3 windows of 2 s = 6 s
    assert st.row("d", now=T0 + 2 + 6.1).status == "lost"
    st.apply(msg("d", "telemetry/inference", telemetry(3, T0 + 9, window_s=2.0), at=T0 + 9))
    assert st.row("d", now=T0 + 9.5).status == "online"


def test_late_last_will_of_an_older_connection_is_ignored():
    st = FleetState()
    st.apply(msg("d", "status", status("online", "new-boot", 1, T0 + 5), at=T0 + 5))
    st.apply(msg("d", "status", status("offline", "old-boot", 7, T0, reason="lwt"), at=T0 + 6))
    assert st.row("d", now=T0 + 6).status == "online"
    st.apply(msg("d", "status", status("offline", "new-boot", 2, T0 + 7, reason="shutdown"), at=T0 + 7))
    row = st.row("d", now=T0 + 7)
    assert (row.status, row.status_reason) == ("offline", "shutdown")


def test_retained_snapshots_are_not_deduplicated_but_live_repeats_are():
    st = FleetState()
    doc = status("online", "b", 1, T0)
    assert st.apply(msg("d", "status", doc, at=T0, retain=True)) == "d"
    assert st.apply(msg("d", "status", doc, at=T0 + 1, retain=True)) == "d"  # re-sent on resubscribe: fine
    t = telemetry(2, T0 + 1)
    assert st.apply(msg("d", "telemetry/inference", t, at=T0 + 1)) == "d"
    assert st.apply(msg("d", "telemetry/inference", t, at=T0 + 2)) is None
    assert st.dedup.duplicates == 1 and st.row("d").requests == 5


def test_histograms_add_bucketwise_a_new_grid_starts_again_and_a_broken_one_is_refused():
    st = FleetState()
    st.apply(msg("d", "telemetry/inference", telemetry(1, T0, cum=(2, 4, 5)), at=T0))
    st.apply(msg("d", "telemetry/inference", telemetry(2, T0 + 10, cum=(1, 1, 3), requests=3), at=T0 + 10))
    h = st.devices["d"].hist["total"]
    assert h.cum == [3, 5, 8] and h.count == 8 and h.sum == 25.0
    # An agent upgrade with other buckets: a new series (Prometheus sees new le labels), not refused forever.
    st.apply(msg("d", "telemetry/inference", telemetry(3, T0 + 20, le=(2.0, 10.0, "+Inf")), at=T0 + 20))
    h2 = st.devices["d"].hist["total"]
    assert h2.le == (2.0, 10.0, float("inf")) and h2.cum == [2, 4, 5] and st.rejected_histograms == 0
    for le, cum in (
        ((1.0, 1.0, "+Inf"), (1, 2, 3)),
        ((1.0, float("nan"), "+Inf"), (1, 2, 3)),
        ((1.0, 10.0, "+Inf"), (3, 2, 5)),
        ((1.0, 10.0, "+Inf"), (-1, 2, 5)),
        ((1.0, 10.0), (1, 2, 3)),
    ):
        st.apply(
            msg("d", "telemetry/inference", telemetry(4 + st.rejected_histograms, T0 + 30, le=le, cum=cum), at=T0 + 30)
        )
    assert st.rejected_histograms == 5 and st.devices["d"].hist["total"].cum == [2, 4, 5]
    assert st.row("d").requests == 13 + 5 * 5  # the counters still count


def test_a_broken_histogram_on_the_bounds_already_accepted_is_still_refused():
    """Accepted bounds are remembered (the ingest's fast path): the counts on them are still checked."""
    st = FleetState()
    le = (2.0, 10.0, "+Inf")
    st.apply(msg("d", "telemetry/inference", telemetry(1, T0, le=le, cum=(2, 4, 5)), at=T0))
    broken = ((3, 2, 5), (-1, 2, 5), (True, 2, 5), (1, 2, 2.5e300), (1, 2, 10**30))
    for i, cum in enumerate(broken):
        st.apply(msg("d", "telemetry/inference", telemetry(2 + i, T0 + 10 + i, le=le, cum=cum), at=T0 + 10 + i))
    st.apply(msg("d", "telemetry/inference", telemetry(9, T0 + 20, le=le, cum=(1, 1, 3)), at=T0 + 20))
    assert st.rejected_histograms == len(broken) and st.devices["d"].hist["total"].cum == [3, 5, 8]


def test_deduper_counts_gaps_and_late_fills():
    d = Deduper()
    assert d.first_time("x", "e", 1) and d.first_time("x", "e", 4)
    assert d.gaps["x"] == 2
    assert d.first_time("x", "e", 3) and d.gaps["x"] == 1
    assert not d.first_time("x", "e", 3) and d.duplicates == 1
    assert d.first_time("x", "e2", 1)  # a new epoch (outbox recreated) starts over


def test_topics_and_urls():
    assert parse_topic("edge/v1/pi-1/telemetry/inference") == ("pi-1", "telemetry/inference")
    assert parse_topic("edge/v2/pi-1/status") is None and parse_topic("edge/v1/x") is None
    a = BrokerAddress.parse("mqtts://dev%201:s3cret@broker.lan")
    assert (a.host, a.port, a.tls, a.username, a.password) == ("broker.lan", 8883, True, "dev 1", "s3cret")
    assert BrokerAddress.parse("127.0.0.1:1884").url == "mqtt://127.0.0.1:1884"
    assert BrokerAddress.parse("mqtt://broker.lan", tls=True).port == 8883  # a CA given for mqtt:// means TLS


def test_broker_url_password_from_the_environment_and_bad_urls(monkeypatch):
    monkeypatch.setenv("EDGEKIT_MQTT_PASSWORD", "from-env")
    assert BrokerAddress.parse("mqtt://fleet@h", password_env=True).password == "from-env"
    assert BrokerAddress.parse("mqtt://fleet:in-url@h", password_env=True).password == "in-url"
    assert BrokerAddress.parse("mqtt://fleet@h").password is None  # only where the caller asks for it
    assert BrokerAddress.parse("mqtt://h", password_env=True).password is None  # no user, no password
    for bad, needle in (
        ("http://h:1883", "must look like"),
        ("mqtt://:1883", "must look like"),
        ("mqtt://h:99999", "port"),
    ):
        with pytest.raises(UsageError, match=needle):
            BrokerAddress.parse(bad)


def test_last_will_of_the_current_run_counts_although_registered_before_the_birth():
    st = FleetState()
    st.apply(msg("d", "status", status("online", "b1", 1, T0 + 1), at=T0 + 1))
    # The agent registers its LWT at connect time (T0), before the birth (T0 + 1); the broker sends it at T0 + 50.
    st.apply(
        msg("d", "status", {"state": "offline", "reason": "lwt", "boot_id": "b1", "ts": int(T0 * 1000)}, at=T0 + 50)
    )
    assert (st.row("d", now=T0 + 50).status, st.row("d").status_reason) == ("offline", "lwt")
    # Live telemetry from the same run afterwards: that will belonged to a connection it has replaced.
    st.apply(msg("d", "telemetry/inference", {**telemetry(5, T0 + 51), "boot_id": "b1"}, at=T0 + 51))
    assert st.row("d", now=T0 + 51).status == "online"


def test_every_metric_the_dashboard_and_the_alerts_use_is_served_by_the_exporter():
    import re
    from pathlib import Path

    from edgekit.fleet.exporter import FleetCollector, ModelReference

    st = FleetState(histogram_stages=("total",))
    st.apply(msg("d", "status", status("online", "b", 1, T0), at=T0))
    doc = telemetry(2, T0 + 1)
    doc.update(
        accuracy={"labeled": 3, "correct": 2},
        outbox={"dropped": 1},
        bundle={"name": "digits", "version": "1", "profile": "raspberry-pi-4"},
        drift={"input_mean": {"psi": 0.1}, "predicted_class": {"psi": 0.2}},
    )
    st.apply(msg("d", "telemetry/inference", doc, at=T0 + 1))
    refs = [ModelReference("digits", "1", "raspberry-pi-4", 0.99, "manifest.json")]
    text = FleetCollector(st, references=refs, latency_budgets_ms={"raspberry-pi-4": 20}).render()
    served = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    repo = Path(__file__).resolve().parents[2]
    dash = json.loads((repo / "dashboards" / "edgekit-grafana.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    exprs.append((repo / "alerts" / "edgekit-rules.yml").read_text())
    used = {name for e in exprs for name in re.findall(r"\bedgekit_[a-z_]+", e)}
    assert used and used <= served, used - served


def test_exporter_cli_refuses_a_bad_budget_or_a_folder_without_bundles(tmp_path, capsys):
    from edgekit.cli import main

    assert main(["exporter", "--latency-budget", "raspberry-pi-4"]) == 2
    assert "PROFILE=MS" in capsys.readouterr().err
    assert main(["exporter", "--latency-budget", "raspberry-pi-4=-5"]) == 2
    assert main(["exporter", "--bundles", str(tmp_path)]) == 2
    assert f"{tmp_path}: no bundle here" in capsys.readouterr().err.replace("\n", "")


def test_rollback_events_drift_and_the_last_window_reach_the_metrics():
    from edgekit.fleet.exporter import FleetCollector

    st = FleetState(histogram_stages=("total",))
    doc = telemetry(1, T0)
    doc["drift"] = {"input_mean": {"psi": 0.4}, "predicted_class": {"psi": None}, "confidence": "junk"}
    st.apply(msg("d", "telemetry/inference", doc, at=T0 + 0.5))
    st.apply(msg("d", "events", {"epoch": "e1", "seq": 2, "event": "rollback", "reason": "health"}, at=T0 + 1))
    st.apply(msg("d", "events", {"epoch": "e1", "seq": 3, "event": "bundle_activated"}, at=T0 + 2))
    st.apply(msg("d", "events", {"epoch": "e1", "seq": 2, "event": "rollback"}, at=T0 + 3))  # a redelivery
    lines = FleetCollector(st).render().splitlines()
    labels = 'device="d",model="",profile=""'
    assert f"edgekit_ota_rollbacks_total{{{labels}}} 1" in lines
    assert [x for x in lines if x.startswith("edgekit_drift_psi{")] == [
        f'edgekit_drift_psi{{{labels},signal="input_mean"}} 0.4'
    ]
    assert f'edgekit_telemetry_last_window_timestamp_seconds{{device="d"}} {T0 + 0.5:.3f}' in lines


def test_per_device_off_keeps_up_per_device_and_counters_per_model():
    from edgekit.fleet.exporter import FleetCollector

    st = FleetState(histogram_stages=("total",))
    for d, model in (("a", "digits"), ("b", "digits"), ("c", "other")):
        st.apply(msg(d, "status", status("online", d, 1, T0), at=T0))
        doc = telemetry(2, T0 + 1)
        doc["bundle"] = {"name": model, "profile": "raspberry-pi-4"}
        st.apply(msg(d, "telemetry/inference", doc, at=T0 + 1))
    text = FleetCollector(st, per_device="off").render()
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert sorted(s for s in samples if "device=" in s) == [f'edgekit_device_up{{device="{d}"}} 1' for d in "abc"]
    requests = telemetry(2, T0)["counts"]["requests"]
    assert f'edgekit_inference_requests_total{{model="digits",profile="raspberry-pi-4"}} {2 * requests}' in samples
    assert f'edgekit_inference_requests_total{{model="other",profile="raspberry-pi-4"}} {requests}' in samples


def test_model_totals_never_go_down_when_a_device_changes_model():
    """An OTA moves a device to another model: the old model's counters keep what they had (a decrease
    would read as a counter reset in Prometheus), the new one counts only what came after."""
    from edgekit.fleet.exporter import FleetCollector

    st = FleetState(histogram_stages=("total",))
    col = FleetCollector(st, per_device="off")

    def window(seq: int, model: str, at: float) -> None:
        doc = telemetry(seq, at)
        doc["bundle"] = {"name": model, "profile": "p"}
        st.apply(msg("d", "telemetry/inference", doc, at=at))

    def requests(text: str) -> dict[str, int]:
        prefix = "edgekit_inference_requests_total{model="
        return {
            line[len(prefix) + 1 :].split('"')[0]: int(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(prefix)
        }

    per_window = telemetry(1, T0)["counts"]["requests"]
    window(1, "v1", T0)
    window(2, "v1", T0 + 1)
    assert requests(col.render()) == {"v1": 2 * per_window}
    window(3, "v2", T0 + 2)
    assert requests(col.render()) == {"v1": 2 * per_window, "v2": per_window}
    assert 'edgekit_model_inference_latency_seconds_count{model="v1",profile="p",stage="total"}' in col.render()


def test_malformed_payload_fields_cost_one_message_not_the_consumer():
    st = FleetState()
    bad = telemetry(1, T0)
    bad["counts"] = {"requests": "many"}
    assert st.apply(msg("d", "telemetry/inference", bad, at=T0)) == "d"
    bad2 = telemetry(2, T0)
    bad2["accuracy"] = "not an object"
    st.apply(msg("d", "telemetry/inference", bad2, at=T0))
    st.apply(Message("edge/v1/d/status", b"\xff not json", False, T0))
    assert st.invalid == 3
    st.apply(msg("d", "telemetry/inference", telemetry(3, T0 + 10), at=T0 + 10))
    assert st.row("d").requests == 5  # a malformed window counts nothing (bad2's accuracy is not an object)


def test_watch_table_escapes_device_strings():
    from rich.console import Console

    from edgekit.cli.watch import render

    st = FleetState()
    doc = telemetry(1, T0)
    doc["bundle"] = {"name": "[bold red]evil[/", "version": "[/]", "profile": "[link=x]p"}
    st.apply(msg("d", "telemetry/inference", doc, at=T0))
    console = Console(width=250, record=True)
    console.print(render(st.snapshot(), "fleet"))  # would raise MarkupError without escaping
    assert "[bold red]evil[/ [/]" in console.export_text()


def test_deduper_memory_is_bounded_per_device():
    from edgekit.fleet.state import DEDUP_WINDOW, MAX_EPOCHS

    d = Deduper()
    for e in range(100):
        d.first_time("x", f"epoch-{e}", 1)
    assert len(d._seen) == MAX_EPOCHS
    for seq in range(1, 5 * DEDUP_WINDOW):
        d.first_time("y", "e", seq)
    assert len(d._seen[("y", "e")][1]) <= 2 * DEDUP_WINDOW + 1


def test_hostile_payloads_cost_one_message_each_and_never_the_consumer():
    """What anyone with publish rights on edge/v1/# could send (a fleet-tools review reproduced each)."""
    st = FleetState()
    hostile = [
        b"[" * 100_000,  # nesting deep enough to exhaust the parser
        b'{"seq": ' + b"9" * 5000 + b"}",  # an integer too long to convert
        json.dumps({**telemetry(1, T0), "counts": {"requests": 1e999}}).encode(),  # inf
        json.dumps({**telemetry(2, T0), "counts": {"requests": 10**400}}).encode(),  # beyond any float
        json.dumps({**telemetry(3, T0), "counts": {"requests": -5}}).encode(),  # counters never go down
        json.dumps({**telemetry(4, T0), "accuracy": {"labeled": 1, "correct": 10**400}}).encode(),
    ]
    for payload in hostile:
        st.apply(Message("edge/v1/d/telemetry/inference", payload, False, T0))
    assert st.invalid == 6
    st.apply(
        msg(
            "d",
            "telemetry/inference",
            {**telemetry(5, T0 + 1), "ts": 10**400, "throughput_ips": float("inf")},
            at=T0 + 1,
        )
    )
    row = st.row("d")
    assert row.accuracy is None and row.throughput_ips is None and row.last_seen is not None and row.last_seen < 1e11
    json.dumps(row.to_dict(), allow_nan=False)  # watch --json stays strict JSON
    assert row.requests == 5  # only the well-formed window counted


def test_a_seq_far_ahead_does_not_blind_the_consumer_to_the_real_stream():
    st = FleetState()
    st.apply(msg("d", "telemetry/inference", telemetry(1, T0), at=T0))
    st.apply(msg("d", "telemetry/inference", telemetry(10**12, T0 + 1), at=T0 + 1))  # junk in the device's epoch
    for seq in range(2, 12):
        st.apply(msg("d", "telemetry/inference", telemetry(seq, T0 + seq), at=T0 + seq))
    row = st.row("d")
    assert row.requests == 11 * 5 and row.lost_messages == 0 and st.dedup.rejected == 1


def test_late_messages_from_before_the_start_and_retained_windows():
    st = FleetState()
    st.apply(msg("d", "telemetry/inference", telemetry(100, T0), at=T0))
    st.apply(msg("d", "telemetry/inference", telemetry(99, T0), at=T0))  # sent before we listened: new, no gap
    st.apply(msg("d", "telemetry/inference", telemetry(99, T0), at=T0))  # ... once
    assert st.row("d").lost_messages == 0 and st.row("d").requests == 10 and st.dedup.duplicates == 1
    # A retained telemetry window (agents never retain one) would be counted again at every start.
    assert st.apply(msg("e", "telemetry/inference", telemetry(1, T0), at=T0, retain=True)) is None
    assert "e" not in st.devices


def test_deduper_memory_follows_losses_not_traffic():
    d = Deduper()
    for seq in range(1, 50_001):
        assert d.first_time("x", "e", seq)
    high, missing, low, below = d._seen[("x", "e")]  # noqa: SLF001 - the memory is the point
    assert (high, len(missing), low, len(below)) == (50_000, 0, 1, 0)
    assert d.first_time("x", "e", 50_010) and d.gaps["x"] == 9
    assert not d.first_time("x", "e", 50_000) and d.first_time("x", "e", 50_005) and d.gaps["x"] == 8


def test_devices_silent_for_long_are_forgotten():
    st = FleetState(forget_after_s=3600)
    st.apply(msg("old", "telemetry/inference", telemetry(1, T0), at=T0))
    st.apply(msg("roster", "status", status("offline", "b", 1, T0, reason="shutdown"), at=T0, retain=True))
    st.apply(msg("new", "telemetry/inference", telemetry(1, T0 + 7200), at=T0 + 7200))
    assert sorted(st.devices) == ["new", "roster"]  # the retained roster entry was never heard live: it stays
    assert ("old", "e1") not in st.dedup._seen  # noqa: SLF001


def test_watch_prints_device_strings_without_terminal_escapes_or_markup():
    import io

    from rich.console import Console

    from edgekit.cli.watch import render

    st = FleetState()
    st.apply(msg("d", "status", status("offline", "b", 1, T0, reason="\x1b]0;pwned\x07\x1b[2J"), at=T0, retain=True))
    st.apply(
        msg(
            "d",
            "meta",
            {"bundle": {"name": "[bold red]x[/]", "version": "1"}, "runtime": {"engine": "lite\x9brt"}},
            at=T0,
            retain=True,
        )
    )
    out = io.StringIO()
    Console(file=out, width=300, force_terminal=False, color_system=None).print(render(st.snapshot(T0), "fleet"))
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text
    assert "[bold red]x[/]" in text and "pwned" in text  # shown, harmless


@pytest.mark.parametrize("width", [80, 120, 200])
def test_watch_table_fits_the_terminal_and_keeps_one_line_per_device(width):
    import io
    import time

    from rich.console import Console
    from rich.text import Text

    from edgekit.cli.watch import render
    from edgekit.fleet.state import DeviceRow

    def row(device: str, status: str, reason: str, profile: str, runtime: str, p50: float | None) -> DeviceRow:
        return DeviceRow(
            device_id=device,
            status=status,
            status_reason=reason,
            bundle="digits 1.0.0",
            profile=profile,
            runtime=runtime,
            throughput_ips=None if p50 is None else 19.8,
            p50_ms=p50,
            p99_ms=None if p50 is None else 0.93,
            requests=1200,
            labeled=1000,
            correct=989,
            errors=2,
            outbox_dropped=0,
            lost_messages=1,
            last_seen=time.time() - 3,
        )

    rows = [
        row("pi-kitchen", "online", "", "raspberry-pi-4", "litert 2.3.0 xnnpack x2", 0.21),
        row("pi-garage", "online", "", "raspberry-pi-4", "litert 2.3.0 xnnpack x2", 0.34),
        row("esp32-sim", "offline", "shutdown", "esp32-s3", "tflite_runtime 2.14.0 none x1", None),
    ]
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False, color_system=None).print(
        render(rows, "fleet on mqtt://h:1883")
    )
    lines = out.getvalue().splitlines()
    assert max(Text(line).cell_len for line in lines) <= width, out.getvalue()
    body = {line.split()[0]: line for line in lines[3:]}  # title, header, rule, then one line per device
    assert set(body) == {"pi-kitchen", "pi-garage", "esp32-sim"}, out.getvalue()
    for device, p50 in (("pi-kitchen", "0.21"), ("pi-garage", "0.34")):
        assert all(v in body[device] for v in ("online", p50, "19.8", "98.9", "3s")), body[device]
    assert "offline" in body["esp32-sim"] and "98.9" in body["esp32-sim"]
    if width >= 80:  # what a deployment changes, and latency at its tail
        assert "digits 1.0.0" in body["pi-kitchen"] and "0.93" in body["pi-kitchen"]
    if width >= 120:
        assert "litert 2.3.0 xnnpack x2" in body["pi-kitchen"]
    if width >= 200:  # everything, with full headers
        assert "raspberry-pi-4" in body["pi-kitchen"] and "offline (shutdown)" in body["esp32-sim"]
        assert all(h in lines[1] for h in ("p50 ms", "p99 ms", "accuracy %", "errors", "drops", "gaps", "last seen"))


def test_a_recovered_window_adds_its_counts_but_not_its_span_or_rate():
    st = FleetState()
    st.apply(msg("d", "status", status("online", "b1", 1, T0), at=T0))
    st.apply(msg("d", "telemetry/inference", {**telemetry(2, T0 + 2, window_s=2.0), "throughput_ips": 2.5}, at=T0 + 2))
    # After a crash: 40 images replayed, spanning 0.3 s of the dead window, no rate (docs/agent.md).
    rebuilt = {**telemetry(3, T0 + 9, window_s=0.3, requests=40), "recovered": True, "throughput_ips": None}
    st.apply(msg("d", "telemetry/inference", rebuilt, at=T0 + 9))
    row = st.row("d", now=T0 + 9.5)
    assert (row.requests, row.throughput_ips) == (45, 2.5)
    assert st.row("d", now=T0 + 9 + 5.9).status == "online"  # still 3 windows of 2 s, not of 0.3 s


def test_a_full_disk_shows_in_the_row_and_the_exporter_and_a_late_backlog_does_not_undo_disk_ok():
    from edgekit.fleet.exporter import FleetCollector

    st = FleetState()
    st.apply(msg("d", "status", status("online", "b", 1, T0), at=T0))
    assert st.row("d").disk_full is False
    st.apply(msg("d", "events", {"event": "disk_full", "epoch": "e1", "seq": 2, "ts": int((T0 + 1) * 1000)}, at=T0 + 1))
    assert st.row("d").disk_full is True
    assert 'edgekit_device_disk_full{device="d"} 1' in FleetCollector(st).render()
    st.apply(msg("d", "events", {"event": "disk_ok", "epoch": "e1", "seq": 9, "ts": int((T0 + 9) * 1000)}, at=T0 + 9))
    # A window written while the disk was full, delivered after disk_ok (a backlog): older, so it does not count.
    old = telemetry(5, T0 + 5)
    old["outbox"] = {"dropped": 4, "disk_full": True}
    st.apply(msg("d", "telemetry/inference", old, at=T0 + 10))
    row = st.row("d")
    assert row.disk_full is False and row.outbox_dropped == 4 and row.to_dict()["disk_full"] is False
    assert 'edgekit_device_disk_full{device="d"} 0' in FleetCollector(st).render()
    # The retained birth the agent publishes again when the state changes.
    st.apply(msg("d", "status", status("online", "b", None, T0 + 12, disk_full=True), at=T0 + 12, retain=True))
    assert st.row("d").disk_full is True
