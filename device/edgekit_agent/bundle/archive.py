"""The one bundle verifier: a bundle directory or archive checked against its manifest, by the agent
(``load_bundle``), `edgekit inspect` and `edgekit sign` alike, with the limits of
:mod:`edgekit_agent.contract.limits`.

A directory: :func:`read_manifest`, then :func:`verify_files` reports every file (one :class:`FileCheck`,
status ``ok`` / ``mismatch`` / ``missing`` / ``unlisted``) and :func:`check_files` raises the first problem.

An archive (``.tar.gz`` or plain ``.tar``): :func:`scan_archive` reads the headers only and refuses the whole
archive, naming the member, for an absolute path or ``..``, a symbolic or hard link, a device, FIFO or other
special file, a GNU sparse member, a duplicate name, a subdirectory, a member over ``MAX_MEMBER_BYTES`` (by its
header's size), more than ``MAX_MEMBERS`` entries, more than ``MAX_EXTRACTED_BYTES`` in total, a header over
``MAX_HEADER_BYTES`` (pax records, GNU long names and sparse maps included), anything but padding after the
tar archive's end (zeros, at most ``MAX_HEADER_BYTES``), a bad gzip CRC, or a stream of more than
``MAX_STREAM_BYTES``: the decompressor is never asked for more, so a compression bomb costs bounded time and
memory whatever the archive claims. Only then are files read, in a new forward pass for each use:
:func:`verify_archive` (hash every file, what `edgekit inspect` shows) and :func:`extract_archive` (write the
files the manifest lists into a new directory, what the agent loads).
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from edgekit_agent.contract.digest import sha256
from edgekit_agent.contract.errors import BundleError, EdgekitError, IntegrityError
from edgekit_agent.contract.limits import (
    MAX_ARCHIVE_BYTES,
    MAX_EXTRACTED_BYTES,
    MAX_HEADER_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_MEMBER_BYTES,
    MAX_MEMBERS,
    MAX_STREAM_BYTES,
)
from edgekit_agent.contract.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest
from edgekit_agent.contract.signing import MAX_SIGNATURE_BYTES

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
#: Files a bundle may hold without the manifest listing them.
UNLISTED_OK = frozenset({MANIFEST_NAME, SIGNATURE_NAME})
_CHUNK = 1 << 16


class FileStatus(StrEnum):
    OK = "ok"
    MISMATCH = "mismatch"
    MISSING = "missing"
    UNLISTED = "unlisted"


@dataclass(frozen=True, slots=True)
class FileCheck:
    """One file of a bundle compared with the manifest."""

    name: str
    status: FileStatus
    bytes: int | None  # actual size (None when missing or not a regular file)
    expected_bytes: int | None  # what the manifest records (None when unlisted)
    sha256: str | None
    expected_sha256: str | None
    detail: str = ""  # why it is not ok, in words

    @property
    def ok(self) -> bool:
        return self.status is FileStatus.OK


def _compare(manifest: Manifest, found: Mapping[str, tuple[int, str] | str]) -> tuple[FileCheck, ...]:
    """Checks for the files ``found`` (name → (size, sha256), or a reason it cannot be read as a file):
    listed files first in manifest order, then unlisted ones sorted by name."""
    checks: list[FileCheck] = []
    for e in manifest.files:
        got = found.get(e.name)
        if got is None:
            checks.append(FileCheck(e.name, FileStatus.MISSING, None, e.bytes, None, e.sha256, "not in the bundle"))
        elif isinstance(got, str):
            checks.append(FileCheck(e.name, FileStatus.MISMATCH, None, e.bytes, None, e.sha256, got))
        else:
            size, digest = got
            if size != e.bytes:
                detail = f"is {size} bytes, {MANIFEST_NAME} records {e.bytes}"
            elif digest != e.sha256:
                detail = f"sha256 is {digest[:16]}…, {MANIFEST_NAME} records {e.sha256[:16]}…"
            else:
                detail = ""
            status = FileStatus.MISMATCH if detail else FileStatus.OK
            checks.append(FileCheck(e.name, status, size, e.bytes, digest, e.sha256, detail))
    listed = {e.name for e in manifest.files} | UNLISTED_OK
    for name in sorted(set(found) - listed):
        got = found[name]
        size, digest = (None, None) if isinstance(got, str) else got
        checks.append(FileCheck(name, FileStatus.UNLISTED, size, None, digest, None, "not listed in the manifest"))
    return tuple(checks)


# --- directories -------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in chunks (bundles may hold models of hundreds of MB)."""
    h = sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _read_regular(path: Path, limit: int) -> bytes | None:
    """At most ``limit`` bytes of a regular file; None when absent, a link or not a regular file."""
    try:
        # O_NONBLOCK: a FIFO planted under the file's name must not block the open
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(limit) if stat.S_ISREG(os.fstat(fd).st_mode) else None


def read_manifest(directory: Path) -> tuple[Manifest, bytes]:
    """The parsed ``manifest.json`` of a bundle directory and its exact bytes (what a signature covers)."""
    path = directory / MANIFEST_NAME
    data = _read_regular(path, MAX_MANIFEST_BYTES + 1)
    if data is None:
        raise BundleError(
            f"{directory}: no {MANIFEST_NAME} (or it is a link); this is not an edgekit bundle directory "
            "(make one with `edgekit build`)."
        )
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes; not a bundle manifest.")
    return Manifest.from_bytes(data, str(path)), data


def read_signature(directory: Path) -> bytes | None:
    """``manifest.sig`` of a bundle directory (None when absent); a file too large to be one is cut just past
    the size :func:`edgekit_agent.contract.signing.parse_signature` refuses."""
    return _read_regular(directory / SIGNATURE_NAME, MAX_SIGNATURE_BYTES + 1)


def _check_file_name(name: str, source: str) -> None:
    # The manifest is read before anything is trusted: a listed name like "../../etc/x" must not be opened.
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith(".") or "\x00" in name:
        raise BundleError(f"{source}: listed file name {name!r} is not a plain file name; the bundle is malformed.")


def verify_files(directory: str | Path, manifest: Manifest) -> tuple[FileCheck, ...]:
    """Compare a bundle directory with its manifest: one :class:`FileCheck` per listed or present file.

    Symbolic links and subdirectories are never followed: a listed one is a ``mismatch`` ("not a regular
    file"), any other an ``unlisted`` entry.
    """
    directory = Path(directory)
    for e in manifest.files:
        _check_file_name(e.name, f"{directory}/{MANIFEST_NAME}")
    found: dict[str, tuple[int, str] | str] = {}
    for path in directory.iterdir():
        st = path.lstat()
        if stat.S_ISREG(st.st_mode):
            found[path.name] = (st.st_size, sha256_file(path))
        else:
            found[path.name] = "not a regular file (a link or directory)"
    return _compare(manifest, found)


def check_files(directory: str | Path, manifest: Manifest) -> tuple[FileCheck, ...]:
    """:func:`verify_files`, raising the first problem: :class:`BundleError` for a file the manifest does not
    list, :class:`IntegrityError` for one that is missing or differs."""
    checks = verify_files(directory, manifest)
    for c in checks:
        if c.status is FileStatus.UNLISTED:
            raise BundleError(
                f"{directory}: '{c.name}' is not listed in {MANIFEST_NAME}; a bundle holds only the files its "
                "manifest lists. Remove it or rebuild the bundle."
            )
        if c.status is FileStatus.MISSING:
            raise IntegrityError(
                f"{directory}: '{c.name}' is listed in {MANIFEST_NAME} but missing; re-copy the bundle."
            )
        if c.status is FileStatus.MISMATCH:
            raise IntegrityError(
                f"{directory}/{c.name}: {c.detail}; the file is corrupt or was tampered with. "
                "Re-copy or rebuild the bundle."
            )
    return checks


# --- archives: reading the tar stream within bounds ---------------------------------------------------------


class _Refused(Exception):
    """A bound of the stream was hit inside tarfile's parser (kept apart from the ValueErrors tarfile handles)."""


class _Stream:
    """An archive's tar stream, decompressed on demand: forward only, at most ``MAX_STREAM_BYTES`` bytes, and
    while a header is being parsed at most ``MAX_HEADER_BYTES`` bytes read for it."""

    def __init__(self, raw: BinaryIO) -> None:
        magic = raw.read(2)
        raw.seek(0)
        self._src: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if magic == b"\x1f\x8b" else raw  # type: ignore[assignment]
        self._pos = 0
        self.header_left: int | None = None  # set while tarfile parses one entry's headers

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            raise _Refused("an unbounded read")  # tarfile reads sizes it parsed; never "everything"
        if self.header_left is not None:
            if n > self.header_left:
                raise _Refused(f"an entry whose headers are over {MAX_HEADER_BYTES} bytes (at byte {self._pos})")
            self.header_left -= n
        data = self._src.read(min(n, MAX_STREAM_BYTES + 1 - self._pos))
        self._pos += len(data)
        if self._pos > MAX_STREAM_BYTES:
            raise _Refused(f"a tar stream of more than {MAX_STREAM_BYTES} bytes (a compression bomb?)")
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self._pos
        if whence == os.SEEK_END or offset < self._pos:
            raise tarfile.ReadError("an entry points backwards in the archive")
        header_left, self.header_left = self.header_left, None  # skipped data is not header
        try:
            while self._pos < offset and self.read(min(_CHUNK, offset - self._pos)):
                pass
        finally:
            self.header_left = header_left
        return self._pos

    def finish(self) -> None:
        """Read what follows the tar archive's end: zeros (tar pads to its record size) and at most
        ``MAX_HEADER_BYTES`` of them, then the gzip trailer, whose CRC and length are checked only there."""
        end = self._pos
        while chunk := self.read(_CHUNK):
            if chunk.count(0) != len(chunk):
                raise _Refused(f"data after the end of the tar archive (at byte {end}: an unreadable entry?)")
            if self._pos - end > MAX_HEADER_BYTES:
                raise _Refused(
                    f"more than {MAX_HEADER_BYTES} bytes after the end of the tar archive (a compression bomb?)"
                )


# What a corrupt archive raises while it is parsed or decompressed: zlib.error is not an OSError, and tarfile
# lets ValueError (int() of a garbled sparse map) and IndexError (a sparse header cut short) escape.
_CORRUPT = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError, IndexError)


@dataclass(frozen=True, slots=True)
class ArchiveMember:
    """A regular file of a bundle archive."""

    name: str  # inside the bundle directory: "model.tflite"
    path: str  # as stored: "digits-raspberry-pi-4/model.tflite"
    size: int


@dataclass(frozen=True, slots=True)
class ArchiveIndex:
    """An archive that passed :func:`scan_archive`: its files in archive order, ``manifest.json`` among them."""

    path: Path
    top: str  # the one top-level directory the files are under ("" for a flat archive)
    members: tuple[ArchiveMember, ...]


def _entries(stream: _Stream) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Every entry of the stream, each header parsed under the header bound; then the stream is finished."""
    stream.header_left = MAX_HEADER_BYTES
    tar = tarfile.TarFile(fileobj=stream, mode="r")  # type: ignore[call-overload]  # parses the first header
    while True:
        stream.header_left = MAX_HEADER_BYTES
        info = tar.next()
        stream.header_left = None
        if info is None:
            break
        yield tar, info
    stream.finish()


def _pass(archive: Path, visit: Callable[[tarfile.TarFile, tarfile.TarInfo], None]) -> None:
    """One forward pass over the archive: ``visit(tar, entry)`` for each entry, every bound enforced."""
    try:
        fd = os.open(archive, os.O_RDONLY)
    except FileNotFoundError:
        raise BundleError(f"{archive}: no such bundle archive.") from None
    except OSError as exc:
        raise BundleError(f"{archive}: cannot be read ({exc.strerror}).") from None
    with os.fdopen(fd, "rb") as raw:
        size = os.fstat(fd).st_size
        if size > MAX_ARCHIVE_BYTES:
            raise BundleError(
                f"{archive}: {size} bytes is over the {MAX_ARCHIVE_BYTES}-byte archive limit "
                "(edgekit_agent.contract.limits); not a bundle archive."
            )
        try:
            for tar, info in _entries(_Stream(raw)):
                visit(tar, info)
        except EdgekitError:
            raise
        except _Refused as exc:
            raise BundleError(f"{archive}: refusing {exc}; not a bundle archive, do not unpack it.") from None
        except _CORRUPT as exc:
            raise BundleError(f"{archive}: not a readable bundle archive ({exc}); re-copy or rebuild it.") from None


def _entry_name(info: tarfile.TarInfo, archive: Path) -> str:
    """The entry's normalised path ('' for the archive's root), or a BundleError naming what makes it unsafe."""
    raw = info.name
    where = f"{archive}: member '{raw}'"
    if raw.startswith(("/", "\\")) or (len(raw) > 1 and raw[1] == ":"):
        raise BundleError(f"{where} has an absolute path; refusing this archive, do not unpack it.")
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BundleError(f"{where} contains '..'; refusing this archive, do not unpack it.")
    if info.issym() or info.islnk():
        kind = "symbolic" if info.issym() else "hard"
        raise BundleError(f"{where} is a {kind} link (to '{info.linkname}'); bundles hold plain files only.")
    if info.issparse():
        raise BundleError(f"{where} is a GNU sparse file ({info.size} bytes unpacked); bundles hold plain files only.")
    if not (info.isreg() or info.isdir()):
        raise BundleError(f"{where} is a device, FIFO or other special file; bundles hold plain files only.")
    if info.isreg() and not parts:
        raise BundleError(f"{where} is a file without a name; not a bundle archive.")
    return "/".join(parts)


def scan_archive(archive: str | Path) -> ArchiveIndex:
    """Check every header of a bundle archive (see the module docstring) without reading any file in it."""
    archive = Path(archive)
    seen: set[str] = set()
    files: list[tuple[str, tarfile.TarInfo]] = []
    total = 0

    def visit(_tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        nonlocal total
        if len(seen) >= MAX_MEMBERS:
            raise BundleError(f"{archive}: more than {MAX_MEMBERS} entries; not a bundle archive.")
        name = _entry_name(info, archive)
        if info.size < 0 or info.size > MAX_MEMBER_BYTES:
            raise BundleError(
                f"{archive}: member '{info.name}' is {info.size} bytes, over the {MAX_MEMBER_BYTES}-byte limit."
            )
        total += info.size
        if total > MAX_EXTRACTED_BYTES:
            raise BundleError(
                f"{archive}: members add up to over {MAX_EXTRACTED_BYTES} bytes (at '{info.name}'); refusing."
            )
        if name in seen:
            raise BundleError(f"{archive}: member '{info.name}' appears twice; refusing an ambiguous archive.")
        seen.add(name)
        if info.isreg():
            files.append((name, info))

    _pass(archive, visit)
    tops = {n.split("/")[0] for n, _ in files}
    top = tops.pop() if len(tops) == 1 and all("/" in n for n, _ in files) else ""
    members: list[ArchiveMember] = []
    for n, info in files:
        rel = n[len(top) + 1 :] if top else n
        if "/" in rel:
            raise BundleError(f"{archive}: member '{info.name}' is in a subdirectory; a bundle is one flat directory.")
        members.append(ArchiveMember(rel, info.name, info.size))
    manifest = next((m for m in members if m.name == MANIFEST_NAME), None)
    if manifest is None:
        raise BundleError(f"{archive}: no {MANIFEST_NAME} in the archive; is this an edgekit bundle?")
    if manifest.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{archive}: member '{manifest.path}' is larger than {MAX_MANIFEST_BYTES} bytes.")
    return ArchiveIndex(archive, top, tuple(members))


def _each_file(index: ArchiveIndex, visit: Callable[[ArchiveMember, Iterator[bytes]], None]) -> None:
    """A forward pass calling ``visit(member, chunks)`` for each file of a scanned archive, in archive order."""
    expected = iter(index.members)

    def entry(tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        if not info.isreg():
            return
        member = next(expected, None)
        if member is None or (member.path, member.size) != (info.name, info.size):
            raise BundleError(f"{index.path}: the archive changed while it was read; copy it again.")
        f = tar.extractfile(info)
        assert f is not None  # a regular file always has a reader

        def chunks() -> Iterator[bytes]:
            left = info.size
            while left > 0:
                try:
                    chunk = f.read(min(_CHUNK, left))
                except _CORRUPT as exc:  # raised as a BundleError here, so a visitor's OSError means its own I/O
                    raise BundleError(
                        f"{index.path}: member '{info.name}' is corrupt ({exc}); re-copy the bundle."
                    ) from None
                if not chunk:
                    raise BundleError(f"{index.path}: member '{info.name}' is cut short; re-copy the bundle.")
                left -= len(chunk)
                yield chunk

        visit(member, chunks())

    _pass(index.path, entry)


def _read_manifest_and_signature(index: ArchiveIndex) -> tuple[Manifest, bytes, bytes | None]:
    caps = {MANIFEST_NAME: MAX_MANIFEST_BYTES, SIGNATURE_NAME: MAX_SIGNATURE_BYTES + 1}
    kept: dict[str, bytes] = {}

    def visit(member: ArchiveMember, chunks: Iterator[bytes]) -> None:
        if member.name in caps:
            data = bytearray()
            for chunk in chunks:
                data += chunk
                if len(data) >= caps[member.name]:
                    break
            kept[member.name] = bytes(data[: caps[member.name]])

    _each_file(index, visit)
    data = kept[MANIFEST_NAME]
    return Manifest.from_bytes(data, f"{index.path}:{MANIFEST_NAME}"), data, kept.get(SIGNATURE_NAME)


@dataclass(frozen=True, slots=True)
class ArchiveContents:
    """What :func:`verify_archive` read from an archive."""

    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes | None  # manifest.sig (None when absent)
    files: tuple[FileCheck, ...]
    model: bytes | None  # the manifest's model, only when it matches the manifest: what was hashed is what is loaded


def verify_archive(index: ArchiveIndex) -> ArchiveContents:
    """Hash every file of a scanned archive and compare it with the manifest, as :func:`verify_files` does
    for a directory; nothing is written. Only the manifest, the signature and the model are kept in memory."""
    manifest, manifest_bytes, signature = _read_manifest_and_signature(index)
    found: dict[str, tuple[int, str] | str] = {}
    model: bytes | None = None

    def visit(member: ArchiveMember, chunks: Iterator[bytes]) -> None:
        nonlocal model
        h, keep = sha256(), member.name == manifest.model.name
        data = bytearray()
        for chunk in chunks:
            h.update(chunk)
            if keep:
                data += chunk
        found[member.name] = (member.size, h.hexdigest())
        if keep:
            model = bytes(data)

    _each_file(index, visit)
    files = _compare(manifest, found)
    if not next(c for c in files if c.name == manifest.model.name).ok:
        model = None
    return ArchiveContents(manifest, manifest_bytes, signature, files, model)


def extract_archive(index: ArchiveIndex, target: str | Path) -> Path:
    """Write a scanned archive's files into the new directory ``target`` and return it.

    Refused before anything is written: a file the manifest does not list (:class:`BundleError`) or one
    whose size differs from the manifest (:class:`IntegrityError`). Files are written with ``O_EXCL |
    O_NOFOLLOW`` (never over an existing file, never through a link); a failure removes ``target``. The
    files' hashes are not checked here: :func:`check_files` does it on the directory.
    """
    target = Path(target)
    manifest, _, _ = _read_manifest_and_signature(index)
    listed = {e.name: e for e in manifest.files}
    for m in index.members:
        if m.name not in listed and m.name not in UNLISTED_OK:
            raise BundleError(f"{index.path}: member '{m.path}' is not listed in the manifest; refusing to extract it.")
        if m.name in listed and m.size != listed[m.name].bytes:
            raise IntegrityError(
                f"{index.path}: member '{m.path}' is {m.size} bytes but {MANIFEST_NAME} records "
                f"{listed[m.name].bytes}; the archive is corrupt or was tampered with."
            )
    try:
        target.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise BundleError(f"{target} already exists; extract into a new directory.") from None

    def write(member: ArchiveMember, chunks: Iterator[bytes]) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            with os.fdopen(os.open(target / member.name, flags, 0o644), "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
        except OSError as exc:
            raise BundleError(
                f"{target}: cannot write '{member.name}' ({exc.strerror}); check the free space and permissions "
                "of the work directory."
            ) from None

    try:
        _each_file(index, write)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def archive_stem(path: Path) -> str:
    """``NAME-PROFILE`` of ``NAME-PROFILE.tar.gz``."""
    for suffix in ARCHIVE_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem
