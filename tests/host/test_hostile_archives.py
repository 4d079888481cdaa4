"""One bundle verifier: every hostile archive is refused by the agent (``load_bundle``), by `edgekit inspect`
(exit 5) and by `edgekit sign` with the same reason, from its headers, leaving nothing behind. The costliest
(a sparse 2 GiB member, gzip bombs) are refused by both command lines with bounded peak memory."""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import hostile_archives as H
import pytest

from edgekit.cli import main
from edgekit.package.keys import new_keypair, sign_bundle
from edgekit_agent.bundle.load import load_bundle
from edgekit_agent.contract.errors import BundleError, ExitStatus
from edgekit_agent.contract.limits import MAX_EXTRACTED_BYTES, MAX_HEADER_BYTES, MAX_MEMBER_BYTES, MAX_MEMBERS
from edgekit_agent.contract.manifest import dump_manifest

Files = list[tuple[str, bytes]]


@pytest.fixture(scope="module")
def good(digits_bundle: Path) -> Files:
    """The real bundle's files as members under its top directory."""
    return [(f"{digits_bundle.name}/{p.name}", p.read_bytes()) for p in sorted(digits_bundle.iterdir())]


def replacement(good: Files) -> Files:
    """A second, valid model.tflite (one weight changed) and a manifest.json that records it: appended after the
    real ones, they replace them in any reader that lets a later member win (`edgekit inspect` called that
    archive "verified" before it used the agent's verifier)."""
    files = dict(good)
    top = good[0][0].split("/")[0]
    model = bytearray(files[f"{top}/model.tflite"])
    model[len(model) // 2] ^= 0x01  # inside the weights: the flatbuffer stays valid
    doc = json.loads(files[f"{top}/manifest.json"])
    entry = {"bytes": len(model), "sha256": hashlib.sha256(model).hexdigest()}
    doc["files"]["model.tflite"] = entry
    doc["model"].update(entry)
    return [(f"{top}/model.tflite", bytes(model)), (f"{top}/manifest.json", dump_manifest(doc))]


def _top(good: Files) -> str:
    return good[0][0].split("/")[0]


Build = Callable[[Path, Files], Path]
CASES: dict[str, tuple[Build, str]] = {
    "second model and manifest replace the first": (
        lambda p, g: H.tar_archive(p, [*g, *replacement(g)]),
        r"member '[^']+/model.tflite' appears twice",
    ),
    "the same file under ./": (
        lambda p, g: H.tar_archive(p, [*g, (f"./{_top(g)}/golden.npz", b"x")]),
        r"golden.npz' appears twice",
    ),
    "symbolic link": (
        lambda p, g: H.tar_archive(p, [*g, H.special(f"{_top(g)}/passwd", tarfile.SYMTYPE, "/etc/passwd")]),
        "is a symbolic link",
    ),
    "hard link": (
        lambda p, g: H.tar_archive(p, [*g, H.special(f"{_top(g)}/passwd", tarfile.LNKTYPE, "/etc/passwd")]),
        "is a hard link",
    ),
    "character device": (
        lambda p, g: H.tar_archive(p, [*g, H.special(f"{_top(g)}/tty", tarfile.CHRTYPE)]),
        "is a device, FIFO or other special file",
    ),
    "block device": (
        lambda p, g: H.tar_archive(p, [*g, H.special(f"{_top(g)}/sda", tarfile.BLKTYPE)]),
        "is a device, FIFO or other special file",
    ),
    "fifo": (
        lambda p, g: H.tar_archive(p, [*g, H.special(f"{_top(g)}/fifo", tarfile.FIFOTYPE)]),
        "is a device, FIFO or other special file",
    ),
    "absolute path": (
        lambda p, g: H.tar_archive(p, [*g, ("/tmp/edgekit-hostile-abs", b"x")]),
        "has an absolute path",
    ),
    "dot-dot path": (
        lambda p, g: H.tar_archive(p, [*g, (f"{_top(g)}/../../edgekit-hostile-up", b"x")]),
        r"contains '\.\.'",
    ),
    "oversize member, by its header": (
        lambda p, g: H.header_only_archive(p, g, f"{_top(g)}/big.bin", 10 * MAX_MEMBER_BYTES),
        f"is {10 * MAX_MEMBER_BYTES} bytes, over the {MAX_MEMBER_BYTES}-byte limit",
    ),
    "too many members": (
        lambda p, g: H.tar_archive(p, [*g, *((f"{_top(g)}/f{i}", b"") for i in range(MAX_MEMBERS))]),
        f"more than {MAX_MEMBERS} entries",
    ),
    "total unpacked size": (
        lambda p, g: H.zeros_members_archive(p, g, {f"{_top(g)}/z{i}": MAX_MEMBER_BYTES for i in range(2)}),
        f"members add up to over {MAX_EXTRACTED_BYTES} bytes",
    ),
    "gnu sparse member": (
        lambda p, g: H.sparse_archive(p, f"{_top(g)}/model.tflite", fmt="gnu", before=g[:1]),
        r"model.tflite' is a GNU sparse file \(2147483648 bytes unpacked\)",
    ),
    "pax 0.1 sparse member": (
        lambda p, g: H.sparse_archive(p, f"{_top(g)}/model.tflite", fmt="pax-0.1", before=g[:1]),
        "is a GNU sparse file",
    ),
    "pax 1.0 sparse member": (
        lambda p, g: H.sparse_archive(p, f"{_top(g)}/model.tflite", fmt="pax-1.0", before=g[:1]),
        "is a GNU sparse file",
    ),
    "oversize pax header": (
        lambda p, g: H.tar_archive(p, [*g, (_pax_comment(f"{_top(g)}/x", MAX_HEADER_BYTES), b"x")]),
        f"an entry whose headers are over {MAX_HEADER_BYTES} bytes",
    ),
    "gzip bomb after the last member": (
        lambda p, g: H.bomb_archive(p, g, H.GiB),
        f"more than {MAX_HEADER_BYTES} bytes after the end of the tar archive",
    ),
    "gzip bomb member": (
        lambda p, g: H.zeros_members_archive(p, g, {f"{_top(g)}/model.bin": MAX_MEMBER_BYTES + 1}),
        f"is {MAX_MEMBER_BYTES + 1} bytes, over the {MAX_MEMBER_BYTES}-byte limit",
    ),
}


def _pax_comment(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.pax_headers = {"comment": "x" * size}
    return info


def squash(text: str) -> str:
    return "".join(text.split())  # the CLI wraps long lines anywhere


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_keypair(tmp_path_factory.mktemp("keys"), "release").private_path


@pytest.mark.parametrize("case", list(CASES))
def test_refused_alike_by_agent_inspect_and_sign(
    case: str, good: Files, signing_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build, reason = CASES[case]
    archive = build(tmp_path / "hostile.tar.gz", good)
    before = archive.read_bytes()

    with pytest.raises(BundleError, match=reason) as agent:
        load_bundle(archive, workdir=tmp_path / "work", allow_unsigned=True)
    refusal = str(agent.value)
    assert str(archive) in refusal
    assert not any(p.is_file() for p in (tmp_path / "work").rglob("*"))

    assert main(["inspect", str(archive)]) == ExitStatus.BUNDLE_REJECTED
    assert squash(refusal) in squash(capsys.readouterr().err)

    with pytest.raises(BundleError) as signing:
        sign_bundle(archive, signing_key)
    assert str(signing.value) == refusal and archive.read_bytes() == before
    assert not Path("/tmp/edgekit-hostile-abs").exists() and not (tmp_path.parent / "edgekit-hostile-up").exists()


def test_the_real_archive_passes_all_three(digits_bundle: Path, good: Files, signing_key: Path, tmp_path: Path):
    """The checks refuse what is hostile, not what `edgekit build` writes (here rebuilt with tarfile)."""
    archive = H.tar_archive(tmp_path / f"{digits_bundle.name}.tar.gz", good)
    assert load_bundle(archive, workdir=tmp_path / "work").manifest.name == "digits"
    assert main(["inspect", str(archive)]) == ExitStatus.OK
    assert sign_bundle(archive, signing_key).archive == archive


WORST = {
    "sparse 2 GiB member": lambda p: H.sparse_archive(p, "digits/model.tflite", 2 * H.GiB),
    "gzip bomb member (1 GiB)": lambda p: H.zeros_members_archive(p, [], {"digits/model.tflite": H.GiB}),
    "gzip bomb after the last member (1 GiB)": lambda p: H.bomb_archive(p, [("digits/manifest.json", b"{}")], H.GiB),
}


@pytest.mark.parametrize("case", list(WORST))
def test_the_worst_archives_are_refused_in_bounded_memory(case: str, tmp_path: Path) -> None:
    """Each command line in a fresh process; its own peak RSS (wait4) stays far below what unpacking costs
    (before the one verifier, `edgekit inspect` peaked at 4.1 GB on the sparse member and 313 MB on the bombs)."""
    archive = WORST[case](tmp_path / "worst.tar.gz")
    bindir = Path(sys.executable).parent
    reasons = []
    for argv in (
        [str(bindir / "edgekit"), "inspect", str(archive)],
        [str(bindir / "edgekit-agent"), "verify", "--allow-unsigned", str(archive)],
    ):
        code, peak_mb, err = H.run_measured(argv)
        assert code == ExitStatus.BUNDLE_REJECTED, err
        assert peak_mb < 150, f"{argv[0]} peaked at {peak_mb:.0f} MB"
        reasons.append(squash(err.split("error:", 1)[-1]))
    assert reasons[0] == reasons[1]
