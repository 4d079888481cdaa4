"""The one-command tour: digits dataset -> bundles for a Raspberry Pi and an MCU (fit table) -> a development
broker -> three simulated devices (real edgekit-agent processes, fed labelled images) -> the live fleet
view -> a remote benchmark -> where everything went. It stops everything it started, also on Ctrl-C.

Outputs go to --workdir (default demo-out/); a second run reuses the bundles there (--rebuild to retrain).
--short is the CI mode (1 training epoch, a few seconds of watching). --broker URL uses your broker
instead of starting one. The development broker is mosquitto when installed, else the embedded amqtt
(MQTT 3.1.1 only: agents and tools negotiate 3.1.1 there); --broker-engine forces one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit_agent.contract.errors import BrokerError, EdgekitError, ExitStatus

if TYPE_CHECKING:
    from rich.table import Table

PI_PROFILE = "raspberry-pi-4"
MCU_PROFILE = "esp32-s3"  # the digits CNN fits its 512 KB SRAM; --keep-going covers a model that does not


@dataclass
class Demo:
    """What the demo has started and made (everything in here is stopped or reported at the end)."""

    args: argparse.Namespace
    work: Path
    short: bool
    broker_url: str = ""
    broker: Any = None
    mqtt_versions: str = ""  # what the agents negotiated, from their retained meta (e.g. "3.1.1")
    exporter: Any = None
    bundles: dict[str, Path] = field(default_factory=dict)  # profile -> bundle dir
    devices: dict[str, tuple[subprocess.Popen, Path, Path]] = field(
        default_factory=dict
    )  # id -> (proc, watch dir, log)
    feeder: threading.Thread | None = None
    stop_feeding: threading.Event = field(default_factory=threading.Event)
    outputs: list[tuple[str, Path | str]] = field(default_factory=list)

    @property
    def window_s(self) -> float:
        return 1.0 if self.short else 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker", help="use this MQTT broker (mqtt://HOST:PORT) instead of starting a development one"
    )
    parser.add_argument(
        "--broker-engine",
        choices=("auto", "mosquitto", "amqtt"),
        default="auto",
        help="development broker: auto = mosquitto if installed, else the embedded amqtt (MQTT 3.1.1)",
    )
    parser.add_argument(
        "--short", action="store_true", help="CI mode: 1 epoch, a few seconds of watching, a short benchmark"
    )
    parser.add_argument("--workdir", type=Path, default=Path("demo-out"), help="where outputs go (default %(default)s)")
    parser.add_argument(
        "--rebuild", action="store_true", help="retrain and rebuild the bundles even if workdir has them"
    )
    parser.add_argument(
        "--watch-seconds", type=float, default=None, help="how long to show the fleet view (default 30, --short 5)"
    )


# --- the steps, in order ----------------------------------------------------------------------------------
def _dataset(d: Demo) -> None:
    from edgekit.pipeline.data import write_digits

    data = d.work / "data" / "digits"
    if not (data / "9").is_dir():
        write_digits(data)
    d.outputs.append(("dataset (scikit-learn digits as PNGs)", data))


def _build(d: Demo) -> None:
    from edgekit.cli import ui

    out = d.work / "bundles"
    wanted = {p: out / f"digits-{p}" for p in (PI_PROFILE, MCU_PROFILE)}
    if d.args.rebuild or not (wanted[PI_PROFILE] / "manifest.json").is_file():
        cmd = [
            sys.executable,
            "-m",
            "edgekit",
            "build",
            "--dataset",
            str(d.work / "data" / "digits"),
            "--out",
            str(out),
            "--profile",
            PI_PROFILE,
            "--profile",
            MCU_PROFILE,
            "--keep-going",
            "--name",
            "digits",
        ]
        if d.short:
            cmd += ["--epochs", "1"]
        ui.console.print(f"[bold]$ edgekit build[/] {' '.join(cmd[4:])}")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        if not ui.console.is_terminal:  # a log: wide tables (rich would take COLUMNS over a terminal's own width)
            env.setdefault("COLUMNS", "160")
        code = subprocess.run(cmd, env=env, stderr=_user_stderr()).returncode
        # --keep-going: a profile that does not fit is left out (exit 4, the table says which); the demo goes
        # on as long as the devices' Raspberry Pi bundle was built.
        if code not in (ExitStatus.OK, ExitStatus.DOES_NOT_FIT):
            raise _child_failed("edgekit build", code, f"the dataset is in {d.work / 'data' / 'digits'}")
        if not (wanted[PI_PROFILE] / "manifest.json").is_file():
            raise _child_failed("edgekit build", code, f"the devices need the {PI_PROFILE} bundle")
    else:
        ui.console.print(f"reusing the bundles in {out} (--rebuild to retrain)")
    d.bundles = {p: b for p, b in wanted.items() if (b / "manifest.json").is_file()}
    if PI_PROFILE not in d.bundles:
        raise EdgekitError(f"no {PI_PROFILE} bundle in {out}; run with --rebuild.")
    # Devices serve only bundles signed by a key they trust: sign with a demo key, as a release would.
    from edgekit.package.keys import new_keypair, sign_bundle

    keys = d.work / "keys"
    if not (keys / "demo.key").is_file():
        new_keypair(keys, "demo", overwrite=True)
    for b in d.bundles.values():
        signed = sign_bundle(b, keys / "demo.key")
    ui.console.print(
        f"signed the bundles with key {signed.key_id} ({keys / 'demo.key'}); devices trust {keys / 'demo.pub'}"
    )
    d.outputs.append(("signing key pair (demo)", keys))
    for p, b in d.bundles.items():
        d.outputs.append((f"bundle for {p}", b))
        d.outputs.append((f"archive for {p} (copy it to the device)", b.with_name(b.name + ".tar.gz")))


def _broker(d: Demo) -> None:
    from edgekit.cli import ui
    from edgekit.fleet.dev_broker import BANNER, start_dev_broker
    from edgekit.fleet.exporter import Exporter

    if d.args.broker:
        d.broker_url = d.args.broker
    else:
        d.broker = start_dev_broker(port=0, engine=d.args.broker_engine)
        d.broker_url = d.broker.url
        ui.err_console.print(f"[yellow]{BANNER}[/]")
    d.exporter = Exporter(d.broker_url, port=0).start()
    engine = f" ({d.broker.engine})" if d.broker else ""
    ui.console.print(
        f"broker {d.broker_url}{engine}; Prometheus exporter {d.exporter.url} "
        f"(MQTT {'5' if d.exporter.link.mqtt5 else '3.1.1'})"
    )
    d.outputs.append(("MQTT broker (stopped now)" if d.broker else "MQTT broker", d.broker_url))


def _user_stderr() -> int | None:
    """Where a child's stderr must go for the user to see it. The demo runs inside
    ``ui.native_logs_captured``, which points file descriptor 2 at a temporary log (TensorFlow's native
    chatter); a child inherits that descriptor, so its progress bar and its error would vanish. Python's
    ``sys.stderr`` still writes to the terminal then: give the child that."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a stream without a descriptor (pytest's capture)
        return None


def _child_failed(command: str, code: int, hint: str) -> EdgekitError:
    """The error for a failed child command: the same exit status (its error is printed above)."""
    try:
        status = ExitStatus(code)
    except ValueError:  # killed by a signal (negative) or an undocumented code
        status = ExitStatus.ERROR
    exc = EdgekitError(f"`{command}` failed with exit status {code} ({status.name}; its error is above); {hint}.")
    exc.exit_status = status
    return exc


def _agent_command() -> list[str]:
    exe = Path(sys.executable).with_name("edgekit-agent")
    return (
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-c", "import sys; from edgekit_agent.cli import main; sys.exit(main())"]
    )


def _agents(d: Demo) -> None:
    from edgekit.cli import ui
    from edgekit.fleet.watch import FleetWatcher

    plan = [
        ("pi-kitchen", PI_PROFILE),
        ("pi-garage", PI_PROFILE),
        ("esp32-sim", MCU_PROFILE if MCU_PROFILE in d.bundles else PI_PROFILE),
    ]
    for device_id, profile in plan:
        home = d.work / "devices" / device_id
        shutil.rmtree(home, ignore_errors=True)  # a fresh outbox: the demo's numbers start at zero
        (home / "inbox").mkdir(parents=True)
        log = home / "agent.log"
        cmd = [
            *_agent_command(),
            "run",
            str(d.bundles[profile]),
            "--broker",
            d.broker_url,
            "--device-id",
            device_id,
            "--watch",
            str(home / "inbox"),
            "--window",
            str(d.window_s),
            "--data-dir",
            str(home / "data"),
            "--trusted-keys",
            str(d.work / "keys"),
        ]
        if d.broker is not None and d.broker.engine == "amqtt":
            # The embedded broker speaks 3.1.1 only; saying so spares each agent the 5 s wait for a CONNACK
            # that amqtt never sends to an MQTT 5 CONNECT carrying a will (auto mode would then fall back).
            cmd += ["--mqtt-version", "3.1.1"]
        with open(log, "wb") as f:
            # Own session (process group): the cleanup signals the whole group, whatever it spawned.
            proc = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        d.devices[device_id] = (proc, home / "inbox", log)
        ui.console.print(f"started {device_id}: edgekit-agent run {d.bundles[profile].name} (pid {proc.pid})")
        d.outputs.append((f"{device_id} log and inbox", home))
    with FleetWatcher(d.broker_url) as w:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            w.poll(0.2)
            online = {r.device_id for r in w.snapshot() if r.status == "online"}
            with w.state.lock:  # the version each agent negotiated, from its retained meta (sent after connecting)
                versions = {
                    i: dev.meta.get("mqtt_version")
                    for i, dev in w.state.devices.items()
                    if dev.meta.get("mqtt_version")
                }
            if online >= set(d.devices) and set(versions) >= set(d.devices):
                d.mqtt_versions = "/".join(sorted({str(versions[i]) for i in d.devices}))
                break
            for device_id, (proc, _, log) in d.devices.items():
                if proc.poll() is not None:
                    raise EdgekitError(
                        f"agent {device_id} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-1500:]}"
                    )
        else:
            raise BrokerError(f"the agents did not come online within 90 s; see their logs under {d.work / 'devices'}.")
    engine = d.broker.engine if d.broker else "your broker"
    ui.console.print(f"agents online on {engine} {d.broker_url}, speaking MQTT {d.mqtt_versions}")
    d.outputs.append(("broker engine / MQTT version", f"{engine} / MQTT {d.mqtt_versions}"))
    d.feeder = threading.Thread(target=_feed, args=(d,), name="demo-feeder", daemon=True)
    d.feeder.start()


def _feed(d: Demo) -> None:
    """Drop labelled images (LABEL/x.png) into every device's inbox, ~20 per second per device."""
    data = d.work / "data" / "digits"
    files = sorted(data.glob("*/*.png"))
    i = 0
    while not d.stop_feeding.wait(0.05):
        for _, inbox, _ in d.devices.values():
            src = files[i % len(files)]
            i += 7  # a stride, so the devices see different digits
            (inbox / src.parent.name).mkdir(exist_ok=True)
            tmp = inbox.parent / f".{src.name}.part"
            shutil.copyfile(src, tmp)
            os.replace(tmp, inbox / src.parent.name / f"{i}-{src.name}")  # atomic: the agent never sees half a file


def _watch(d: Demo) -> None:
    from rich.live import Live

    from edgekit.cli import ui
    from edgekit.cli.watch import render
    from edgekit.fleet.watch import FleetWatcher

    seconds = d.args.watch_seconds if d.args.watch_seconds is not None else (5.0 if d.short else 30.0)
    title = f"$ edgekit watch --broker {d.broker_url}   ({seconds:g} s)"
    with FleetWatcher(d.broker_url) as w:
        w.sync()
        with Live(
            render(w.snapshot(), title), console=ui.console, refresh_per_second=4, transient=not ui.console.is_terminal
        ) as live:
            for _ in w.follow(seconds, tick=0.5):
                live.update(render(w.snapshot(), title))
        if not ui.console.is_terminal:
            ui.console.print(render(w.snapshot(), title))  # a log gets the final table once


def _bench(d: Demo) -> None:
    from edgekit.cli import ui
    from edgekit.cli.bench import report_table
    from edgekit.fleet import remote

    device = "pi-kitchen"
    runs = 50 if d.short else 300
    ui.console.print(f"[bold]$ edgekit bench --device {device} --runs {runs}[/]")
    with ui.progress() as prog:
        task = prog.add_task(f"{device}: run_benchmark", total=3)
        bench = remote.request_benchmark(
            d.broker_url,
            device,
            num_runs=runs,
            warmup_runs=5,
            timeout=120,
            on_state=lambda s: prog.update(task, description=f"{device}: {s}", advance=1),
        )
    json_path, png_path = remote.save_report(bench, d.work / "bench")
    ui.console.print(report_table(bench))
    d.outputs.append(("benchmark report (JSON)", json_path))
    d.outputs.append(("latency histogram (PNG)", png_path))


def _metrics(d: Demo) -> None:
    from edgekit.cli import ui

    with d.exporter.state.lock:
        rows = [
            (r.device_id, r.requests, f"{100 * r.accuracy:.1f}" if r.accuracy is not None else "-", r.errors)
            for r in d.exporter.state.snapshot()
        ]
    ui.console.print(
        ui.table(
            f"what the Prometheus exporter counted ({d.exporter.url})",
            ["device", "requests count", "accuracy %", "errors"],
            rows,
        )
    )
    repo_copy = Path(__file__).resolve().parents[3] / "dashboards" / "edgekit-grafana.json"  # a source checkout
    where = repo_copy if repo_copy.is_file() else "dashboards/edgekit-grafana.json in the edgekit repository"
    d.outputs.append(("Grafana dashboard for the exporter", where))


STEPS: list[tuple[str, Callable[[Demo], None]]] = [
    ("1/7 dataset", _dataset),
    ("2/7 build bundles (Raspberry Pi + MCU) and fit table", _build),
    ("3/7 broker", _broker),
    ("4/7 three simulated devices", _agents),
    ("5/7 fleet view", _watch),
    ("6/7 remote benchmark", _bench),
    ("7/7 exporter", _metrics),
]


def _cleanup(d: Demo) -> list[str]:
    """Stop everything the demo started, newest first; returns what was stopped."""
    stopped = []
    d.stop_feeding.set()
    if d.feeder:
        d.feeder.join(5)
    for proc, _, _ in d.devices.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the agent sends its last window and "offline/shutdown"
    for device_id, (proc, _, _) in d.devices.items():
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        stopped.append(f"agent {device_id} (exit {proc.returncode})")
    if d.exporter is not None:
        d.exporter.stop()
        stopped.append("exporter")
    if d.broker is not None:
        d.broker.stop()
        stopped.append(f"broker ({d.broker.engine})")
    return stopped


def _where_table(d: Demo, seconds: float) -> Table:
    """What the demo made and where, fitted to the terminal: paths relative to the work directory (or to
    the current one), and a path is folded onto a second line rather than cut: it is there to be copied."""
    from rich.markup import escape
    from rich.table import Table

    def shown(where: Path | str) -> str:
        for base in (d.work, Path.cwd()):
            if isinstance(where, Path) and where.is_relative_to(base):
                return str(where.relative_to(base))
        return str(where)

    t = Table(
        title=f"where everything went (in {d.work}; the demo took {seconds:.0f} s)",
        title_justify="left",
        header_style="bold",
    )
    t.add_column("what")
    t.add_column("where", no_wrap=True, overflow="fold")  # "what" wraps first
    for what, where in d.outputs:
        t.add_row(escape(what), escape(shown(where)))
    return t


def run(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli import ui

    if not ui.console.is_terminal:
        ui.console.width = max(ui.console.width, 160)  # a CI log or a pipe: wide tables rather than wrapped cells
    d = Demo(args=args, work=args.workdir.resolve(), short=args.short)
    d.work.mkdir(parents=True, exist_ok=True)

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM/SIGHUP take the same clean-up path as Ctrl-C

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    t0 = time.monotonic()
    try:
        for title, step in STEPS:
            ui.console.rule(f"[bold]{title}")
            step(d)
    finally:
        stopped = _cleanup(d)
        ui.console.rule("[bold]clean-up")
        ui.console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    ui.console.print(_where_table(d, time.monotonic() - t0))
    ui.console.print(
        "next: `edgekit watch --broker URL`, `edgekit exporter --broker URL`, docs/fleet.md (running on a real Pi)"
    )
    return ExitStatus.OK
