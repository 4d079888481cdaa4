"""Sign a bundle: `edgekit sign BUNDLE --key KEY` writes manifest.sig and rewrites the bundle's archive.

BUNDLE is a bundle directory or its .tar.gz archive. Every file is checked against the manifest first,
so a bundle changed after its build is refused rather than signed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgekit_agent.contract.errors import ExitStatus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle directory or .tar.gz archive")
    parser.add_argument("--key", type=Path, required=True, help="Ed25519 private key (.key from `edgekit keys new`)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> ExitStatus:
    from edgekit.cli import ui
    from edgekit.package.keys import sign_bundle

    res = sign_bundle(args.bundle, args.key)
    result = {
        "bundle": str(res.directory or res.archive),
        "archive": str(res.archive) if res.archive else None,
        "key_id": res.key_id,
        "manifest_sha256": res.manifest_sha256,
    }
    if args.json:
        ui.print_json(result)
    else:
        ui.console.print(ui.table("signed", ["field", "value"], result.items()))
    return ExitStatus.OK
