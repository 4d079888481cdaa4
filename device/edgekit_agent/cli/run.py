"""``edgekit-agent run``: the MQTT serving agent (:class:`Run`)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit_agent.cli.app import add_trust_arguments
from edgekit_agent.contract.errors import ExitStatus, UsageError

if TYPE_CHECKING:
    from edgekit_agent.serve.config import AgentSettings

log = logging.getLogger("edgekit_agent")


def _settings(args: argparse.Namespace) -> AgentSettings:
    from edgekit_agent.serve.config import load_settings

    return load_settings(
        args.config,
        bundle=args.bundle,
        broker=args.broker,
        device_id=args.device_id,
        watch=args.watch,
        processed=args.processed,
        window_s=args.window_s,
        num_threads=args.num_threads,
        username=args.username,
        password=args.password,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        mqtt_version=args.mqtt_version,
        data_dir=args.data_dir,
        outbox_max_mb=args.outbox_max_mb,
        skip_selftest=args.skip_selftest,
        trusted_keys=args.trusted_keys,
        require_signature=args.require_signature,
        allow_unsigned=args.allow_unsigned,
    )


def _one_malloc_arena() -> None:
    """glibc gives each thread that allocates its own malloc arena (up to 8 per core), each holding freed memory
    of its own: 0.6-1.5 MiB of the serving agent's RSS (issue 15). The agent's threads allocate while holding the
    GIL, so one arena costs them no contention. Not glibc (musl): nothing to do."""
    import ctypes

    m_arena_max = -8  # glibc malloc.h
    try:
        ctypes.CDLL(None).mallopt(m_arena_max, 1)
    except (OSError, AttributeError):
        pass


class Run:
    """Serve a bundle: infer new input files in a watched directory (images, .wav or .csv, as the bundle takes) and
    ``infer`` commands, report windowed telemetry over MQTT 5 or 3.1.1 (edge/v1/DEVICE_ID/...), answer fleet
    commands, and keep data through broker outages in an on-disk outbox. Settings come from ``--config agent.toml``
    and/or flags (flags win). SIGTERM or Ctrl-C sends the last telemetry window and the ``offline``/``shutdown``
    status, then exits 0.

    Example: edgekit-agent run digits-raspberry-pi-4.tar.gz --broker mqtt://broker.lan:1883 --device-id pi-kitchen
    --watch /srv/camera --window 10
    """

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """The ``run`` options (every one can also be set in the TOML config; see edgekit_agent.serve.config)."""
        parser.add_argument(
            "bundle",
            metavar="BUNDLE",
            nargs="?",
            type=Path,
            help="bundle directory or .tar.gz (or 'bundle' in --config)",
        )
        parser.add_argument("--config", type=Path, metavar="FILE", help="agent TOML config; flags override it")
        parser.add_argument(
            "--broker", metavar="URL", help="mqtt://HOST:PORT or mqtts://HOST:PORT (none: serve and record offline)"
        )
        parser.add_argument("--device-id", metavar="ID", help="this device's id (= its MQTT user name)")
        parser.add_argument(
            "--watch",
            type=Path,
            metavar="DIR",
            help="serve new input files in DIR (images, .wav or .csv, as the bundle takes); DIR/LABEL/x.png (or .wav, "
            ".csv) counts as labelled",
        )
        parser.add_argument(
            "--processed",
            choices=("move", "delete", "keep"),
            help="what to do with served files (default move to DIR/.processed)",
        )
        parser.add_argument(
            "--window", dest="window_s", type=float, metavar="S", help="telemetry window in seconds (default 10)"
        )
        parser.add_argument(
            "--num-threads",
            type=int,
            metavar="N",
            help="interpreter threads (default: the bundle's profile, at most this machine's cores)",
        )
        parser.add_argument("--username", help="MQTT user name")
        parser.add_argument("--password", help="MQTT password (better: EDGEKIT_MQTT_PASSWORD in the environment)")
        parser.add_argument("--tls-ca", metavar="PEM", help="CA certificate that signed the broker's certificate")
        parser.add_argument("--tls-cert", metavar="PEM", help="client certificate (mutual TLS)")
        parser.add_argument("--tls-key", metavar="PEM", help="client private key (mutual TLS)")
        parser.add_argument(
            "--mqtt-version",
            choices=("auto", "5", "3.1.1"),
            help="MQTT protocol (default auto: MQTT 5, falling back to 3.1.1 when the broker refuses 5)",
        )
        parser.add_argument(
            "--data-dir",
            type=Path,
            metavar="DIR",
            help="outbox, command store and telemetry journal (default ~/.local/state/edgekit-agent/ID)",
        )
        parser.add_argument(
            "--outbox-max-mb",
            type=float,
            metavar="MB",
            help="disk budget of the outbox (default 64); beyond it, and on a full disk, the oldest telemetry goes",
        )
        add_trust_arguments(parser, serving=True)
        parser.add_argument("-v", "--verbose", action="store_true", help="log connections, commands and windows")

    @staticmethod
    def run(args: argparse.Namespace) -> ExitStatus:
        """Load and verify the bundle, then serve until SIGTERM/SIGINT."""
        _one_malloc_arena()  # before the interpreter and the agent start their threads
        from edgekit_agent.ota.slots import startup_bundle
        from edgekit_agent.serve.agent import Agent

        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        settings = _settings(args)
        if settings.bundle is None:
            raise UsageError('no bundle given: `edgekit-agent run BUNDLE ...` or bundle = "…" in the config.')
        if settings.watch_dir is not None and not settings.watch_dir.is_dir():
            raise UsageError(f"watch directory {settings.watch_dir} does not exist; create it or fix --watch.")
        # The bundle an OTA update installed (or restored by rollback) wins over the one on the command line.
        # An archive stays unpacked in DATA/bundles after the agent stops: the next start checks it, not unpacks it.
        bundle = startup_bundle(settings)
        from edgekit_agent.cli.app import native_notices_dropped

        with native_notices_dropped():  # the interpreter is built here, before any other thread runs
            agent = Agent(bundle, settings)

        def stop(signum: int, _frame: Any) -> None:
            log.info("%s: signal %d, stopping", settings.device_id, signum)
            agent.request_stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        where = settings.broker.url if settings.broker else "no broker"
        print(
            f"serving {bundle.manifest.name} {bundle.manifest.version} as {settings.device_id} on {where}, "
            f"window {settings.window_s:g} s{f', watching {settings.watch_dir}' if settings.watch_dir else ''}; "
            "Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        agent.run()
        return ExitStatus.OK
