"""Manage bundle-signing keys: `edgekit keys new --out DIR [--name NAME]` makes an Ed25519 key pair.

The private key (NAME.key, mode 0600) stays on the build machine; copy NAME.pub into each device's
--trusted-keys directory. The key id (first 16 hex digits of sha256 over the raw public key) is what
a device names when it refuses a bundle signed by a key it does not trust.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgekit_agent.contract.errors import ExitStatus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = sub.add_parser("new", help="generate an Ed25519 signing key pair")
    new.add_argument("--out", type=Path, required=True, help="directory for NAME.key and NAME.pub")
    new.add_argument("--name", default="edgekit", help="file name stem (default: edgekit)")
    new.add_argument("--force", action="store_true", help="replace existing key files of that name")
    new.add_argument("--json", action="store_true", help="print the result as JSON")
    show = sub.add_parser("id", help="print the key id of a .pub or .key file")
    show.add_argument("key", type=Path)
    show.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli import ui
    from edgekit.package import keys

    if args.keys_command == "new":
        pair = keys.new_keypair(args.out, args.name, overwrite=args.force)
        result = {
            "name": pair.name,
            "key_id": pair.key_id,
            "private_key": str(pair.private_path),
            "public_key": str(pair.public_path),
        }
        if args.json:
            ui.print_json(result)
        else:
            ui.console.print(ui.table("signing key", ["field", "value"], result.items()))
            ui.err_console.print(
                f"keep {pair.private_path} secret; copy {pair.public_path} to each device's --trusted-keys directory."
            )
        return ExitStatus.OK
    # keys id
    if args.key.suffix == keys.PRIVATE_SUFFIX:
        _, key_id = keys.load_private_key(args.key)
    else:
        from edgekit_agent.contract.signing import load_public_key

        key_id = load_public_key(args.key).key_id
    if args.json:
        ui.print_json({"key": str(args.key), "key_id": key_id})
    else:
        ui.console.print(key_id)
    return ExitStatus.OK
