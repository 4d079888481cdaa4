"""Signing keys and bundle signing on the workstation (Ed25519, ``cryptography``).

``new_keypair`` writes ``NAME.key`` (PKCS#8 PEM, mode 0600, never leaves the workstation) and
``NAME.pub`` (PEM, copied to each device's ``--trusted-keys`` directory). ``sign_bundle`` checks the bundle
with the device's own verifier (:mod:`edgekit_agent.bundle.archive`: every file matches its manifest, and an
archive passes the same header checks as on the device), so a tampered or hostile bundle is never blessed;
then it writes ``manifest.sig`` over the exact manifest bytes and rewrites the bundle's archive. The format
and the verification are in :mod:`edgekit_agent.contract.signing`, the code the device runs.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgekit_agent.bundle.archive import check_files, extract_archive, read_manifest, scan_archive
from edgekit_agent.contract.errors import SignatureError, UsageError
from edgekit_agent.contract.manifest import SIGNATURE_NAME
from edgekit_agent.contract.signing import PUBLIC_SUFFIX, encode_signature, key_id_for

PRIVATE_SUFFIX = ".key"
ARCHIVE_SUFFIX = ".tar.gz"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class KeyPair:
    """Files written by :func:`new_keypair`."""

    name: str
    key_id: str
    private_path: Path
    public_path: Path


@dataclass(frozen=True, slots=True)
class SignResult:
    """What :func:`sign_bundle` signed and wrote."""

    directory: Path | None  # the bundle directory that now holds manifest.sig (None: archive only)
    archive: Path | None  # the rewritten archive (None: no archive beside the directory)
    key_id: str
    manifest_sha256: str


def new_keypair(out_dir: str | Path, name: str = "edgekit", *, overwrite: bool = False) -> KeyPair:
    """Generate an Ed25519 key pair into ``out_dir``: ``NAME.key`` (0600) and ``NAME.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if not _NAME_RE.match(name):
        raise UsageError(f"key name {name!r}: use letters, digits, '.', '_' or '-' (at most 64).")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / f"{name}{PRIVATE_SUFFIX}", out / f"{name}{PUBLIC_SUFFIX}"
    if not overwrite:
        for p in (private_path, public_path):
            if p.exists():
                raise UsageError(
                    f"{p} already exists; pick another --name or remove it first (keys are not replaced silently)."
                )
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key()
    public_pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # Create the private key with 0600 from the start: a chmod after writing leaves a window where it is readable.
    if overwrite and private_path.exists():
        private_path.unlink()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    os.chmod(private_path, 0o600)  # the umask cannot widen it, but a pre-set ACL default could: be explicit
    public_path.write_bytes(public_pem)
    return KeyPair(name=name, key_id=key_id_for(raw), private_path=private_path, public_path=public_path)


def load_private_key(path: str | Path) -> tuple[object, str]:
    """Read an Ed25519 private key (PEM); returns ``(key, key_id)``. Raises :class:`SignatureError`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SignatureError(
            f"cannot read signing key {path}: {exc.strerror}; make one with `edgekit keys new`."
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(
            f"{path} is not an unencrypted PEM private key ({exc}); use the .key file `edgekit keys new` wrote."
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key.")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, key_id_for(raw)


def _write_archive(directory: Path, archive: Path) -> None:
    from edgekit.package.writer import write_archive

    write_archive(directory, archive)


def _sign_directory(directory: Path, key_path: Path) -> tuple[str, str]:
    manifest, manifest_bytes = read_manifest(directory)
    check_files(directory, manifest)
    key, key_id = load_private_key(key_path)
    (directory / SIGNATURE_NAME).write_bytes(encode_signature(key_id, key.sign(manifest_bytes)))  # type: ignore[attr-defined]
    return key_id, hashlib.sha256(manifest_bytes).hexdigest()


def sign_bundle(bundle: str | Path, key: str | Path) -> SignResult:
    """Sign a bundle directory or ``.tar.gz`` archive with the private key ``key``.

    A directory gets ``manifest.sig`` and its sibling archive (``DIR.tar.gz``, when present) is rewritten.
    An archive whose directory is not beside it is unpacked into a temporary directory (as the device unpacks
    it), signed and written back in place, under the same top-level directory name.
    """
    bundle, key_path = Path(bundle), Path(key)
    if bundle.is_dir():
        key_id, digest = _sign_directory(bundle, key_path)
        archive = bundle.parent / f"{bundle.name}{ARCHIVE_SUFFIX}"
        if archive.is_file():
            _write_archive(bundle, archive)
        return SignResult(bundle, archive if archive.is_file() else None, key_id, digest)
    if not bundle.is_file() or not bundle.name.endswith(ARCHIVE_SUFFIX):
        raise UsageError(f"{bundle}: not a bundle directory or {ARCHIVE_SUFFIX} archive.")
    sibling = bundle.with_name(bundle.name[: -len(ARCHIVE_SUFFIX)])
    if sibling.is_dir():
        key_id, digest = _sign_directory(sibling, key_path)
        _write_archive(sibling, bundle)
        return SignResult(sibling, bundle, key_id, digest)
    index = scan_archive(bundle)
    with tempfile.TemporaryDirectory(prefix="edgekit-sign-") as tmp:
        directory = extract_archive(index, Path(tmp) / (index.top or sibling.name))
        key_id, digest = _sign_directory(directory, key_path)
        _write_archive(directory, bundle)
    return SignResult(None, bundle, key_id, digest)


def copy_public_key(public_key: str | Path, trusted_dir: str | Path) -> Path:
    """Install a public key into a trusted-keys directory (what a provisioning script does on a device)."""
    src = Path(public_key)
    dest_dir = Path(trusted_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / src.name
    shutil.copyfile(src, dest)
    return dest
