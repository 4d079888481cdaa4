"""A restart does not unpack a bundle archive that is already unpacked: the copy in DATA/bundles is checked
against the manifest (every file's sha256) and reused; a damaged copy is unpacked again; stale ones go."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edgekit_agent.ota.slots import startup_bundle
from edgekit_agent.serve.config import AgentSettings


def test_a_restart_checks_the_unpacked_bundle_instead_of_unpacking_it_again(
    digits_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = digits_bundle.parent / f"{digits_bundle.name}.tar.gz"
    data = tmp_path / "data"
    stale = data / "bundles" / "digits-raspberry-pi-4.0123456789abcdef"  # an earlier bundle's copy
    stale.mkdir(parents=True)
    (data / "bundles" / ".digits-raspberry-pi-4.cut-short").mkdir()  # a crash mid-unpacking
    settings = AgentSettings(device_id="d", data_dir=data, bundle=archive, allow_unsigned=True)

    first = startup_bundle(settings)
    model = first.model_path.stat()
    assert first.directory.parent.parent == data / "bundles"
    assert [p.name for p in (data / "bundles").iterdir()] == [first.directory.parent.name]

    second = startup_bundle(settings)
    assert second.directory == first.directory
    again = second.model_path.stat()
    assert (again.st_ino, again.st_mtime_ns) == (model.st_ino, model.st_mtime_ns), "unpacked a second time"

    # A changed file in the unpacked copy: refused as a bundle, so it is unpacked afresh from the archive.
    labels = second.directory / "labels.txt"
    target = labels if labels.exists() else second.model_path
    target.write_bytes(target.read_bytes() + b"\n")
    with caplog.at_level(logging.WARNING):
        third = startup_bundle(settings)
    assert "unpacking it again" in caplog.text
    assert third.directory == first.directory and third.manifest.model.sha256 == first.manifest.model.sha256
    assert [p.name for p in (data / "bundles").iterdir()] == [first.directory.parent.name]
