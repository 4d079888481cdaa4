"""Bundle signatures: Ed25519 over the exact bytes of ``manifest.json``, checked against trusted public keys.

The manifest records the size and sha256 of every other file in the bundle, so one signature over the
manifest covers the whole bundle: :func:`edgekit_agent.bundle.load.load_bundle` checks the file hashes, this
module checks that the manifest itself came from a trusted key.

``manifest.sig`` is a small JSON document::

    {"alg": "ed25519", "key_id": "3f2a9c0e1b7d4a55", "signature": "<base64 of 64 bytes>"}

A key id is the first 16 hex digits of sha256 over the 32 raw public-key bytes, so a device can name
the key it does not know without holding it. Trusted keys are the ``*.pub`` files (PEM
SubjectPublicKeyInfo, as ``edgekit keys new`` writes them) in one directory, ``--trusted-keys DIR``.

``cryptography`` is optional on the device (it ships in the ``device`` extras): it is imported only
when a signature is actually checked, and its absence is a :class:`SignatureError` that says what to install.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit_agent.contract.digest import sha256
from edgekit_agent.contract.errors import SignatureError
from edgekit_agent.contract.manifest import SIGNATURE_NAME

ALG = "ed25519"
KEY_ID_HEX = 16
PUBLIC_SUFFIX = ".pub"
# A signature file is ~150 bytes; anything much larger is not one (and is not worth parsing).
MAX_SIGNATURE_BYTES = 4096
# A PEM Ed25519 public key is 113 bytes; refuse to read big files someone dropped in the keys directory.
MAX_PUBLIC_KEY_BYTES = 4096

__all__ = [
    "ALG",
    "SIGNATURE_NAME",
    "TrustedKey",
    "SignatureInfo",
    "key_id_for",
    "load_public_key",
    "load_trusted_keys",
    "encode_signature",
    "parse_signature",
    "verify_manifest",
]


def _ed25519() -> Any:
    """The cryptography module for Ed25519, imported on first use (it is optional on a device)."""
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SignatureError(
            "checking bundle signatures needs the 'cryptography' package: `pip install 'edgekit[device]'` "
            "(or run the agent with --allow-unsigned if you accept unsigned bundles)."
        ) from None
    return ed25519


def key_id_for(raw_public_key: bytes) -> str:
    """The key id: first 16 hex digits of sha256 over the 32 raw Ed25519 public-key bytes."""
    return sha256(raw_public_key).hexdigest()[:KEY_ID_HEX]


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """One public key the device trusts."""

    key_id: str
    name: str
    path: Path
    raw: bytes  # the 32 raw public-key bytes


@dataclass(frozen=True, slots=True)
class SignatureInfo:
    """A parsed ``manifest.sig``."""

    alg: str
    key_id: str
    signature: bytes


def load_public_key(path: str | Path) -> TrustedKey:
    """Read one Ed25519 public key (PEM) and compute its key id. Raises :class:`SignatureError`."""
    path = Path(path)
    ed25519 = _ed25519()
    from cryptography.hazmat.primitives import serialization

    try:
        if path.stat().st_size > MAX_PUBLIC_KEY_BYTES:
            raise SignatureError(f"{path}: {path.stat().st_size} bytes is too large for a public key file.")
        data = path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read public key {path}: {exc.strerror}.") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(
            f"{path} is not a PEM public key ({exc}); copy the .pub file `edgekit keys new` wrote."
        ) from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SignatureError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key.")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return TrustedKey(key_id=key_id_for(raw), name=path.stem, path=path, raw=raw)


def load_trusted_keys(directory: str | Path) -> dict[str, TrustedKey]:
    """Every ``*.pub`` key in ``directory``, by key id. An empty or missing directory is an error:
    a device told to check signatures with nothing to check them against would refuse every bundle."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SignatureError(
            f"trusted keys directory {directory} does not exist; copy the .pub file from `edgekit keys new` there."
        )
    keys: dict[str, TrustedKey] = {}
    for path in sorted(directory.glob(f"*{PUBLIC_SUFFIX}")):
        if path.is_file():
            key = load_public_key(path)
            keys[key.key_id] = key
    if not keys:
        raise SignatureError(
            f"trusted keys directory {directory} holds no *{PUBLIC_SUFFIX} files; copy the public key "
            "from `edgekit keys new` there."
        )
    return keys


def encode_signature(key_id: str, signature: bytes) -> bytes:
    """The bytes of a ``manifest.sig`` file."""
    doc = {"alg": ALG, "key_id": key_id, "signature": base64.b64encode(signature).decode("ascii")}
    return (json.dumps(doc, sort_keys=True) + "\n").encode("utf-8")


def parse_signature(data: bytes, source: str = SIGNATURE_NAME) -> SignatureInfo:
    """Parse a ``manifest.sig``; any malformation is a :class:`SignatureError` naming the problem."""
    if len(data) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"{source}: {len(data)} bytes is too large to be a signature file.")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SignatureError(f"{source} is not valid JSON; re-sign the bundle with `edgekit sign`.") from None
    if not isinstance(doc, dict):
        raise SignatureError(f"{source}: expected a JSON object with alg, key_id and signature.")
    alg, key_id, sig = doc.get("alg"), doc.get("key_id"), doc.get("signature")
    if alg != ALG:
        raise SignatureError(f"{source}: signature algorithm {alg!r} is not supported (only '{ALG}').")
    if not isinstance(key_id, str) or len(key_id) != KEY_ID_HEX or any(c not in "0123456789abcdef" for c in key_id):
        raise SignatureError(f"{source}: key_id {key_id!r} is not {KEY_ID_HEX} lowercase hex digits.")
    if not isinstance(sig, str):
        raise SignatureError(f"{source}: 'signature' must be a base64 string.")
    try:
        raw = base64.b64decode(sig.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SignatureError(f"{source}: 'signature' is not valid base64.") from None
    if len(raw) != 64:
        raise SignatureError(f"{source}: an Ed25519 signature is 64 bytes, this one is {len(raw)}.")
    return SignatureInfo(alg=alg, key_id=key_id, signature=raw)


def verify_manifest(
    manifest_bytes: bytes,
    signature_bytes: bytes | None,
    trusted_keys_dir: str | Path | None,
    *,
    source: str = "bundle",
) -> str:
    """Check ``manifest.sig`` over the exact manifest bytes; return the signing key's id.

    Raises :class:`SignatureError` saying which of these it is: no signature, a malformed signature
    file, a key id that is not among the trusted keys, or a signature that does not match the
    manifest (the manifest was changed after signing, or signed by a different key with the same id).
    """
    if signature_bytes is None:
        raise SignatureError(
            f"{source} is not signed (no {SIGNATURE_NAME}); sign it with `edgekit sign BUNDLE --key KEY` "
            "or start the agent with --allow-unsigned."
        )
    if trusted_keys_dir is None:
        raise SignatureError(
            f"{source} is signed but no trusted keys are configured; start the agent with --trusted-keys DIR."
        )
    info = parse_signature(signature_bytes, f"{source}/{SIGNATURE_NAME}")
    keys = load_trusted_keys(trusted_keys_dir)
    key = keys.get(info.key_id)
    if key is None:
        raise SignatureError(
            f"{source} is signed by unknown key id {info.key_id}; trusted key ids in {trusted_keys_dir}: "
            f"{', '.join(sorted(keys))}. Copy the signer's .pub file there if you trust it."
        )
    ed25519 = _ed25519()
    from cryptography.exceptions import InvalidSignature

    try:
        ed25519.Ed25519PublicKey.from_public_bytes(key.raw).verify(info.signature, manifest_bytes)
    except InvalidSignature:
        raise SignatureError(
            f"{source}: bad signature — {SIGNATURE_NAME} does not match manifest.json for key {info.key_id} "
            f"({key.path.name}); the manifest was changed after signing. Rebuild or re-sign the bundle."
        ) from None
    return info.key_id
