"""Load a bundle on the device: a directory or ``.tar.gz`` archive (written by
``edgekit.package.writer.write_bundle``), checked by :mod:`edgekit_agent.bundle.archive` before anything in it is
used. :func:`load_bundle` refuses, with an error that names the file or archive member:

- an archive that :func:`~edgekit_agent.bundle.archive.scan_archive` refuses from its headers (unsafe paths,
  links, special and sparse files, duplicates, sizes over ``edgekit_agent.contract.limits``, compression
  bombs), or that holds a file the manifest does not list or whose size differs (:class:`BundleError`,
  :class:`IntegrityError`). Nothing is written outside the new extraction directory;
- a manifest that does not parse or validate (:class:`BundleError`);
- a listed file that is missing, or whose size or sha256 differs (:class:`IntegrityError`);
- a file present but not listed (only ``manifest.json`` and ``manifest.sig`` need not be listed);
- a model that is not a structurally sound TFLite flatbuffer (:class:`IntegrityError`);
- a missing or bad signature when ``trusted_keys`` or ``require_signature`` is given (:class:`SignatureError`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit_agent.bundle.archive import (
    ARCHIVE_SUFFIXES,
    archive_stem,
    check_files,
    extract_archive,
    read_manifest,
    read_signature,
    scan_archive,
    sha256_file,
)
from edgekit_agent.bundle.tflite_file import check_tflite
from edgekit_agent.contract.errors import BundleError, IntegrityError, ModelError
from edgekit_agent.contract.manifest import MANIFEST_NAME, Manifest

if TYPE_CHECKING:  # imported lazily at run time: keeps `import edgekit_agent.bundle.load` light
    from edgekit_agent.infer.inputs import InputPipeline
    from edgekit_agent.infer.runtime import Runtime

log = logging.getLogger(__name__)

#: The Edge TPU compiler's output, shipped beside model.tflite in Edge TPU bundles.
EDGETPU_MODEL = "model_edgetpu.tflite"


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

    def preprocessor(self) -> InputPipeline:
        """File or samples → input tensor, per the manifest's preprocessing spec and first input tensor."""
        from edgekit_agent.infer.inputs import make_preprocessor

        return make_preprocessor(self.manifest.preprocess, self.manifest.inputs[0])


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


# --- loading ----------------------------------------------------------------------------------------------


def load_bundle(
    path: str | Path,
    *,
    trusted_keys: Path | None = None,
    require_signature: bool = False,
    workdir: Path | None = None,
    allow_unsigned: bool = False,
    reuse: bool = False,
) -> Bundle:
    """Verify and load a bundle directory or ``.tar.gz`` archive; raise a typed error naming what is wrong.

    Archives are extracted (safely, see the module docstring) into a new directory under ``workdir``
    (``NAME-PROFILE.XXXX/NAME-PROFILE``), or under a new temporary directory when ``workdir`` is None;
    the caller owns ``bundle.directory.parent`` then. A refused archive leaves nothing behind.

    The signature is checked with ``edgekit_agent.contract.signing.verify_manifest`` whenever ``trusted_keys``
    is given or ``require_signature`` is True (then an unsigned bundle is refused); otherwise ``manifest.sig``
    is ignored and ``signed_by`` is None. ``allow_unsigned`` (the agent's ``--allow-unsigned``) lets a bundle
    without ``manifest.sig`` through even with ``trusted_keys`` (unless ``require_signature``); a bundle that
    *is* signed is still checked.

    ``reuse`` (with ``workdir``; the agent's start-up): the archive is unpacked into
    ``NAME-PROFILE.SHA16/NAME-PROFILE``, named after the archive's sha256, and a later call finds it there
    and checks it like any bundle directory (every file's size and sha256 against the manifest, the
    signature) instead of unpacking it again; an unpacked copy that fails is removed and unpacked anew.
    """
    path = Path(path)
    if reuse and workdir is not None and _is_archive(path):
        return _unpack_once(path, Path(workdir), trusted_keys, require_signature, allow_unsigned)
    if _is_archive(path):
        if workdir is not None:
            Path(workdir).mkdir(parents=True, exist_ok=True)
        parent = Path(tempfile.mkdtemp(prefix=f"{archive_stem(path)}.", dir=workdir))
        try:
            directory = extract_archive(scan_archive(path), parent / archive_stem(path))
            return _load_directory(directory, trusted_keys, require_signature, allow_unsigned)
        except BaseException:
            shutil.rmtree(parent, ignore_errors=True)  # a refused archive leaves nothing behind
            raise
    if path.is_dir():
        return _load_directory(path, trusted_keys, require_signature, allow_unsigned)
    if path.exists():
        raise BundleError(f"{path}: not a bundle directory or a {'/'.join(ARCHIVE_SUFFIXES)} archive.")
    raise BundleError(f"{path}: no such bundle; give a bundle directory or its .tar.gz archive.")


def _unpack_once(
    archive: Path, workdir: Path, trusted_keys: Path | None, require_signature: bool, allow_unsigned: bool
) -> Bundle:
    stem = archive_stem(archive)
    try:
        home = workdir / f"{stem}.{sha256_file(archive)[:16]}"
    except OSError as exc:
        raise BundleError(f"{archive}: cannot read the archive ({exc.strerror}).") from None
    if (home / stem).is_dir():
        try:
            return _load_directory(home / stem, trusted_keys, require_signature, allow_unsigned)
        except (BundleError, IntegrityError) as exc:  # a cut-short unpacking, or a file changed since
            log.warning("%s: the unpacked copy in %s is not usable (%s); unpacking it again", archive, home, exc)
        shutil.rmtree(home, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    # Unpacked beside its final name and renamed in one step: a crash leaves a temporary directory (removed
    # with the other stale entries at the next start), never a half-filled copy under the final name.
    parent = Path(tempfile.mkdtemp(prefix=f".{stem}.", dir=workdir))
    try:
        extract_archive(scan_archive(archive), parent / stem)
        os.rename(parent, home)
        return _load_directory(home / stem, trusted_keys, require_signature, allow_unsigned)
    except BaseException:
        shutil.rmtree(parent, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)  # a refused archive leaves nothing behind
        raise


def _load_directory(
    directory: Path, trusted_keys: Path | None, require_signature: bool, allow_unsigned: bool
) -> Bundle:
    manifest, manifest_bytes = read_manifest(directory)
    manifest_path = directory / MANIFEST_NAME
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

        sig = read_signature(directory)
        if sig is not None or require_signature or not allow_unsigned:
            signed_by = verify_manifest(manifest_bytes, sig, trusted_keys, source=str(directory))

    check_files(directory, manifest)
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
