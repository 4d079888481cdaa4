"""Look inside a bundle (directory or archive) or any ``.tflite`` file, without changing anything.

:func:`inspect_path` reports the operators (the real ones: the listing runs without XNNPACK, which would
otherwise hide them behind one ``DELEGATE`` node), every tensor with dtype, shape and quantisation, the
file sizes, a summary of the manifest, and the result of checking every file against the sha256 the
manifest records: ``ok``, ``mismatch``, ``missing`` (listed but absent) or ``unlisted`` (present but
not in the manifest, which a device refuses to extract).

Directories and archives are checked by the device's own verifier (:mod:`edgekit_agent.bundle.archive`), so
`edgekit inspect` and the agent agree on what "verified" means and refuse the same archives for the same
reason, from their headers (unsafe names, links, special and sparse files, duplicates, sizes, compression
bombs). Archives are never extracted: inspecting an untrusted archive cannot write files. With trusted keys,
the signature is checked with the device's own ``edgekit_agent.contract.signing.verify_manifest``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgekit_agent.bundle.archive import (
    ARCHIVE_SUFFIXES,
    FileCheck,
    read_manifest,
    read_signature,
    scan_archive,
    verify_archive,
    verify_files,
)
from edgekit_agent.bundle.tflite_file import check_tflite
from edgekit_agent.contract.errors import BundleError, EdgekitError, SignatureError
from edgekit_agent.contract.manifest import Manifest
from edgekit_agent.infer.runtime import Runtime

Kind = Literal["bundle", "archive", "tflite"]


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor of the model. ``scales``/``zero_points`` have one entry per channel when per-channel."""

    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    quantized_dimension: int
    role: str  # "input", "output" or ""


@dataclass(frozen=True, slots=True)
class InspectReport:
    """Everything :func:`inspect_path` found. ``verified`` is True for a bare .tflite (nothing to check)."""

    path: Path
    kind: Kind
    model_file: str
    model_bytes: int
    model_sha256: str
    operators: tuple[tuple[str, int], ...]  # (op name, count) in first-execution order
    tensors: tuple[TensorInfo, ...]
    files: tuple[FileCheck, ...]
    manifest: Mapping[str, Any] | None  # summary of the manifest (None for a bare .tflite)
    signed: bool  # a manifest.sig is present
    model_error: str | None  # set when the interpreter could not load the model (e.g. a corrupted file)
    signed_by: str | None = None  # key id, when checked against trusted keys and valid
    signature_error: str | None = None  # why the signature was refused (only when trusted keys were given)

    @property
    def verified(self) -> bool:
        """True when every file matches the manifest (and the manifest lists nothing extra or missing)."""
        return all(f.ok for f in self.files) and self.model_error is None and self.signature_error is None

    @property
    def problems(self) -> list[str]:
        """Human-readable reasons why ``verified`` is False."""
        out = [f"{f.name}: {f.status}" + (f" ({f.detail})" if f.detail else "") for f in self.files if not f.ok]
        if self.model_error:
            out.append(self.model_error)
        if self.signature_error:
            out.append(self.signature_error)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "kind": self.kind,
            "verified": self.verified,
            "problems": self.problems,
            "signed": self.signed,
            "signed_by": self.signed_by,
            "signature_error": self.signature_error,
            "model": {"file": self.model_file, "bytes": self.model_bytes, "sha256": self.model_sha256},
            "operators": [{"op": op, "count": n} for op, n in self.operators],
            "tensors": [
                {
                    "index": t.index,
                    "name": t.name,
                    "dtype": t.dtype,
                    "shape": list(t.shape),
                    "scales": list(t.scales),
                    "zero_points": list(t.zero_points),
                    "quantized_dimension": t.quantized_dimension,
                    "role": t.role,
                }
                for t in self.tensors
            ],
            "files": [
                {
                    "name": f.name,
                    "status": str(f.status),
                    "detail": f.detail,
                    "bytes": f.bytes,
                    "expected_bytes": f.expected_bytes,
                    "sha256": f.sha256,
                    "expected_sha256": f.expected_sha256,
                }
                for f in self.files
            ],
            "manifest": dict(self.manifest) if self.manifest is not None else None,
            "model_error": self.model_error,
        }


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_summary(m: Manifest) -> dict[str, Any]:
    """The parts of a manifest a person wants first: identity, profile, data, metrics, fit verdict."""
    fit = m.fit or {}
    metrics = dict(m.metrics)
    return {
        "name": m.name,
        "version": m.version,
        "created": m.created,
        "profile": m.profile_name,
        "target": m.target,
        "labels": list(m.labels),
        "preprocess": m.preprocess.to_dict(),
        "inputs": [
            {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "scale": t.scale, "zero_point": t.zero_point}
            for t in m.inputs
        ],
        "outputs": [
            {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "scale": t.scale, "zero_point": t.zero_point}
            for t in m.outputs
        ],
        "outputs_are": m.outputs_are,
        "head": m.head.to_dict(),
        "metrics": metrics,
        "fit": {"fits": fit.get("fits"), "summary": fit.get("summary")} if fit else None,
        "golden_samples": m.golden.samples if m.golden is not None else None,
        "has_reference": bool(m.reference),
    }


def _tensor_infos(rt: Runtime) -> tuple[TensorInfo, ...]:
    interp = rt.interpreter
    inputs = {d["index"] for d in interp.get_input_details()}
    outputs = {d["index"] for d in interp.get_output_details()}
    out = []
    for d in interp.get_tensor_details():
        q = d.get("quantization_parameters") or {}
        scales = tuple(float(s) for s in np.asarray(q.get("scales", []), dtype=np.float64).ravel())
        zeros = tuple(int(z) for z in np.asarray(q.get("zero_points", []), dtype=np.int64).ravel())
        idx = int(d["index"])
        out.append(
            TensorInfo(
                index=idx,
                name=str(d["name"]),
                dtype=np.dtype(d["dtype"]).name,
                shape=tuple(int(s) for s in d["shape"]),
                scales=scales,
                zero_points=zeros,
                quantized_dimension=int(q.get("quantized_dimension", 0)),
                role="input" if idx in inputs else ("output" if idx in outputs else ""),
            )
        )
    return tuple(out)


def describe_model(
    tflite: bytes, model_name: str = "model.tflite"
) -> tuple[tuple[tuple[str, int], ...], tuple[TensorInfo, ...]]:
    """Operators with counts (first-execution order) and tensors of a .tflite, loaded without delegates."""
    rt = Runtime(tflite, num_threads=1, delegate="none", model_name=model_name)
    try:
        counts = Counter(rt.ops())
        ordered = tuple((op, counts[op]) for op in dict.fromkeys(rt.ops()))
        return ordered, _tensor_infos(rt)
    finally:
        rt.close()


def _kind_of(path: Path) -> Kind:
    if path.is_dir():
        return "bundle"
    if path.name.endswith(ARCHIVE_SUFFIXES):
        return "archive"
    if path.suffix == ".tflite":
        return "tflite"
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(8)
        if head[4:8] == b"TFL3":
            return "tflite"
        if head[:2] == b"\x1f\x8b":
            return "archive"
    raise BundleError(f"{path}: not a bundle directory, a bundle archive (.tar.gz) or a .tflite file.")


def inspect_path(path: str | Path, *, trusted_keys: str | Path | None = None) -> InspectReport:
    """Inspect a bundle directory, a bundle archive or a .tflite file (see the module docstring).

    With ``trusted_keys`` (a directory of ``*.pub`` keys) the bundle's signature is checked as the
    device checks it; a missing or bad signature is then a verification failure.

    Raises :class:`BundleError` when the path is none of these or the manifest cannot be read; a file
    whose hash does not match is *reported* (``verified`` False), not raised, so the report can show it.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such file or directory.")
    kind = _kind_of(path)
    if kind == "tflite":
        data = path.read_bytes()
        check_tflite(data, str(path))  # raises ModelError before an interpreter can crash on a broken file
        ops, tensors = describe_model(data, str(path))
        return InspectReport(path, kind, path.name, len(data), _sha(data), ops, tensors, (), None, False, None)

    model: bytes | None = None
    if kind == "bundle":
        manifest, manifest_bytes = read_manifest(path)
        checks = verify_files(path, manifest)
        signature = read_signature(path)
    else:
        contents = verify_archive(scan_archive(path))
        manifest, manifest_bytes, signature = contents.manifest, contents.manifest_bytes, contents.signature
        checks, model = contents.files, contents.model
    signed_by = signature_error = None
    if trusted_keys is not None:
        from edgekit_agent.contract.signing import verify_manifest

        try:
            signed_by = verify_manifest(manifest_bytes, signature, trusted_keys, source=str(path))
        except SignatureError as exc:  # reported like a hash mismatch, so the whole report is still shown
            signature_error = str(exc)
    model_name = manifest.model.name
    model_check = next(c for c in checks if c.name == model_name)  # the manifest guarantees it is listed
    if model_check.ok and kind == "bundle":
        model = (path / model_name).read_bytes()  # an archive's model is kept by verify_archive only when it matched
    ops: tuple[tuple[str, int], ...] = ()
    tensors: tuple[TensorInfo, ...] = ()
    model_error = None
    if not model_check.ok:
        # A model that fails its hash is not handed to the interpreter: a corrupted flatbuffer can crash it.
        model_error = (
            f"{model_name}: not loaded, it does not match the manifest ({model_check.status}); "
            "re-copy or rebuild the bundle"
        )
    elif model is not None:
        try:
            check_tflite(model, f"{path}/{model_name}")  # a structurally broken model must not reach the interpreter
            ops, tensors = describe_model(model, f"{path}/{model_name}")
        except EdgekitError as exc:  # a corrupted model is a finding, not a crash of the inspection
            model_error = str(exc)
    return InspectReport(
        path=path,
        kind=kind,
        model_file=model_name,
        model_bytes=model_check.bytes or 0,
        model_sha256=model_check.sha256 or "",
        operators=ops,
        tensors=tensors,
        files=checks,
        manifest=manifest_summary(manifest),
        signed=signature is not None,
        signed_by=signed_by,
        signature_error=signature_error,
        model_error=model_error,
    )
