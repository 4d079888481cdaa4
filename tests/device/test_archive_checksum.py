"""A flipped bit anywhere in an unsigned archive's compressed data is refused (the gzip CRC is checked)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.contract.errors import BundleError


def test_every_flipped_bit_in_the_compressed_data_is_refused(digits_bundle: Path, tmp_path: Path):
    data = (digits_bundle.parent / f"{digits_bundle.name}.tar.gz").read_bytes()
    header_end = data.index(b"\x00", 10) + 1  # gzip header: 10 bytes + the zero-terminated file name
    rng = random.Random(7)
    for i in range(150):
        corrupt = bytearray(data)
        pos = rng.randrange(header_end, len(data))
        corrupt[pos] ^= 1 << rng.randrange(8)
        archive = tmp_path / f"{i}" / "bundle.tar.gz"
        archive.parent.mkdir()
        archive.write_bytes(bytes(corrupt))
        with pytest.raises(BundleError):
            load_bundle(archive, workdir=archive.parent / "x", allow_unsigned=True)
