"""`edgekit inspect`: operators, tensors, sizes, manifest summary and per-file hash verification of a real
bundle (directory and archive) and a bare .tflite; every kind of tampering is detected and exits 5."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edgekit.cli import main
from edgekit.package.inspection import inspect_path
from edgekit_agent.contract.errors import BundleError, ExitStatus


def flatbuffer_ops(tflite: bytes) -> list[str]:
    """Operator names read straight from the flatbuffer with TF's schema (independent of any interpreter)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = model.operatorCodes
    return [
        names[max(codes[op.opcodeIndex].builtinCode, codes[op.opcodeIndex].deprecatedBuiltinCode)]
        for op in model.subgraphs[0].operators
    ]


@pytest.fixture()
def bundle_copy(digits_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the session bundle that a test may damage."""
    return Path(shutil.copytree(digits_bundle, tmp_path / digits_bundle.name))


def archive_of(digits_bundle: Path) -> Path:
    return digits_bundle.parent / (digits_bundle.name + ".tar.gz")


def test_bundle_directory_report(digits_bundle: Path) -> None:
    r = inspect_path(digits_bundle)
    manifest = json.loads((digits_bundle / "manifest.json").read_text())
    tflite = (digits_bundle / "model.tflite").read_bytes()
    assert r.kind == "bundle" and r.verified and r.problems == []
    assert {f.name: f.status for f in r.files} == {name: "ok" for name in manifest["files"]}
    assert r.model_bytes == len(tflite) == manifest["model"]["bytes"]
    # Real operators (no DELEGATE node), with counts matching the flatbuffer itself.
    expected = Counter(flatbuffer_ops(tflite))
    assert dict(r.operators) == expected and "DELEGATE" not in expected
    assert [op for op, _ in r.operators] == list(dict.fromkeys(flatbuffer_ops(tflite)))
    # Input/output tensors agree with the manifest, quantisation included.
    (tin,) = [t for t in r.tensors if t.role == "input"]
    (tout,) = [t for t in r.tensors if t.role == "output"]
    for t, spec in ((tin, manifest["inputs"][0]), (tout, manifest["outputs"][0])):
        assert list(t.shape) == spec["shape"] and t.dtype == spec["dtype"]
        assert t.scales[0] == pytest.approx(spec["scale"]) and t.zero_points[0] == spec["zero_point"]
    assert len(r.tensors) > 2
    # Per-channel weights show one scale per output channel.
    assert any(len(t.scales) > 1 for t in r.tensors)
    m = r.manifest
    assert m is not None and m["name"] == manifest["name"] and m["profile"] == manifest["profile"]["name"]
    assert m["labels"] == manifest["labels"]


def test_archive_report_matches_directory(digits_bundle: Path) -> None:
    d, a = inspect_path(digits_bundle), inspect_path(archive_of(digits_bundle))
    assert a.kind == "archive" and a.verified
    assert (a.model_sha256, a.operators, a.files, a.manifest) == (d.model_sha256, d.operators, d.files, d.manifest)


def test_bare_tflite(digits_bundle: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    shutil.copy(digits_bundle / "model.tflite", model)
    r = inspect_path(model)
    assert r.kind == "tflite" and r.manifest is None and r.files == () and r.verified
    assert dict(r.operators) == Counter(flatbuffer_ops(model.read_bytes()))


def test_cli_json_and_tables(digits_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(digits_bundle), "--json"]) == ExitStatus.OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["verified"] is True and doc["kind"] == "bundle"
    assert {f["status"] for f in doc["files"]} == {"ok"}
    assert sum(o["count"] for o in doc["operators"]) == len(
        flatbuffer_ops((digits_bundle / "model.tflite").read_bytes())
    )
    assert main(["inspect", str(digits_bundle), "--all-tensors"]) == ExitStatus.OK
    out = capsys.readouterr().out
    assert "verified" in out and "FULLY_CONNECTED" in out


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("victim", ["model.tflite", "golden.npz"])
def test_one_changed_byte_is_a_mismatch_and_exit_5(
    bundle_copy: Path, victim: str, capsys: pytest.CaptureFixture[str]
) -> None:
    flip_byte(bundle_copy / victim)
    r = inspect_path(bundle_copy)
    status = {f.name: f.status for f in r.files}
    assert status[victim] == "mismatch" and not r.verified
    assert all(s == "ok" for n, s in status.items() if n != victim)
    if victim == "model.tflite":
        # A model that fails its hash is not handed to an interpreter.
        assert r.model_error and "not loaded" in r.model_error and r.operators == ()
    assert main(["inspect", str(bundle_copy)]) == ExitStatus.BUNDLE_REJECTED
    assert victim in capsys.readouterr().err


def test_missing_and_unlisted_files(bundle_copy: Path) -> None:
    (bundle_copy / "golden.npz").unlink()
    (bundle_copy / "payload.sh").write_text("echo hi\n")
    r = inspect_path(bundle_copy)
    status = {f.name: f.status for f in r.files}
    assert status["golden.npz"] == "missing" and status["payload.sh"] == "unlisted" and status["model.tflite"] == "ok"
    assert not r.verified and {p.split(" (")[0] for p in r.problems} == {"golden.npz: missing", "payload.sh: unlisted"}


def _rewrite_archive(src: Path, dst: Path, change: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> None:
    with tarfile.open(src) as tin, tarfile.open(dst, "w:gz") as tout:
        for m in tin:
            data = tin.extractfile(m).read() if m.isfile() else None
            short = m.name.split("/", 1)[-1]
            if short in change:
                data = change[short]
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data) if data is not None else None)
        for info in extra:
            tout.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)


def test_tampered_archive_is_detected(digits_bundle: Path, tmp_path: Path) -> None:
    src = archive_of(digits_bundle)
    model = bytearray((digits_bundle / "model.tflite").read_bytes())
    model[-10] ^= 0xFF
    bad = tmp_path / "bad.tar.gz"
    _rewrite_archive(src, bad, {"model.tflite": bytes(model)})
    r = inspect_path(bad)
    assert {f.name: f.status for f in r.files}["model.tflite"] == "mismatch" and not r.verified
    assert main(["inspect", str(bad), "--json"]) == ExitStatus.BUNDLE_REJECTED


def test_corrupt_archive_bytes_are_a_bundle_error(digits_bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.tar.gz"
    shutil.copy(archive_of(digits_bundle), bad)
    flip_byte(bad)  # inside the deflate stream: gzip's CRC or the tar structure fails
    with pytest.raises(BundleError, match="corrupt.tar.gz"):
        inspect_path(bad)
    assert main(["inspect", str(bad)]) == ExitStatus.BUNDLE_REJECTED


@pytest.mark.parametrize(
    "member, reason",
    [
        (tarfile.TarInfo("digits/../../evil.txt"), r"contains '\.\.'"),
        (tarfile.TarInfo("/etc/evil.txt"), "has an absolute path"),
    ],
)
def test_unsafe_member_names_are_refused(
    digits_bundle: Path, tmp_path: Path, member: tarfile.TarInfo, reason: str
) -> None:
    member.size = 3
    bad = tmp_path / "unsafe.tar.gz"
    _rewrite_archive(archive_of(digits_bundle), bad, {}, [member])
    with pytest.raises(BundleError, match=reason):
        inspect_path(bad)
    assert not (tmp_path.parent / "evil.txt").exists()


def test_links_in_archives_are_refused(digits_bundle: Path, tmp_path: Path) -> None:
    link = tarfile.TarInfo(f"{digits_bundle.name}/passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    bad = tmp_path / "link.tar.gz"
    _rewrite_archive(archive_of(digits_bundle), bad, {}, [link])
    with pytest.raises(BundleError, match="is a symbolic link"):
        inspect_path(bad)


def test_not_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match="not a bundle directory"):
        inspect_path(tmp_path / "notes.txt")
    with pytest.raises(BundleError, match="no manifest.json"):
        inspect_path(tmp_path)
    with pytest.raises(BundleError, match="no such file"):
        inspect_path(tmp_path / "absent")
    assert main(["inspect", str(tmp_path / "absent")]) == ExitStatus.BUNDLE_REJECTED


def test_golden_file_is_readable_after_inspection(digits_bundle: Path) -> None:
    """Inspection reads, never writes: the bundle is byte-identical afterwards."""
    before = {p.name: p.read_bytes() for p in digits_bundle.iterdir()}
    inspect_path(digits_bundle)
    inspect_path(archive_of(digits_bundle))
    assert {p.name: p.read_bytes() for p in digits_bundle.iterdir()} == before
    with np.load(digits_bundle / "golden.npz") as g:
        assert set(g.files) == {"inputs", "labels", "outputs"}


def test_signature_checked_with_trusted_keys(
    digits_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Signed with edgekit keys: valid with the right key (dir and archive), refused with another key or
    after the manifest changed; without --trusted-keys the signature is only reported as present."""
    from edgekit.package.keys import new_keypair, sign_bundle

    out = tmp_path / "out"
    d = Path(shutil.copytree(digits_bundle, out / digits_bundle.name))
    shutil.copy(archive_of(digits_bundle), out / archive_of(digits_bundle).name)
    good, other = new_keypair(tmp_path / "k1", "release"), new_keypair(tmp_path / "k2", "intruder")
    trusted, wrong = tmp_path / "trusted", tmp_path / "wrong"
    trusted.mkdir(), wrong.mkdir()
    shutil.copy(good.public_path, trusted), shutil.copy(other.public_path, wrong)
    res = sign_bundle(d, good.private_path)

    assert inspect_path(d).signed and inspect_path(d).signed_by is None and inspect_path(d).verified
    for target in (d, res.archive):
        r = inspect_path(target, trusted_keys=trusted)
        assert r.verified and r.signed_by == good.key_id
    r = inspect_path(d, trusted_keys=wrong)
    assert not r.verified and r.signature_error and r.signed_by is None
    assert main(["inspect", str(d), "--trusted-keys", str(wrong)]) == ExitStatus.BUNDLE_REJECTED
    # Changing a manifest value (the files still match their hashes) breaks only the signature.
    m = json.loads((d / "manifest.json").read_text())
    m["labels"][0] = "zero"
    (d / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    r = inspect_path(d, trusted_keys=trusted)
    assert all(f.ok for f in r.files) and r.signature_error and not r.verified
    assert main(["inspect", str(d), "--trusted-keys", str(trusted)]) == ExitStatus.BUNDLE_REJECTED
    assert "signature" in capsys.readouterr().err.lower()
