"""Signing on the workstation and verification as the device does it: each refusal names its reason."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from edgekit.cli import main
from edgekit.package.keys import new_keypair, sign_bundle
from edgekit_agent.bundle.archive import check_files, read_manifest
from edgekit_agent.contract.errors import ExitStatus, IntegrityError, SignatureError
from edgekit_agent.contract.signing import encode_signature, parse_signature, verify_manifest


@pytest.fixture()
def bundle(digits_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the session bundle (directory + archive) that a test may change."""
    d = tmp_path / "out" / digits_bundle.name
    shutil.copytree(digits_bundle, d)
    shutil.copyfile(digits_bundle.parent / f"{digits_bundle.name}.tar.gz", d.parent / f"{d.name}.tar.gz")
    (d / "manifest.sig").unlink(missing_ok=True)
    return d


@pytest.fixture()
def keys(tmp_path: Path):
    """A signing key, its trusted-keys directory, and a second (untrusted) key."""
    good = new_keypair(tmp_path / "keys", "release")
    other = new_keypair(tmp_path / "other", "intruder")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copyfile(good.public_path, trusted / good.public_path.name)
    return good, other, trusted


def _verify(d: Path, trusted: Path) -> str:
    sig = d / "manifest.sig"
    return verify_manifest(
        (d / "manifest.json").read_bytes(), sig.read_bytes() if sig.exists() else None, trusted, source=str(d)
    )


def test_new_keypair_private_key_is_0600_and_key_id_is_sha256_of_raw_public_key(keys):
    good, other, _ = keys
    assert stat.S_IMODE(good.private_path.stat().st_mode) == 0o600
    pub = serialization.load_pem_public_key(good.public_path.read_bytes())
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert good.key_id == hashlib.sha256(raw).hexdigest()[:16]
    assert good.key_id != other.key_id


def test_new_keypair_refuses_to_overwrite(keys, tmp_path):
    with pytest.raises(ValueError, match="already exists"):
        new_keypair(tmp_path / "keys", "release")


def test_signed_bundle_verifies_and_archive_carries_signature(bundle, keys):
    good, _, trusted = keys
    res = sign_bundle(bundle, good.private_path)
    assert res.key_id == good.key_id
    assert _verify(bundle, trusted) == good.key_id
    with tarfile.open(res.archive) as tar:
        names = tar.getnames()
        sig = tar.extractfile(f"{bundle.name}/manifest.sig").read()
    assert f"{bundle.name}/manifest.sig" in names
    assert sig == (bundle / "manifest.sig").read_bytes()
    assert parse_signature(sig).key_id == good.key_id


def test_signing_an_archive_alone_rewrites_it_in_place(bundle, keys, tmp_path):
    good, _, trusted = keys
    lone = tmp_path / "lone" / f"{bundle.name}.tar.gz"
    lone.parent.mkdir()
    shutil.copyfile(bundle.parent / f"{bundle.name}.tar.gz", lone)
    res = sign_bundle(lone, good.private_path)
    assert res.directory is None and res.archive == lone
    with tarfile.open(lone) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    assert _verify(tmp_path / "x" / bundle.name, trusted) == good.key_id


def test_tampered_manifest_is_refused_as_bad_signature(bundle, keys):
    good, _, trusted = keys
    sign_bundle(bundle, good.private_path)
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["golden"]["tolerance"] = 100  # a plausible, well-formed edit
    (bundle / "manifest.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    with pytest.raises(SignatureError, match="bad signature"):
        _verify(bundle, trusted)


def test_one_flipped_byte_in_manifest_is_refused(bundle, keys):
    good, _, trusted = keys
    sign_bundle(bundle, good.private_path)
    data = bytearray((bundle / "manifest.json").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / "manifest.json").write_bytes(bytes(data))
    with pytest.raises(SignatureError, match="bad signature"):
        _verify(bundle, trusted)


def test_tampered_model_is_refused_naming_the_file(bundle, keys):
    good, _, _ = keys
    sign_bundle(bundle, good.private_path)
    model = bytearray((bundle / "model.tflite").read_bytes())
    model[-10] ^= 0xFF
    (bundle / "model.tflite").write_bytes(bytes(model))
    with pytest.raises(IntegrityError, match=r"model\.tflite"):
        check_files(bundle, read_manifest(bundle)[0])
    # …and the workstation refuses to bless it with a fresh signature.
    with pytest.raises(IntegrityError, match=r"model\.tflite"):
        sign_bundle(bundle, good.private_path)


def test_bundle_signed_by_an_untrusted_key_is_refused_naming_the_key_id(bundle, keys):
    good, other, trusted = keys
    sign_bundle(bundle, other.private_path)
    with pytest.raises(SignatureError, match=f"unknown key id {other.key_id}") as exc:
        _verify(bundle, trusted)
    assert good.key_id in str(exc.value)  # says which keys it does trust


def test_signature_with_a_trusted_key_id_but_foreign_key_is_a_bad_signature(bundle, keys):
    good, other, trusted = keys
    sign_bundle(bundle, other.private_path)
    forged = json.loads((bundle / "manifest.sig").read_text())
    forged["key_id"] = good.key_id  # claims to be the trusted key
    (bundle / "manifest.sig").write_text(json.dumps(forged))
    with pytest.raises(SignatureError, match="bad signature"):
        _verify(bundle, trusted)


def test_unsigned_bundle_is_refused(bundle, keys):
    _, _, trusted = keys
    with pytest.raises(SignatureError, match="not signed"):
        _verify(bundle, trusted)


@pytest.mark.parametrize(
    "sig",
    [
        b"",
        b"not json",
        b"[]",
        b'{"alg": "rsa", "key_id": "0123456789abcdef", "signature": ""}',
        b'{"alg": "ed25519", "key_id": "../../etc/passwd", "signature": ""}',
        b'{"alg": "ed25519", "key_id": "0123456789abcdef", "signature": "!!!"}',
        b'{"alg": "ed25519", "key_id": "0123456789abcdef", "signature": "AAAA"}',
        b'{"alg": "ed25519", "key_id": "0123456789abcdef", "signature": 5}',
        b"\xff\xfe" * 10,
        b"{" * 10_000,
    ],
)
def test_malformed_signature_files_are_typed_errors(sig, bundle, keys):
    _, _, trusted = keys
    with pytest.raises(SignatureError):
        verify_manifest((bundle / "manifest.json").read_bytes(), sig, trusted)


def test_empty_trusted_keys_directory_is_refused(bundle, keys, tmp_path):
    good, _, _ = keys
    sign_bundle(bundle, good.private_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SignatureError, match="no \\*.pub files"):
        _verify(bundle, empty)


def test_signature_is_bound_to_exact_bytes_not_json_meaning(bundle, keys):
    """Re-serialising the same JSON differently (whitespace) breaks the signature: the device checks bytes."""
    good, _, trusted = keys
    sign_bundle(bundle, good.private_path)
    doc = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps(doc, sort_keys=True))
    with pytest.raises(SignatureError, match="bad signature"):
        _verify(bundle, trusted)
    sig = encode_signature(good.key_id, b"\0" * 64)
    with pytest.raises(SignatureError, match="bad signature"):
        verify_manifest((bundle / "manifest.json").read_bytes(), sig, trusted)


def test_cli_keys_and_sign_exit_codes(bundle, tmp_path, capsys):
    assert main(["keys", "new", "--out", str(tmp_path / "k"), "--name", "ci", "--json"]) == ExitStatus.OK
    info = json.loads(capsys.readouterr().out)
    assert main(["sign", str(bundle), "--key", info["private_key"], "--json"]) == ExitStatus.OK
    assert json.loads(capsys.readouterr().out)["key_id"] == info["key_id"]
    (bundle / "golden.npz").write_bytes(b"changed")
    assert main(["sign", str(bundle), "--key", info["private_key"]]) == ExitStatus.BUNDLE_REJECTED
    assert "golden.npz" in capsys.readouterr().err
    assert main(["sign", str(bundle), "--key", str(tmp_path / "missing.key")]) == ExitStatus.BUNDLE_REJECTED


def test_build_with_an_unusable_sign_key_fails_before_training(tmp_path, capsys):
    (tmp_path / "bad.key").write_text("not a key")
    code = main(
        [
            "build",
            "--dataset",
            str(tmp_path / "no-such-dataset"),
            "--profile",
            "raspberry-pi-4",
            "--out",
            str(tmp_path / "out"),
            "--sign-key",
            str(tmp_path / "bad.key"),
        ]
    )
    assert code == ExitStatus.BUNDLE_REJECTED
    assert "bad.key" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_device_loader_refuses_each_case_with_its_reason(bundle, keys):
    """The same refusals through edgekit_agent.bundle.load.load_bundle, as the agent meets them."""
    from edgekit_agent.bundle.load import load_bundle

    good, other, trusted = keys
    unsigned_archive = bundle.parent / f"{bundle.name}.tar.gz"
    with pytest.raises(SignatureError, match="not signed"):
        load_bundle(unsigned_archive, trusted_keys=trusted)
    # --allow-unsigned lets an unsigned bundle through, but never a badly signed one
    assert load_bundle(unsigned_archive, trusted_keys=trusted, allow_unsigned=True).signed_by is None
    sign_bundle(bundle, other.private_path)
    with pytest.raises(SignatureError, match=f"unknown key id {other.key_id}"):
        load_bundle(bundle, trusted_keys=trusted, allow_unsigned=True)
    sign_bundle(bundle, good.private_path)
    assert load_bundle(bundle.parent / f"{bundle.name}.tar.gz", trusted_keys=trusted).signed_by == good.key_id
    model = bytearray((bundle / "model.tflite").read_bytes())
    model[100] ^= 0x01
    (bundle / "model.tflite").write_bytes(bytes(model))
    with pytest.raises(IntegrityError, match=r"model\.tflite"):
        load_bundle(bundle, trusted_keys=trusted)
    model[100] ^= 0x01
    (bundle / "model.tflite").write_bytes(bytes(model))
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["labels"][0] = "zero"
    (bundle / "manifest.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    with pytest.raises(SignatureError, match="bad signature"):
        load_bundle(bundle, trusted_keys=trusted, allow_unsigned=True)
