"""Load a bundle on the device: verify every file against the manifest, extract archives safely.

A bundle is a directory (``manifest.json``, ``model.tflite``, ``golden.npz``, …) or its ``.tar.gz``
archive, written by ``edgekit.package.writer.write_bundle``. :func:`load_bundle` refuses, with an error that
names the file or archive member:

- a manifest that does not parse or validate (:class:`BundleError`);
- a listed file that is missing, or whose size or sha256 differs (:class:`IntegrityError`);
- a file present but not listed (only ``manifest.json`` and ``manifest.sig`` need not be listed);
- a model that is not a structurally sound TFLite flatbuffer (:class:`IntegrityError`);
- in an archive: absolute paths, ``..``, symbolic and hard links, devices and FIFOs, members the manifest
  does not list, more than ``limits.MAX_MEMBERS`` (64) entries, an archive over ``limits.MAX_ARCHIVE_BYTES``
  (64 MiB), a member over ``limits.MAX_MEMBER_BYTES`` (128 MiB) or a total over ``limits.MAX_EXTRACTED_BYTES``
  (256 MiB). Nothing is written outside the target directory;
- a missing or bad signature when ``trusted_keys`` or ``require_signature`` is given (:class:`SignatureError`).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit_agent.bundle.tflite_file import check_tflite
from edgekit_agent.contract.errors import BundleError, IntegrityError, ModelError
from edgekit_agent.contract.limits import (
    MAX_ARCHIVE_BYTES,
    MAX_EXTRACTED_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_MEMBER_BYTES,
    MAX_MEMBERS,
)
from edgekit_agent.contract.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest

if TYPE_CHECKING:  # imported lazily at run time: keeps `import edgekit_agent.bundle.load` light
    from edgekit_agent.infer.preprocess import Preprocessor
    from edgekit_agent.infer.runtime import Runtime

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
#: The Edge TPU compiler's output, shipped beside model.tflite in Edge TPU bundles.
EDGETPU_MODEL = "model_edgetpu.tflite"
#: Files a bundle directory may hold without the manifest listing them.
UNLISTED_OK = frozenset({MANIFEST_NAME, SIGNATURE_NAME})
_CHUNK = 1 << 20


class FileStatus(StrEnum):
    OK = "ok"
    MISMATCH = "mismatch"
    MISSING = "missing"
    UNLISTED = "unlisted"


@dataclass(frozen=True, slots=True)
class FileCheck:
    """One file of a bundle compared with the manifest (same fields as ``edgekit.package.inspection.FileCheck``)."""

    name: str
    status: FileStatus
    bytes: int | None  # actual size (None when missing)
    expected_bytes: int | None  # what the manifest records (None when unlisted)
    sha256: str | None
    expected_sha256: str | None
    detail: str = ""  # why it is not ok, in words

    @property
    def ok(self) -> bool:
        return self.status is FileStatus.OK


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in chunks (bundles may hold models of hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_file_name(name: str, source: str) -> None:
    # The manifest is read before anything is trusted: a listed name like "../../etc/x" must not be opened.
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith(".") or "\x00" in name:
        raise BundleError(f"{source}: listed file name {name!r} is not a plain file name; the bundle is malformed.")


def verify_files(directory: str | Path, manifest: Manifest) -> list[FileCheck]:
    """Compare a bundle directory with its manifest: one :class:`FileCheck` per listed or present file.

    Listed files come first (manifest order), then unlisted ones (sorted). Symbolic links and
    subdirectories are never followed: they are reported as ``mismatch`` / ``unlisted``.
    """
    directory = Path(directory)
    checks: list[FileCheck] = []
    for entry in manifest.files:
        _check_file_name(entry.name, f"{directory}/{MANIFEST_NAME}")
        path = directory / entry.name
        try:
            st = path.lstat()
        except FileNotFoundError:
            checks.append(
                FileCheck(entry.name, FileStatus.MISSING, None, entry.bytes, None, entry.sha256, "not in the bundle")
            )
            continue
        if not stat.S_ISREG(st.st_mode):
            checks.append(
                FileCheck(
                    entry.name,
                    FileStatus.MISMATCH,
                    None,
                    entry.bytes,
                    None,
                    entry.sha256,
                    "not a regular file (a link or directory)",
                )
            )
            continue
        digest = sha256_file(path)
        if st.st_size != entry.bytes:
            detail = f"is {st.st_size} bytes, {MANIFEST_NAME} records {entry.bytes}"
        elif digest != entry.sha256:
            detail = f"sha256 is {digest[:16]}…, {MANIFEST_NAME} records {entry.sha256[:16]}…"
        else:
            detail = ""
        status = FileStatus.MISMATCH if detail else FileStatus.OK
        checks.append(FileCheck(entry.name, status, st.st_size, entry.bytes, digest, entry.sha256, detail))
    listed = {e.name for e in manifest.files} | UNLISTED_OK
    for path in sorted(directory.iterdir()):
        if path.name in listed:
            continue
        st = path.lstat()
        size = st.st_size if stat.S_ISREG(st.st_mode) else None
        digest = sha256_file(path) if size is not None else None
        checks.append(FileCheck(path.name, FileStatus.UNLISTED, size, None, digest, None, "not listed in the manifest"))
    return checks


@dataclass(frozen=True, slots=True)
class Bundle:
    """A verified bundle on disk. ``signed_by`` is the signing key id, or None when unsigned."""

    directory: Path
    manifest: Manifest
    manifest_bytes: bytes
    model_path: Path
    signed_by: str | None = None

    @property
    def name(self) -> str:
        return f"{self.manifest.name}-{self.manifest.profile_name}"

    def model_for(self, delegate: str) -> Path:
        """The model file a delegate runs: ``model_edgetpu.tflite`` (compiled by ``edgetpu_compiler``) for the
        Edge TPU when the bundle has it, else ``model.tflite`` (then the Edge TPU delegate runs nothing)."""
        if delegate == "edgetpu" and any(f.name == EDGETPU_MODEL for f in self.manifest.files):
            return self.directory / EDGETPU_MODEL
        return self.model_path

    def open_runtime(
        self, num_threads: int | None = None, delegate: str | None = None, engine: str | None = None
    ) -> Runtime:
        """An interpreter for the model; threads and delegate default to the manifest's profile."""
        from edgekit_agent.infer.runtime import Runtime

        rt = self.manifest.runtime
        delegate = delegate or rt.get("delegate") or "xnnpack"
        model = self.model_for(delegate)
        return Runtime(
            model,
            # The profile's thread count is the target board's; never oversubscribe the machine we run on
            # (4 XNNPACK threads on 2 cores made p90 ten times p50). An explicit num_threads is taken as given.
            num_threads=num_threads or min(int(rt.get("num_threads") or 1), os.cpu_count() or 1),
            delegate=delegate,
            engine=engine,
            model_name=f"{self.directory}/{model.name}",
        )

    def preprocessor(self) -> Preprocessor:
        """Image → input tensor, per the manifest's preprocessing spec and first input tensor."""
        from edgekit_agent.infer.preprocess import Preprocessor

        return Preprocessor(self.manifest.preprocess, self.manifest.inputs[0])


# --- archives ---------------------------------------------------------------------------------------------


def _member_name(member: tarfile.TarInfo, archive: Path) -> str:
    """The member's path with a single leading 'NAME-PROFILE/' directory removed, or a BundleError."""
    raw = member.name
    where = f"{archive}: member '{raw}'"
    if raw.startswith(("/", "\\")) or (len(raw) > 1 and raw[1] == ":"):
        raise BundleError(f"{where} has an absolute path; refusing to extract this archive.")
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BundleError(f"{where} contains '..'; refusing to extract this archive.")
    if member.issym() or member.islnk():
        raise BundleError(
            f"{where} is a {'symbolic' if member.issym() else 'hard'} link (to '{member.linkname}'); bundles hold plain files only."
        )
    if not (member.isreg() or member.isdir()):
        raise BundleError(f"{where} is a device, FIFO or other special file; bundles hold plain files only.")
    return "/".join(parts)


# What a corrupt archive raises while it is decompressed: zlib.error and LZMAError are not OSErrors
# (found by tests/device/test_fuzz_archive.py: a flipped byte in the gzip data of a member).
_CORRUPT = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int, archive: Path) -> bytes:
    try:
        f = tar.extractfile(member)
        if f is None:
            raise BundleError(f"{archive}: member '{member.name}' cannot be read.")
        data = f.read(limit + 1)
    except _CORRUPT as exc:
        raise BundleError(f"{archive}: member '{member.name}' is corrupt ({exc}); re-copy the bundle.") from None
    if len(data) > limit:
        raise BundleError(f"{archive}: member '{member.name}' is larger than {limit} bytes.")
    return data


def extract_archive(archive: str | Path, target: str | Path) -> Path:
    """Extract a bundle archive into the new directory ``target`` after checking every member header.

    The archive may hold the files at its top level or under one directory (``NAME-PROFILE/``, as
    ``edgekit build`` writes it). Only files the manifest lists (plus the manifest and its signature)
    are extracted; everything is written with ``O_EXCL`` under ``target``, which must not exist.
    """
    archive, target = Path(archive), Path(target)
    try:
        size = archive.stat().st_size
    except OSError:
        size = 0
    if size > MAX_ARCHIVE_BYTES:
        raise BundleError(
            f"{archive}: {size} bytes is over the {MAX_ARCHIVE_BYTES}-byte archive limit (edgekit_agent.contract.limits)."
        )
    try:
        tar = tarfile.open(archive, "r:*")
    except FileNotFoundError:
        raise BundleError(f"{archive}: no such bundle archive.") from None
    except _CORRUPT as exc:
        raise BundleError(f"{archive}: not a readable tar archive ({exc}); re-copy the bundle.") from None
    with tar:
        members: list[tuple[str, tarfile.TarInfo]] = []
        total = 0
        try:
            # Iterating reads one header at a time, and moving to the next header decompresses the data in
            # between: every limit is checked on the header, before a decompression bomb is ever inflated.
            for member in tar:
                if len(members) >= MAX_MEMBERS:
                    raise BundleError(f"{archive}: more than {MAX_MEMBERS} entries; not a bundle archive.")
                name = _member_name(member, archive)
                if member.size > MAX_MEMBER_BYTES:
                    raise BundleError(
                        f"{archive}: member '{member.name}' is {member.size} bytes, over the {MAX_MEMBER_BYTES}-byte limit."
                    )
                total += member.size
                if total > MAX_EXTRACTED_BYTES:
                    raise BundleError(
                        f"{archive}: members add up to over {MAX_EXTRACTED_BYTES} bytes (at '{member.name}'); refusing."
                    )
                members.append((name, member))
            # tarfile stops at the end-of-archive blocks, before the gzip trailer: drain the stream (bounded)
            # so the compressor's own checksum (gzip CRC-32, xz CRC) is verified too. Without this a flipped
            # bit in an unsigned archive could change manifest.json unnoticed.
            drained = 0
            while chunk := tar.fileobj.read(1 << 20):  # type: ignore[union-attr]
                drained += len(chunk)
                if drained > MAX_EXTRACTED_BYTES:
                    raise BundleError(f"{archive}: over {MAX_EXTRACTED_BYTES} bytes after the last member; refusing.")
        except _CORRUPT as exc:
            raise BundleError(f"{archive}: the archive is corrupt ({exc}); re-copy the bundle.") from None
        files = [(n, m) for n, m in members if m.isreg()]
        tops = {n.split("/")[0] for n, _ in files if "/" in n}
        prefix = f"{tops.pop()}/" if len(tops) == 1 and all("/" in n for n, _ in files) else ""
        by_name: dict[str, tarfile.TarInfo] = {}
        for n, m in files:
            rel = n[len(prefix) :]
            if "/" in rel or not rel:
                raise BundleError(f"{archive}: member '{m.name}' is in a subdirectory; a bundle is one flat directory.")
            if rel in by_name:
                raise BundleError(f"{archive}: member '{m.name}' appears twice; refusing an ambiguous archive.")
            by_name[rel] = m
        if MANIFEST_NAME not in by_name:
            raise BundleError(f"{archive}: no {MANIFEST_NAME} in the archive; is this an edgekit bundle?")
        manifest_bytes = _read_member(tar, by_name[MANIFEST_NAME], MAX_MANIFEST_BYTES, archive)
        manifest = Manifest.from_bytes(manifest_bytes, f"{archive}:{MANIFEST_NAME}")
        listed = {e.name: e for e in manifest.files}
        for rel, m in by_name.items():
            if rel not in listed and rel not in UNLISTED_OK:
                raise BundleError(
                    f"{archive}: member '{m.name}' is not listed in the manifest; refusing to extract it."
                )
            if rel in listed and m.size != listed[rel].bytes:
                raise IntegrityError(
                    f"{archive}: member '{m.name}' is {m.size} bytes but {MANIFEST_NAME} records {listed[rel].bytes}; "
                    "the archive is corrupt or was tampered with."
                )
        try:
            target.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise BundleError(f"{target} already exists; extract into a new directory.") from None
        try:
            for rel, m in by_name.items():
                data = _read_member(tar, m, MAX_MEMBER_BYTES, archive)
                # O_EXCL|O_NOFOLLOW: never overwrite and never write through a link planted in the target
                fd = os.open(target / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
        except _CORRUPT as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise BundleError(f"{archive}: extraction failed ({exc}); re-copy the bundle.") from None
    return target


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


def _archive_stem(path: Path) -> str:
    for suffix in ARCHIVE_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


# --- loading ----------------------------------------------------------------------------------------------


def load_bundle(
    path: str | Path,
    *,
    trusted_keys: Path | None = None,
    require_signature: bool = False,
    workdir: Path | None = None,
    allow_unsigned: bool = False,
) -> Bundle:
    """Verify and load a bundle directory or ``.tar.gz`` archive; raise a typed error naming what is wrong.

    Archives are extracted (safely, see the module docstring) into a new directory under ``workdir``
    (``NAME-PROFILE.XXXX/NAME-PROFILE``), or under a new temporary directory when ``workdir`` is None;
    the caller owns ``bundle.directory.parent`` then. A refused archive leaves nothing behind.

    The signature is checked with ``edgekit_agent.contract.signing.verify_manifest`` whenever ``trusted_keys`` is given or ``require_signature`` is True (then an unsigned bundle is
    refused); otherwise ``manifest.sig`` is ignored and ``signed_by`` is None. ``allow_unsigned`` (the
    agent's ``--allow-unsigned``) lets a bundle without ``manifest.sig`` through even with ``trusted_keys``
    (unless ``require_signature``); a bundle that *is* signed is still checked.
    """
    path = Path(path)
    if _is_archive(path):
        if workdir is not None:
            Path(workdir).mkdir(parents=True, exist_ok=True)
        parent = Path(tempfile.mkdtemp(prefix=f"{_archive_stem(path)}.", dir=workdir))
        try:
            return _load_directory(
                extract_archive(path, parent / _archive_stem(path)), trusted_keys, require_signature, allow_unsigned
            )
        except BaseException:
            shutil.rmtree(parent, ignore_errors=True)  # a refused archive leaves nothing behind
            raise
    if path.is_dir():
        return _load_directory(path, trusted_keys, require_signature, allow_unsigned)
    if path.exists():
        raise BundleError(f"{path}: not a bundle directory or a {'/'.join(ARCHIVE_SUFFIXES)} archive.")
    raise BundleError(f"{path}: no such bundle; give a bundle directory or its .tar.gz archive.")


def _load_directory(
    directory: Path, trusted_keys: Path | None, require_signature: bool, allow_unsigned: bool
) -> Bundle:
    manifest_path = directory / MANIFEST_NAME
    if manifest_path.is_symlink() or not manifest_path.is_file():
        raise BundleError(f"{directory}: no {MANIFEST_NAME} (or it is a link); is this an edgekit bundle directory?")
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_path}: larger than {MAX_MANIFEST_BYTES} bytes; not a bundle manifest.")
    manifest_bytes = manifest_path.read_bytes()
    manifest = Manifest.from_bytes(manifest_bytes, str(manifest_path))
    model_raw = manifest.raw.get("model", {})
    if model_raw.get("sha256") != manifest.model.sha256 or model_raw.get("bytes") != manifest.model.bytes:
        raise IntegrityError(
            f"{manifest_path}: 'model' and files['{manifest.model.name}'] record different sizes or hashes; "
            "the manifest was edited by hand or is corrupt. Rebuild the bundle."
        )

    signed_by = None
    if trusted_keys is not None or require_signature:
        from edgekit_agent.contract.signing import (
            verify_manifest,
        )  # needs `cryptography` only when a signature is checked

        sig_path = directory / SIGNATURE_NAME
        sig = sig_path.read_bytes() if sig_path.is_file() and not sig_path.is_symlink() else None
        if sig is not None or require_signature or not allow_unsigned:
            signed_by = verify_manifest(manifest_bytes, sig, trusted_keys, source=str(directory))

    for check in verify_files(directory, manifest):
        if check.status is FileStatus.UNLISTED:
            raise BundleError(
                f"{directory}: '{check.name}' is not listed in {MANIFEST_NAME}; a bundle holds only the files its "
                "manifest lists. Remove it or rebuild the bundle."
            )
        if check.status is FileStatus.MISSING:
            raise IntegrityError(
                f"{directory}: '{check.name}' is listed in {MANIFEST_NAME} but missing; re-copy the bundle."
            )
        if check.status is FileStatus.MISMATCH:
            raise IntegrityError(
                f"{directory}/{check.name}: {check.detail}; the file is corrupt or was tampered with. "
                "Re-copy or rebuild the bundle."
            )
    model_path = directory / manifest.model.name
    models = [model_path] + (
        [directory / EDGETPU_MODEL] if any(f.name == EDGETPU_MODEL for f in manifest.files) else []
    )
    for model in models:
        try:
            check_tflite(model.read_bytes(), str(model))
        except ModelError as exc:  # in a bundle, a broken model is a refused bundle (exit status 5), not bad user input
            raise IntegrityError(str(exc)) from None
    return Bundle(directory, manifest, manifest_bytes, model_path, signed_by)
