"""The recorder: a subscriber like any other that writes every message it receives into a RecordStore.

It runs in its own process (the view's), so recording can never slow the daemon: when it falls
behind, ZeroMQ drops for this subscriber only, and the loss shows as a gap in the sequence numbers,
which is recorded as an event and counted, never hidden. It resumes counting where the record ends:
decisions a daemon published while the view was stopped are a gap too.

One subscriber per daemon endpoint, each watched by a ZeroMQ socket monitor: a daemon that dies
closes its TCP connection, and the view says "disconnected" for its cameras at once instead of
waiting for missed heartbeats. The recorder never stops on a message or a store it cannot handle:
the error is counted and shown, and the next message is handled.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from edge.records.frames import Frames
from edge.records.store import RecordStore
from edge.transport import wire
from edge.transport.subscriber import Gap, Restart, Subscriber

log = logging.getLogger(__name__)

TOPICS = (wire.DECISION, wire.MAP, wire.HEARTBEAT, wire.FAULT)
ERROR_PAUSE_S = 0.2  # after an unexpected error: never a busy loop of the same failure


@dataclass(frozen=True)
class Link:
    """The TCP connection to a daemon's endpoint came up or went down (a ZeroMQ monitor event)."""

    endpoint: str
    connected: bool


class Recorder:
    """Receives from `subscribers` (one per endpoint) and records into `store`; after each message,
    calls `listener(message, row_id, endpoint)` (row_id: the decision's record, else None) for the live view,
    whatever became of the record. `frames` (camera → replay folder) gives each decision its frame's
    hash."""

    def __init__(self, store: RecordStore, subscribers: list[Subscriber],
                 listener: Callable[[object, int | None, str], None] | None = None, frames: Frames | None = None):
        import zmq

        self._zmq = zmq
        self.store = store
        self.subscribers = list(subscribers)
        self.listener = listener
        self.frames = frames
        self.malformed = 0
        self.errors = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drift: dict[str, str] = {}
        self._resumed: dict[str, tuple[str, int]] = dict(store.positions)
        self._poller = zmq.Poller()
        self._monitors: dict[object, Subscriber] = {}
        for subscriber in self.subscribers:
            for camera, (session, seq) in store.positions.items():
                subscriber.resume(camera, session, wire.DECISION, seq)
            monitor = subscriber.socket.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
            self._monitors[monitor] = subscriber
            self._poller.register(subscriber.socket, zmq.POLLIN)
            self._poller.register(monitor, zmq.POLLIN)

    def step(self, timeout: float) -> int:
        """Receive and record at most one message per subscriber; keep the store's commits and retention
        going. How many messages were handled."""
        from zmq.utils.monitor import recv_monitor_message

        ready = dict(self._poller.poll(int(timeout * 1000)))
        handled = 0
        for monitor, subscriber in self._monitors.items():
            if monitor in ready:
                event = recv_monitor_message(monitor)
                link = Link(subscriber.endpoint, event["event"] == self._zmq.EVENT_CONNECTED)
                self.store.record_event(time.time_ns(), "*", "", "link",
                                        f"{link.endpoint} {'connected' if link.connected else 'disconnected'}")
                self._tell(link, None, subscriber.endpoint)
        for subscriber in self.subscribers:
            if subscriber.socket in ready:
                handled += self._receive(subscriber)
        self.store.maybe_commit()
        self.store.maintain()
        return handled

    def _receive(self, subscriber: Subscriber) -> int:
        try:
            message = subscriber.recv(0)
        except wire.WireError as error:
            self.malformed += 1
            log.warning("recorder: malformed message from %s (%s)", subscriber.endpoint, error)
            return 0
        if message is None:
            return 0
        for event in subscriber.pop_events():
            now = time.time_ns()
            if isinstance(event, Gap):
                self.store.record_event(now, event.camera, event.session, "gap",
                                        f"{event.lost} {event.kind} message(s) lost after seq {event.after_seq}",
                                        lost=event.lost)
            elif isinstance(event, Restart):
                detail = f"publisher restarted (was session {event.old_session})"
                resumed = self._resumed.get(event.camera)
                if resumed is not None and resumed[0] == event.old_session:
                    detail += (f"; its decisions after seq {resumed[1]}, published while the view was stopped, are "
                               "unknown")
                self.store.record_event(now, event.camera, event.new_session, "restart", detail)
        self._resumed.pop(message.camera, None)
        row_id = None
        try:
            if isinstance(message, wire.Decision):
                digest = self.frames.sha256(message.camera, message.frame_id) if self.frames is not None else None
                row_id = self.store.record_decision(message, digest)
            elif isinstance(message, wire.MapMessage):
                self.store.record_map(message)
            elif isinstance(message, wire.Fault):
                self.store.record_event(message.wall_ns, message.camera, message.session, "fault",
                                        f"{message.code}: {message.message}")
            elif isinstance(message, wire.Heartbeat) and message.drift is not None:
                state = message.drift.get("state")
                if state != self._drift.get(message.camera):
                    self._drift[message.camera] = state
                    self.store.record_event(message.wall_ns, message.camera, message.session, "drift", str(state))
        finally:
            self._tell(message, row_id, subscriber.endpoint)
        return 1

    def _tell(self, message, row_id: int | None, endpoint: str) -> None:
        if self.listener is not None:
            self.listener(message, row_id, endpoint)

    def start(self) -> "Recorder":
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step(0.2)
            except Exception as error:  # counted and shown; the next message is handled
                self.errors += 1
                self.error = f"{type(error).__name__}: {error}"
                if self.errors == 1 or self.errors % 100 == 0:
                    log.exception("recorder: error %d (recording goes on)", self.errors)
                self._stop.wait(ERROR_PAUSE_S)

    def stop(self) -> None:
        """Stop the thread (if started) and close the socket monitors; the subscribers stay the caller's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for monitor, subscriber in self._monitors.items():
            subscriber.socket.disable_monitor()
            monitor.close(linger=0)
        self._monitors = {}

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
