"""Watch a fleet: subscribe to every device's status, meta, telemetry and events and keep a :class:`FleetState`.

The CLI (``edgekit watch``) draws it; tests and notebooks use :class:`FleetWatcher` directly::

    with FleetWatcher("mqtt://127.0.0.1:1883") as w:
        w.sync()                        # the retained status/meta of every device has arrived
        changed = w.poll(timeout=1.0)   # rows that changed since the last poll
        rows = w.snapshot()
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator

from edgekit.fleet.connection import FleetLink
from edgekit.fleet.state import FLEET_SUBSCRIPTIONS, DeviceRow, FleetState
from edgekit_agent.mqtt.client import Message

log = logging.getLogger(__name__)
SYNC_ROOT = "edgekit/sync"


class FleetWatcher:
    """A connected watcher. Not thread-safe: call :meth:`poll` from one thread.

    Messages are applied to :attr:`state` (under its lock) on paho's network thread as they arrive: no queue
    and no thread hop per message (issue 15: that cost a quarter of the ingest rate); :meth:`poll` collects
    the ids of the devices that changed.
    """

    def __init__(
        self,
        broker: str,
        *,
        client_id: str | None = None,
        protocol: str = "auto",
        state: FleetState | None = None,
        tls_ca: str | None = None,
    ) -> None:
        self.client_id = client_id or f"edgekit-watch-{uuid.uuid4().hex[:8]}"
        self.sync_topic = f"{SYNC_ROOT}/{self.client_id}"
        # The sync topic is subscribed last: the broker sends the retained messages of the earlier
        # subscriptions first, so our own marker coming back means the snapshot is complete.
        self.link = FleetLink(
            broker,
            client_id=self.client_id,
            subscriptions=[*FLEET_SUBSCRIPTIONS, (self.sync_topic, 1)],
            protocol=protocol,
            tls_ca=tls_ca,
            on_message=self._apply,
            no_delay=False,  # a consumer: the sync marker is its only request, and it has seconds to spare
        )
        self.state = state or FleetState(histogram_stages=())  # the table shows the devices' own percentiles
        self._sync_token: str | None = None
        self._synced = False
        self._changed: set[str] = set()  # guarded by state.lock
        self._arrived = threading.Event()  # set when a message was applied since the last poll

    def start(self, timeout: float = 10.0) -> FleetWatcher:
        """Connect and subscribe (returns once the broker acknowledged the subscriptions)."""
        self.link.start(timeout)
        return self

    def close(self) -> None:
        """Disconnect."""
        self.link.close()

    def __enter__(self) -> FleetWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _apply(self, m: Message) -> None:
        with self.state.lock:
            try:
                if m.topic == self.sync_topic:
                    if self._sync_token is not None and m.payload.decode(errors="replace") == self._sync_token:
                        self._synced = True
                else:
                    device = self.state.apply(m)
                    if device is not None:
                        self._changed.add(device)
            except Exception:  # noqa: BLE001 - an exception here would end paho's loop and freeze the view
                log.exception("watch: a message on %s could not be applied", m.topic)
            # Under the lock poll() clears it with: set once per poll, not once per message (a set() that
            # wakes nobody still takes the event's condition: about 4 µs on this 2-core machine).
            if not self._arrived.is_set():
                self._arrived.set()

    def sync(self, timeout: float = 5.0) -> bool:
        """Wait until the retained messages present at subscribe time have arrived (False on timeout,
        e.g. when an ACL forbids the marker topic: then whatever arrived within ``timeout`` is used)."""
        self._sync_token = uuid.uuid4().hex
        self._synced = False
        mid = self.link.publish(self.sync_topic, self._sync_token, qos=1).mid
        deadline = time.monotonic() + timeout
        while not self._synced and time.monotonic() < deadline:
            if mid in self.link.refused_publishes:  # the ACL forbids the marker: take what arrives meanwhile
                time.sleep(0.5)
                return False
            self._arrived.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            self._arrived.clear()
        return self._synced

    def poll(self, timeout: float = 0.5) -> list[DeviceRow]:
        """The rows that changed since the last poll (waiting up to ``timeout`` for a first message)."""
        if self._arrived.wait(timeout):
            time.sleep(0.01)  # a burst is taken as one batch, as connection.drain lingers
        with self.state.lock:
            self._arrived.clear()
            changed, self._changed = self._changed, set()
            now = time.time()
            return [self.state.row(d, now) for d in sorted(changed)]

    def snapshot(self) -> tuple[DeviceRow, ...]:
        """Every known device's row, sorted by device id."""
        with self.state.lock:
            return self.state.snapshot()

    def follow(self, duration: float | None = None, tick: float = 1.0) -> Iterator[list[DeviceRow]]:
        """Yield the changed rows every ``tick`` seconds at most (an empty list when nothing changed),
        for ``duration`` seconds or forever. Status changes to "lost" show up without a message."""
        end = None if duration is None else time.monotonic() + duration
        last_status: dict[str, str] = {}
        while end is None or time.monotonic() < end:
            wait = tick if end is None else max(0.0, min(tick, end - time.monotonic()))
            rows = {r.device_id: r for r in self.poll(wait)}
            for r in self.snapshot():  # silence is news too: online -> lost needs no message
                if last_status.get(r.device_id) != r.status and r.device_id not in rows:
                    rows[r.device_id] = r
                last_status[r.device_id] = r.status
            yield [rows[k] for k in sorted(rows)]
