"""Make a device pack: `edgekit pack BUNDLE... --platform linux-aarch64 --python 3.11 --out PACK.tar.gz`.

One archive with the agent, every dependency as wheels for the device's platform and Python, the bundles, an
agent config, the systemd unit and install.sh. On the device, with no network: `mkdir p && tar -xzf
PACK.tar.gz -C p && sudo sh p/install.sh`. The runtime is LiteRT where it has a wheel, else tflite-runtime with
numpy < 2 (--runtime picks one); pack.json inside says which.

With no network here: `edgekit pack --fetch-wheels DIR --platform ... --python ...` on a machine that has it,
then `edgekit pack BUNDLE... --wheels DIR ...`. Exit status 0, 2 for a bad command line or an unknown platform,
3 when a bundle, key directory or wheel is missing, 5 when a bundle fails its hashes or signature.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgekit_agent.contract.errors import ExitStatus, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundles", nargs="*", type=Path, metavar="BUNDLE", help="bundle .tar.gz or directory")
    parser.add_argument("--platform", required=True, help="the device's platform: linux-aarch64 or linux-x86_64")
    parser.add_argument("--python", required=True, help="the device's Python: 3.11 (bookworm) or 3.13 (trixie)")
    parser.add_argument(
        "--runtime",
        default="auto",
        help="auto (LiteRT where it has a wheel, else tflite-runtime), litert or tflite-runtime",
    )
    parser.add_argument("--out", type=Path, metavar="PACK.tar.gz", help="the pack to write")
    parser.add_argument("--wheels", type=Path, metavar="DIR", help="take wheels from DIR, not the package index")
    parser.add_argument("--broker", metavar="URL", help="the [broker] url written into the pack's agent.toml")
    parser.add_argument(
        "--trusted-keys", type=Path, metavar="DIR", help="*.pub keys for /etc/edgekit/keys (bundles must be signed)"
    )
    parser.add_argument(
        "--fetch-wheels", type=Path, metavar="DIR", help="only download the wheels for this target into DIR"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli import ui
    from edgekit.package.pack import fetch_wheels, make_pack

    if args.fetch_wheels is not None:
        if args.bundles or args.out:
            raise UsageError("--fetch-wheels DIR only downloads wheels: give no BUNDLE and no --out with it.")
        got = fetch_wheels(args.fetch_wheels, platform=args.platform, python=args.python, runtime=args.runtime)
        if args.json:
            ui.print_json(got.to_dict())
        else:
            ui.console.print(
                f"{len(got.wheels)} wheels for {got.platform}, CPython {got.python}, {got.runtime} "
                f"{got.runtime_version} in {got.directory}"
            )
        return ExitStatus.OK
    if args.out is None:
        raise UsageError("give --out PACK.tar.gz (or --fetch-wheels DIR to only download wheels).")
    with ui.progress() as bar:
        bar.add_task(f"packing for {args.platform}, Python {args.python}", total=None)
        res = make_pack(
            args.bundles,
            args.out,
            platform=args.platform,
            python=args.python,
            runtime=args.runtime,
            wheels=args.wheels,
            broker=args.broker,
            trusted_keys=args.trusted_keys,
        )
    if args.json:
        ui.print_json(res.to_dict())
        return ExitStatus.OK
    rows = [
        ("pack", f"{res.path} ({ui.kib(res.bytes)})"),
        ("target", f"{res.platform}, CPython {res.python}"),
        ("runtime", f"{res.runtime} {res.runtime_version}"),
        ("agent", res.agent_version),
        ("bundles", ", ".join(b.name.removeprefix("bundles/") for b in res.bundles)),
        ("wheels", f"{len(res.wheels)} ({ui.kib(sum(w.bytes for w in res.wheels))})"),
        ("took", f"{res.seconds:.1f} s"),
    ]
    ui.console.print(ui.table("device pack", ["field", "value"], rows))
    ui.console.print(f"on the device: mkdir p && tar -xzf {res.path.name} -C p && sudo sh p/install.sh")
    return ExitStatus.OK
