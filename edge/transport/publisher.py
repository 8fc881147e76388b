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

What a peer can cost is bounded. The PUB side is an XPUB in manual mode: the I/O thread applies a
subscription only when it is a prefix of one of this camera's four topics (any other could never
match a message), so the subscription tree holds at most those prefixes; ZeroMQ drops a peer whose
message exceeds `MAX_PEER_MESSAGE_BYTES` before storing it. The acknowledged channel belongs to one
bridge at a time (the first to say HELLO, until it is silent for `bridge_timeout_s` or a bridge with
its CURVE key says HELLO); others are refused with a REFUSED message and a WARNING naming their
address. Log lines about peers go through a `RepeatLimiter`: one per peer and cause a minute.

Heartbeats are driven by the pipeline's loop (`maybe_heartbeat(counters)` every iteration), not by a
timer thread: a heartbeat then proves the *pipeline* is alive, not just this publisher, so a hung
pipeline goes silent and the bridge fails safe. The loop must come round at least once per period
(source fetch timeouts ≤ `heartbeat_period_s`).
"""

import collections
import logging
import math
import re
import secrets
import struct
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from edge.transport import wire
from edge.transport.curve_keys import ServerCurve, apply_server, start_authenticator
from edge.core.errors import ConfigError, OutputError
from edge.core.logs import RepeatLimiter, camera_log
from edge.core.settings import Section
from edge.transport.endpoints import check_bind_endpoint, same_endpoint

# Commands on the inproc hand-over to the I/O thread (first frame).
_DECISION, _QUIT = b"D", b"Q"
# While the bridge's queue is full, how often the I/O thread offers it the oldest unsent decision.
BACKLOG_RETRY_MS = 10
# A decision's seq and frame id (a camera's unsigned 64-bit counter) on that hand-over: binary, it never
# leaves the process.
_SEQ_FRAME = struct.Struct("=qQ")
# Longest message a peer may send to either socket; ZeroMQ disconnects one that sends more, before
# storing any of it. A subscription is at most 76 bytes ("heartbeat." + a 64-character camera + "/"),
# HELLO and ACK less, but the limit also covers the handshake's commands (CURVE's INITIATE carries the
# peer's metadata).
MAX_PEER_MESSAGE_BYTES = 4096
# How often the I/O thread looks for subscriptions when no wake-up reached it (a sending thread may
# have taken the socket's signal): the longest a new subscriber waits for its first message.
SUBSCRIPTION_POLL_MS = 50


# Published maps are at most this many px a side (a 4096 × 4096 float16 map is 32 MiB per frame).
MAX_MAP_SIDE = 4096
# A fixed uint8 map scale's ends lie within ± this (model map values are O(1..100)).
MAX_MAP_VALUE = 1e9
_U64 = (1 << 64) - 1


class PublishConfig(Section):
    endpoint: str = "tcp://127.0.0.1:5555"
    reliable_endpoint: str | None = None
    maps: bool = True
    map_format: Literal["uint8", "float16"] = "uint8"
    # [height, width] of published maps, or "model" for the model's own resolution (its aspect
    # ratio: a non-square model's map is not squashed).
    map_size: tuple[Annotated[int, Field(ge=1, le=MAX_MAP_SIDE)], Annotated[int, Field(ge=1, le=MAX_MAP_SIDE)]] \
        | Literal["model"] = "model"
    # uint8 scale [lo, hi] (lo < hi, each within ±MAX_MAP_VALUE); unset scales each map to its own min..max.
    map_value_range: tuple[Annotated[float, Field(ge=-MAX_MAP_VALUE, le=MAX_MAP_VALUE)],
                           Annotated[float, Field(ge=-MAX_MAP_VALUE, le=MAX_MAP_VALUE)]] | None = None
    heartbeat_period_s: float = Field(default=1.0, ge=0.01, le=60)
    # Per-subscriber queue on the PUB socket, in messages: 1000 ≈ 10 s of decision+map traffic at
    # 50 fps, ≈ 64 MiB worst case with 256×256 uint8 maps per stalled subscriber; past it ZeroMQ
    # drops for that subscriber only, which sees the gap from sequence numbers.
    sndhwm: int = Field(default=1000, ge=1, le=1_000_000)
    # How long closing lets queued messages (the "stopping" heartbeat, the last decision) leave;
    # bounded so a systemd stop never hangs on an absent subscriber.
    linger_ms: int = Field(default=500, ge=0, le=60_000)
    # Unacknowledged decisions kept for the bridge; beyond it the oldest is evicted and a fault is
    # published for it (never silent).
    reliable_capacity: int = Field(default=1000, ge=1, le=1_000_000)
    ack_timeout_s: float = Field(default=0.25, ge=0.01, le=60)
    # Messages ZeroMQ queues towards the bridge before a send is refused (and retried in seq order).
    reliable_hwm: int = Field(default=1000, ge=1, le=1_000_000)
    # CURVE: the publisher's NAME.key_secret file and the directory of allowed subscriber public keys.
    curve_secret_key: Path | None = None
    curve_allowed_clients: Path | None = None
    # The bridge that owns the acknowledged channel keeps it until it is silent (no HELLO, no ACK) this
    # long; then the next bridge to say HELLO takes it over. 5 HELLO periods of `ReliableClient`.
    bridge_timeout_s: float = Field(default=5.0, ge=0.5, le=3600)

    @field_validator("endpoint", "reliable_endpoint")
    @classmethod
    def _endpoint(cls, value):
        if value is not None and not re.match(r"^(tcp|ipc|inproc)://.+", value):
            raise ValueError(f"{value!r} is not a ZeroMQ endpoint, expected e.g. tcp://127.0.0.1:5555")
        return value if value is None else check_bind_endpoint(value)

    @field_validator("map_value_range")
    @classmethod
    def _map_value_range(cls, value):
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"{list(value)}: expected [lo, hi] with lo < hi")
        return value

    @model_validator(mode="after")
    def _curve_pair(self):
        if (self.curve_secret_key is None) != (self.curve_allowed_clients is None):
            raise ValueError("curve_secret_key and curve_allowed_clients go together: set both or neither")
        return self

    @model_validator(mode="after")
    def _two_endpoints(self):
        if self.reliable_endpoint is not None and same_endpoint(self.endpoint, self.reliable_endpoint):
            raise ValueError(f"reliable_endpoint {self.reliable_endpoint!r} is the endpoint {self.endpoint!r} of the "
                             "PUB socket: the two sockets need two endpoints (e.g. ports 5555 and 5556)")
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
                 on_ack_rtt_ns=None, on_part=None):
        """Camera `camera`'s output, as its `[publish]` section says. Maps go out at
        `publish.map_size`, or at `model_map_size` (None: as they come) when that says "model".
        `on_ack_rtt_ns(ns)`, when given, is called from the I/O thread with each decision's
        publish-to-ACK time (bench/perf/publish.py); the daemon keeps no per-ACK history.
        `on_part(request) -> error or None` is called from the I/O thread with each part id the bridge
        hands over (`wire.PartRequest`) and its answer goes back to the bridge; without it part ids
        are refused."""
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
        self._on_ack_rtt_ns = on_ack_rtt_ns
        self._on_part = on_part
        self._init_counters()
        self._init_reliable_state()
        # Subscriptions worth storing: the prefixes of this camera's topics; any other never matches.
        self._topics = tuple(wire.topic(kind, camera) for kind in wire.KINDS)
        self._open_sockets()
        self._thread = threading.Thread(target=self._run, name=f"zmq-publisher-{self.camera}", daemon=True)
        self._thread.start()
        self.log.info("publishing on %s (reliable: %s, CURVE: %s, session %s)", self.endpoint, self.reliable_endpoint,
                      self.curve is not None, self.session)

    def _init_counters(self) -> None:
        self._lock = threading.Lock()
        self._seqs = {kind: 0 for kind in wire.KINDS}
        self._started_ns = time.monotonic_ns()
        self._next_heartbeat_ns = self._started_ns
        self._last_counters = wire.Counters()
        self._last_source: wire.SourceStatus | None = None
        self._last_drift: dict | None = None
        self._overruns = 0
        self._closed = False

    def _init_reliable_state(self) -> None:
        self._reliable_stats: dict | None = None
        self._pending: collections.OrderedDict[int, _Pending] = collections.OrderedDict()
        # The bridge that owns the acknowledged channel: its identity, address, CURVE key (or None)
        # and when it was last heard from.
        self._peer: bytes | None = None
        self._peer_address = ""
        self._peer_key: str | None = None
        self._peer_heard_ns = 0
        self._rel_counts = {"acked": 0, "resent": 0, "evicted": 0, "deferred": 0, "refused": 0}
        self._peer_log = RepeatLimiter()
        # The bridge's queue refused a decision: newer ones wait behind it, so the bridge receives
        # every decision for the first time in seq order.
        self._backlogged = False
        self._evictions_logged_at = -math.inf

    def _open_sockets(self) -> None:
        """The XPUB socket, the ROUTER of the acknowledged channel when configured, and the inproc pair
        that hands messages to the I/O thread; on any failure the context is gone again."""
        zmq = self._zmq
        config = self.config
        self._authenticator = None
        self._context = zmq.Context()
        try:
            if self.curve is not None:
                self._authenticator = start_authenticator(self._context, self.curve)
            self._pub = self._make_socket(zmq.XPUB, config.endpoint, config.sndhwm, MAX_PEER_MESSAGE_BYTES,
                                          {zmq.XPUB_MANUAL: 1})
            self.endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
            self._pub_signal = self._pub.getsockopt(zmq.FD)  # readable when subscriptions may have arrived
            self._router = None
            self.reliable_endpoint = None
            if config.reliable_endpoint is not None:
                # Sending to a vanished bridge must raise, not vanish: we then keep the decision pending.
                # A bridge that reconnects under its own identity takes its connection over.
                self._router = self._make_socket(zmq.ROUTER, config.reliable_endpoint, config.reliable_hwm,
                                                 MAX_PEER_MESSAGE_BYTES,
                                                 {zmq.ROUTER_MANDATORY: 1, zmq.ROUTER_HANDOVER: 1})
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

    def _make_socket(self, kind, endpoint: str, hwm: int, max_message_bytes: int, options: dict):
        zmq = self._zmq
        sock = self._context.socket(kind)
        sock.sndhwm = hwm
        sock.linger = self.config.linger_ms
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        for option, value in options.items():
            sock.setsockopt(option, value)
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
                # masked: a part with no frame has frame id NO_FRAME (-1); the id here is only for log lines
                self._handover([_DECISION, _SEQ_FRAME.pack(decision.seq, decision.frame_id & _U64), *frames])
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
        # The PUB socket's signal, not the socket: callers send on it, so only its fd may be polled here.
        poller.register(self._pub_signal, zmq.POLLIN)
        if self._router is not None:
            poller.register(self._router, zmq.POLLIN)
        running = True
        try:
            while running:
                events = dict(poller.poll(min(self._poll_timeout_ms(), SUBSCRIPTION_POLL_MS)))
                self._apply_subscriptions()
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

    def _apply_subscriptions(self) -> None:
        """Store each subscription that can match one of this camera's topics (XPUB_MANUAL: ZeroMQ
        stores none itself); drop the others, warning about one that matches no topic of any camera."""
        zmq = self._zmq
        with self._lock:  # the callers' sends use this socket too
            if self._closed:
                return
            while self._pub.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                message = self._pub.recv(flags=zmq.NOBLOCK, copy=False)
                body = message.bytes
                prefix = body[1:]
                if body[:1] in (b"\x00", b"\x01") and any(topic.startswith(prefix) for topic in self._topics):
                    self._pub.setsockopt(zmq.SUBSCRIBE if body[:1] == b"\x01" else zmq.UNSUBSCRIBE, prefix)
                elif body[:1] not in (b"\x00", b"\x01") or not _could_be_a_topic(prefix):
                    self._peer_log.log(self.log, logging.WARNING, (_address(message), "subscription"),
                                       "ignoring a subscription from %s that is no topic prefix: %r",
                                       _address(message), body[:40])

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
                self._peer_log.log(self.log, logging.WARNING, (self._peer_address, "gone"),
                                   "reliable bridge at %s disconnected; keeping %d decisions pending",
                                   self._peer_address, len(self._pending))
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
                message = self._router.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(message) < 2:
                continue
            frames = [part.bytes for part in message]
            identity, verb, address = frames[0], frames[1], _address(message[1])
            if verb == wire.RELIABLE_HELLO:
                self._on_hello(identity, frames[2:], address, _curve_key(message[1]))
            elif verb == wire.RELIABLE_ACK and len(frames) == 3:
                if identity != self._peer:
                    self._refuse(identity, address, "ack", "ACKs count only from the bridge that owns the channel")
                    continue
                self._peer_heard_ns = time.monotonic_ns()
                self._on_ack(frames[2], address)
            elif verb == wire.RELIABLE_PART and len(frames) == 3:
                if identity != self._peer:
                    self._refuse(identity, address, "part", "part ids count only from the bridge that owns the channel")
                    continue
                self._peer_heard_ns = time.monotonic_ns()
                self._answer_part(identity, frames[2])
            else:
                self._peer_log.log(self.log, logging.WARNING, (address, "verb"),
                                   "reliable channel: ignoring a message with verb %r from %s", verb[:20], address)

    def _on_hello(self, identity: bytes, rest: list, address: str, key: str | None) -> None:
        """The first bridge to say HELLO owns the channel until it is silent for bridge_timeout_s; a
        bridge with the owner's CURVE key (the same bridge, restarted) takes it over at once."""
        if rest != [str(wire.SCHEMA_VERSION).encode()]:
            self._refuse(identity, address, "schema", f"HELLO {rest[:1]!r}: this daemon speaks schema "
                                                      f"{wire.SCHEMA_VERSION} (expected [HELLO, b'{wire.SCHEMA_VERSION}'])")
            return
        now = time.monotonic_ns()
        if identity == self._peer:
            self._peer_heard_ns = now
            return
        silent_s = (now - self._peer_heard_ns) / 1e9
        if (self._peer is not None and silent_s <= self.config.bridge_timeout_s
                and (key is None or key != self._peer_key) and self._owner_connected()):
            self._refuse(identity, address, "owned",
                         f"the acknowledged channel belongs to the bridge at {self._peer_address or '?'}, heard "
                         f"{silent_s:.1f} s ago; another takes it over after {self.config.bridge_timeout_s:g} s of "
                         f"silence, or at once with the owner's CURVE key")
            return
        self._peer_log.log(self.log, logging.INFO, (address, "connected"),
                           "reliable bridge at %s connected%s; sending %d pending decisions", address,
                           "" if self._peer is None else f" (the bridge at {self._peer_address} was silent "
                                                         f"{silent_s:.1f} s)", len(self._pending))
        self._peer, self._peer_address, self._peer_key, self._peer_heard_ns = identity, address, key, now
        self._backlogged = False
        self._send_in_order(lambda pending: True)

    def _owner_connected(self) -> bool:
        """Is the owner's connection still open? A bridge restarted in a hurry must not wait out the
        silence of its own previous run. ROUTER_MANDATORY makes a send to a closed one fail."""
        try:
            self._router.send_multipart([self._peer, wire.RELIABLE_PING], flags=self._zmq.NOBLOCK)
        except self._zmq.Again:
            return True  # connected, its queue full
        except self._zmq.ZMQError as error:
            if error.errno != self._zmq.EHOSTUNREACH:
                raise
            return False
        return True

    def _refuse(self, identity: bytes, address: str, cause: str, reason: str) -> None:
        """Tell a bridge why it gets nothing (it keeps saying HELLO, and gets in once it may)."""
        self._rel_counts["refused"] += 1
        self._peer_log.log(self.log, logging.WARNING, (address, cause), "reliable channel: refused %s: %s",
                           address, reason)
        try:
            self._router.send_multipart([identity, wire.RELIABLE_REFUSED, reason.encode()], flags=self._zmq.NOBLOCK)
        except self._zmq.ZMQError:
            pass  # gone, or its queue is full: it learns on its next HELLO

    def _on_ack(self, body: bytes, address: str) -> None:
        try:
            session, seq = wire.parse_ack_body(body)
        except wire.WireError as error:
            self._peer_log.log(self.log, logging.WARNING, (address, "ack"), "reliable channel: malformed %s from %s",
                               error, address)
            return
        if session != self.session:
            return  # an ACK for a previous run of this publisher
        pending = self._pending.pop(seq, None)
        if pending is not None:
            self._rel_counts["acked"] += 1
            if self._on_ack_rtt_ns is not None:
                self._on_ack_rtt_ns(time.monotonic_ns() - pending.first_sent_ns)

    def _answer_part(self, identity: bytes, body: bytes) -> None:
        """Arm the part a bridge handed over (or refuse it, saying why) and answer that bridge."""
        try:
            request = wire.decode_part_request(body)
        except wire.WireError as error:
            self.log.warning("reliable channel: malformed %s", error)
            return  # no job number to answer to: the bridge times the request out
        if request.session != self.session:
            error = (f"part id {request.part_id!r} was sent to daemon session {request.session}, this is session "
                     f"{self.session} (the daemon restarted in between)")
        elif self._on_part is None:
            error = "this publisher takes no part ids"
        else:
            error = self._on_part(request)
        reply = wire.PartReply(request.part_id, request.job, request.origin, error is None, error or "")
        try:
            self._router.send_multipart([identity, wire.RELIABLE_PART_ACK, wire.encode_part_reply(reply)],
                                        flags=self._zmq.NOBLOCK)
        except self._zmq.ZMQError as error:  # Again or EHOSTUNREACH: the bridge resends the request
            self.log.warning("cannot answer part id %r of job %d: %s", request.part_id, request.job, error)

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


def _address(message) -> str:
    """The peer address ZeroMQ attaches to a received message part ("?" where it has none, e.g. ipc)."""
    import zmq

    try:
        return message.get("Peer-Address") or "?"
    except zmq.ZMQError:  # the property is absent for some transports
        return "?"


def _curve_key(message) -> str | None:
    """The CURVE public key of the peer (the ZAP handler's User-Id), None without CURVE."""
    import zmq

    try:
        return message.get("User-Id") or None
    except zmq.ZMQError:
        return None


def _could_be_a_topic(prefix: bytes) -> bool:
    """Is `prefix` the start of some camera's topic ("decision.line2/" and every prefix of it)?"""
    for kind in wire.KINDS:
        head = kind.encode() + b"."
        if head.startswith(prefix):
            return True
        if prefix.startswith(head):
            return re.fullmatch(rb"[A-Za-z0-9_-]{0,64}|[A-Za-z0-9_-]{1,64}/", prefix[len(head):]) is not None
    return False
