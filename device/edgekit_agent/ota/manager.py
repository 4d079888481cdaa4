"""Over-the-air bundle updates: the ``swap_bundle`` command, an atomic active-bundle pointer, a health
window after every switch and a rollback the device does by itself.

The fleet (``edgekit deploy``) drives one transfer with ``swap_bundle`` actions:

``begin``  ``{transfer_id, archive_sha256, archive_bytes, chunk_bytes}`` → which chunks the device already
           has (a transfer interrupted by a restart resumes);
``chunk``  ``{transfer_id, index, data (base64), sha256}`` → each chunk is checked against its own sha256
           and kept as its own file under ``DATA/ota/staging/ID/``;
``commit`` ``{transfer_id, health {…}}`` → the archive's sha256 is checked, the bundle is extracted and
           verified (hashes and, per the agent's policy, signature) into ``DATA/ota/store/``, self-tested on
           its own interpreter while the old one keeps serving, then switched in. Progress answers
           (``state: "progress"``) name each stage; the final answer says ``phase: "trial"``;
``status``, ``abort``, ``rollback`` (manual).

The switch writes ``DATA/ota/active.json`` (write, fsync, rename, fsync the directory) *before* the
interpreter changes: ``{"current", "previous", "state": "trial"}``. A health window follows (error rate,
p99 invoke latency against the old bundle, accuracy on labelled inputs against the old bundle); it ends
with ``state: "committed"`` and a ``health_check`` event, or with a rollback (``rollback`` event), all
by the device itself. At start-up (:func:`startup_bundle`) a pointer still in ``trial`` means the agent
died or stopped during a health window: the old bundle is restored. So a ``kill -9`` at any moment
leaves a working bundle: before the rename the old pointer holds, after it the restart rolls back.

The manager talks to the agent only through :class:`~edgekit_agent.ota.target.UpdateTarget` (activate a bundle,
the health window's recorder, events and answers); each action's result is a typed value of
:mod:`edgekit_agent.ota.results`, turned into the answer's JSON by :meth:`OtaManager.handle`.

``EDGEKIT_OTA_PAUSE="stage:seconds,…"`` sleeps at a stage (``chunk`` before each chunk is stored,
``received``, ``verified``, ``selftested``, ``switched``): a fault-injection point for the kill -9 tests,
documented so nobody is surprised by it.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit_agent.bundle.selftest import run_selftest
from edgekit_agent.contract.digest import sha256
from edgekit_agent.contract.errors import (
    BusyError,
    EdgekitError,
    InputError,
    IntegrityError,
    SelfTestError,
    StorageError,
)
from edgekit_agent.contract.limits import MAX_ARCHIVE_BYTES, MAX_OTA_CHUNKS, OTA_CHUNK_BYTES
from edgekit_agent.contract.topics import Schema
from edgekit_agent.mqtt.commands import Arg, Command, CommandSpec
from edgekit_agent.ota.health import Check, HealthPolicy, HealthStats, TallyRecorder, judge
from edgekit_agent.ota.results import (
    Aborted,
    Begun,
    ChunkStored,
    Committed,
    OtaStatus,
    RolledBack,
    TransferStatus,
    TrialStatus,
)
from edgekit_agent.ota.slots import (
    PENDING_EVENTS,
    Pointer,
    Slot,
    factory_id,
    load_for,
    ota_dir,
    read_pointer,
    write_json_atomic,
    write_pointer,
)

if TYPE_CHECKING:
    from edgekit_agent.bundle.load import Bundle
    from edgekit_agent.bundle.selftest import SelfTestResult
    from edgekit_agent.infer.runtime import Runtime
    from edgekit_agent.ota.target import Serving, UpdateTarget

log = logging.getLogger(__name__)

ACTIONS = ("begin", "chunk", "commit", "status", "abort", "rollback")
PAUSE_ENV = "EDGEKIT_OTA_PAUSE"
_TRANSFER_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _pause(stage: str) -> None:
    """Fault injection for the kill -9 tests (see the module docstring)."""
    spec = os.environ.get(PAUSE_ENV, "")
    for item in spec.split(","):
        name, _, seconds = item.partition(":")
        if name.strip() == stage:
            log.warning("%s=%s: pausing %s s at stage %s", PAUSE_ENV, spec, seconds, stage)
            time.sleep(float(seconds or 0))


# --- transfers ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transfer:
    transfer_id: str
    archive_sha256: str
    archive_bytes: int
    chunk_bytes: int

    @property
    def chunks(self) -> int:
        return -(-self.archive_bytes // self.chunk_bytes)

    def chunk_size(self, index: int) -> int:
        return min(self.chunk_bytes, self.archive_bytes - index * self.chunk_bytes)


@dataclass
class _Trial:
    transfer_id: str
    cmd_id: str
    policy: HealthPolicy
    started: float
    replaced: Serving  # what served before the switch: its interpreter stays open for a rollback
    old_slot: Slot
    new_slot: Slot
    baseline: HealthStats
    reference_accuracy: float | None
    done: threading.Event = field(default_factory=threading.Event)


class OtaManager:
    """The device side of OTA for one agent (see the module docstring); :meth:`command_spec` is its command."""

    def __init__(self, agent: UpdateTarget) -> None:
        self.agent = agent
        self.data = Path(agent.settings.data_dir)
        self.root = ota_dir(self.data)
        self.staging = self.root / "staging"
        self.store = self.root / "store"
        self._lock = threading.RLock()  # one commit / switch / rollback at a time
        self._trial: _Trial | None = None
        pointer = read_pointer(self.data)
        here = Slot.of(agent.bundle, agent.settings.bundle and Path(agent.settings.bundle).resolve())
        if pointer is None or (pointer.current.name, pointer.current.version, pointer.current.sha256) != (
            here.name,
            here.version,
            here.sha256,
        ):
            # Not started through startup_bundle (library use), or the pointer is stale: what runs is the truth.
            pointer = Pointer(here, None, "committed", int(time.time() * 1000), "", factory_id(agent.settings.bundle))
        self.pointer = pointer
        # Telemetry plus a rolling tally, so a health window can compare with the bundle before it.
        agent.use_recorder(TallyRecorder)
        self._prune_store()

    def _point(self, current: Slot, previous: Slot | None, state: str, transfer_id: str) -> None:
        """Write the active-bundle pointer (atomically), keeping the identity of the command-line bundle."""
        self.pointer = Pointer(current, previous, state, int(time.time() * 1000), transfer_id, self.pointer.factory)
        write_pointer(self.data, self.pointer)

    # --- wiring -----------------------------------------------------------------------------------------------
    def command_spec(self) -> CommandSpec:
        hex64 = Arg(str, None, check=lambda v: bool(_HEX64.match(v)), expect="64 lowercase hex digits (sha256)")
        return CommandSpec(
            "swap_bundle",
            self.handle,
            {
                "action": Arg(
                    str, None, required=True, check=lambda v: v in ACTIONS, expect=f"one of {', '.join(ACTIONS)}"
                ),
                "transfer_id": Arg(
                    str, None, check=lambda v: bool(_TRANSFER_ID.match(v)), expect="1-64 characters A-Z a-z 0-9 _ . -"
                ),
                "archive_sha256": hex64,
                "archive_bytes": Arg(
                    int, None, check=lambda v: 0 < v <= MAX_ARCHIVE_BYTES, expect=f"1..{MAX_ARCHIVE_BYTES} bytes"
                ),
                "chunk_bytes": Arg(
                    int,
                    OTA_CHUNK_BYTES,
                    check=lambda v: 1024 <= v <= OTA_CHUNK_BYTES,
                    expect=f"1024..{OTA_CHUNK_BYTES}",
                ),
                "index": Arg(int, None, check=lambda v: 0 <= v < MAX_OTA_CHUNKS, expect=f"0..{MAX_OTA_CHUNKS - 1}"),
                "data": Arg(str, None, expect="base64 of the chunk's bytes"),
                "sha256": hex64,
                "health": Arg(dict, None, expect="an object of health settings"),
                "name": Arg(str, None, check=lambda v: len(v) <= 128, expect="a bundle name"),
                "version": Arg(str, None, check=lambda v: len(v) <= 64, expect="a bundle version"),
            },
            doc="OTA: begin/chunk/commit a bundle transfer, status, abort, rollback",
        )

    def publish_pending_events(self) -> None:
        """Events decided at start-up (a rollback after a restart), sent once the agent can publish."""
        path = self.root / PENDING_EVENTS
        try:
            events = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        for ev in events if isinstance(events, list) else []:
            kind = ev.pop("event", "rollback")
            self.agent.event(kind, bundle=self.agent.bundle_info(), **ev)
        path.unlink(missing_ok=True)

    def handle(self, cmd: Command) -> dict[str, Any]:
        """The ``swap_bundle`` handler: one action, its typed result as the answer's JSON."""
        action = cmd.args["action"]
        handler: Callable[[Command], Begun | ChunkStored | Committed | OtaStatus | Aborted | RolledBack] = {
            "begin": self._begin,
            "chunk": self._chunk,
            "commit": self._commit,
            "status": self._status,
            "abort": self._abort,
            "rollback": self._rollback_cmd,
        }[action]
        return handler(cmd).to_dict()

    def _need(self, cmd: Command, *names: str) -> list[Any]:
        missing = [n for n in names if cmd.args.get(n) is None]
        if missing:
            raise InputError(f"swap_bundle {cmd.args['action']} needs {', '.join(missing)}.")
        return [cmd.args[n] for n in names]

    def _progress(self, cmd: Command, stage: str, **details: Any) -> None:
        body = {
            "schema": Schema.COMMAND_RESPONSE,
            "cmd_id": cmd.cmd_id,
            "name": cmd.name,
            "state": "progress",
            "progress": {"stage": stage, **details},
        }
        if cmd.correlation_data is not None:  # MQTT 3.1.1 requesters match answers by the payload's copy
            body["correlation_data"] = cmd.correlation_data
        self.agent.respond(cmd.response_topic, body, cmd.correlation)

    # --- begin / chunk ----------------------------------------------------------------------------------------
    def _transfer_dir(self, transfer_id: str) -> Path:
        return self.staging / transfer_id

    def _load_transfer(self, transfer_id: str) -> Transfer:
        try:
            doc = json.loads((self._transfer_dir(transfer_id) / "transfer.json").read_text(encoding="utf-8"))
            return Transfer(**doc)
        except (OSError, ValueError, TypeError):
            raise InputError(f"swap_bundle: no transfer '{transfer_id}' on this device; send 'begin' first.") from None

    def _have(self, t: Transfer) -> list[int]:
        d = self._transfer_dir(t.transfer_id) / "chunks"
        have = []
        for p in d.glob("*.bin") if d.is_dir() else []:
            try:
                i = int(p.stem)
                # A power cut can leave a renamed chunk file shorter than it was written: not had, sent again.
                if i < t.chunks and p.stat().st_size == t.chunk_size(i):
                    have.append(i)
            except (ValueError, OSError):
                continue
        return sorted(have)

    def _begin(self, cmd: Command) -> Begun:
        tid, sha, size = self._need(cmd, "transfer_id", "archive_sha256", "archive_bytes")
        t = Transfer(tid, sha, int(size), int(cmd.args["chunk_bytes"]))
        if t.chunks > MAX_OTA_CHUNKS:
            raise InputError(f"swap_bundle: {t.chunks} chunks is over the limit of {MAX_OTA_CHUNKS}.")
        with self._lock:
            for other in self.staging.iterdir() if self.staging.is_dir() else []:
                if other.name != tid:  # one transfer at a time: the newest deploy wins
                    shutil.rmtree(other, ignore_errors=True)
            d = self._transfer_dir(tid)
            try:
                if d.is_dir() and self._load_transfer(tid) != t:
                    shutil.rmtree(d)  # same id, different archive: start over
            except InputError:
                shutil.rmtree(d, ignore_errors=True)
            try:
                (d / "chunks").mkdir(parents=True, exist_ok=True)
                free = shutil.disk_usage(self.root).free
            except OSError as exc:
                raise StorageError(f"{d}: cannot create the staging directory ({exc.strerror}).") from None
            if free < 3 * t.archive_bytes + (1 << 20):  # archive + extracted copy + slack
                raise StorageError(
                    f"{self.root}: {free} bytes free, a {t.archive_bytes}-byte bundle needs about "
                    f"{3 * t.archive_bytes}."
                )
            write_json_atomic(d / "transfer.json", asdict(t))
            have = self._have(t)
        return Begun(tid, t.chunks, have, t.chunk_bytes)

    def _chunk(self, cmd: Command) -> ChunkStored:
        tid, index, data, sha = self._need(cmd, "transfer_id", "index", "data", "sha256")
        t = self._load_transfer(tid)
        if index >= t.chunks:
            raise InputError(f"swap_bundle: chunk {index} is past the last chunk ({t.chunks - 1}) of transfer {tid}.")
        if len(data) > 4 * (-(-t.chunk_bytes // 3)) + 4:
            raise InputError(f"swap_bundle: chunk {index} carries more base64 than a {t.chunk_bytes}-byte chunk.")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"swap_bundle: chunk {index} is not valid base64.") from None
        if len(raw) != t.chunk_size(index):
            raise IntegrityError(
                f"swap_bundle: chunk {index} of {tid} is {len(raw)} bytes, expected {t.chunk_size(index)}; resend it."
            )
        digest = sha256(raw).hexdigest()
        if digest != sha:
            raise IntegrityError(
                f"swap_bundle: chunk {index} of {tid} has sha256 {digest[:16]}…, the sender said {sha[:16]}…; "
                "resend it."
            )
        _pause("chunk")
        path = self._transfer_dir(tid) / "chunks" / f"{index:06d}.bin"
        tmp = path.with_suffix(".part")
        try:
            tmp.write_bytes(raw)
            os.replace(tmp, path)  # a chunk file exists only complete: a restart resumes from the rest
        except OSError as exc:
            raise StorageError(f"{path}: cannot write chunk {index} ({exc.strerror}).") from None
        return ChunkStored(tid, index, len(self._have(t)), t.chunks)

    def _abort(self, cmd: Command) -> Aborted:
        (tid,) = self._need(cmd, "transfer_id")
        shutil.rmtree(self._transfer_dir(tid), ignore_errors=True)
        return Aborted(tid)

    # --- commit: verify, self-test, switch, watch -----------------------------------------------------------------
    def _assemble(self, t: Transfer) -> Path:
        have = set(self._have(t))
        missing = [i for i in range(t.chunks) if i not in have]
        if missing:
            raise InputError(
                f"swap_bundle: transfer {t.transfer_id} misses chunks {missing[:10]}"
                f"{'…' if len(missing) > 10 else ''}; send them, then commit."
            )
        d = self._transfer_dir(t.transfer_id)
        archive = d / "bundle.tar.gz"
        h = sha256()
        try:
            with open(archive, "wb") as out:
                for i in range(t.chunks):
                    data = (d / "chunks" / f"{i:06d}.bin").read_bytes()
                    h.update(data)
                    out.write(data)
        except OSError as exc:
            raise StorageError(f"{archive}: cannot assemble the archive ({exc.strerror}).") from None
        if h.hexdigest() != t.archive_sha256:
            shutil.rmtree(d, ignore_errors=True)
            raise IntegrityError(
                f"swap_bundle: the assembled archive of {t.transfer_id} has sha256 {h.hexdigest()[:16]}…, "
                f"the sender said {t.archive_sha256[:16]}…; the transfer was discarded, deploy again."
            )
        return archive

    def _commit(self, cmd: Command) -> Committed:
        (tid,) = self._need(cmd, "transfer_id")
        policy = HealthPolicy.from_args(cmd.args.get("health"))
        t0 = time.monotonic()
        if not self._lock.acquire(blocking=False):
            raise BusyError("swap_bundle: another update or rollback is running; retry when it is done.")
        try:
            if self._trial is not None and not self._trial.done.is_set():
                raise BusyError(
                    f"swap_bundle: the health window of {self._trial.new_slot.label()} is still running; "
                    "retry after it."
                )
            t = self._load_transfer(tid)
            archive = self._assemble(t)
            self._progress(cmd, "received", bytes=t.archive_bytes, elapsed_ms=_ms(t0))
            _pause("received")
            self.store.mkdir(parents=True, exist_ok=True)
            try:
                bundle = load_for(self.agent.settings, archive, workdir=self.store)
            except EdgekitError as exc:
                self._prune_store()  # what load_bundle extracted before it refused
                self.agent.event(
                    "bundle_rejected", transfer_id=tid, cmd_id=cmd.cmd_id, reason=str(exc), code=type(exc).__name__
                )
                raise
            finally:
                shutil.rmtree(self._transfer_dir(tid), ignore_errors=True)
            self._progress(
                cmd,
                "verified",
                bundle=f"{bundle.manifest.name} {bundle.manifest.version}",
                signed_by=bundle.signed_by,
                elapsed_ms=_ms(t0),
            )
            _pause("verified")
            try:
                runtime = bundle.open_runtime(num_threads=self.agent.settings.num_threads)
                selftest = run_selftest(bundle, runtime) if not self.agent.settings.skip_selftest else None
            except EdgekitError as exc:
                shutil.rmtree(bundle.directory.parent, ignore_errors=True)
                kind = "selftest_failed" if isinstance(exc, SelfTestError) else "bundle_rejected"
                self.agent.event(
                    kind,
                    transfer_id=tid,
                    cmd_id=cmd.cmd_id,
                    reason=str(exc),
                    bundle={"name": bundle.manifest.name, "version": bundle.manifest.version},
                )
                raise
            self._progress(cmd, "selftested", selftest=selftest.to_dict() if selftest else None, elapsed_ms=_ms(t0))
            _pause("selftested")
            activated_ms = self._switch(cmd, tid, bundle, runtime, policy, selftest)
            return Committed(tid, self.agent.bundle_info(), bundle.signed_by, selftest, policy, activated_ms, _ms(t0))
        finally:
            self._lock.release()

    def _switch(
        self,
        cmd: Command,
        tid: str,
        bundle: Bundle,
        runtime: Runtime,
        policy: HealthPolicy,
        selftest: SelfTestResult | None,
    ) -> float:
        agent = self.agent
        old_rec = agent.recorder
        baseline = old_rec.stats() if isinstance(old_rec, TallyRecorder) else HealthStats(0, 0, None, 0, 0, 0)
        old_slot = self.pointer.current
        new_slot = Slot.of(bundle, bundle.directory, tid)
        # The pointer first: from here a restart rolls back (state "trial"), before here the old one holds.
        self._point(new_slot, old_slot, "trial", tid)
        t_switch = time.monotonic()
        replaced = agent.activate(bundle, runtime, selftest)  # one step under the interpreter lock
        activated_ms = round((time.monotonic() - t_switch) * 1000, 3)
        agent.report_window(replaced.recorder)  # the old bundle's partial window, reported as the old bundle's
        _pause("switched")
        ref = bundle.manifest.metrics.get("int8_accuracy")
        self._trial = _Trial(
            tid,
            cmd.cmd_id,
            policy,
            time.monotonic(),
            replaced,
            old_slot,
            new_slot,
            baseline,
            float(ref) if isinstance(ref, (int, float)) and 0 <= ref <= 1 else None,
        )
        agent.event(
            "bundle_activated",
            bundle=agent.bundle_info(),
            phase="trial",
            transfer_id=tid,
            cmd_id=cmd.cmd_id,
            previous=asdict(old_slot),
            health=policy.to_dict(),
            selftest=selftest.to_dict() if selftest else None,
        )
        agent.publish_meta()
        threading.Thread(target=self._watch, args=(self._trial,), name="edgekit-ota-health", daemon=True).start()
        return activated_ms

    def _watch(self, trial: _Trial) -> None:
        """The health window's thread. Whatever goes wrong in it (a full disk while switching back, say), the
        trial ends: otherwise every later update would be refused as BUSY until a restart."""
        try:
            self._judge(trial)
        except Exception:  # noqa: BLE001 - logged; the pointer keeps what it had, a restart resolves "trial"
            log.exception("%s: the health window of %s failed", self.agent.settings.device_id, trial.transfer_id)
        finally:
            trial.done.set()

    def _judge(self, trial: _Trial) -> None:
        """The health window: fail early on errors, judge everything at its end."""
        policy = trial.policy
        end = trial.started + policy.window_s
        checks: list[Check] = []
        while True:
            now = time.monotonic()
            rec = self.agent.recorder  # read each time: a rollback replaces it
            stats = (
                rec.stats(trial.started, trial.started + policy.latency_warmup_s)
                if isinstance(rec, TallyRecorder)
                else HealthStats(0, 0, None, 0, 0, 0)
            )
            early = stats.requests >= max(policy.min_requests, 20) and stats.error_rate > policy.max_error_rate
            if early or now >= end:
                checks = judge(policy, stats, trial.baseline, trial.reference_accuracy)
                break
            if trial.done.wait(min(0.25, end - now)):  # a manual rollback ended it
                return
            if self.agent.stopping:
                return  # the pointer stays in "trial": the next start rolls back, as documented
        failed = [c for c in checks if not c.passed]
        with self._lock:
            if trial.done.is_set():  # a manual rollback came first
                return
            if failed:
                reason = "; ".join(f"{c.name} {c.value} beyond {c.limit}" for c in failed)
                self._rollback(trial, f"health check failed: {reason}", stats, checks)
            else:
                self._point(trial.new_slot, trial.old_slot, "committed", trial.transfer_id)
                trial.done.set()
                trial.replaced.runtime.close()
                self.agent.event(
                    "health_check",
                    verdict="passed",
                    transfer_id=trial.transfer_id,
                    cmd_id=trial.cmd_id,
                    bundle=self.agent.bundle_info(),
                    stats=stats.to_dict(),
                    baseline=trial.baseline.to_dict(),
                    checks=[asdict(c) for c in checks],
                    window_s=round(time.monotonic() - trial.started, 3),
                )
                self._prune_store()
                self.agent.publish_meta()  # "bundles" now says committed

    def _rollback(self, trial: _Trial, reason: str, stats: HealthStats | None, checks: list[Check]) -> float:
        """Back to the bundle before ``trial`` (its interpreter was kept open for this). Caller holds the lock."""
        agent = self.agent
        t0 = time.monotonic()
        failed_info = agent.bundle_info()
        old = trial.replaced
        failed = agent.activate(old.bundle, old.runtime, old.selftest)
        took_ms = round((time.monotonic() - t0) * 1000, 3)
        agent.report_window(failed.recorder)
        self._point(trial.old_slot, None, "committed", trial.transfer_id)
        trial.done.set()
        failed.runtime.close()
        if checks:
            agent.event(
                "health_check",
                verdict="failed",
                transfer_id=trial.transfer_id,
                cmd_id=trial.cmd_id,
                bundle=failed_info,
                stats=stats.to_dict() if stats else None,
                baseline=trial.baseline.to_dict(),
                checks=[asdict(c) for c in checks],
            )
        agent.event(
            "rollback",
            reason=reason,
            transfer_id=trial.transfer_id,
            cmd_id=trial.cmd_id,
            bundle=agent.bundle_info(),
            **{"from": failed_info},
            to=asdict(trial.old_slot),
            took_ms=took_ms,
            after_s=round(time.monotonic() - trial.started, 3),
        )
        agent.publish_meta()
        self._prune_store()
        log.warning("%s: rolled back to %s: %s", agent.settings.device_id, trial.old_slot.label(), reason)
        return took_ms

    def _rollback_cmd(self, cmd: Command) -> RolledBack:
        """Manual rollback: end a running health window now, or go back to the previous committed bundle."""
        with self._lock:
            trial = self._trial
            if trial is not None and not trial.done.is_set():
                took = self._rollback(trial, f"requested by the fleet (cmd {cmd.cmd_id})", None, [])
                return RolledBack(trial.old_slot, took)
            prev = self.pointer.previous
            if prev is None:
                raise InputError(f"{self.agent.settings.device_id} has no previous bundle to roll back to.")
            t0 = time.monotonic()
            bundle = load_for(self.agent.settings, prev.source, workdir=self.data / "bundles")
            runtime = bundle.open_runtime(num_threads=self.agent.settings.num_threads)
            selftest = run_selftest(bundle, runtime) if not self.agent.settings.skip_selftest else None
            current = self.pointer.current
            self._point(prev, current, "committed", "")
            replaced = self.agent.activate(bundle, runtime, selftest)
            self.agent.report_window(replaced.recorder)
            replaced.runtime.close()
            self._clean_extractions()
            took = round((time.monotonic() - t0) * 1000, 3)
            self.agent.event(
                "rollback",
                reason=f"requested by the fleet (cmd {cmd.cmd_id})",
                bundle=self.agent.bundle_info(),
                **{"from": asdict(current)},
                to=asdict(prev),
                took_ms=took,
            )
            self.agent.publish_meta()
            return RolledBack(prev, took)

    def installed(self) -> list[dict[str, Any]]:
        """The bundles on the device for ``meta``: the active one, and the previous one kept for rollback."""
        active = {
            **self.agent.bundle_info(),
            "active": True,
            "directory": str(self.agent.bundle.directory),
            "state": self.pointer.state,
        }
        prev = self.pointer.previous
        return [active] + (
            [
                {
                    "name": prev.name,
                    "version": prev.version,
                    "sha256": prev.sha256,
                    "active": False,
                    "source": prev.source,
                }
            ]
            if prev
            else []
        )

    def _status(self, cmd: Command) -> OtaStatus:
        trial = self._trial
        running = trial is not None and not trial.done.is_set()
        transfers = []
        for d in sorted(self.staging.iterdir()) if self.staging.is_dir() else []:
            try:
                t = self._load_transfer(d.name)
            except InputError:
                continue
            transfers.append(TransferStatus(t.transfer_id, t.chunks, len(self._have(t))))
        return OtaStatus(
            self.agent.bundle_info(),
            self.pointer,
            TrialStatus(trial.transfer_id, round(time.monotonic() - trial.started, 3), trial.policy.window_s)
            if running
            else None,
            transfers,
        )

    def _clean_extractions(self) -> None:
        """Remove archive extractions in ``data/bundles`` other than the one being served (each manual rollback
        to an archive extracts it again; without this they pile up until the next start)."""
        root = self.data / "bundles"
        if not root.is_dir():
            return
        active = Path(self.agent.bundle.directory).resolve()
        for entry in root.iterdir():
            if entry.is_dir() and entry.resolve() not in active.parents and entry.resolve() != active:
                shutil.rmtree(entry, ignore_errors=True)

    def _prune_store(self) -> None:
        """Keep only the store entries the pointer names (current and previous)."""
        if not self.store.is_dir():
            return
        keep = {Path(s.source).resolve() for s in (self.pointer.current, self.pointer.previous) if s is not None}
        trial = self._trial
        if trial is not None and not trial.done.is_set():
            keep.add(Path(trial.new_slot.source).resolve())
        for entry in self.store.iterdir():
            inner = {p.resolve() for p in entry.iterdir()} if entry.is_dir() else set()
            if not (inner & keep) and entry.resolve() not in keep:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def _ms(t0: float) -> float:
    return round((time.monotonic() - t0) * 1000, 3)


__all__ = ["ACTIONS", "PAUSE_ENV", "OtaManager", "Transfer"]
