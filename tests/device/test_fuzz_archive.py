"""Hostile bundle archives into ``load_bundle``: path traversal, links, special files, oversized members,
duplicates, random bytes and corrupted real archives. Only typed errors, nothing outside the work dir."""

from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
import tempfile
import uuid
from pathlib import Path

import pytest
from hostile_archives import pax_sparse_member
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.contract.errors import BundleError, EdgekitError
from edgekit_agent.contract.limits import MAX_MEMBER_BYTES, MAX_MEMBERS

from fuzzing import fuzz_examples

FUZZ = settings(
    max_examples=fuzz_examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# An absolute path an escaping member would create; unique per run so a leftover cannot mask a new escape.
ESCAPE = Path(tempfile.gettempdir()) / f"edgekit-fuzz-escape-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def good_archive(digits_bundle: Path) -> bytes:
    return (digits_bundle.parent / f"{digits_bundle.name}.tar.gz").read_bytes()


@pytest.fixture(scope="module")
def good_members(good_archive: bytes) -> dict[str, bytes]:
    """The real bundle's files by plain name."""
    with tarfile.open(fileobj=io.BytesIO(good_archive)) as tar:
        return {m.name.split("/")[-1]: tar.extractfile(m).read() for m in tar if m.isreg()}


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _load(data: bytes, name: str = "bundle.tar.gz") -> None:
    """Load ``data`` as an archive inside a sandbox; assert only typed errors and no writes outside ``data/``."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        sandbox = Path(tmp)
        workdir = sandbox / "data"
        workdir.mkdir()
        archive = sandbox / "in" / name
        archive.parent.mkdir()
        archive.write_bytes(data)
        (sandbox / "outside").mkdir()
        before = _snapshot(sandbox)
        try:
            load_bundle(archive, workdir=workdir)
        except EdgekitError:
            pass  # any other exception type fails the test
        after = {p for p in _snapshot(sandbox) - before if not p.startswith("data")}
        assert not after, f"written outside the data dir: {after}"
        assert not ESCAPE.exists(), f"an archive member escaped to {ESCAPE}"
        # and nothing inside data/ is a link or special file
        for p in workdir.rglob("*"):
            assert p.is_dir() or (p.is_file() and not p.is_symlink()), p


def _tar(members: list[tuple[str, str, bytes, str]], gz: bool = True) -> bytes:
    """Build an archive from (name, kind, data, linkname) with kind in file/dir/sym/hard/fifo/chr/sparse
    (a GNU sparse file of 2 GiB)."""
    buf = io.BytesIO()
    kinds = {
        "file": tarfile.REGTYPE,
        "dir": tarfile.DIRTYPE,
        "sym": tarfile.SYMTYPE,
        "hard": tarfile.LNKTYPE,
        "fifo": tarfile.FIFOTYPE,
        "chr": tarfile.CHRTYPE,
        "sparse": tarfile.REGTYPE,  # its pax headers make it sparse
    }
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, link in members:
            info = tarfile.TarInfo(name)
            info.type = kinds[kind]
            info.linkname = link
            info.mode = 0o644
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            elif kind == "sparse":
                info, payload = pax_sparse_member(name, 2 << 30, "1.0")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)
    return buf.getvalue()


HOSTILE_NAMES = [
    "../escape",
    "../../escape",
    "digits/../../escape",
    "/tmp/escape",
    str(ESCAPE),
    "digits/./../../../escape",
    "..",
    ".",
    "",
    "digits/sub/model.tflite",
    "C:\\escape",
    "\\..\\escape",
    "digits/manifest.json",
    "digits/model.tflite",
    "digits/golden.npz",
    "digits/manifest.sig",
    "digits/extra.bin",
    "manifest.json",
    "model.tflite",
    "x" * 300,
]
LINK_TARGETS = ["/etc/passwd", "../outside", str(ESCAPE), "manifest.json", "digits/model.tflite", "../../.."]


@st.composite
def hostile_member(draw, good: dict[str, bytes]):
    name = draw(st.sampled_from(HOSTILE_NAMES) | st.text(min_size=1, max_size=30))
    kind = draw(st.sampled_from(["file", "file", "file", "dir", "sym", "hard", "fifo", "chr", "sparse"]))
    if kind == "file":
        data = draw(st.sampled_from(sorted(good.values())) | st.binary(max_size=200))
    else:
        data = b""
    link = draw(st.sampled_from(LINK_TARGETS)) if kind in ("sym", "hard") else ""
    return name, kind, data, link


def test_good_archive_loads(good_archive, tmp_path):
    (tmp_path / "b.tar.gz").write_bytes(good_archive)
    bundle = load_bundle(tmp_path / "b.tar.gz", workdir=tmp_path / "data")
    assert bundle.directory.is_relative_to(tmp_path / "data")


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_as_archive(data):
    _load(data)


@FUZZ
@given(st.data())
def test_archives_of_hostile_members(good_members, data):
    # Often start from the real bundle's files so the hostile member is what decides the outcome.
    base = [(f"digits/{n}", "file", d, "") for n, d in good_members.items()] if data.draw(st.booleans()) else []
    extra = data.draw(st.lists(hostile_member(good_members), min_size=1, max_size=5))
    members = base + extra
    random.Random(data.draw(st.integers(0, 2**16))).shuffle(members)
    _load(_tar(members, gz=data.draw(st.booleans())), name=data.draw(st.sampled_from(["b.tar.gz", "b.tar", "b.tgz"])))


@FUZZ
@given(st.data())
def test_corrupted_real_archive(good_archive, data):
    raw = bytearray(good_archive)
    if data.draw(st.booleans()):
        del raw[data.draw(st.integers(0, len(raw) - 1)) :]  # truncated copy
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1)) if raw else 0
        if raw:
            raw[pos] ^= data.draw(st.integers(1, 255))
    _load(bytes(raw))


@FUZZ
@given(st.data())
def test_corrupted_uncompressed_tar(good_archive, data):
    # Without gzip's CRC every flipped byte reaches the tar parser and, past the headers, the files' hashes.
    tar = bytearray(gzip.decompress(good_archive))
    for _ in range(data.draw(st.integers(1, 6))):
        tar[data.draw(st.integers(0, len(tar) - 1))] ^= data.draw(st.integers(1, 255))
    _load(bytes(tar), name="b.tar")


@pytest.mark.parametrize(
    "members,match",
    [
        ([("digits/../../escape", "file", b"x", "")], r"'\.\.'"),
        ([("/tmp/escape", "file", b"x", "")], "absolute"),
        ([("digits/model.tflite", "sym", b"", "/etc/passwd")], "symbolic link"),
        ([("digits/model.tflite", "hard", b"", "/etc/passwd")], "hard link"),
        ([("digits/fifo", "fifo", b"", "")], "special file"),
    ],
)
def test_each_hostile_member_kind_is_refused_by_name(members, match, tmp_path):
    (tmp_path / "b.tar.gz").write_bytes(_tar(members))
    with pytest.raises(BundleError, match=match):
        load_bundle(tmp_path / "b.tar.gz", workdir=tmp_path / "data")


def test_unlisted_member_is_refused(good_members, tmp_path):
    members = [(f"digits/{n}", "file", d, "") for n, d in good_members.items()] + [
        ("digits/run.sh", "file", b"#!/bin/sh", "")
    ]
    (tmp_path / "b.tar.gz").write_bytes(_tar(members))
    with pytest.raises(BundleError, match="run.sh.*not listed"):
        load_bundle(tmp_path / "b.tar.gz", workdir=tmp_path / "data")


def test_too_many_members_is_refused(tmp_path):
    members = [(f"digits/f{i}", "file", b"", "") for i in range(MAX_MEMBERS + 5)]
    (tmp_path / "b.tar.gz").write_bytes(_tar(members))
    with pytest.raises(BundleError, match=f"more than {MAX_MEMBERS}"):
        load_bundle(tmp_path / "b.tar.gz", workdir=tmp_path / "data")


def test_decompression_bomb_member_is_refused_before_it_is_written(good_members, tmp_path):
    """A member just over MAX_MEMBER_BYTES of zeros: ~130 KB compressed, refused from its header."""
    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for n, d in good_members.items():
            if n == "model.tflite":
                continue  # replaced by the bomb below
            info = tarfile.TarInfo(f"digits/{n}")
            info.size = len(d)
            tar.addfile(info, io.BytesIO(d))
        info = tarfile.TarInfo("digits/model.tflite")
        info.size = MAX_MEMBER_BYTES + 1

        class Zeros(io.RawIOBase):
            def readable(self) -> bool:
                return True

            def readinto(self, b):  # noqa: ANN001
                b[:] = bytes(len(b))
                return len(b)

        tar.addfile(info, io.BufferedReader(Zeros()))
    assert path.stat().st_size < 2 * 1024 * 1024
    with pytest.raises(BundleError, match=f"{MAX_MEMBER_BYTES + 1} bytes, over the"):
        load_bundle(path, workdir=tmp_path / "data")
    assert not any(p.is_file() for p in (tmp_path / "data").rglob("*"))


def test_header_claiming_a_huge_member_without_data(tmp_path):
    header = tarfile.TarInfo("digits/model.tflite")
    header.size = 10 * MAX_MEMBER_BYTES
    raw = header.tobuf(format=tarfile.PAX_FORMAT) + b"\0" * 1024
    (tmp_path / "b.tar").write_bytes(raw)
    with pytest.raises(BundleError):
        load_bundle(tmp_path / "b.tar", workdir=tmp_path / "data")


def test_planted_symlink_in_a_bundle_directory_is_refused(digits_bundle, tmp_path):
    import shutil

    d = tmp_path / "b"
    shutil.copytree(digits_bundle, d)
    (d / "golden.npz").unlink()
    os.symlink(digits_bundle / "golden.npz", d / "golden.npz")  # same bytes, but through a link
    with pytest.raises(EdgekitError, match="golden.npz"):
        load_bundle(d)
