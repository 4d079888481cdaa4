"""Every accepted command gets exactly one final answer, across a ``kill -9`` too: the real CommandProcessor and
CommandStore (SQLite on disk), answering into a list (the function the agent hands it). A "killed" agent is one
whose store is simply reopened by the next processor while its command never finished."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from edgekit_agent.mqtt.client import Message
from edgekit_agent.mqtt.commands import CommandProcessor, CommandSpec, CommandStore

DEVICE = "dev-answers"
RES = f"edge/v1/{DEVICE}/res/deploy-1"


class Answers(list):
    def __call__(self, topic: str, body: dict[str, Any], correlation: bytes | None) -> None:
        self.append((topic, json.loads(json.dumps(body)), correlation))


def _request(cmd_id: str) -> Message:
    body = {"cmd_id": cmd_id, "args": {}, "requester": "deploy-1"}
    return Message(
        f"edge/v1/{DEVICE}/cmd/slow", json.dumps(body).encode(), response_topic=RES, correlation=b"c-" + cmd_id.encode()
    )


def _processor(path: Path, answers: Answers, handler: Any) -> CommandProcessor:
    proc = CommandProcessor(DEVICE, answers, CommandStore(path))
    proc.register(CommandSpec("slow", handler))
    return proc


def _wait_final(proc: CommandProcessor, cmd_id: str) -> None:
    """Until the worker thread ran ``cmd_id`` (close() would cancel it while queued)."""
    deadline = time.monotonic() + 10
    while proc.store.get(cmd_id)["state"] == "accepted":
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_commands_a_killed_agent_had_accepted_are_answered_canceled_once_at_the_next_start(tmp_path: Path) -> None:
    db = tmp_path / "commands.sqlite"
    release = threading.Event()
    first = Answers()
    dead = _processor(db, first, lambda cmd: release.wait(30) and {})
    dead.start()
    dead.submit(_request("running"))
    dead.submit(_request("queued"))
    assert [b["state"] for _, b, _ in first] == ["accepted", "accepted"]
    # "kill -9": this processor never answers again; the next run opens the same store.
    second = Answers()
    proc = _processor(db, second, lambda cmd: {"ran": cmd.cmd_id})
    proc.start()
    assert [(t, b["cmd_id"], b["state"], b["error"]["code"], c) for t, b, c in second] == [
        (RES, "running", "canceled", "AGENT_RESTARTED", b"c-running"),
        (RES, "queued", "canceled", "AGENT_RESTARTED", b"c-queued"),
    ]
    assert all(b["error"]["retryable"] for _, b, _ in second)
    # The same cmd_id again: the stored final answer, not a second run.
    proc.submit(_request("running"))
    assert second[-1][1]["state"] == "canceled" and second[-1][1]["duplicate"] is True
    proc.close()
    proc.store.close()
    release.set()
    dead.close(timeout=1)
    # Sent once: a third start has nothing left to answer.
    third = Answers()
    again = _processor(db, third, lambda cmd: {})
    again.start()
    assert third == []
    again.close()
    again.store.close()


def test_a_final_answer_stored_but_never_queued_is_queued_at_the_next_start(tmp_path: Path) -> None:
    """The kill came between storing the final answer and handing it to the outbox (respond raised here)."""
    db = tmp_path / "commands.sqlite"

    def refuse(topic: str, body: dict[str, Any], correlation: bytes | None) -> None:
        if body["state"] == "succeeded":
            raise OSError("killed before the outbox took it")

    proc = _processor(db, refuse, lambda cmd: {"done": True})  # type: ignore[arg-type]
    proc.start()
    proc.submit(_request("lost"))
    _wait_final(proc, "lost")
    proc.close()
    proc.store.close()
    answers = Answers()
    proc = _processor(db, answers, lambda cmd: {})
    proc.start()
    assert [(b["cmd_id"], b["state"], b["result"]) for _, b, _ in answers] == [("lost", "succeeded", {"done": True})]
    proc.close()
    proc.store.close()


def test_a_store_written_before_answers_were_kept_with_their_topic_is_upgraded(tmp_path: Path) -> None:
    db = tmp_path / "commands.sqlite"
    with sqlite3.connect(db) as old:
        old.execute("CREATE TABLE answers (cmd_id TEXT PRIMARY KEY, state TEXT, body TEXT, n INTEGER)")
        old.execute(
            "INSERT INTO answers VALUES ('old', 'accepted', ?, 1)",
            (json.dumps({"cmd_id": "old", "state": "accepted"}),),
        )
    answers = Answers()
    proc = _processor(db, answers, lambda cmd: {"ran": True})
    proc.start()
    assert answers == []  # nowhere to send it (the old store did not keep the topic)
    assert proc.store.get("old")["state"] == "canceled"
    proc.submit(_request("new"))
    _wait_final(proc, "new")
    proc.close()
    assert [b["state"] for _, b, _ in answers] == ["accepted", "succeeded"]
    proc.store.close()
