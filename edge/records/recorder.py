"""The recorder: a subscriber like any other that writes every message it receives into a RecordStore.

It runs in its own process (the view's), so recording can never slow the daemon: when it falls
behind, ZeroMQ drops for this subscriber only, and the loss shows as a gap in the sequence numbers,
which is recorded as an event and counted, never hidden.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from edge.transport import wire
from edge.records.store import RecordStore
from edge.transport.subscriber import Gap, Restart, Subscriber

log = logging.getLogger(__name__)

TOPICS = (wire.DECISION, wire.MAP, wire.HEARTBEAT, wire.FAULT)


class Recorder:
    """Receives from `subscriber` and records into `store`; after each message, calls
    `listener(message, row_id)` (row_id: the decision's record, else None) for the live view."""

    def __init__(self, store: RecordStore, subscriber: Subscriber,
                 listener: Callable[[wire.Message, int | None], None] | None = None):
        self.store = store
        self.subscriber = subscriber
        self.listener = listener
        self.malformed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def step(self, timeout: float) -> wire.Message | None:
        """Receive and record at most one message; keep the store's commits and retention going."""
        try:
            message = self.subscriber.recv(timeout)
        except wire.WireError as error:
            self.malformed += 1
            log.warning("recorder: malformed message (%s)", error)
            message = None
        for event in self.subscriber.pop_events():
            now = time.time_ns()
            if isinstance(event, Gap):
                self.store.record_event(now, event.camera, event.session, "gap",
                                        f"{event.lost} {event.kind} message(s) lost after seq {event.after_seq}",
                                        lost=event.lost)
            elif isinstance(event, Restart):
                self.store.record_event(now, event.camera, event.new_session, "restart",
                                        f"publisher restarted (was session {event.old_session})")
        row_id = None
        if isinstance(message, wire.Decision):
            row_id = self.store.record_decision(message)
        elif isinstance(message, wire.MapMessage):
            self.store.record_map(message)
        elif isinstance(message, wire.Fault):
            self.store.record_event(message.wall_ns, message.camera, message.session, "fault",
                                    f"{message.code}: {message.message}")
        self.store.maybe_commit()
        self.store.maintain()
        if message is not None and self.listener is not None:
            self.listener(message, row_id)
        return message

    def start(self) -> "Recorder":
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.step(0.2)
        except BaseException as error:  # the view shows a dead recorder instead of freezing on old data
            self.error = error
            log.exception("recorder stopped")
        finally:
            self.store.commit()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
