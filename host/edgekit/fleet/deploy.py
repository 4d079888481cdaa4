"""Deploy a bundle to devices over MQTT (OTA): chunks through ``swap_bundle``, then watch what each device did.

Per device, over one broker connection (one worker thread each):

1. ``begin`` with the archive's size and sha256 (the answer lists chunks the device already holds, so an
   interrupted transfer resumes);
2. ``chunk`` commands, a few in flight, each with the chunk's own sha256 (a chunk the device found
   corrupt is sent again);
3. ``commit`` with the health policy: the device answers ``progress`` (received, verified, selftested)
   and then ``succeeded`` with ``phase: "trial"`` once the new bundle serves;
4. the device's ``events``: ``health_check`` passed (committed) or ``rollback`` (it went back by itself).

It also watches each device's retained ``status``: when the device comes back ``online`` after being offline
or with a new ``boot_id`` (it restarted), every request still without a final answer is published again with
its ``cmd_id`` (the device answers from its command store, or runs a request it never stored). A device that
restarted answers what it had accepted ``canceled``/``AGENT_RESTARTED``: ``begin`` and chunks are sent again
(both are idempotent), a ``commit`` cut short ends with the device's ``rollback`` event if the switch had
happened (``rolled_back``, with its reason), else ``failed``. A ``rollback`` event ends the deployment at
any step. So a deployment ends with what the device did within seconds of the device being back, and
waits out ``timeout`` only while the device stays away. A request the broker refuses ends it at once:
``not_authorized``.

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
from edgekit_agent.contract.errors import BrokerError, BundleError, NotAuthorizedError, UsageError
from edgekit_agent.contract.limits import MAX_ARCHIVE_BYTES, OTA_CHUNK_BYTES
from edgekit_agent.contract.topics import EVENTS, STATUS, parse_topic, topic
from edgekit_agent.mqtt.client import Message

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 3  # chunk commands in flight per device (the agent queues 4 commands)
# The device asks for a retry (its queue is full): the same command again after a pause.
RETRYABLE_CODES = {ErrorCode.BUSY}
# The agent stopped or died while it held the command: begin and chunks are idempotent, so send them again.
RESTART_CODES = {ErrorCode.AGENT_RESTARTED, ErrorCode.SHUTTING_DOWN}
# After a commit the agent canceled at a restart: how long its rollback event (if it had switched) may take.
ROLLBACK_EVENT_WAIT_S = 5.0

#: on_progress(device_id, stage, done, total): stage is begin, chunks, received, verified, selftested,
#: trial, restarted (the device came back: lost requests are sent again), and the outcome.
ProgressFn = Callable[[str, str, int, int], None]


@dataclass(frozen=True, slots=True)
class DeviceDeploy:
    """What happened on one device."""

    device_id: str
    # committed | trial (not waited for) | rolled_back | rejected | failed | not_authorized | timeout
    outcome: str
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
    restarts: int = 0  # times the device came back (a new boot_id, or online after offline) during the deploy
    resent: int = 0  # requests published again because the device came back or canceled them at a restart

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


def _refused(answer: Answer) -> str:
    """The outcome of a command that did not succeed: refused by the broker, by the device, or failed."""
    if answer.error is not None and answer.error.code == ErrorCode.NOT_AUTHORIZED:
        return "not_authorized"
    return "rejected" if answer.state == State.REJECTED else "failed"


class _RolledBack(Exception):
    """Internal: the device's rollback event for this transfer arrived: that is the outcome."""


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
        self.back = threading.Event()  # the device came back (dispatcher thread sets): resend what is in flight
        self.boot_id: str | None = None
        self.online: bool | None = None
        self.restarts = self.resent = 0
        self._inflight: list[Pending] = []  # requests without a final answer yet (this worker's thread only)

    def on_status(self, doc: Mapping[str, Any]) -> None:
        """Dispatcher thread: the device's retained ``status``."""
        online, boot = doc.get("state") == "online", doc.get("boot_id")
        came_back = online and (self.online is False or (self.boot_id is not None and boot != self.boot_id))
        self.online = online
        if online and isinstance(boot, str):
            self.boot_id = boot
        if came_back:
            self.restarts += 1
            self.back.set()
            self.answered.set()  # wakes a waiting loop

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
        pending = self.client.send(self.device_id, "swap_bundle", args, timeout_s=self.timeout, wake=self.answered)
        self._inflight.append(pending)
        return pending

    def _resend_if_back(self) -> None:
        """The device came back: publish again every request it has not finished (same cmd_id)."""
        if not self.back.is_set():
            return
        self.back.clear()
        self._inflight = [p for p in self._inflight if p.poll() is None]
        self._report("restarted", self.restarts, 0)
        for pending in self._inflight:
            self.client.resend(pending)
            self.resent += 1

    def _wait(self, pending: Pending, what: str) -> Answer:
        """The final answer to ``pending``, resending it when the device comes back; TimeoutError at the deadline."""
        while True:
            self._resend_if_back()
            answer = pending.wait(min(0.2, max(0.0, self.deadline - time.monotonic())), self._on_answer)
            if answer is not None:
                return answer
            if self.rollback_event() is not None:
                raise _RolledBack
            if time.monotonic() > self.deadline:
                raise TimeoutError(what)

    def _call(self, args: Mapping[str, Any], retry: frozenset[str] = frozenset(RETRYABLE_CODES)) -> Answer:
        """One command, sent again while the device answers with a ``retry`` code; returns the final answer."""
        while True:
            answer = self._wait(self._send(args), str(args.get("action")))
            code = answer.error.code if answer.error else None
            if answer.state in (State.REJECTED, State.FAILED, State.CANCELED) and code in retry:
                self.resent += code in RESTART_CODES
                time.sleep(0.2 if code in RETRYABLE_CODES else 0)
                continue
            return answer

    def rollback_event(self) -> dict[str, Any] | None:
        """The device's ``rollback`` event for this transfer, if it came (waits for nothing)."""
        self._wait_event(0)
        return self._event("rollback")

    def _event(self, *kinds: str) -> dict[str, Any] | None:
        for ev in self.events:
            if ev.get("event") in kinds:
                return ev
        return None

    def _wait_event_for(self, kind: str, wait: float) -> None:
        end = time.monotonic() + wait
        while self._event(kind) is None and time.monotonic() < end:
            self._wait_event(end - time.monotonic())

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
                restarts=self.restarts,
                resent=self.resent,
                **kw,
            )
            self._report(outcome, n, n)

        have: set[int] = set()
        transfer_s = activate_s = None
        try:
            self._report("begin", 0, n)
            ans = self._call(
                {
                    **base,
                    "action": "begin",
                    "archive_sha256": self.sha,
                    "archive_bytes": len(self.data),
                    "chunk_bytes": self.chunk_bytes,
                },
                frozenset(RETRYABLE_CODES | RESTART_CODES),
            )
            if ans.state != State.SUCCEEDED:
                return done(_refused(ans), error=_error(ans))
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
                self._resend_if_back()
                if self.rollback_event() is not None:
                    raise _RolledBack
                for i, pending in list(inflight.items()):
                    answer = pending.poll()
                    if answer is None:
                        continue
                    del inflight[i]
                    code = answer.error.code if answer.error else None
                    if answer.state == State.SUCCEEDED:
                        sent += 1
                        self._report("chunks", sent, n)
                    elif code in RESTART_CODES:  # the device stopped while it held this chunk
                        self.resent += 1
                        todo.insert(0, i)
                    elif code in RETRYABLE_CODES | {ErrorCode.CHECKSUM_MISMATCH} and tries[i] < 3:
                        tries[i] += 1
                        todo.insert(0, i)  # resend
                    else:
                        return done(_refused(answer), error=_error(answer), resumed=len(have))
            transfer_s = round(time.monotonic() - t0, 3)
            ans = self._call({**base, "action": "commit", "health": self.health})
            if ans.error is not None and ans.error.code in RESTART_CODES:
                # Cut short by a restart: after the switch the device rolls back and says so in an event.
                self._wait_event_for("rollback", ROLLBACK_EVENT_WAIT_S)
                if self._event("rollback") is not None:
                    raise _RolledBack
                return done(
                    "failed",
                    error={
                        "code": ans.error.code,
                        "message": f"{self.device_id} restarted during commit, before it switched bundles: it still "
                        "serves the old one; deploy again.",
                    },
                    resumed=len(have),
                    transfer_s=transfer_s,
                )
            if ans.state != State.SUCCEEDED:
                return done(_refused(ans), error=_error(ans), resumed=len(have), transfer_s=transfer_s)
            activate_s = round(time.monotonic() - t0, 3)
            self.commit = _dict(ans.result)
            self._report("trial", n, n)
            if not self.wait_health:
                return done("trial", resumed=len(have), transfer_s=transfer_s, activate_s=activate_s)
            while True:
                if self._event("rollback") is not None:
                    raise _RolledBack
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
        except _RolledBack:
            ev, hc = self._event("rollback") or {}, self._event("health_check")
            failed_check = hc is not None and hc.get("verdict") == "failed"
            done(
                "rolled_back",
                rollback=ev,
                health=hc,
                resumed=len(have),
                transfer_s=transfer_s,
                activate_s=activate_s,
                error={
                    "code": "HEALTH_CHECK_FAILED" if failed_check else "ROLLED_BACK",
                    "message": f"rolled back: {ev.get('reason')}",
                },
            )
        except TimeoutError as exc:
            where = "it is offline" if self.online is False else "is it online? see `edgekit watch`"
            done(
                "timeout",
                error={
                    "code": "TIMEOUT",
                    "message": f"no answer from {self.device_id} within {self.timeout:g} s while waiting for {exc}; "
                    f"{where}",
                },
            )
        except NotAuthorizedError as exc:  # e.g. the broker refused the subscription to this device's answers
            done("not_authorized", error={"code": ErrorCode.NOT_AUTHORIZED, "message": str(exc)})
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
    subs = [(topic(d, kind), 1) for d in devices for kind in (f"res/{requester}", EVENTS, STATUS)]
    t0 = time.monotonic()
    workers: dict[str, _Worker] = {}

    def on_event(m: Message) -> None:  # the client's dispatcher thread: what is not an answer
        parsed = parse_topic(m.topic)
        worker = workers.get(parsed[0]) if parsed is not None and parsed[1] in (EVENTS, STATUS) else None
        doc = load_json(m.payload) if worker is not None else None
        if worker is None or not isinstance(doc, dict):
            return
        if parsed[1] == STATUS:
            worker.on_status(doc)
        elif doc.get("transfer_id") == transfer_id:
            worker.inbox.put(doc)
            worker.answered.set()

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
