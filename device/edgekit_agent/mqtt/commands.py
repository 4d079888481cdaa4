"""The device side of fleet commands: ``edge/v1/{device_id}/cmd/{name}`` parsed, validated, run and answered.

The envelope (request fields, answer states, error codes) is :mod:`edgekit_agent.contract.envelope`. An
answer goes to the request's MQTT 5 ResponseTopic, else the payload's ``response_topic`` (MQTT 3.1.1 has no
properties), else ``res/{requester}``; the MQTT 5 properties win when both are given, so one code path serves
both protocols. A request's ``correlation_data`` is echoed in every answer's payload.

- ``cmd_id`` runs at most once: its answers are stored (bounded, on disk, so a restart keeps them) and a
  repeated ``cmd_id`` gets the stored answer again with ``"duplicate": true``.
- Every accepted command gets exactly one final answer, across a ``kill -9`` too: one that was running (or
  queued) when the agent died is answered ``canceled`` / ``AGENT_RESTARTED`` (retryable) by the next start,
  and a final answer stored but not yet queued in the outbox is queued then (:class:`CommandStore`).
- A request past ``expires_at`` is rejected with ``EXPIRED``; one that expires while queued ends ``expired``.
- Payloads over :data:`edgekit_agent.contract.limits.MAX_COMMAND_BYTES` (256 KiB) are refused unread. Malformed
  input (not JSON, wrong types, unknown command or argument) is a ``rejected`` answer, never a crash.
- The dispatch table (:meth:`CommandProcessor.register`) says which arguments a command takes, so handlers
  receive validated, defaulted arguments; a handler's typed error becomes ``{code, message, retryable}``.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit_agent.contract import errors as E
from edgekit_agent.contract.envelope import (
    DEFAULT_REQUESTER,
    FINAL_STATES,
    Answer,
    CommandError,
    ErrorCode,
    State,
    error_for,
)
from edgekit_agent.contract.limits import MAX_COMMAND_BYTES, loads_bounded
from edgekit_agent.contract.topics import Topics
from edgekit_agent.mqtt.client import Message, cap

log = logging.getLogger(__name__)

MAX_STORED_ANSWERS = 1000
_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
_REQUESTER = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# A topic name to answer on: no wildcards, no NUL, bounded (paho and brokers refuse the rest anyway).
_TOPIC = re.compile(r"^[^+#\x00]{1,256}$")
MAX_CORRELATION_CHARS = 256


class Rejected(Exception):
    """Internal: a request refused before it ran (carries the error)."""

    def __init__(self, code: ErrorCode, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.error = CommandError(code, message, retryable)


def _close_match(word: str, known: Iterable[str]) -> list[str]:
    """The "did you mean" hint of a rejection."""
    import difflib  # only on a mistake: ~0.2 MiB of RSS the serving agent does not need otherwise (issue 15)

    return difflib.get_close_matches(word, list(known), n=1)


@dataclass(frozen=True, slots=True)
class Arg:
    """One argument of a command: accepted types, default, and an optional range/choice check."""

    types: type | tuple[type, ...]
    default: Any = None
    required: bool = False
    check: Callable[[Any], bool] | None = None
    expect: str = ""  # what a valid value looks like, for the error message

    def validate(self, name: str, value: Any) -> Any:
        types = self.types if isinstance(self.types, tuple) else (self.types,)
        # JSON has no int/float distinction for 1.0, and True is an int in Python: be exact about both.
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok and float in types and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok or (self.check is not None and not self.check(value)):
            want = self.expect or "/".join(t.__name__ for t in types)
            raise Rejected(ErrorCode.INVALID_ARGS, f"argument '{name}' must be {want}, got {json.dumps(value)[:60]}.")
        return value


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A row of the dispatch table. ``inline`` commands run at once on the receiving thread (cheap ones)."""

    name: str
    handler: Callable[[Command], Mapping[str, Any] | None]
    args: Mapping[str, Arg] = field(default_factory=dict)
    one_of: tuple[str, ...] = ()  # exactly one of these arguments must be given
    inline: bool = False
    doc: str = ""


@dataclass(frozen=True, slots=True)
class Command:
    """A validated request, as handlers see it."""

    cmd_id: str
    name: str
    args: Mapping[str, Any]
    expires_at: float | None
    requester: str
    response_topic: str
    correlation: bytes | None
    correlation_data: str | None = None  # from the payload (MQTT 3.1.1): echoed in every answer's payload


class CommandStore:
    """The last answer per ``cmd_id`` (bounded, oldest forgotten first), in SQLite so restarts keep it.

    Each row also keeps where the answer goes (topic, correlation) and whether its final answer still has
    to be handed to the outbox (``unsent``): a ``kill -9`` between storing an answer and queueing it, or
    while a command ran, must not leave its requester waiting for an answer nobody will send. At open,
    commands still ``accepted`` become ``canceled`` (``AGENT_RESTARTED``, retryable) and :meth:`unsent` lists
    them with every other final answer not yet queued; :class:`CommandProcessor` publishes them at start.
    """

    def __init__(self, path: str | Path, max_entries: int = MAX_STORED_ANSWERS) -> None:
        self.path = Path(path)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS answers (cmd_id TEXT PRIMARY KEY, state TEXT NOT NULL, "
                "body TEXT NOT NULL, n INTEGER NOT NULL, topic TEXT, correlation BLOB, "
                "unsent INTEGER NOT NULL DEFAULT 0)"
            )
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(answers)")}
            if "topic" not in columns:  # a store written by an agent before answers were re-sent at start
                with self._db:
                    self._db.execute("ALTER TABLE answers ADD COLUMN topic TEXT")
                    self._db.execute("ALTER TABLE answers ADD COLUMN correlation BLOB")
                    self._db.execute("ALTER TABLE answers ADD COLUMN unsent INTEGER NOT NULL DEFAULT 0")
            self._cancel_interrupted()
            self._n = int(self._db.execute("SELECT COALESCE(MAX(n), 0) FROM answers").fetchone()[0])
        except (sqlite3.Error, ValueError) as exc:
            raise E.StorageError(
                f"{self.path}: cannot open the command store ({exc}); check the data directory, or delete the file "
                "(repeated cmd_ids are then run again)."
            ) from None

    def _cancel_interrupted(self) -> None:
        """An agent that died mid-command never sent its final answer: make it ``canceled``, to be sent now."""
        error = CommandError(
            ErrorCode.AGENT_RESTARTED, "the agent restarted while this command ran; send it again.", True
        )
        with self._db:
            for cmd_id, body in self._db.execute(
                "SELECT cmd_id, body FROM answers WHERE state = 'accepted'"
            ).fetchall():
                doc = json.loads(body)
                doc.update(state=State.CANCELED, error=error.to_json())
                self._db.execute(
                    "UPDATE answers SET state = 'canceled', body = ?, unsent = 1 WHERE cmd_id = ?",
                    (json.dumps(doc), cmd_id),
                )

    def get(self, cmd_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM answers WHERE cmd_id = ?", (cmd_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(
        self, cmd_id: str, body: Mapping[str, Any], topic: str | None = None, correlation: bytes | None = None
    ) -> None:
        """Store ``body``; a final one stays ``unsent`` until :meth:`sent` says the outbox has it."""
        unsent = int(body["state"] in FINAL_STATES and topic is not None)
        with self._lock:
            self._n += 1
            try:
                with self._db:
                    self._db.execute(
                        "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (cmd_id, body["state"], json.dumps(body, default=str), self._n, topic, correlation, unsent),
                    )
                    self._db.execute("DELETE FROM answers WHERE n <= ?", (self._n - self.max_entries,))
            except sqlite3.Error as exc:
                raise E.StorageError(f"{self.path}: cannot store the answer to {cmd_id} ({exc}).") from None

    def sent(self, cmd_id: str) -> None:
        """The outbox holds the final answer to ``cmd_id`` now (it survives a restart there)."""
        with self._lock:
            try:
                self._db.execute("UPDATE answers SET unsent = 0 WHERE cmd_id = ?", (cmd_id,))
            except sqlite3.Error as exc:  # at worst the answer is sent again after a restart (a duplicate)
                log.warning("%s: cannot mark the answer to %s as sent (%s)", self.path, cmd_id, exc)

    def unsent(self) -> list[tuple[str, str | None, dict[str, Any], bytes | None]]:
        """``(cmd_id, topic, body, correlation)`` of every final answer not yet handed to the outbox, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT cmd_id, topic, body, correlation FROM answers WHERE unsent = 1 ORDER BY n"
            ).fetchall()
        return [(cmd_id, topic, json.loads(body), corr) for cmd_id, topic, body, corr in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


Respond = Callable[[str, dict[str, Any], "bytes | None"], None]


class CommandProcessor:
    """Parses, validates, de-duplicates and runs commands; answers through ``respond(topic, body, correlation)``.

    ``respond`` must not block for long (the agent puts the answer into the outbox's priority lane).
    Queued commands run one at a time on a worker thread; at most ``queue_size`` wait, further ones are
    rejected ``BUSY`` (retryable).
    """

    def __init__(
        self,
        device_id: str,
        respond: Respond,
        store: CommandStore,
        *,
        queue_size: int = 4,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.device_id = device_id
        self.topics = Topics(device_id)
        self._respond = respond
        self.store = store
        self._clock = clock
        self._specs: dict[str, CommandSpec] = {}
        self._queue: queue.Queue[Command | None] = queue.Queue(maxsize=queue_size)
        self._worker = threading.Thread(target=self._work, name="edgekit-commands", daemon=True)
        self._closing = threading.Event()
        self.on_busy: Callable[[Command], None] | None = None

    # --- the dispatch table -----------------------------------------------------------------------------------
    def register(self, spec: CommandSpec) -> None:
        """Add (or replace) a command. Later engineers extend the agent here (e.g. ``swap_bundle``)."""
        self._specs[spec.name] = spec

    @property
    def names(self) -> list[str]:
        return sorted(self._specs)

    def start(self) -> None:
        """Send the final answers a restart left unsent (see :class:`CommandStore`), then take commands."""
        unsent = self.store.unsent()
        for cmd_id, topic, body, correlation in unsent:
            if topic is not None:
                self._send(topic, body, correlation)
            self.store.sent(cmd_id)
        if unsent:
            log.warning(
                "%s: sent the final answer of %d command(s) left unanswered by the last run (%s)",
                self.device_id,
                len(unsent),
                ", ".join(sorted({str(body.get("state")) for _, _, body, _ in unsent})),
            )
        self._worker.start()

    # --- receiving ----------------------------------------------------------------------------------------------
    def submit(self, msg: Message) -> None:
        """Handle one delivered request. Never raises: every failure becomes a ``rejected`` answer."""
        # A ResponseTopic property with a wildcard cannot be published to (paho refuses it at every attempt,
        # which would block the outbox): refused below, answered on the default topic.
        bad_response_topic = msg.response_topic is not None and not _TOPIC.match(msg.response_topic)
        topic = (not bad_response_topic and msg.response_topic) or self.topics.res(DEFAULT_REQUESTER)
        cmd_id: str | None = None
        name: str | None = None
        corr_text: str | None = None
        correlation = msg.correlation
        try:
            name = self._name_from_topic(msg.topic)
            doc = loads_bounded(msg.payload, what=f"command on {msg.topic}", max_bytes=MAX_COMMAND_BYTES)
            if not isinstance(doc, dict):
                raise Rejected(
                    ErrorCode.INVALID_PAYLOAD, "a command must be a JSON object with cmd_id, args, expires_at."
                )
            cmd_id = doc.get("cmd_id")
            # Where to answer first, so that even a rejection reaches the requester (3.1.1: from the payload).
            corr_text, payload_topic = self._reply_fields(doc)
            if correlation is None and corr_text is not None:
                correlation = corr_text.encode("utf-8")  # MQTT 5 answers then carry the property too
            if bad_response_topic:
                raise Rejected(
                    ErrorCode.INVALID_PAYLOAD,
                    "the ResponseTopic property must be an MQTT topic name of 1-256 characters without + or #.",
                )
            requester = doc.get("requester", DEFAULT_REQUESTER)
            if not isinstance(requester, str) or not _REQUESTER.match(requester):
                raise Rejected(ErrorCode.INVALID_PAYLOAD, "requester must be 1-64 characters of A-Z a-z 0-9 _ . -")
            if not msg.response_topic:
                topic = payload_topic or self.topics.res(requester)
            if not isinstance(cmd_id, str) or not _ID.match(cmd_id):
                cmd_id = None
                raise Rejected(
                    ErrorCode.INVALID_PAYLOAD, "cmd_id must be a string of 1-128 characters A-Z a-z 0-9 _ . : @ -"
                )
            stored = self.store.get(cmd_id)
            if stored is not None:  # at most once: the same answer again, marked as such
                stored["duplicate"] = True
                if corr_text is not None:
                    stored["correlation_data"] = corr_text
                self._send(topic, stored, correlation)
                return
            cmd = self._validate(doc, name, cmd_id, requester, topic, correlation, corr_text)
            spec = self._specs[cmd.name]
        except Rejected as rej:
            self._answer_rejected(topic, cmd_id, name, rej.error, msg, correlation, corr_text)
            return
        except E.EdgekitError as exc:  # loads_bounded's InputError: too big, not UTF-8, not JSON, too deep
            self._answer_rejected(
                topic, cmd_id, name, CommandError(ErrorCode.INVALID_PAYLOAD, str(exc)), msg, correlation, corr_text
            )
            return
        except Exception as exc:  # noqa: BLE001 - malformed input must never kill the agent
            log.exception("%s: unexpected error parsing %s", self.device_id, msg.topic)
            self._answer_rejected(topic, cmd_id, name, error_for(exc), msg, correlation, corr_text)
            return
        if spec.inline:
            self._answer(cmd, State.ACCEPTED)
            self._execute(cmd)
            return
        try:
            self._answer(cmd, State.ACCEPTED)  # stored before queueing: a duplicate arriving now is recognised
            self._queue.put_nowait(cmd)
        except queue.Full:
            if self.on_busy:
                self.on_busy(cmd)
            self._answer(
                cmd,
                State.REJECTED,
                error=CommandError(ErrorCode.BUSY, f"{self.device_id} is busy with other commands; retry later.", True),
            )

    @staticmethod
    def _reply_fields(doc: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """``(correlation_data, response_topic)`` from the payload (the MQTT 3.1.1 way), validated."""
        corr, topic = doc.get("correlation_data"), doc.get("response_topic")
        if corr is not None and (not isinstance(corr, str) or not 0 < len(corr) <= MAX_CORRELATION_CHARS):
            raise Rejected(
                ErrorCode.INVALID_PAYLOAD, f"correlation_data must be a string of 1-{MAX_CORRELATION_CHARS} characters."
            )
        if topic is not None and (not isinstance(topic, str) or not _TOPIC.match(topic)):
            raise Rejected(
                ErrorCode.INVALID_PAYLOAD,
                "response_topic must be an MQTT topic name of 1-256 characters without + or #.",
            )
        return corr, topic

    def _name_from_topic(self, topic: str) -> str:
        name = self.topics.command_name(topic)
        if name is None:
            raise Rejected(
                ErrorCode.INVALID_PAYLOAD, f"commands are published to {self.topics.command('NAME')}, not {topic}."
            )
        return name

    def _validate(
        self,
        doc: Mapping[str, Any],
        name: str,
        cmd_id: str,
        requester: str,
        topic: str,
        correlation: bytes | None,
        corr_text: str | None = None,
    ) -> Command:
        if "name" in doc and doc["name"] != name:
            raise Rejected(
                ErrorCode.INVALID_PAYLOAD, f"the payload names command '{doc['name']}' but was sent to cmd/{name}."
            )
        unknown_top = set(doc) - {
            "cmd_id",
            "name",
            "args",
            "expires_at",
            "requester",
            "response_topic",
            "correlation_data",
        }
        if unknown_top:
            raise Rejected(
                ErrorCode.INVALID_PAYLOAD,
                f"unknown field(s) {sorted(unknown_top)}; a command has cmd_id, name, args, "
                "expires_at, requester, response_topic, correlation_data.",
            )
        spec = self._specs.get(name)
        if spec is None:
            hint = _close_match(name, self._specs)
            extra = f" Did you mean '{hint[0]}'?" if hint else ""
            raise Rejected(
                ErrorCode.UNKNOWN_COMMAND,
                f"{self.device_id} has no command '{name}'.{extra} Known: {', '.join(self.names)}.",
            )
        expires_at = doc.get("expires_at")
        if expires_at is not None:
            if not isinstance(expires_at, (int, float)) or isinstance(expires_at, bool):
                raise Rejected(
                    ErrorCode.INVALID_PAYLOAD, "expires_at must be milliseconds since the Unix epoch (UTC) or null."
                )
            if expires_at <= self._clock() * 1000:
                raise Rejected(
                    ErrorCode.EXPIRED,
                    f"command {cmd_id} expired at {int(expires_at)} ms; "
                    f"the device clock says {int(self._clock() * 1000)} ms.",
                )
        raw_args = doc.get("args", {}) if doc.get("args") is not None else {}
        if not isinstance(raw_args, dict):
            raise Rejected(ErrorCode.INVALID_ARGS, "args must be a JSON object.")
        args: dict[str, Any] = {}
        for key in raw_args:
            if key not in spec.args:
                hint = _close_match(key, spec.args)
                extra = (
                    f" Did you mean '{hint[0]}'?"
                    if hint
                    else f" '{name}' takes: {', '.join(spec.args) or 'no arguments'}."
                )
                raise Rejected(ErrorCode.INVALID_ARGS, f"unknown argument '{key}' for '{name}'.{extra}")
        for key, arg in spec.args.items():
            if key in raw_args and raw_args[key] is not None:
                args[key] = arg.validate(key, raw_args[key])
            elif arg.required:
                raise Rejected(
                    ErrorCode.INVALID_ARGS, f"'{name}' needs the argument '{key}' ({arg.expect or arg.types})."
                )
            else:
                args[key] = arg.default
        if spec.one_of and sum(args.get(k) is not None for k in spec.one_of) != 1:
            raise Rejected(ErrorCode.INVALID_ARGS, f"'{name}' needs exactly one of: {', '.join(spec.one_of)}.")
        return Command(
            cmd_id,
            name,
            args,
            float(expires_at) if expires_at is not None else None,
            requester,
            topic,
            correlation,
            corr_text,
        )

    # --- running ------------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            cmd = self._queue.get()
            if cmd is None:
                return
            if cmd.expires_at is not None and cmd.expires_at <= self._clock() * 1000:
                self._answer(
                    cmd,
                    State.EXPIRED,
                    error=CommandError(ErrorCode.EXPIRED, "the command expired while it waited in the queue.", True),
                )
            elif self._closing.is_set():
                self._answer(
                    cmd, State.CANCELED, error=CommandError(ErrorCode.SHUTTING_DOWN, "the agent is stopping.", True)
                )
            else:
                self._execute(cmd)

    def _execute(self, cmd: Command) -> None:
        spec = self._specs[cmd.name]
        try:
            result = spec.handler(cmd)
        except Exception as exc:  # noqa: BLE001 - a failing handler is an answer, not a dead agent
            if not isinstance(exc, E.EdgekitError):
                log.exception("%s: command %s (%s) crashed", self.device_id, cmd.name, cmd.cmd_id)
            self._answer(cmd, State.FAILED, error=error_for(exc))
            return
        self._answer(cmd, State.SUCCEEDED, result=dict(result or {}))

    # --- answering ----------------------------------------------------------------------------------------------
    def _answer(
        self,
        cmd: Command,
        state: State,
        *,
        result: Mapping[str, Any] | None = None,
        error: CommandError | None = None,
    ) -> None:
        body = Answer(cmd.cmd_id, cmd.name, state, result, error, correlation_data=cmd.correlation_data).to_json()
        try:
            self.store.put(cmd.cmd_id, body, cmd.response_topic, cmd.correlation)
        except E.StorageError as exc:  # answering matters more than remembering
            log.error("%s", exc)
        if self._send(cmd.response_topic, body, cmd.correlation) and state in FINAL_STATES:
            self.store.sent(cmd.cmd_id)

    def _answer_rejected(
        self,
        topic: str,
        cmd_id: str | None,
        name: str | None,
        err: CommandError,
        msg: Message,
        correlation: bytes | None = None,
        corr_text: str | None = None,
    ) -> None:
        log.warning(
            "%s: rejected command on %s: %s (payload %s)", self.device_id, msg.topic, err.message, cap(msg.payload)
        )
        body = Answer(cmd_id, name, State.REJECTED, error=err, correlation_data=corr_text).to_json()
        if cmd_id is not None and err.code != ErrorCode.INVALID_PAYLOAD:
            try:
                self.store.put(cmd_id, body)
            except E.StorageError as exc:
                log.error("%s", exc)
        self._send(topic, body, correlation if correlation is not None else msg.correlation)

    def _send(self, topic: str, body: dict[str, Any], correlation: bytes | None) -> bool:
        """True once ``respond`` took the answer."""
        try:
            self._respond(topic, body, correlation)
        except Exception:  # noqa: BLE001
            log.exception("%s: cannot send the answer to %s on %s", self.device_id, body.get("cmd_id"), topic)
            return False
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Cancel what is still queued, let the running command finish (up to ``timeout`` s), stop."""
        self._closing.set()
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        if self._worker.is_alive():
            self._worker.join(timeout)
