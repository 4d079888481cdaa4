"""Bundle archives are reproducible: the same directory gives the same bytes, whatever the time or name."""

from __future__ import annotations

import struct
import tarfile
from pathlib import Path

from edgekit.package.writer import write_archive


def test_same_files_same_archive_bytes(tmp_path: Path) -> None:
    d = tmp_path / "demo-bundle"
    (d / "sub").mkdir(parents=True)
    (d / "model.tflite").write_bytes(bytes(range(256)) * 64)
    (d / "sub" / "model_data.cc").write_text("const unsigned char g[] = {0x01};\n" * 500)
    a = write_archive(d, tmp_path / "one" / "demo-bundle.tar.gz").read_bytes()
    b = write_archive(d, tmp_path / "two" / "another-name.tar.gz").read_bytes()
    assert a == b
    flags, mtime = a[3], struct.unpack("<I", a[4:8])[0]
    assert a[:2] == b"\x1f\x8b" and mtime == 0 and not flags & 0x08  # no time, no file name in the gzip header
    with tarfile.open(tmp_path / "one" / "demo-bundle.tar.gz") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["demo-bundle/model.tflite", "demo-bundle/sub/model_data.cc"]
        assert all(m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in members)
        assert tar.extractfile(members[0]).read() == (d / "model.tflite").read_bytes()
    assert not list(tmp_path.rglob("*.part"))
