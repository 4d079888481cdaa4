"""Write a device bundle: a directory (manifest.json, model.tflite, golden.npz, …) and its single-file archive.

The manifest is a :class:`edgekit_agent.contract.manifest.Manifest` filled here and written with its own
``to_bytes``, so the device reads back exactly what was written (with no profile files and no TensorFlow).
Golden outputs are computed here with the device's own runtime, so a device's self-test
compares like with like.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.profiles import Profile
from edgekit_agent.contract.errors import BundleError
from edgekit_agent.contract.manifest import (
    MANIFEST_NAME,
    FileEntry,
    GoldenSpec,
    HeadSpec,
    Manifest,
    OutputsAre,
    PreprocessSpec,
    TensorSpec,
)
from edgekit_agent.infer.preprocess import quantize
from edgekit_agent.infer.runtime import Runtime

MODEL_NAME = "model.tflite"
GOLDEN_NAME = "golden.npz"
ARCHIVE_SUFFIX = ".tar.gz"


@dataclass(frozen=True, slots=True)
class BundleInfo:
    """What :func:`write_bundle` made."""

    directory: Path
    archive: Path
    manifest: Manifest  # as the device reads it back from the written bytes
    model_bytes: int


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_specs(rt: Runtime) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Input and output tensors (name, shape, dtype, scale, zero point) of a loaded model."""

    def spec(d: Mapping[str, Any]) -> TensorSpec:  # an interpreter's tensor details: LiteRT's dict
        scale, zero = d["quantization"]
        return TensorSpec(
            str(d["name"]), tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]).name, float(scale), int(zero)
        )

    interp = rt.interpreter
    return tuple(spec(d) for d in interp.get_input_details()), tuple(spec(d) for d in interp.get_output_details())


def _golden(rt: Runtime, tin: TensorSpec, x_float: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    xq = np.stack([quantize(x, tin) for x in x_float]).astype(tin.dtype)
    outs = np.stack([rt.invoke(xq[i : i + 1])[0] for i in range(len(xq))])
    return {"inputs": xq, "labels": y.astype(np.int64), "outputs": outs}


#: gzip level of bundle archives. 9 took 2.7 s on an MCU bundle's 3.7 MB C array for 7 % less; 6 takes 0.24 s.
ARCHIVE_GZIP_LEVEL = 6


def write_archive(directory: Path, archive: Path) -> Path:
    """A reproducible tar.gz of the bundle directory: the same files give the same bytes (sorted names, zeroed
    owners and times, and a gzip header without the time or a file name, which ``tarfile``'s "w:gz" would add)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".part")
    with (
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=ARCHIVE_GZIP_LEVEL, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            data = path.read_bytes()
            info = tarfile.TarInfo(f"{directory.name}/{path.relative_to(directory).as_posix()}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(archive)
    return archive


def bundle_paths(out_dir: str | Path, name: str, profile_name: str) -> tuple[Path, Path]:
    """``OUT/NAME-PROFILE/`` and ``OUT/NAME-PROFILE.tar.gz``: where :func:`write_bundle` writes."""
    directory = Path(out_dir) / f"{name}-{profile_name}"
    return directory, directory.with_name(directory.name + ARCHIVE_SUFFIX)


def remove_bundle(out_dir: str | Path, name: str, profile_name: str) -> list[Path]:
    """Delete an earlier bundle of ``name`` for ``profile_name`` in ``out_dir`` (directory and archive), so a
    build that no longer produces one leaves no stale bundle behind. A directory with sub-folders is not
    something :func:`write_bundle` wrote and is left alone. Returns what was removed."""
    directory, archive = bundle_paths(out_dir, name, profile_name)
    removed = []
    if directory.is_dir() and not directory.is_symlink() and all(not p.is_dir() for p in directory.iterdir()):
        shutil.rmtree(directory)
        removed.append(directory)
    if archive.is_file() or archive.is_symlink():
        archive.unlink()
        removed.append(archive)
    return removed


def write_bundle(
    out_dir: str | Path,
    *,
    name: str,
    profile: Profile,
    tflite: bytes,
    preprocess: PreprocessSpec,
    labels: list[str],
    golden_x: np.ndarray,
    golden_y: np.ndarray,
    outputs_are: OutputsAre,
    head: HeadSpec | None = None,
    version: str = "1.0.0",
    metrics: Mapping[str, Any] | None = None,
    fit: Mapping[str, Any] | None = None,
    reference: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> BundleInfo:
    """Write ``OUT/NAME-PROFILE/`` and ``OUT/NAME-PROFILE.tar.gz``.

    ``outputs_are`` says whether the model ends in logits or probabilities (the device's confidence depends on
    it); ``head`` how outputs become a class (default: one output per label, the largest wins); ``metrics``,
    ``fit`` and ``reference`` are JSON objects (the ``to_dict()`` of the build's results).
    ``golden_x`` are a few preprocessed float inputs (N, H, W, C) with labels ``golden_y``; they are
    quantised and run through the model here so the device can prove it reproduces these outputs.
    """
    if not tflite[4:8] == b"TFL3":
        raise BundleError(f"{name}: the model is not a TFLite flatbuffer (file identifier TFL3 missing).")
    out_dir = Path(out_dir)
    directory, archive_path = bundle_paths(out_dir, name, profile.name)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.iterdir():  # a rebuild must not leave files the new manifest does not list
        if stale.is_file():
            stale.unlink()

    # The golden outputs come from the kernels the device's self-test runs: XNNPACK and the builtin kernels
    # round some int8 ops (average pooling) differently, by up to 2 units on a 1-D conv net's outputs.
    delegate = "none" if str(profile.delegate) == "none" else "xnnpack"
    rt = Runtime(tflite, num_threads=1, delegate=delegate, model_name=f"{name}/{MODEL_NAME}")
    inputs, outputs = tensor_specs(rt)
    golden = _golden(rt, inputs[0], np.asarray(golden_x, dtype=np.float32), np.asarray(golden_y))
    head = head or HeadSpec()
    units = int(np.prod(outputs[0].shape[1:]))
    if (units, len(labels)) != ((1, 2) if head.kind == "sigmoid" else (len(labels), len(labels))):
        raise BundleError(
            f"{name}: {len(labels)} labels but the model has {list(outputs[0].shape[1:])} outputs "
            f"(a {head.kind} head needs {'one output and two labels' if head.kind == 'sigmoid' else 'one per label'})."
        )

    files: dict[str, bytes] = {MODEL_NAME: tflite}
    buf = io.BytesIO()
    np.savez_compressed(buf, **golden)
    files[GOLDEN_NAME] = buf.getvalue()
    files.update(extra_files or {})
    for fname, data in files.items():
        if "/" in fname or fname.startswith("."):
            raise BundleError(f"{name}: bundle file name '{fname}' must be a plain file name.")
        (directory / fname).write_bytes(data)

    entries = tuple(FileEntry(f, len(d), sha256_bytes(d)) for f, d in sorted(files.items()))
    manifest = Manifest(
        name=name,
        version=version,
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        profile=profile.to_dict(),
        model=next(e for e in entries if e.name == MODEL_NAME),
        inputs=inputs,
        outputs=outputs,
        preprocess=preprocess,
        labels=tuple(labels),
        files=entries,
        outputs_are=outputs_are,
        head=head,
        golden=GoldenSpec(file=GOLDEN_NAME, samples=int(len(golden_y)), tolerance=1),
        metrics=dict(metrics or {}),
        fit=dict(fit) if fit is not None else None,
        reference=dict(reference or {}),
    )
    data = manifest.to_bytes()
    # Parsed back before it is written: a value the device would refuse fails the build, not the device.
    written = Manifest.from_bytes(data, str(directory / MANIFEST_NAME))
    (directory / MANIFEST_NAME).write_bytes(data)
    archive = write_archive(directory, archive_path)
    return BundleInfo(directory=directory, archive=archive, manifest=written, model_bytes=len(tflite))
