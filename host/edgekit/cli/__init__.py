"""The ``edgekit`` command: a table of subcommands, each a small module with ``add_arguments`` and ``run``.

Subcommand modules import their library code inside ``run`` so that ``edgekit --help`` starts in well
under a second (TensorFlow takes several to import). ``run`` returns an :class:`ExitStatus`; errors
derived from :class:`EdgekitError` become their exit status with the message printed, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from edgekit import __version__
from edgekit_agent.contract.errors import EdgekitError, ExitStatus, exit_status_for

# name -> (module under edgekit.cli, one-line help). Order is the order of `edgekit --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "datasets": ("datasets", "write a demo dataset (scikit-learn's handwritten digits) as an image folder"),
    "train": ("train", "train a model from the zoo on an image folder"),
    "prune": ("prune", "magnitude-prune a Keras model to a target sparsity"),
    "convert": ("convert", "convert a Keras model to a full-integer (int8) TFLite model for a profile"),
    "evaluate": ("evaluate", "compare float and int8 accuracy on held-out data"),
    "build": ("build", "the one-shot path: dataset -> train -> prune -> convert -> evaluate -> bundle"),
    "inspect": ("inspect", "show a bundle's or .tflite file's operators, tensors, sizes and hashes"),
    "profiles": ("profiles", "list the device profiles and their budgets"),
    "check": ("check", "check whether a .tflite model fits device profiles (arena, flash, ops)"),
    "keys": ("keys", "make an Ed25519 key pair for signing bundles"),
    "sign": ("sign", "sign a bundle (manifest.sig) with a private key"),
    "pack": ("pack", "make an offline device pack: agent, runtime wheels, bundles, install.sh for a platform"),
    "deploy": ("deploy", "send a bundle to devices over MQTT (OTA) with self-test, health check and rollback"),
    "broker": ("broker", "run a development MQTT broker on this machine (mosquitto if installed, else amqtt)"),
    "watch": ("watch", "live view of the fleet: status, bundle, throughput, latency, accuracy per device"),
    "bench": ("bench", "benchmark a device remotely over MQTT, or --compare saved reports"),
    "exporter": ("exporter", "serve fleet telemetry as Prometheus /metrics (shared MQTT subscription)"),
    "demo": ("demo", "the one-command tour: build bundles, start a broker and simulated devices, watch, bench"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgekit",
        description="Train, quantise, fit-check and bundle models for small devices, and watch them in the field.",
    )
    parser.add_argument("--version", action="version", version=f"edgekit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(f"edgekit.cli.{module}")
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return int(ExitStatus.USAGE)
    from rich.markup import escape

    from edgekit.cli.ui import err_console, native_logs_captured

    # TensorFlow reads this when it is first imported (inside a command's run): hide its INFO/WARNING lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1" if args.verbose else "3")
    try:
        with native_logs_captured(enabled=not args.verbose):
            return int(args._run(args))
    except EdgekitError as exc:
        # Not wrapped by rich: an error names a file, and a path broken over two lines cannot be copied.
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
        return int(exc.exit_status)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return int(ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        return int(exit_status_for(sys.exc_info()[1] or Exception()))
