"""ZeroMQ output of the daemon: decisions, maps, heartbeats and faults on a PUB socket, plus an
acknowledged channel (ROUTER) for the PLC bridge. docs/PROTOCOL.md is the integrator's view.

Threading: ZeroMQ sockets are not thread-safe; a socket may be used by one thread at a time, with
a memory barrier between threads, which a lock gives. Callers (the pipeline's stages, the main loop)
encode in their own thread, take `_lock`, assign the per-topic sequence number and send on the PUB
socket themselves, non-blocking (PUB drops for a subscriber at its HWM, it never waits): numbering and
sending under one lock keeps wire order == seq order, and a decision leaves without waiting for
another Python thread to be scheduled (a hop through an I/O thread adds a wake-up to every
decision's way to a subscriber). The acknowledged channel (ROUTER) needs a loop of its own for acks and resends: an I/O
thread owns it, and callers hand it each decision over an inproc PAIR socket, also under the lock.
That hand-over is non-blocking too; an overrun is counted and reported in the next heartbeat.

Heartbeats are driven by the pipeline's loop (`maybe_heartbeat(counters)` every iteration), not by a
timer thread: a heartbeat then proves the *pipeline* is alive, not just this publisher, so a hung
pipeline goes silent and the bridge fails safe. The loop must come round at least once per period
(source fetch timeouts ≤ `heartbeat_period_s`).
"""

import collections
import math
import re
import secrets
import struct
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from edge.transport import wire
from edge.transport.curve_keys import ServerCurve, apply_server, start_authenticator
from edge.core.errors import ConfigError, OutputError
from edge.core.logs import camera_log
from edge.core.settings import Section
from edge.transport.endpoints import check_bind_endpoint

# Commands on the inproc hand-over to the I/O thread (first frame).
_DECISION, _QUIT = b"D", b"Q"
# While the bridge's queue is full, how often the I/O thread offers it the oldest unsent decision.
BACKLOG_RETRY_MS = 10
# A decision's seq and frame id (a camera's unsigned 64-bit counter) on that hand-over: binary, it never
# leaves the process.
_SEQ_FRAME = struct.Struct("=qQ")


class PublishConfig(Section):
    endpoint: str = "tcp://127.0.0.1:5555"
    reliable_endpoint: str | None = None
    maps: bool = True
    map_format: Literal["uint8", "float16"] = "uint8"
    # [height, width] of published maps, or "model" for the model's own resolution (its aspect
    # ratio: a non-square model's map is not squashed).
    map_size: tuple[int, int] | Literal["model"] = "model"
    # uint8 scale [lo, hi]; unset scales each map to its own min..max.
    map_value_range: tuple[float, float] | None = None
    heartbeat_period_s: float = Field(default=1.0, gt=0)
    # Per-subscriber queue on the PUB socket, in messages: 1000 ≈ 10 s of decision+map traffic at
    # 50 fps, ≈ 64 MiB worst case with 256×256 uint8 maps per stalled subscriber; past it ZeroMQ
    # drops for that subscriber only, which sees the gap from sequence numbers.
    sndhwm: int = Field(default=1000, ge=1)
    # How long closing lets queued messages (the "stopping" heartbeat, the last decision) leave;
    # bounded so a systemd stop never hangs on an absent subscriber.
    linger_ms: int = Field(default=500, ge=0)
    # Unacknowledged decisions kept for the bridge; beyond it the oldest is evicted and a fault is
    # published for it (never silent).
    reliable_capacity: int = Field(default=1000, ge=1)
    ack_timeout_s: float = Field(default=0.25, gt=0)
    # Messages ZeroMQ queues towards the bridge before a send is refused (and retried in seq order).
    reliable_hwm: int = Field(default=1000, ge=1)
    # CURVE: the publisher's NAME.key_secret file and the directory of allowed subscriber public keys.
    curve_secret_key: Path | None = None
    curve_allowed_clients: Path | None = None

    @field_validator("endpoint", "reliable_endpoint")
    @classmethod
    def _endpoint(cls, value):
        if value is not None and not re.match(r"^(tcp|ipc|inproc)://.+", value):
            raise ValueError(f"{value!r} is not a ZeroMQ endpoint, expected e.g. tcp://127.0.0.1:5555")
        return value if value is None else check_bind_endpoint(value)

    @field_validator("map_size")
    @classmethod
    def _map_size(cls, value):
        if value != "model" and min(value) < 1:
            raise ValueError(f"{list(value)}: expected [height, width] ≥ 1 or \"model\"")
        return value

    @model_validator(mode="after")
    def _curve_pair(self):
        if (self.curve_secret_key is None) != (self.curve_allowed_clients is None):
            raise ValueError("curve_secret_key and curve_allowed_clients go together: set both or neither")
        return self


class PublishError(OutputError):
    """The publisher cannot send any more (its I/O thread stopped or it was closed)."""


@dataclass
class _Pending:
    seq: int
    frame_id: int
    frames: list
    first_sent_ns: int = 0
    last_sent_ns: int = 0
    attempts: int = 0


class Publisher:
    def __init__(self, camera: str, config: PublishConfig, model_map_size: tuple[int, int] | None = None,
                 on_ack_rtt_ns=None):
        """Camera `camera`'s output, as its `[publish]` section says. Maps go out at
        `publish.map_size`, or at `model_map_size` (None: as they come) when that says "model".
        `on_ack_rtt_ns(ns)`, when given, is called from the I/O thread with each decision's
        publish-to-ACK time (bench/bench_publish.py); the daemon keeps no per-ACK history."""
        import zmq

        wire.check_camera(camera)
        self.config = config
        self.camera = camera
        self.log = camera_log(__name__, camera)
        self.map_size = model_map_size if config.map_size == "model" else tuple(config.map_size)
        self.map_value_range = None if config.map_value_range is None else tuple(config.map_value_range)
        self.curve = None
        if config.curve_secret_key is not None:
            self.curve = ServerCurve(config.curve_secret_key, config.curve_allowed_clients)
        self.session = secrets.token_hex(8)
        self._zmq = zmq
        self._lock = threading.Lock()
        self._seqs = {kind: 0 for kind in wire.KINDS}
        self._started_ns = time.monotonic_ns()
        self._next_heartbeat_ns = self._started_ns
        self._last_counters = wire.Counters()
        self._last_source: wire.SourceStatus | None = None
        self._last_drift: dict | None = None
        self._overruns = 0
        self._closed = False
        self._authenticator = None
        self._on_ack_rtt_ns = on_ack_rtt_ns
        self._reliable_stats: dict | None = None
        self._pending: collections.OrderedDict[int, _Pending] = collections.OrderedDict()
        self._peer: bytes | None = None
        self._rel_counts = {"acked": 0, "resent": 0, "evicted": 0, "deferred": 0}
        # The bridge's queue refused a decision: newer ones wait behind it, so the bridge receives
        # every decision for the first time in seq order.
        self._backlogged = False
        self._evictions_logged_at = -math.inf

        self._context = zmq.Context()
        try:
            if self.curve is not None:
                self._authenticator = start_authenticator(self._context, self.curve)
            self._pub = self._make_socket(zmq.PUB, config.endpoint, config.sndhwm)
            self.endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
            self._router = None
            self.reliable_endpoint = None
            if config.reliable_endpoint is not None:
                self._router = self._make_socket(zmq.ROUTER, config.reliable_endpoint, config.reliable_hwm)
                # Sending to a vanished bridge must raise, not vanish: we then keep the decision pending.
                self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
                self.reliable_endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
                self._reliable_stats = self._stats_snapshot()
            inproc = f"inproc://hlgfa-publisher-{self.session}"
            self._back = self._context.socket(zmq.PAIR)
            self._back.linger = 0
            self._back.rcvhwm = 0
            self._back.bind(inproc)
            self._front = self._context.socket(zmq.PAIR)
            self._front.linger = 0
            self._front.sndhwm = 100_000
            self._front.connect(inproc)
        except Exception:
            if self._authenticator is not None:
                self._authenticator.stop()  # before destroy: it owns sockets in this context
            self._context.destroy(linger=0)
            raise
        self._thread = threading.Thread(target=self._run, name=f"zmq-publisher-{self.camera}", daemon=True)
        self._thread.start()
        self.log.info("publishing on %s (reliable: %s, CURVE: %s, session %s)", self.endpoint, self.reliable_endpoint,
                      self.curve is not None, self.session)

    def _make_socket(self, kind, endpoint: str, hwm: int):
        zmq = self._zmq
        sock = self._context.socket(kind)
        sock.sndhwm = hwm
        sock.linger = self.config.linger_ms
        # ZMTP heartbeats: a subscriber whose host vanished (cable, power) is dropped within ~3 s and its
        # queue freed, instead of holding HWM messages until TCP gives up many minutes later.
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        if self.curve is not None:
            apply_server(sock, self.curve)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as error:
            sock.close(linger=0)
            raise ConfigError(f"cannot bind ZeroMQ endpoint {endpoint!r}: {error} "
                              "(expected e.g. tcp://127.0.0.1:5555, tcp://eth0:5555 or tcp://*:5555, port free)") from None
        return sock

    # ------------------------------------------------------------------------- caller-side API

    def publish_decision(self, decision: wire.Decision, anomaly_map: np.ndarray | None = None,
                         at_handover=None) -> wire.Decision:
        """Publish a decision, then its map (when given and maps are on, and the decision is not a
        fault). Returns it as sent, with session/seq set.

        `at_handover(decision) -> decision`, when given, is called under the send lock right before the
        send, so the decision can be judged at the moment it leaves (the concluder's deadline); one
        waiting for the lock behind another send is judged after that wait. The decision leaves before
        the map is resized and encoded: the PLC waits on the verdict, not on the picture.
        """
        if decision.camera != self.camera:
            raise wire.WireError(f"decision for camera {decision.camera!r} given to the publisher of {self.camera!r}")
        with self._lock:
            if at_handover is not None:
                decision = at_handover(decision)
            decision = self._stamp(decision)
            frames = wire.encode(decision)
            self._send(frames)
            if self._router is not None:
                self._handover([_DECISION, _SEQ_FRAME.pack(decision.seq, decision.frame_id), *frames])
        if anomaly_map is not None and decision.verdict != "fault":
            map_message = wire.make_map(self.camera, decision.frame_id, anomaly_map, self.map_size,
                                        self.config.map_format, self.map_value_range)
            with self._lock:
                self._send(wire.encode(self._stamp(map_message)))
        return decision

    def publish_fault(self, code: str, message: str, frame_id: int | None = None) -> wire.Fault:
        fault = wire.Fault(self.camera, code, message, frame_id)
        with self._lock:
            fault = self._stamp(fault)
            self._send(wire.encode(fault))
        return fault

    def heartbeat_due(self) -> bool:
        return time.monotonic_ns() >= self._next_heartbeat_ns

    def maybe_heartbeat(self, counters: wire.Counters, source: wire.SourceStatus | None = None,
                        drift: dict | None = None) -> bool:
        """Send a heartbeat if one is due. Call on every pipeline iteration; cheap when none is due."""
        now = time.monotonic_ns()
        if now < self._next_heartbeat_ns:
            return False
        period_ns = int(self.config.heartbeat_period_s * 1e9)
        # Fixed schedule (no drift); after a stall longer than a period, restart it from now.
        self._next_heartbeat_ns += period_ns
        if self._next_heartbeat_ns <= now:
            self._next_heartbeat_ns = now + period_ns
        self.heartbeat(counters, source=source, drift=drift)
        return True

    def heartbeat(self, counters: wire.Counters | None = None, state: str = "running",
                  source: wire.SourceStatus | None = None, drift: dict | None = None) -> wire.Heartbeat:
        """`counters`, `source` and `drift` left out repeat the last ones given (the closing heartbeat)."""
        if counters is not None:
            self._last_counters = counters
        if source is not None:
            self._last_source = source
        if drift is not None:
            self._last_drift = drift
        with self._lock:
            beat = wire.Heartbeat(
                self.camera, self.config.heartbeat_period_s, (time.monotonic_ns() - self._started_ns) / 1e9,
                self._last_counters, seqs={k: v for k, v in self._seqs.items() if k != wire.HEARTBEAT},
                state=state, reliable=self._reliable_stats, overruns=self._overruns, source=self._last_source,
                drift=self._last_drift)
            beat = self._stamp(beat)
            self._send(wire.encode(beat))
        return beat

    def close(self) -> None:
        """Send a final "stopping" heartbeat, then let queued messages leave for at most linger_ms."""
        if self._closed:
            return
        try:
            self.heartbeat(state="stopping")
        except PublishError:
            pass
        with self._lock:  # no caller is inside a send once this is set
            if self._thread.is_alive():
                try:
                    self._handover([_QUIT])
                except PublishError:
                    pass
            self._closed = True
        self._thread.join(timeout=self.config.linger_ms / 1000 + 5)
        if self._thread.is_alive():
            self.log.error("publisher I/O thread did not stop; leaving its context open")
            return
        self._pub.close(linger=self.config.linger_ms)
        self._front.close(linger=0)
        if self._authenticator is not None:
            self._authenticator.stop()
        self._context.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def reliable_stats(self) -> dict | None:
        return self._reliable_stats

    # ------------------------------------------------------------------------------ internals

    def _stamp(self, message):
        kind = wire.kind_of(message)
        self._seqs[kind] += 1
        return replace(message, session=self.session, seq=self._seqs[kind], wall_ns=time.time_ns())

    def _send(self, frames: list) -> None:
        """On the PUB socket, from the caller's thread; the caller holds `_lock`."""
        if self._closed:
            raise PublishError(f"publisher of camera {self.camera!r} is closed; nothing more can be sent")
        self._pub.send_multipart(frames, flags=self._zmq.NOBLOCK)

    def _handover(self, frames: list) -> None:
        if self._closed or not self._thread.is_alive():
            raise PublishError(f"publisher of camera {self.camera!r} is closed or its I/O thread stopped; "
                               "nothing more can be sent")
        try:
            self._front.send_multipart(frames, flags=self._zmq.NOBLOCK)
        except self._zmq.Again:
            self._overruns += 1

    def _run(self) -> None:
        zmq = self._zmq
        poller = zmq.Poller()
        poller.register(self._back, zmq.POLLIN)
        if self._router is not None:
            poller.register(self._router, zmq.POLLIN)
        running = True
        try:
            while running:
                events = dict(poller.poll(self._poll_timeout_ms()))
                if self._back in events:
                    running = self._drain_commands()
                if self._router is not None:
                    if self._router in events:
                        self._drain_router()
                    self._resend_due()
                    self._reliable_stats = self._stats_snapshot()
        except Exception:  # a bug here must be loud: the next hand-over of a decision raises PublishError
            self.log.exception("publisher I/O thread failed")
        finally:
            if self._router is not None:
                if self._pending:
                    # Decisions the PLC bridge may never have acted on: its operator must hear of them.
                    pending = list(self._pending.values())
                    self.log.error("%d decisions never acknowledged by the reliable bridge at exit "
                                   "(seq %d..%d, frames %s%s; bridge %s)", len(pending), pending[0].seq,
                                   pending[-1].seq, ", ".join(str(p.frame_id) for p in pending[:10]),
                                   ", ..." if len(pending) > 10 else "",
                                   "connected" if self._peer else "not connected")
                self._router.close(linger=self.config.linger_ms)
            self._back.close(linger=0)

    def _poll_timeout_ms(self) -> int:
        if self._router is None or self._peer is None or not self._pending:
            return 1000
        if self._backlogged:
            return BACKLOG_RETRY_MS
        timeout_ns = int(self.config.ack_timeout_s * 1e9)
        due = min(p.last_sent_ns + timeout_ns for p in self._pending.values())
        return max(0, math.ceil((due - time.monotonic_ns()) / 1e6))

    def _drain_commands(self) -> bool:
        zmq = self._zmq
        while True:
            try:
                frames = self._back.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return True
            command = frames[0]
            if command == _QUIT:
                return False
            if command == _DECISION:
                self._add_pending(_Pending(*_SEQ_FRAME.unpack(frames[1]), frames[2:]))

    def _add_pending(self, pending: _Pending) -> None:
        if len(self._pending) >= self.config.reliable_capacity:
            _, evicted = self._pending.popitem(last=False)
            self._rel_counts["evicted"] += 1
            # Logged as well as published (the fault topic may have no reader); at most once a second
            # with the count since, as a bridge that is gone evicts one decision per frame.
            now = time.monotonic()
            if now - self._evictions_logged_at >= 1.0:
                self.log.warning("reliable buffer full (%d pending, bridge %s): decision seq %d (frame %d) evicted "
                                 "unacknowledged; %d evicted in all", self.config.reliable_capacity,
                                 "connected" if self._peer else "not connected", evicted.seq, evicted.frame_id,
                                 self._rel_counts["evicted"])
                self._evictions_logged_at = now
            # Goes through the normal hand-over so it gets its own seq in order; the bridge sees it on
            # the fault topic and as a gap in the reliable channel's decision seqs.
            try:
                self.publish_fault("reliable_buffer_full",
                                   f"decision seq {evicted.seq} (frame {evicted.frame_id}) evicted unacknowledged: "
                                   f"{self.config.reliable_capacity} decisions pending, bridge "
                                   f"{'connected' if self._peer else 'not connected'}", evicted.frame_id)
            except PublishError:
                self.log.error("decision seq %d evicted unacknowledged while closing", evicted.seq)
        self._pending[pending.seq] = pending
        if not self._backlogged:
            self._send_pending(pending)

    def _send_pending(self, pending: _Pending) -> bool:
        """False when it was not sent: the bridge's queue is full (backlogged) or the bridge is gone."""
        zmq = self._zmq
        if self._peer is None:
            return False
        try:
            self._router.send_multipart([self._peer, wire.RELIABLE_DECISION, *pending.frames], flags=zmq.NOBLOCK)
        except zmq.Again:
            self._backlogged = True
            self._rel_counts["deferred"] += 1
            return False
        except zmq.ZMQError as error:
            if error.errno == zmq.EHOSTUNREACH:
                self.log.warning("reliable bridge disconnected; keeping %d decisions pending", len(self._pending))
                self._peer = None
                return False
            raise
        now = time.monotonic_ns()
        if pending.attempts:
            self._rel_counts["resent"] += 1
        else:
            pending.first_sent_ns = now
        pending.attempts += 1
        pending.last_sent_ns = now
        return True

    def _drain_router(self) -> None:
        zmq = self._zmq
        while True:
            try:
                frames = self._router.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue
            identity, verb = frames[0], frames[1]
            if verb == wire.RELIABLE_HELLO:
                if identity != self._peer:
                    self.log.info("reliable bridge connected; sending %d pending decisions", len(self._pending))
                    self._peer = identity
                    self._backlogged = False
                    self._send_in_order(lambda pending: True)
            elif verb == wire.RELIABLE_ACK and len(frames) == 3:
                self._on_ack(frames[2])
            else:
                self.log.warning("reliable channel: ignoring a message with verb %r", verb[:20])

    def _on_ack(self, body: bytes) -> None:
        try:
            session, seq = wire.parse_ack_body(body)
        except wire.WireError as error:
            self.log.warning("reliable channel: malformed %s", error)
            return
        if session != self.session:
            return  # an ACK for a previous run of this publisher
        pending = self._pending.pop(seq, None)
        if pending is not None:
            self._rel_counts["acked"] += 1
            if self._on_ack_rtt_ns is not None:
                self._on_ack_rtt_ns(time.monotonic_ns() - pending.first_sent_ns)

    def _resend_due(self) -> None:
        if self._peer is None or not self._pending:
            return
        cutoff = time.monotonic_ns() - int(self.config.ack_timeout_s * 1e9)
        self._send_in_order(lambda pending: pending.attempts == 0 or pending.last_sent_ns <= cutoff)

    def _send_in_order(self, due) -> None:
        """Send the pending decisions `due` selects, oldest first, stopping at the first refused."""
        for pending in list(self._pending.values()):
            if due(pending) and not self._send_pending(pending):
                return
        self._backlogged = False

    def _stats_snapshot(self) -> dict:
        return {"pending": len(self._pending), "capacity": self.config.reliable_capacity,
                "bridge_connected": self._peer is not None, **self._rel_counts}
