"""The active-bundle pointer and the start-up choice of bundle (the crash-safe half of OTA).

``DATA/ota/active.json`` says what to serve after a restart: ``{"current", "previous", "state"}`` where
state is ``committed`` or ``trial`` (a health window was running). It is written with
write-fsync-rename-fsync, so after a crash it is the old file or the new one, never half of either.
:func:`startup_bundle` serves the pointer's current bundle, restores the previous one when a health window
never finished, and falls back to the bundle on the command line; when the operator starts the agent with
a *different* bundle on the command line than the one the pointer was derived from, that bundle wins and
the OTA history is forgotten (the latest decision wins).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit_agent.contract.errors import BundleError, EdgekitError, StorageError, UsageError

if TYPE_CHECKING:
    from edgekit_agent.bundle.load import Bundle
    from edgekit_agent.serve.config import AgentSettings

log = logging.getLogger(__name__)

OTA_DIR = "ota"
POINTER_NAME = "active.json"
PENDING_EVENTS = "pending-events.json"


def ota_dir(data_dir: Path) -> Path:
    return Path(data_dir) / OTA_DIR


# --- the atomic pointer -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Slot:
    """A bundle the pointer names: ``source`` is what :func:`load_bundle` opens (a directory or archive)."""

    source: str
    name: str = ""
    version: str = ""
    sha256: str = ""  # of the model
    transfer_id: str = ""

    @classmethod
    def of(cls, bundle: Bundle, source: str | Path | None = None, transfer_id: str = "") -> Slot:
        m = bundle.manifest
        return cls(str(source or bundle.directory), m.name, m.version, m.model.sha256, transfer_id)

    def label(self) -> str:
        return f"{self.name} {self.version}".strip() or self.source


@dataclass(frozen=True, slots=True)
class Pointer:
    """``active.json``: what to serve after a restart."""

    current: Slot
    previous: Slot | None = None
    state: str = "committed"  # or "trial": a health window was running
    since_ms: int = 0
    transfer_id: str = ""
    factory: str = ""  # factory_id() of the command-line bundle this history started from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Pointer:
        prev = d.get("previous")
        return cls(
            Slot(**d["current"]),
            Slot(**prev) if prev else None,
            str(d.get("state", "committed")),
            int(d.get("since_ms", 0)),
            str(d.get("transfer_id", "")),
            str(d.get("factory", "")),
        )


def factory_id(path: str | Path | None) -> str:
    """Identity of the command-line bundle: its path and the sha256 of the archive (or of a directory's
    manifest). When it changes, the operator chose another bundle and that choice beats the OTA history."""
    if not path:
        return ""
    p = Path(path).resolve()
    target = p / "manifest.json" if p.is_dir() else p
    from edgekit_agent.bundle.archive import sha256_file

    try:
        return f"{p}#{sha256_file(target)[:16]}"
    except OSError:
        return f"{p}#unreadable"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write-fsync-rename-fsync: after a crash the file is either the old or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise StorageError(f"{path}: cannot write ({exc.strerror}); check the agent's data directory.") from None


def read_pointer(data_dir: Path) -> Pointer | None:
    """The pointer, or None when there is none (or it is unreadable: then the factory bundle is used)."""
    path = ota_dir(data_dir) / POINTER_NAME
    try:
        return Pointer.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.error("%s is unreadable (%s); starting from the bundle on the command line", path, exc)
        return None


def write_pointer(data_dir: Path, pointer: Pointer) -> None:
    write_json_atomic(ota_dir(data_dir) / POINTER_NAME, pointer.to_dict())


def queue_event(data_dir: Path, kind: str, **details: Any) -> None:
    """An event decided before the agent is online (a start-up rollback): published by :class:`OtaManager`."""
    path = ota_dir(data_dir) / PENDING_EVENTS
    try:
        events = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        events = []
    events.append({"event": kind, **details})
    write_json_atomic(path, events[-20:])


# --- loading with the agent's signature policy -------------------------------------------------------------


def load_for(
    settings: AgentSettings, source: str | Path, workdir: Path | None = None, *, reuse: bool = False
) -> Bundle:
    """``load_bundle`` with the agent's trust settings (trusted keys, required signature, unsigned allowed);
    ``reuse``: an archive already unpacked in ``workdir`` is checked, not unpacked again."""
    from edgekit_agent.bundle.load import load_bundle

    allow_unsigned = bool(getattr(settings, "allow_unsigned", False))
    # A serving agent runs only signed bundles from trusted keys unless --allow-unsigned says otherwise
    # (development); `edgekit-agent verify`/`bench` only check a signature when keys are given.
    return load_bundle(
        source,
        trusted_keys=settings.trusted_keys,
        require_signature=settings.require_signature or not allow_unsigned,
        allow_unsigned=allow_unsigned,
        workdir=workdir,
        reuse=reuse,
    )


def startup_bundle(settings: AgentSettings) -> Bundle:
    """The bundle to serve at start: the pointer's current one, unless a health window was cut short
    (then the previous one), falling back to the one on the command line. Every candidate is verified."""
    data = Path(settings.data_dir)
    workdir = data / "bundles"
    pointer = read_pointer(data)
    factory = str(Path(settings.bundle).resolve()) if settings.bundle else None
    fid = factory_id(factory)
    if pointer is not None and pointer.factory and fid and pointer.factory != fid:
        log.warning(
            "%s: the bundle on the command line changed (%s); serving it and forgetting the OTA history",
            settings.device_id,
            factory,
        )
        pointer = None
    candidates: list[tuple[Slot, str]] = []
    if pointer is not None and pointer.state == "trial":
        if pointer.previous is not None:
            candidates.append((pointer.previous, "rollback"))
        queue_event(
            data,
            "rollback",
            reason=f"the agent restarted during the health window of {pointer.current.label()}",
            **{"from": asdict(pointer.current)},
            to=asdict(pointer.previous) if pointer.previous else None,
            transfer_id=pointer.transfer_id,
        )
    elif pointer is not None:
        candidates += [(pointer.current, "current")] + ([(pointer.previous, "previous")] if pointer.previous else [])
    if factory:
        candidates.append((Slot(factory), "factory"))
    errors = []
    for slot, why in candidates:
        try:
            # An archive unpacked by an earlier start is checked against its manifest, not unpacked again:
            # on a small disk, unpacking a second copy is what fills it.
            bundle = load_for(settings, slot.source, workdir=workdir, reuse=True)
        except EdgekitError as exc:
            errors.append(f"{slot.label()}: {exc}")
            log.error("%s: cannot serve the %s bundle %s: %s", settings.device_id, why, slot.label(), exc)
            continue
        if why != "current" or pointer is None:
            # Make the pointer say what is served now (a rollback, a fallback, or the factory bundle).
            new = Pointer(
                Slot.of(bundle, slot.source, slot.transfer_id), None, "committed", int(time.time() * 1000), factory=fid
            )
            write_pointer(data, new)
            if why in ("previous", "factory") and pointer is not None:
                queue_event(
                    data,
                    "rollback",
                    reason=f"the {('current' if why == 'previous' else 'installed')} bundle "
                    f"could not be loaded: {errors[-1] if errors else 'unknown'}",
                    to=asdict(new.current),
                )
        _clean_dir(workdir, keep=bundle.directory)
        return bundle
    if not candidates:
        raise UsageError('no bundle given: `edgekit-agent run BUNDLE ...` or bundle = "…" in the config.')
    raise BundleError("no usable bundle: " + "; ".join(errors))


def _clean_dir(path: Path, keep: Path) -> None:
    """Remove what earlier runs unpacked in ``path``, except the unpacked copy holding ``keep``."""
    if path.is_dir():
        keep = keep.resolve()
        for child in path.iterdir():
            if child.resolve() in keep.parents:
                continue
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)


__all__ = [
    "Pointer",
    "Slot",
    "load_for",
    "read_pointer",
    "startup_bundle",
    "write_json_atomic",
    "write_pointer",
    "ota_dir",
    "factory_id",
    "queue_event",
    "PENDING_EVENTS",
    "POINTER_NAME",
]
