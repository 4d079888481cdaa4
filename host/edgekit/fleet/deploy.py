"""Deploy a bundle to devices over MQTT (OTA): chunks through ``swap_bundle``, then watch what each device did.

Per device, over one broker connection (one worker thread each):

1. ``begin`` with the archive's size and sha256 (the answer lists chunks the device already holds, so an
   interrupted transfer resumes);
2. ``chunk`` commands, a few in flight, each with the chunk's own sha256 (a chunk the device found
   corrupt is sent again);
3. ``commit`` with the health policy: the device answers ``progress`` (received, verified, selftested)
   and then ``succeeded`` with ``phase: "trial"`` once the new bundle serves;
4. the device's ``events``: ``health_check`` passed (committed) or ``rollback`` (it went back by itself).

The result per device is a frozen :class:`DeviceDeploy` with the timings the docs quote: transfer time,
command → active, command → committed, and the device's own rollback time.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import queue
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgekit.fleet.command_client import CommandClient, Pending
from edgekit.fleet.connection import FleetLink
from edgekit.fleet.state import load_json
from edgekit_agent.contract.broker import BrokerAddress
from edgekit_agent.contract.envelope import Answer, ErrorCode, State
from edgekit_agent.contract.errors import BrokerError, BundleError, UsageError
from edgekit_agent.contract.limits import MAX_ARCHIVE_BYTES, OTA_CHUNK_BYTES
from edgekit_agent.contract.topics import EVENTS, parse_topic, topic
from edgekit_agent.mqtt.client import Message

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 3  # chunk commands in flight per device (the agent queues 4 commands)
# The device asks for a retry (its queue is full): the same command again after a pause.
RETRYABLE_CODES = {ErrorCode.BUSY}

#: on_progress(device_id, stage, done, total): stage is begin, chunks, received, verified, selftested,
#: trial, committed, rolled_back, failed.
ProgressFn = Callable[[str, str, int, int], None]


@dataclass(frozen=True, slots=True)
class DeviceDeploy:
    """What happened on one device."""

    device_id: str
    outcome: str  # committed | trial (not waited for) | rolled_back | rejected | failed | timeout
    transfer_id: str
    chunks: int
    resumed_chunks: int
    transfer_s: float | None  # begin sent → every chunk acknowledged
    activate_s: float | None  # begin sent → the new bundle serves (commit answered, phase trial)
    committed_s: float | None  # begin sent → health window passed
    rollback: Mapping[str, Any] | None = None  # the device's rollback event (reason, took_ms, after_s)
    error: Mapping[str, Any] | None = None  # {code, message} of a refused or failed command
    stages: tuple[str, ...] = ()
    health: Mapping[str, Any] | None = None  # the health_check event (stats, checks)
    commit: Mapping[str, Any] | None = None  # the device's commit result (switch time, self-test, signer)

    @property
    def ok(self) -> bool:
        return self.outcome in ("committed", "trial")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


@dataclass(frozen=True, slots=True)
class DeployReport:
    """A deployment of one archive to several devices."""

    archive: Path
    archive_sha256: str
    archive_bytes: int
    devices: tuple[DeviceDeploy, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.devices)

    def to_dict(self) -> dict[str, Any]:
        return {
            "archive": str(self.archive),
            "archive_sha256": self.archive_sha256,
            "archive_bytes": self.archive_bytes,
            "seconds": self.seconds,
            "ok": self.ok,
            "devices": [d.to_dict() for d in self.devices],
        }


def resolve_archive(bundle: str | Path, workdir: Path) -> Path:
    """The ``.tar.gz`` to send: the path itself, or a fresh archive of a bundle directory (so a signature
    added to the directory after its archive was written is included)."""
    bundle = Path(bundle)
    if bundle.is_file():
        return bundle
    if bundle.is_dir():
        from edgekit.package.writer import write_archive

        return write_archive(bundle, workdir / f"{bundle.name}.tar.gz")
    raise UsageError(f"{bundle}: no such bundle directory or archive.")


def _dict(v: Any) -> dict[str, Any]:
    """``v`` when it is a JSON object, else empty: device answers are untrusted input."""
    return v if isinstance(v, dict) else {}


def _error(answer: Answer) -> dict[str, Any] | None:
    return answer.error.to_json() if answer.error is not None else None


class _Worker:
    """The state machine of one device's deployment."""

    def __init__(
        self,
        client: CommandClient,
        device_id: str,
        data: bytes,
        sha: str,
        transfer_id: str,
        chunk_bytes: int,
        health: Mapping[str, Any],
        window: int,
        wait_health: bool,
        timeout: float,
        on_progress: ProgressFn | None,
    ) -> None:
        self.client, self.device_id, self.data, self.sha = client, device_id, data, sha
        self.transfer_id, self.chunk_bytes, self.health = transfer_id, chunk_bytes, dict(health)
        self.window, self.wait_health, self.timeout = window, wait_health, timeout
        self.deadline = time.monotonic() + timeout
        self.on_progress = on_progress
        self.inbox: queue.Queue[dict[str, Any]] = queue.Queue()  # this transfer's events (dispatcher thread puts)
        self.answered = threading.Event()  # set whenever an answer to one of our commands arrives
        self.events: list[dict[str, Any]] = []
        self.stages: list[str] = []
        self.result: DeviceDeploy | None = None
        self.commit: dict[str, Any] | None = None

    # --- messages -------------------------------------------------------------------------------------------
    def _report(self, stage: str, done: int = 0, total: int = 0) -> None:
        if self.on_progress:
            self.on_progress(self.device_id, stage, done, total)

    def _on_answer(self, answer: Answer) -> None:
        if answer.state == State.PROGRESS:
            stage = str(answer.progress.get("stage", "?"))[:40]
            self.stages.append(stage)
            self._report(stage)

    def _send(self, args: Mapping[str, Any]) -> Pending:
        return self.client.send(self.device_id, "swap_bundle", args, timeout_s=self.timeout, wake=self.answered)

    def _call(self, args: Mapping[str, Any]) -> Answer:
        """One command, retried while the device says BUSY; returns the final answer."""
        while True:
            pending = self._send(args)
            answer = pending.wait(max(0.0, self.deadline - time.monotonic()), self._on_answer)
            if answer is None:
                raise TimeoutError(pending.request.cmd_id)
            if answer.state in (State.REJECTED, State.FAILED) and answer.error and answer.error.code in RETRYABLE_CODES:
                time.sleep(0.2)
                continue
            return answer

    def _event(self, *kinds: str) -> dict[str, Any] | None:
        for ev in self.events:
            if ev.get("event") in kinds:
                return ev
        return None

    def _wait_event(self, wait: float) -> None:
        """Move the events that arrived (waiting up to ``wait`` s for the first) to :attr:`events`."""
        try:
            self.events.append(self.inbox.get(timeout=max(0.0, wait)))
            while True:
                self.events.append(self.inbox.get_nowait())
        except queue.Empty:
            pass

    # --- the deployment ---------------------------------------------------------------------------------------
    def run(self) -> None:
        t0 = time.monotonic()
        n = -(-len(self.data) // self.chunk_bytes)
        base = {"transfer_id": self.transfer_id}

        def done(outcome: str, **kw: Any) -> None:
            self.result = DeviceDeploy(
                self.device_id,
                outcome,
                self.transfer_id,
                n,
                kw.pop("resumed", 0),
                kw.pop("transfer_s", None),
                kw.pop("activate_s", None),
                kw.pop("committed_s", None),
                stages=tuple(self.stages),
                commit=self.commit,
                **kw,
            )
            self._report(outcome, n, n)

        try:
            self._report("begin", 0, n)
            ans = self._call(
                {
                    **base,
                    "action": "begin",
                    "archive_sha256": self.sha,
                    "archive_bytes": len(self.data),
                    "chunk_bytes": self.chunk_bytes,
                }
            )
            if ans.state != State.SUCCEEDED:
                return done("rejected" if ans.state == State.REJECTED else "failed", error=_error(ans))
            have = {i for i in _dict(ans.result).get("have") or [] if isinstance(i, int) and not isinstance(i, bool)}
            todo = [i for i in range(n) if i not in have]
            inflight: dict[int, Pending] = {}
            tries = {i: 0 for i in todo}
            sent = len(have)
            self._report("chunks", sent, n)
            while todo or inflight:
                while todo and len(inflight) < self.window:
                    i = todo.pop(0)
                    chunk = self.data[i * self.chunk_bytes : (i + 1) * self.chunk_bytes]
                    inflight[i] = self._send(
                        {
                            **base,
                            "action": "chunk",
                            "index": i,
                            "data": base64.b64encode(chunk).decode("ascii"),
                            "sha256": hashlib.sha256(chunk).hexdigest(),
                        }
                    )
                if time.monotonic() > self.deadline:
                    raise TimeoutError("chunks")
                self.answered.wait(0.2)
                self.answered.clear()  # before polling: an answer arriving now sets it again
                for i, pending in list(inflight.items()):
                    answer = pending.poll()
                    if answer is None:
                        continue
                    del inflight[i]
                    code = answer.error.code if answer.error else None
                    if answer.state == State.SUCCEEDED:
                        sent += 1
                        self._report("chunks", sent, n)
                    elif code in RETRYABLE_CODES | {ErrorCode.CHECKSUM_MISMATCH} and tries[i] < 3:
                        tries[i] += 1
                        todo.insert(0, i)  # resend
                    else:
                        return done("failed", error=_error(answer), resumed=len(have))
            transfer_s = round(time.monotonic() - t0, 3)
            ans = self._call({**base, "action": "commit", "health": self.health})
            if ans.state != State.SUCCEEDED:
                return done(
                    "rejected" if ans.state == State.REJECTED else "failed",
                    error=_error(ans),
                    resumed=len(have),
                    transfer_s=transfer_s,
                )
            activate_s = round(time.monotonic() - t0, 3)
            self.commit = _dict(ans.result)
            self._report("trial", n, n)
            if not self.wait_health:
                return done("trial", resumed=len(have), transfer_s=transfer_s, activate_s=activate_s)
            while True:
                ev = self._event("rollback")
                if ev is not None:
                    hc = self._event("health_check")
                    return done(
                        "rolled_back",
                        rollback=ev,
                        health=hc,
                        resumed=len(have),
                        transfer_s=transfer_s,
                        activate_s=activate_s,
                        error={"code": "HEALTH_CHECK_FAILED", "message": str(ev.get("reason"))},
                    )
                hc = self._event("health_check")
                if hc is not None and hc.get("verdict") == "passed":
                    return done(
                        "committed",
                        health=hc,
                        resumed=len(have),
                        transfer_s=transfer_s,
                        activate_s=activate_s,
                        committed_s=round(time.monotonic() - t0, 3),
                    )
                if time.monotonic() > self.deadline:
                    raise TimeoutError("health")
                self._wait_event(0.2)
        except TimeoutError as exc:
            done(
                "timeout",
                error={
                    "code": "TIMEOUT",
                    "message": f"no answer from {self.device_id} while waiting for {exc}; is it online?",
                },
            )
        except BrokerError as exc:
            done("failed", error={"code": "UNAVAILABLE", "message": str(exc)})
        except Exception as exc:  # noqa: BLE001 - an answer that breaks the protocol: this device failed, say why
            log.warning("%s: deploy stopped on a malformed answer (%s: %s)", self.device_id, type(exc).__name__, exc)
            done(
                "failed",
                error={
                    "code": "INVALID_ANSWER",
                    "message": f"{self.device_id} sent an answer edgekit cannot read ({type(exc).__name__}: {exc})",
                },
            )


def deploy(
    bundle: str | Path,
    devices: Sequence[str],
    broker: str | BrokerAddress,
    *,
    health: Mapping[str, Any] | None = None,
    chunk_bytes: int = OTA_CHUNK_BYTES,
    window: int = DEFAULT_WINDOW,
    timeout: float = 300.0,
    wait_health: bool = True,
    tls_ca: str | Path | None = None,
    on_progress: ProgressFn | None = None,
) -> DeployReport:
    """Send ``bundle`` (a ``.tar.gz`` or bundle directory) to every device in ``devices`` and report.

    ``health`` is the health policy the devices apply (``window_s``, ``max_error_rate``, ``max_p99_ratio``,
    ``max_accuracy_drop``, ``min_requests``, …; see ``edgekit_agent.ota.manager.HealthPolicy``). ``timeout`` bounds
    each device's whole deployment. Devices are updated in parallel.
    """
    if not devices:
        raise UsageError("deploy needs at least one --device.")
    if len(set(devices)) != len(devices):
        raise UsageError(f"a device is named twice in {list(devices)}.")
    if not 1024 <= chunk_bytes <= OTA_CHUNK_BYTES:
        raise UsageError(f"chunk size {chunk_bytes} must be between 1024 and {OTA_CHUNK_BYTES} bytes.")
    with tempfile.TemporaryDirectory(prefix="edgekit-deploy-") as tmp:
        archive = resolve_archive(bundle, Path(tmp))
        data = archive.read_bytes()
    if len(data) > MAX_ARCHIVE_BYTES:
        raise BundleError(f"{archive}: {len(data)} bytes is over the devices' limit of {MAX_ARCHIVE_BYTES} bytes.")
    sha = hashlib.sha256(data).hexdigest()
    # Derived from the content: deploying the same archive again resumes a transfer a restart interrupted.
    transfer_id = f"{sha[:16]}-{chunk_bytes}"
    requester = f"deploy-{uuid.uuid4().hex[:8]}"
    subs = [(topic(d, "res", requester), 1) for d in devices] + [(topic(d, EVENTS), 1) for d in devices]
    t0 = time.monotonic()
    workers: dict[str, _Worker] = {}

    def on_event(m: Message) -> None:  # the client's dispatcher thread: what is not an answer
        parsed = parse_topic(m.topic)
        worker = workers.get(parsed[0]) if parsed is not None and parsed[1] == EVENTS else None
        doc = load_json(m.payload) if worker is not None else None
        if worker is not None and isinstance(doc, dict) and doc.get("transfer_id") == transfer_id:
            worker.inbox.put(doc)

    link = FleetLink(
        broker, client_id=f"edgekit-{requester}", subscriptions=subs, tls_ca=str(tls_ca) if tls_ca else None
    )
    link.start()
    client = CommandClient(link, requester, on_message=on_event)
    for d in devices:
        workers[d] = _Worker(
            client, d, data, sha, transfer_id, chunk_bytes, health or {}, window, wait_health, timeout, on_progress
        )
    threads = [threading.Thread(target=w.run, name=f"edgekit-deploy-{d}", daemon=True) for d, w in workers.items()]
    try:
        client.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout + 5)
    finally:
        client.close()
        link.close()
    results = tuple(
        w.result
        or DeviceDeploy(
            d,
            "timeout",
            transfer_id,
            0,
            0,
            None,
            None,
            None,
            error={"code": "TIMEOUT", "message": "no result"},
        )
        for d, w in workers.items()
    )
    return DeployReport(
        archive=Path(bundle),
        archive_sha256=sha,
        archive_bytes=len(data),
        devices=results,
        seconds=round(time.monotonic() - t0, 3),
    )


__all__ = ["DeployReport", "DeviceDeploy", "deploy", "resolve_archive"]
