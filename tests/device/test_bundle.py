"""load_bundle / verify_files / extract_archive on the real digits bundle: integrity, unlisted files, unsafe
archives, broken models. (Every hostile archive refused alike by the agent and `edgekit inspect`:
tests/host/test_hostile_archives.py.)"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from hostile_archives import END, special, tar_archive, tar_body

from edgekit_agent.bundle import archive as archive_mod
from edgekit_agent.bundle.archive import FileStatus, extract_archive, scan_archive, verify_files
from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.contract.errors import BundleError, IntegrityError, SignatureError
from edgekit_agent.contract.manifest import dump_manifest

from tamper import copy_bundle, flip_byte, rehash


@pytest.fixture()
def good_files(digits_bundle: Path) -> list[tuple[str, bytes]]:
    """The real bundle's files as archive members under its top directory."""
    return [(f"{digits_bundle.name}/{p.name}", p.read_bytes()) for p in sorted(digits_bundle.iterdir())]


# --- the real bundle loads ---------------------------------------------------------------------------------


def test_load_from_directory(digits_bundle: Path):
    b = load_bundle(digits_bundle)
    assert b.directory == digits_bundle
    assert b.manifest.name == "digits" and b.signed_by is None
    assert b.model_path.read_bytes()[4:8] == b"TFL3"
    assert b.manifest_bytes == (digits_bundle / "manifest.json").read_bytes()
    checks = verify_files(digits_bundle, b.manifest)
    assert {c.name for c in checks} >= {"model.tflite", "golden.npz"}
    assert all(c.status is FileStatus.OK and c.sha256 == c.expected_sha256 for c in checks)


def test_load_from_archive_extracts_into_workdir(digits_bundle: Path, tmp_path: Path):
    archive = digits_bundle.parent / f"{digits_bundle.name}.tar.gz"
    b = load_bundle(archive, workdir=tmp_path / "work")
    assert b.directory.is_relative_to(tmp_path / "work")
    assert sorted(p.name for p in b.directory.iterdir()) == sorted(p.name for p in digits_bundle.iterdir())
    assert b.model_path.read_bytes() == (digits_bundle / "model.tflite").read_bytes()
    # loading again never overwrites the first extraction
    again = load_bundle(archive, workdir=tmp_path / "work")
    assert again.directory != b.directory and b.model_path.is_file()


def test_bundle_opens_runtime_and_preprocessor_from_the_manifest(digits_bundle: Path):
    b = load_bundle(digits_bundle)
    with b.open_runtime(num_threads=1) as rt:
        assert rt.info.num_threads == 1
        assert rt.input_shape == tuple(b.manifest.inputs[0].shape)
    # the profile's threads, capped at this machine's cores (4 on a 2-core machine would oversubscribe it)
    assert b.open_runtime().info.num_threads == min(b.manifest.runtime["num_threads"], os.cpu_count() or 1)
    assert b.preprocessor().spec == b.manifest.preprocess


# --- tampering ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.tflite", "golden.npz"])
def test_a_changed_byte_is_refused_naming_the_file(digits_bundle: Path, tmp_path: Path, name: str):
    d = copy_bundle(digits_bundle, tmp_path)
    flip_byte(d / name)
    with pytest.raises(IntegrityError, match=rf"{name}: sha256 is .* manifest.json records"):
        load_bundle(d)
    bad = [c for c in verify_files(d, load_manifest(d)) if not c.ok]
    assert [(c.name, c.status) for c in bad] == [(name, FileStatus.MISMATCH)]


def load_manifest(d: Path):
    from edgekit_agent.contract.manifest import Manifest

    return Manifest.load(d / "manifest.json")


def test_a_changed_hash_in_the_manifest_is_refused(digits_bundle: Path, tmp_path: Path):
    d = copy_bundle(digits_bundle, tmp_path)
    text = (d / "manifest.json").read_text()
    sha = json.loads(text)["files"]["model.tflite"]["sha256"]
    forged = ("0" if sha[0] != "0" else "1") + sha[1:]
    (d / "manifest.json").write_text(text.replace(sha, forged))  # both places: still self-consistent
    with pytest.raises(IntegrityError, match=r"model.tflite: sha256 is .*manifest.json records"):
        load_bundle(d)


def test_a_manifest_whose_model_entry_disagrees_with_files_is_refused(digits_bundle: Path, tmp_path: Path):
    d = copy_bundle(digits_bundle, tmp_path)
    doc = json.loads((d / "manifest.json").read_bytes())
    doc["model"]["bytes"] += 1
    (d / "manifest.json").write_bytes(dump_manifest(doc))
    with pytest.raises(IntegrityError, match="manifest.json.*record different sizes or hashes"):
        load_bundle(d)


def test_a_broken_manifest_byte_is_refused_naming_manifest_json(digits_bundle: Path, tmp_path: Path):
    d = copy_bundle(digits_bundle, tmp_path)
    flip_byte(d / "manifest.json", offset=0)  # '{' -> 'z'
    with pytest.raises(BundleError, match=r"manifest.json is not valid JSON"):
        load_bundle(d)


def test_an_unlisted_file_is_refused(digits_bundle: Path, tmp_path: Path):
    d = copy_bundle(digits_bundle, tmp_path)
    (d / "extra.bin").write_bytes(b"payload")
    with pytest.raises(BundleError, match="'extra.bin' is not listed in manifest.json"):
        load_bundle(d)
    statuses = {c.name: c.status for c in verify_files(d, load_manifest(d))}
    assert statuses["extra.bin"] is FileStatus.UNLISTED and statuses["model.tflite"] is FileStatus.OK


def test_a_missing_file_is_refused(digits_bundle: Path, tmp_path: Path):
    d = copy_bundle(digits_bundle, tmp_path)
    (d / "golden.npz").unlink()
    with pytest.raises(IntegrityError, match="'golden.npz' is listed in manifest.json but missing"):
        load_bundle(d)
    assert {c.name: c.status for c in verify_files(d, load_manifest(d))}["golden.npz"] is FileStatus.MISSING


def test_a_listed_file_replaced_by_a_symlink_is_refused(digits_bundle: Path, tmp_path: Path):
    d = copy_bundle(digits_bundle, tmp_path)
    (d / "golden.npz").unlink()
    os.symlink(digits_bundle / "golden.npz", d / "golden.npz")  # same bytes, through a link
    with pytest.raises(IntegrityError, match="golden.npz: not a regular file"):
        load_bundle(d)


def test_a_listed_name_with_a_path_is_refused(digits_bundle: Path, tmp_path: Path):
    d = copy_bundle(digits_bundle, tmp_path)
    doc = json.loads((d / "manifest.json").read_bytes())
    doc["files"]["../outside"] = {"bytes": 1, "sha256": "0" * 64}
    (d / "manifest.json").write_bytes(dump_manifest(doc))
    with pytest.raises(BundleError, match="'../outside' is not a plain file name"):
        load_bundle(d)


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.99])
def test_a_truncated_model_with_consistent_hashes_is_refused(digits_bundle: Path, tmp_path: Path, cut: float):
    d = copy_bundle(digits_bundle, tmp_path)
    data = (d / "model.tflite").read_bytes()
    (d / "model.tflite").write_bytes(data[: int(len(data) * cut)])
    rehash(d)
    with pytest.raises(IntegrityError, match="model.tflite: not a valid TFLite model .*truncated or corrupt"):
        load_bundle(d)


def test_a_model_without_the_tflite_identifier_is_refused(digits_bundle: Path, tmp_path: Path):
    d = copy_bundle(digits_bundle, tmp_path)
    data = bytearray((d / "model.tflite").read_bytes())
    data[4:8] = b"ONNX"
    (d / "model.tflite").write_bytes(bytes(data))
    rehash(d)
    with pytest.raises(IntegrityError, match=r"file identifier is b'ONNX', not b'TFL3'"):
        load_bundle(d)


def test_signature_required_but_absent_is_refused(digits_bundle: Path):
    pytest.importorskip("cryptography")
    with pytest.raises(SignatureError, match="not signed"):
        load_bundle(digits_bundle, require_signature=True)


def test_signed_bundle_reports_its_key_and_a_changed_manifest_is_refused(digits_bundle: Path, tmp_path: Path):
    pytest.importorskip("cryptography")
    from edgekit.package.keys import copy_public_key, new_keypair, sign_bundle

    d = copy_bundle(digits_bundle, tmp_path)
    pair = new_keypair(tmp_path / "keys", "test")
    copy_public_key(pair.public_path, tmp_path / "trusted")
    sign_bundle(d, pair.private_path)
    assert load_bundle(d, trusted_keys=tmp_path / "trusted").signed_by == pair.key_id
    doc = json.loads((d / "manifest.json").read_bytes())
    doc["version"] = "9.9.9"  # a change no hash would catch: only the signature does
    (d / "manifest.json").write_bytes(dump_manifest(doc))
    assert load_bundle(d).manifest.version == "9.9.9"
    with pytest.raises(SignatureError, match="bad signature"):
        load_bundle(d, trusted_keys=tmp_path / "trusted")


# --- unsafe archives ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "evil, message",
    [
        (("digits/../x", b"escaped"), r"contains '\.\.'"),
        (("../x", b"escaped"), r"contains '\.\.'"),
        (("/tmp/edgekit-test-abs-x", b"escaped"), "absolute path"),
        (special("digits/golden.npz", tarfile.SYMTYPE, "/etc/passwd"), "is a symbolic link"),
        (special("digits/golden.npz", tarfile.LNKTYPE, "/etc/passwd"), "is a hard link"),
        (special("digits/dev", tarfile.CHRTYPE, ""), "device, FIFO or other special file"),
        (special("digits/fifo", tarfile.FIFOTYPE, ""), "device, FIFO or other special file"),
    ],
    ids=["dotdot-inside", "dotdot", "absolute", "symlink", "hardlink", "chardev", "fifo"],
)
def test_unsafe_archive_members_are_refused(tmp_path: Path, good_files, evil, message):
    archive = tar_archive(tmp_path / "evil.tar.gz", [*good_files, evil])
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(archive, workdir=tmp_path / "work")
    member = evil.name if isinstance(evil, tarfile.TarInfo) else evil[0]
    assert member in str(info.value)
    assert not (tmp_path / "x").exists() and not Path("/tmp/edgekit-test-abs-x").exists()
    assert not any(p.is_file() for p in (tmp_path / "work").rglob("*"))


def test_an_unlisted_archive_member_is_refused(tmp_path: Path, good_files):
    archive = tar_archive(tmp_path / "b.tar.gz", [*good_files, ("digits-raspberry-pi-4/run.sh", b"#!/bin/sh\n")])
    with pytest.raises(BundleError, match="member 'digits-raspberry-pi-4/run.sh' is not listed in the manifest"):
        load_bundle(archive, workdir=tmp_path / "work")
    assert not any(p.is_file() for p in (tmp_path / "work").rglob("*"))


def test_an_oversized_member_is_refused(tmp_path: Path, good_files, monkeypatch):
    name, data = max(good_files, key=lambda m: len(m[1]))
    limit = len(data) - 1  # the real limit is 128 MiB; the same code path refuses the largest member here
    monkeypatch.setattr(archive_mod, "MAX_MEMBER_BYTES", limit)
    archive = tar_archive(tmp_path / "b.tar.gz", good_files)
    with pytest.raises(BundleError, match=rf"member '{name}' is {len(data)} bytes, over the {limit}-byte limit"):
        load_bundle(archive, workdir=tmp_path / "work")


def test_a_member_whose_size_differs_from_the_manifest_is_refused(tmp_path: Path, good_files):
    files = [(n, d + b"\0" if n.endswith("golden.npz") else d) for n, d in good_files]
    archive = tar_archive(tmp_path / "b.tar.gz", files)
    with pytest.raises(IntegrityError, match="golden.npz' is .* bytes but manifest.json records"):
        load_bundle(archive, workdir=tmp_path / "work")


def test_a_refused_archive_leaves_nothing_in_the_workdir(tmp_path: Path, good_files):
    files = [(n, d[:-1] + bytes([d[-1] ^ 1]) if n.endswith("model.tflite") else d) for n, d in good_files]
    archive = tar_archive(tmp_path / "b.tar.gz", files)  # same sizes, one flipped byte: caught after extraction
    with pytest.raises(IntegrityError, match="model.tflite: sha256 is"):
        load_bundle(archive, workdir=tmp_path / "work")
    assert list((tmp_path / "work").iterdir()) == []


def test_a_flat_archive_without_top_directory_loads(tmp_path: Path, good_files):
    archive = tar_archive(tmp_path / "flat.tar.gz", [(n.split("/")[-1], d) for n, d in good_files])
    assert load_bundle(archive, workdir=tmp_path / "work").manifest.name == "digits"


def test_a_corrupt_archive_is_a_bundle_error(tmp_path: Path, digits_bundle: Path):
    data = (digits_bundle.parent / f"{digits_bundle.name}.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError):
        load_bundle(tmp_path / "cut.tar.gz", workdir=tmp_path / "work")


def test_extract_archive_never_reuses_an_existing_target(tmp_path: Path, digits_bundle: Path):
    (tmp_path / "t").mkdir()
    with pytest.raises(BundleError, match="already exists"):
        extract_archive(scan_archive(digits_bundle.parent / f"{digits_bundle.name}.tar.gz"), tmp_path / "t")


def test_not_a_bundle(tmp_path: Path):
    with pytest.raises(BundleError, match="no such bundle"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(BundleError, match="not a bundle directory"):
        load_bundle(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path / "empty")


def test_edgetpu_runs_the_compiled_model_when_the_bundle_has_one(digits_bundle: Path, tmp_path: Path):
    d = copy_bundle(digits_bundle, tmp_path)
    assert load_bundle(d).model_for("edgetpu").name == "model.tflite"  # no compiled model: the plain one
    (d / "model_edgetpu.tflite").write_bytes((d / "model.tflite").read_bytes())
    doc = json.loads((d / "manifest.json").read_bytes())
    doc["files"]["model_edgetpu.tflite"] = dict(doc["files"]["model.tflite"])
    (d / "manifest.json").write_bytes(dump_manifest(doc))
    b = load_bundle(d)
    assert b.model_for("edgetpu") == d / "model_edgetpu.tflite" and b.model_for("xnnpack") == b.model_path
    (d / "model_edgetpu.tflite").write_bytes(b"\0" * 64)
    rehash(d)
    with pytest.raises(IntegrityError, match="model_edgetpu.tflite: not a valid TFLite model"):
        load_bundle(d)


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path: Path, monkeypatch):
    """A member of 4 MiB zeros (a few KB compressed) under a 1 MiB limit: refused before it is inflated."""
    monkeypatch.setattr(archive_mod, "MAX_MEMBER_BYTES", 1 << 20)
    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("digits/model.tflite")
        info.size = 4 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert path.stat().st_size < 64 << 10
    with pytest.raises(BundleError, match=rf"is {4 << 20} bytes, over the {1 << 20}-byte limit"):
        load_bundle(path, workdir=tmp_path / "work")
    assert not any(p.is_file() for p in (tmp_path / "work").rglob("*"))


def test_data_after_the_end_of_the_archive_is_refused(tmp_path: Path, good_files):
    """A member hidden behind the end-of-archive blocks (or an unreadable header, where tarfile stops) is not
    silently ignored: only zero padding may follow the end."""
    hidden = tar_body([("digits-raspberry-pi-4/run.sh", b"#!/bin/sh\n")])
    (tmp_path / "b.tar.gz").write_bytes(gzip.compress(tar_body(good_files) + END + hidden + END, mtime=0))
    with pytest.raises(BundleError, match="refusing data after the end of the tar archive"):
        load_bundle(tmp_path / "b.tar.gz", workdir=tmp_path / "work")


def test_the_stream_bound_holds_whatever_the_headers_say(digits_bundle: Path, monkeypatch):
    """The decompressor is never asked for more than MAX_STREAM_BYTES, even where every header looks fine."""
    monkeypatch.setattr(archive_mod, "MAX_STREAM_BYTES", 64 << 10)
    with pytest.raises(BundleError, match=r"refusing a tar stream of more than 65536 bytes"):
        scan_archive(digits_bundle.parent / f"{digits_bundle.name}.tar.gz")


def test_verify_archive_matches_the_directory_and_keeps_only_a_matching_model(digits_bundle: Path, tmp_path: Path):
    from edgekit_agent.bundle.archive import verify_archive

    archive = digits_bundle.parent / f"{digits_bundle.name}.tar.gz"
    contents = verify_archive(scan_archive(archive))
    assert contents.files == verify_files(digits_bundle, contents.manifest)
    assert contents.model == (digits_bundle / "model.tflite").read_bytes() and contents.signature is None
    files = [(f"d/{p.name}", p.read_bytes()) for p in sorted(digits_bundle.iterdir())]
    files = [(n, d[:-1] + bytes([d[-1] ^ 1]) if n.endswith("model.tflite") else d) for n, d in files]
    bad = verify_archive(scan_archive(tar_archive(tmp_path / "bad.tar.gz", files)))
    assert {c.name: c.status for c in bad.files}["model.tflite"] is FileStatus.MISMATCH and bad.model is None
