"""Hostile bundle archives built with ``tarfile`` (and, for the old GNU sparse header, a patched header block),
shared by the device and host tests and ``scripts/bench_fuzz.py``.

A member is ``(name, bytes)`` for a regular file, ``(TarInfo, bytes)`` for a file with a prepared header, or a
``tarfile.TarInfo`` written as given (links, devices, FIFOs: no data). Every builder returns the archive's path.
"""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

Member = tarfile.TarInfo | tuple[str | tarfile.TarInfo, bytes]
MiB = 1 << 20
GiB = 1 << 30
END = b"\0" * tarfile.RECORDSIZE  # the end-of-archive blocks, padded as tarfile pads them


def tar_body(members: Iterable[Member]) -> bytes:
    """The tar stream of ``members`` in order (duplicates included), without the end-of-archive blocks."""
    buf = io.BytesIO()
    tar = tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT)
    for m in members:
        if isinstance(m, tarfile.TarInfo):
            tar.addfile(m)
            continue
        info, data = m
        if not isinstance(info, tarfile.TarInfo):
            info = tarfile.TarInfo(info)
            info.mode = 0o644
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()[: tar.offset]  # not closed: closing would append the end-of-archive blocks


def tar_archive(path: Path, members: Iterable[Member], *, gz: bool = True) -> Path:
    """A .tar.gz (or plain .tar) of ``members``."""
    data = tar_body(members) + END
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    """A header-only member: ``tarfile.SYMTYPE``, ``LNKTYPE``, ``CHRTYPE``, ``BLKTYPE`` or ``FIFOTYPE``."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def _octal(value: int) -> bytes:
    return b"%011o\0" % value


def gnu_sparse_member(name: str, realsize: int) -> bytes:
    """An old-GNU sparse member (type 'S', what `tar --sparse` writes by default): a header whose sparse map puts
    512 stored bytes at the end of a file of ``realsize`` bytes (the rest is a hole, zeros), and those bytes."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode = tarfile.GNUTYPE_SPARSE, 512, 0o644
    block = bytearray(info.tobuf(format=tarfile.GNU_FORMAT)[-tarfile.BLOCKSIZE :])
    block[386:398] = _octal(realsize - 512)  # sparse[0].offset
    block[398:410] = _octal(512)  # sparse[0].numbytes
    block[483:495] = _octal(realsize)  # realsize
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % tarfile.calc_chksums(bytes(block))[0]
    return bytes(block) + b"\x01" * 512


def pax_sparse_member(name: str, realsize: int, version: str) -> Member:
    """A GNU sparse member in a pax archive, ``version`` 0.1 (the map in ``GNU.sparse.map``) or 1.0 (the map at
    the start of the data, what `tar --sparse --format=pax` writes): ``realsize`` bytes once unpacked."""
    info = tarfile.TarInfo(f"{name}.sparse")
    if version == "0.1":
        info.pax_headers = {
            "GNU.sparse.size": str(realsize),
            "GNU.sparse.numblocks": "1",
            "GNU.sparse.map": f"{realsize - 512},512",
            "GNU.sparse.name": name,
        }
        return info, b"\x01" * 512
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(realsize),
    }
    return info, f"1\n{realsize - 512}\n512\n".encode().ljust(512, b"\0") + b"\x01" * 512


def sparse_archive(path: Path, name: str, realsize: int = 2 * GiB, *, fmt: str = "gnu", before: Iterable[Member] = ()):
    """A .tar.gz of ``before``, then ``name`` as a sparse member of ``realsize`` bytes: ``fmt`` is ``gnu``,
    ``pax-0.1`` or ``pax-1.0``. It is a few KB."""
    if fmt == "gnu":
        body = tar_body(before) + gnu_sparse_member(name, realsize)
    else:
        body = tar_body([*before, pax_sparse_member(name, realsize, fmt.removeprefix("pax-"))])
    path.write_bytes(gzip.compress(body + END, mtime=0))
    return path


_MiB_OF_ZEROS = gzip.compress(bytes(MiB), mtime=0)  # ~1 KB


def gz_zeros(n: int) -> bytes:
    """``n`` zero bytes as gzip: concatenated gzip members are one stream to a reader, so a GiB of zeros is
    1,024 copies of one compressed MiB (about 1 MB, made at once; compressing it would take seconds)."""
    return _MiB_OF_ZEROS * (n // MiB) + gzip.compress(bytes(n % MiB), mtime=0)


def bomb_archive(path: Path, members: Iterable[Member], zeros: int) -> Path:
    """A .tar.gz whose headers are honest and small: ``members``, the end-of-archive blocks, then ``zeros`` more
    zero bytes in the same gzip stream (a decompression bomb that no header announces)."""
    path.write_bytes(gzip.compress(tar_body(members) + END, mtime=0) + gz_zeros(zeros))
    return path


def zeros_members_archive(path: Path, members: Iterable[Member], sizes: dict[str, int]) -> Path:
    """A .tar.gz of ``members``, then one member of zeros per ``name: size`` (a few KB per GiB)."""
    parts = [gzip.compress(tar_body(members), mtime=0)]
    for name, size in sizes.items():
        info = tarfile.TarInfo(name)
        info.size, info.mode = size, 0o644
        parts += [gzip.compress(info.tobuf(format=tarfile.PAX_FORMAT), mtime=0), gz_zeros(size + (-size % 512))]
    path.write_bytes(b"".join(parts) + gzip.compress(END, mtime=0))
    return path


def header_only_archive(path: Path, members: Iterable[Member], name: str, size: int) -> Path:
    """A .tar.gz of ``members``, then a header that claims ``size`` bytes for ``name`` with no data after it."""
    info = tarfile.TarInfo(name)
    info.size = size
    path.write_bytes(gzip.compress(tar_body(members) + info.tobuf(format=tarfile.PAX_FORMAT) + END, mtime=0))
    return path


# Peak RSS is read in a small launcher: a process inherits, as its own peak, the RSS of the process it was
# spawned from (exec records the old memory's high-water mark), so measured straight from pytest with TensorFlow
# loaded, `edgekit inspect` would "peak" at 880 MB before reading a byte.
_LAUNCHER = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
)


def run_measured(argv: Sequence[str]) -> tuple[int, float, str]:
    """Run ``argv`` in a fresh process: its exit code, its own peak RSS in MB and its stderr on one line."""
    proc = subprocess.run([sys.executable, "-c", _LAUNCHER, *argv], capture_output=True, text=True)
    return proc.returncode, int(proc.stdout) / 1024, " ".join(proc.stderr.split())
