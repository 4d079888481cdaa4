"""Helpers for tests that damage a copy of a real bundle (never the session fixture itself)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from edgekit_agent.contract.manifest import dump_manifest


def copy_bundle(src: Path, tmp_path: Path) -> Path:
    dest = tmp_path / src.name
    shutil.copytree(src, dest)
    return dest


def rehash(directory: Path) -> None:
    """Rewrite the manifest's sizes and hashes to match the files (what an attacker without the key can do)."""
    doc = json.loads((directory / "manifest.json").read_bytes())
    for name in doc["files"]:
        data = (directory / name).read_bytes()
        doc["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    doc["model"].update(doc["files"][doc["model"]["file"]])
    (directory / "manifest.json").write_bytes(dump_manifest(doc))


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def edit_spec(src: Path, tmp_path: Path, **changes: object) -> Path:
    """A copy whose manifest's preprocess spec has ``changes`` (the listed files are unchanged, so their hashes
    still match; signing it again would make it just as acceptable to the verifier: only the self-test can tell)."""
    d = copy_bundle(src, tmp_path)
    doc = json.loads((d / "manifest.json").read_bytes())
    doc["preprocess"].update(changes)
    (d / "manifest.json").write_bytes(dump_manifest(doc))
    return d
