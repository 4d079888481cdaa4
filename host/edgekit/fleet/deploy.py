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
import json
import logging
import queue
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.fleet.state import BrokerAddress, MqttLink, drain, load_json, topic
from edgekit_agent.contract.errors import BrokerError, BundleError, UsageError
from edgekit_agent.contract.limits import MAX_ARCHIVE_BYTES, OTA_CHUNK_BYTES

log = logging.getLogger(__name__)

FINAL = ("succeeded", "failed", "expired", "canceled", "rejected")
DEFAULT_WINDOW = 3  # chunk commands in flight per device (the agent queues 4 commands)
RETRYABLE_CODES = {"BUSY"}

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


@dataclass
class _Device:
    """One device's mailbox: the dispatcher thread fills it, the device's worker reads it."""

    device_id: str
    inbox: queue.Queue[tuple[str, dict[str, Any]]] = field(default_factory=queue.Queue)


class _Session:
    """Sends commands and waits for their answers on a shared link (one per deployment)."""

    def __init__(self, link: MqttLink, requester: str, timeout: float) -> None:
        self.link = link
        self.requester = requester
        self.timeout = timeout

    def send(self, device_id: str, args: Mapping[str, Any]) -> str:
        cmd_id = f"ota-{uuid.uuid4().hex[:20]}"
        expires = int((time.time() + self.timeout) * 1000)
        body = {
            "cmd_id": cmd_id,
            "name": "swap_bundle",
            "args": dict(args),
            "expires_at": expires,
            "requester": self.requester,
        }
        res_topic = topic(device_id, "res", self.requester)
        if not self.link.mqtt5:  # 3.1.1 has no properties: the request/response fields travel in the payload
            body.update(response_topic=res_topic, correlation_data=cmd_id)
        self.link.publish(
            topic(device_id, "cmd", "swap_bundle"),
            json.dumps(body, separators=(",", ":")),
            qos=1,
            response_topic=res_topic,
            correlation_data=cmd_id.encode(),
            expiry_s=max(1, int(self.timeout)),
        )
        return cmd_id


def _dict(v: Any) -> dict[str, Any]:
    """``v`` when it is a JSON object, else empty: device answers are untrusted input."""
    return v if isinstance(v, dict) else {}


class _Worker:
    """The state machine of one device's deployment."""

    def __init__(
        self,
        session: _Session,
        dev: _Device,
        data: bytes,
        sha: str,
        transfer_id: str,
        chunk_bytes: int,
        health: Mapping[str, Any],
        window: int,
        wait_health: bool,
        deadline: float,
        on_progress: ProgressFn | None,
    ) -> None:
        self.s, self.dev, self.data, self.sha = session, dev, data, sha
        self.transfer_id, self.chunk_bytes, self.health = transfer_id, chunk_bytes, dict(health)
        self.window, self.wait_health, self.deadline = window, wait_health, deadline
        self.on_progress = on_progress
        self.answers: dict[str, dict[str, Any]] = {}  # cmd_id -> final answer
        self.events: list[dict[str, Any]] = []
        self.stages: list[str] = []
        self.result: DeviceDeploy | None = None
        self.commit: dict[str, Any] | None = None

    # --- messages -------------------------------------------------------------------------------------------
    def _pump(self, wait: float) -> None:
        try:
            kind, doc = self.dev.inbox.get(timeout=max(0.0, wait))
        except queue.Empty:
            return
        while True:
            if kind == "res":
                state = doc.get("state")
                if state == "progress":
                    stage = str(_dict(doc.get("progress")).get("stage", "?"))[:40]
                    self.stages.append(stage)
                    self._report(stage)
                elif state in FINAL:
                    # correlation_data (= our cmd_id) is the payload's copy on MQTT 3.1.1; cmd_id for older agents
                    self.answers[str(doc.get("correlation_data") or doc.get("cmd_id"))] = doc
            elif kind == "event" and doc.get("transfer_id") == self.transfer_id:
                self.events.append(doc)
            try:
                kind, doc = self.dev.inbox.get_nowait()
            except queue.Empty:
                return

    def _report(self, stage: str, done: int = 0, total: int = 0) -> None:
        if self.on_progress:
            self.on_progress(self.dev.device_id, stage, done, total)

    def _await(self, cmd_id: str) -> dict[str, Any]:
        while cmd_id not in self.answers:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(cmd_id)
            self._pump(min(0.2, left))
        return self.answers.pop(cmd_id)

    def _call(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """One command, retried while the device says BUSY; returns the final answer."""
        while True:
            answer = self._await(self.s.send(self.dev.device_id, args))
            err = _dict(answer.get("error"))
            if answer.get("state") in ("rejected", "failed") and err.get("code") in RETRYABLE_CODES:
                time.sleep(0.2)
                continue
            return answer

    def _event(self, *kinds: str) -> dict[str, Any] | None:
        for ev in self.events:
            if ev.get("event") in kinds:
                return ev
        return None

    # --- the deployment ---------------------------------------------------------------------------------------
    def run(self) -> None:
        t0 = time.monotonic()
        n = -(-len(self.data) // self.chunk_bytes)
        base = {"transfer_id": self.transfer_id}

        def done(outcome: str, **kw: Any) -> None:
            self.result = DeviceDeploy(
                self.dev.device_id,
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
            if ans.get("state") != "succeeded":
                return done("rejected" if ans.get("state") == "rejected" else "failed", error=ans.get("error"))
            have = {
                i for i in _dict(ans.get("result")).get("have") or [] if isinstance(i, int) and not isinstance(i, bool)
            }
            todo = [i for i in range(n) if i not in have]
            inflight: dict[str, int] = {}
            tries = {i: 0 for i in todo}
            sent = len(have)
            self._report("chunks", sent, n)
            while todo or inflight:
                while todo and len(inflight) < self.window:
                    i = todo.pop(0)
                    chunk = self.data[i * self.chunk_bytes : (i + 1) * self.chunk_bytes]
                    cmd_id = self.s.send(
                        self.dev.device_id,
                        {
                            **base,
                            "action": "chunk",
                            "index": i,
                            "data": base64.b64encode(chunk).decode("ascii"),
                            "sha256": hashlib.sha256(chunk).hexdigest(),
                        },
                    )
                    inflight[cmd_id] = i
                if time.monotonic() > self.deadline:
                    raise TimeoutError("chunks")
                self._pump(0.2)
                for cmd_id in [c for c in inflight if c in self.answers]:
                    i = inflight.pop(cmd_id)
                    answer = self.answers.pop(cmd_id)
                    err = _dict(answer.get("error"))
                    if answer.get("state") == "succeeded":
                        sent += 1
                        self._report("chunks", sent, n)
                    elif err.get("code") in RETRYABLE_CODES | {"CHECKSUM_MISMATCH"} and tries[i] < 3:
                        tries[i] += 1
                        todo.insert(0, i)  # resend
                    else:
                        return done("failed", error=err, resumed=len(have))
            transfer_s = round(time.monotonic() - t0, 3)
            ans = self._call({**base, "action": "commit", "health": self.health})
            if ans.get("state") != "succeeded":
                return done(
                    "rejected" if ans.get("state") == "rejected" else "failed",
                    error=ans.get("error"),
                    resumed=len(have),
                    transfer_s=transfer_s,
                )
            activate_s = round(time.monotonic() - t0, 3)
            self.commit = _dict(ans.get("result"))
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
                self._pump(0.2)
        except TimeoutError as exc:
            done(
                "timeout",
                error={
                    "code": "TIMEOUT",
                    "message": f"no answer from {self.dev.device_id} while waiting for {exc}; is it online?",
                },
            )
        except BrokerError as exc:
            done("failed", error={"code": "UNAVAILABLE", "message": str(exc)})
        except Exception as exc:  # noqa: BLE001 - an answer that breaks the protocol: this device failed, say why
            log.warning(
                "%s: deploy stopped on a malformed answer (%s: %s)", self.dev.device_id, type(exc).__name__, exc
            )
            done(
                "failed",
                error={
                    "code": "INVALID_ANSWER",
                    "message": f"{self.dev.device_id} sent an answer edgekit cannot read ({type(exc).__name__}: {exc})",
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
    mailboxes = {d: _Device(d) for d in devices}
    subs = [(topic(d, "res", requester), 1) for d in devices] + [(topic(d, "events"), 1) for d in devices]
    t0 = time.monotonic()
    link = MqttLink(
        broker, client_id=f"edgekit-{requester}", subscriptions=subs, tls_ca=str(tls_ca) if tls_ca else None
    )
    link.start()
    stop = threading.Event()

    def dispatch() -> None:
        while not stop.is_set():
            for m in drain(link.messages, 0.2):
                parts = m.topic.split("/")
                if len(parts) < 4 or parts[2] not in mailboxes:
                    continue
                doc = load_json(m.payload)
                if isinstance(doc, dict):
                    mailboxes[parts[2]].inbox.put(("event" if parts[3] == "events" else "res", doc))

    dispatcher = threading.Thread(target=dispatch, name="edgekit-deploy-dispatch", daemon=True)
    dispatcher.start()
    session = _Session(link, requester, timeout)
    deadline = time.monotonic() + timeout
    workers = [
        _Worker(
            session,
            mailboxes[d],
            data,
            sha,
            transfer_id,
            chunk_bytes,
            health or {},
            window,
            wait_health,
            deadline,
            on_progress,
        )
        for d in devices
    ]
    threads = [threading.Thread(target=w.run, name=f"edgekit-deploy-{w.dev.device_id}", daemon=True) for w in workers]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout + 5)
    finally:
        stop.set()
        dispatcher.join(2)
        link.close()
    results = tuple(
        w.result
        or DeviceDeploy(
            w.dev.device_id,
            "timeout",
            transfer_id,
            0,
            0,
            None,
            None,
            None,
            error={"code": "TIMEOUT", "message": "no result"},
        )
        for w in workers
    )
    return DeployReport(
        archive=Path(bundle),
        archive_sha256=sha,
        archive_bytes=len(data),
        devices=results,
        seconds=round(time.monotonic() - t0, 3),
    )


__all__ = ["DeployReport", "DeviceDeploy", "deploy", "resolve_archive"]
