"""The recorder: a subscriber like any other that writes every message it receives into a RecordStore.

It runs in its own process (the view's), so recording can never slow the daemon: when it falls
behind, ZeroMQ drops for this subscriber only, and the loss shows as a gap in the sequence numbers,
which is recorded as an event and counted, never hidden. It resumes counting where the record ends:
decisions a daemon published while the view was stopped are a gap too.

Two threads: the receiver hands each message to the live view at once and queues it; the writer
stores it. So the page never waits for the disk (a checkpoint's fsync, a full disk making room),
and a writer that falls `QUEUE` messages behind drops decisions, counted like any the disk refuses.

One subscriber per daemon endpoint, each watched by a ZeroMQ socket monitor: a daemon that dies
closes its TCP connection, and the view says "disconnected" for its cameras at once instead of
waiting for missed heartbeats. Neither thread stops on a message or a store it cannot handle: the
error is counted and shown, and the next message is handled.
"""

from __future__ import annotations

import logging
import queue
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
QUEUE = 20_000  # messages between receiver and writer: 50 s of a 200 frames/s line's decisions and maps


@dataclass(frozen=True)
class Link:
    """The TCP connection to a daemon's endpoint came up or went down (a ZeroMQ monitor event)."""

    endpoint: str
    connected: bool


class Recorder:
    """Receives from `subscribers` (one per endpoint) and records into `store`. Every message and link
    change goes to `listener(message, endpoint)` as it arrives (the live view); each stored decision to
    `stored(decision, row_id)`. `frames` (camera → replay folder) gives each decision its frame's hash."""

    def __init__(self, store: RecordStore, subscribers: list[Subscriber],
                 listener: Callable[[object, str], None] | None = None,
                 stored: Callable[[wire.Decision, int], None] | None = None, frames: Frames | None = None):
        import zmq

        self._zmq = zmq
        self.store = store
        self.subscribers = list(subscribers)
        self.listener = listener
        self.stored = stored
        self._unannounced: list[tuple[wire.Decision, int]] = []  # stored, not yet committed
        self.frames = frames
        self.malformed = 0
        self.errors = 0
        self.error: str | None = None
        self.overflowed = 0  # decisions the writer was too far behind to take (receiver's count)
        self._overflow_taken = 0
        self._overflow_positions: dict[str, tuple[str, int]] = {}
        self._queue: queue.Queue = queue.Queue(QUEUE)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
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

    # ------------------------------------------------------------------------------ receiving

    def step(self, timeout: float) -> int:
        """Receive at most one message per subscriber and store everything received (one thread, for
        tests and tools). How many messages were received."""
        received = self.receive(timeout)
        self.write(0)
        return received

    def receive(self, timeout: float) -> int:
        """Wait up to `timeout` s; hand what arrived to the listener and queue it for the writer."""
        from zmq.utils.monitor import recv_monitor_message

        ready = dict(self._poller.poll(int(timeout * 1000)))
        received = 0
        for monitor, subscriber in self._monitors.items():
            if monitor in ready:
                event = recv_monitor_message(monitor)
                link = Link(subscriber.endpoint, event["event"] == self._zmq.EVENT_CONNECTED)
                self._tell(link, subscriber.endpoint)
                self._queue_put(("link", link, time.time_ns()))
        for subscriber in self.subscribers:
            if subscriber.socket in ready:
                received += self._receive(subscriber)
        return received

    def _receive(self, subscriber: Subscriber) -> int:
        try:
            message = subscriber.recv(0)
        except wire.WireError as error:
            self.malformed += 1
            log.warning("recorder: malformed message from %s (%s)", subscriber.endpoint, error)
            return 0
        if message is None:
            return 0
        events = subscriber.pop_events()
        self._tell(message, subscriber.endpoint)
        if not self._queue_put(("message", message, events, time.time_ns())) and isinstance(message, wire.Decision):
            self.overflowed += 1
            self._overflow_positions[message.camera] = (message.session, message.seq)
        return 1

    def _queue_put(self, item) -> bool:
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            return False

    def _tell(self, message, endpoint: str) -> None:
        if self.listener is not None:
            self.listener(message, endpoint)

    # -------------------------------------------------------------------------------- writing

    def write(self, timeout: float) -> None:
        """Store what the receiver queued (waiting up to `timeout` s for the first); keep the store's
        commits and retention going."""
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            item = None
        while item is not None:
            self._write(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                item = None
        self._take_overflow()
        self.store.maybe_commit()
        self.store.maintain()
        self._announce_committed()

    def _announce_committed(self) -> None:
        # A part announced before its commit could be opened by a page (another connection) that
        # cannot read it yet: announce only what every reader sees.
        if self._unannounced and not self.store.conn.in_transaction:
            for message, row_id in self._unannounced:
                self.stored(message, row_id)
            self._unannounced.clear()

    def _take_overflow(self) -> None:
        behind = self.overflowed - self._overflow_taken
        if behind:
            self._overflow_taken += behind
            self.store.dropped(behind, f"the writer fell {QUEUE} messages behind the line", dict(self._overflow_positions))

    def _write(self, item) -> None:
        if item[0] == "link":
            _, link, now = item
            self.store.record_event(now, "*", "", "link",
                                    f"{link.endpoint} {'connected' if link.connected else 'disconnected'}")
            return
        _, message, events, now = item
        for event in events:
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
        if isinstance(message, wire.Decision):
            digest = self.frames.sha256(message.camera, message.frame_id) if self.frames is not None else None
            row_id = self.store.record_decision(message, digest)
            if row_id is not None and self.stored is not None:
                self._unannounced.append((message, row_id))
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

    # ------------------------------------------------------------------------------- threads

    def start(self) -> "Recorder":
        for name, work in (("recorder-receive", self.receive), ("recorder-write", self.write)):
            thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self, work) -> None:
        while not self._stop.is_set():
            try:
                work(0.2)
            except Exception as error:  # counted and shown; the next message is handled
                self.errors += 1
                self.error = f"{type(error).__name__}: {error}"
                if self.errors == 1 or self.errors % 100 == 0:
                    log.exception("recorder: error %d (recording goes on)", self.errors)
                self._stop.wait(ERROR_PAUSE_S)

    def stop(self) -> None:
        """Stop the threads (if started), store what was queued, and close the socket monitors; the
        subscribers stay the caller's."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if self._threads:
            self.write(0)
        for monitor, subscriber in self._monitors.items():
            subscriber.socket.disable_monitor()
            monitor.close(linger=0)
        self._monitors = {}

    @property
    def alive(self) -> bool:
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    @property
    def backlog(self) -> int:
        """Messages received and not stored yet."""
        return self._queue.qsize()
