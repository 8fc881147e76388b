"""Subscriber library for integrators, and `hlgfa subscribe`.

`Subscriber` reads the PUB stream and counts every lost message from the per-topic sequence numbers
(and from the `seqs` in heartbeats, which reveal a loss no later message would). A new publisher
session is reported as a restart, not as loss. `ReliableClient` is the PLC bridge's side of the
acknowledged channel: it receives each decision and must `ack()` it.
"""

import argparse
import collections
import json
import logging
import math
import secrets
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.transport import wire
from edge.transport.curve_keys import ClientCurve, apply_client
from edge.core.errors import ConfigError, SourceError
from edge.core.logs import RepeatLimiter

log = logging.getLogger(__name__)



class NoMessagesError(SourceError):
    """Nothing arrived within the timeout: the publisher is down, unreachable, or refuses our key."""


@dataclass(frozen=True)
class Gap:
    """`lost` messages of `kind` from `camera` never arrived (seqs after_seq+1 .. after_seq+lost)."""

    camera: str
    kind: str
    session: str
    after_seq: int
    lost: int


@dataclass(frozen=True)
class Restart:
    """The publisher of `camera` restarted: its sequence numbers begin again at 1."""

    camera: str
    old_session: str
    new_session: str


def _timeout_ms(timeout: float | None) -> int | None:
    if timeout is None:
        return None
    if not (timeout >= 0 and math.isfinite(timeout)):
        raise ConfigError(f"timeout {timeout!r}: expected seconds ≥ 0 or None")
    return int(timeout * 1000)


class _Client:
    """What both client sockets share: one socket, and a context that is ours or the caller's."""

    socket: object
    _context: object
    _own_context: bool

    def _connect(self, endpoint: str) -> None:
        import zmq

        try:
            self.socket.connect(endpoint)
        except zmq.ZMQError as error:
            self.close()
            raise ConfigError(f"cannot connect to {endpoint!r}: {error}") from None
        self.endpoint = endpoint

    def close(self) -> None:
        self.socket.close(linger=0)
        if self._own_context:
            # destroy, not term: also closes sockets a caller made on it (e.g. a monitor), so a
            # forgotten one cannot hang shutdown
            self._context.destroy(linger=0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Subscriber(_Client):
    """`Subscriber(endpoint, cameras=["cam1"], topics=("decision", "heartbeat"), curve=None)`.

    cameras None subscribes to every camera. `recv(timeout)` returns a decoded message or None on
    timeout; it raises wire.WireError for a malformed message. Losses and restarts are queued for
    `pop_events()` and totalled in `lost` (by (camera, kind)) and `restarts`.
    """

    def __init__(self, endpoint: str, cameras: list[str] | None = None, topics=wire.KINDS,
                 curve: ClientCurve | None = None, rcvhwm: int = 10_000, context=None):
        import zmq

        self._zmq = zmq
        topics = tuple(topics)
        for kind in topics:
            if kind not in wire.KINDS:
                raise ConfigError(f"topic {kind!r}: expected one of {', '.join(wire.KINDS)}")
        self.topics = topics
        self.cameras = None if cameras is None else [wire.check_camera(c) for c in cameras]
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self.socket = self._context.socket(zmq.SUB)
        self.socket.linger = 0
        self.socket.rcvhwm = rcvhwm
        if curve is not None:
            apply_client(self.socket, curve)
        for kind in topics:
            for camera in (self.cameras or [None]):
                self.socket.setsockopt(zmq.SUBSCRIBE, wire.subscription_prefix(kind, camera))
        self._connect(endpoint)
        self.lost: collections.Counter = collections.Counter()
        self.received: collections.Counter = collections.Counter()
        self.restarts = 0
        self._sessions: dict[str, str] = {}
        self._last: dict[tuple[str, str], int | None] = {}
        self._events: collections.deque = collections.deque()

    def recv(self, timeout: float | None) -> wire.Message | None:
        if not self.socket.poll(_timeout_ms(timeout)):
            return None
        message = wire.decode(self.socket.recv_multipart())
        self._track(message)
        return message

    def pop_events(self) -> list:
        events = list(self._events)
        self._events.clear()
        return events

    def resume(self, camera: str, session: str, kind: str, last_seq: int) -> None:
        """Count on from what an earlier run of this subscriber received: seq `last_seq` of `kind` from
        `camera`'s publisher session `session`. A later message of that session then shows the gap
        since; a message of another session is a restart, counted from seq 1 of the new one."""
        self._sessions[camera] = session
        self._last[(camera, kind)] = last_seq

    def _track(self, message: wire.Message) -> None:
        camera, kind = message.camera, wire.kind_of(message)
        self.received[(camera, kind)] += 1
        known = self._sessions.get(camera)
        if known != message.session:
            # A fresh subscriber cannot know what was sent before it joined: no baseline. After a
            # restart it was listening all along, so seq 1 of the new session is expected.
            baseline = None if known is None else 0
            if known is not None:
                self.restarts += 1
                self._events.append(Restart(camera, known, message.session))
            for k in wire.KINDS:
                self._last[(camera, k)] = baseline
            self._sessions[camera] = message.session
        self._advance(camera, kind, message.session, message.seq - 1, message.seq)
        if isinstance(message, wire.Heartbeat):
            for other, last_sent in message.seqs.items():
                if other in self.topics:
                    self._advance(camera, other, message.session, last_sent, last_sent)

    def _advance(self, camera: str, kind: str, session: str, expected_through: int, now_through: int) -> None:
        """Everything up to `expected_through` should have arrived; we now hold up to `now_through`."""
        key = (camera, kind)
        last = self._last.get(key)
        if last is not None and expected_through > last:
            lost = expected_through - last
            self.lost[key] += lost
            self._events.append(Gap(camera, kind, session, last, lost))
        self._last[key] = now_through if last is None else max(last, now_through)



class ReliableClient(_Client):
    """The bridge side of the acknowledged channel (a DEALER).

    `recv(timeout)` returns the next decision not delivered before (resends after a lost ACK are
    re-acknowledged and skipped); call `ack(decision)` once it has been acted on (e.g. written to the
    PLC). Until acknowledged, the publisher resends it every ack_timeout_s. While idle the client says
    HELLO every `hello_interval_s`, so a restarted publisher learns of it without a reconnect.

    One bridge owns a daemon's channel at a time. While another does, the daemon answers REFUSED with
    the reason: `refused` holds it (None once decisions come), a WARNING says it once a minute, and the
    client keeps saying HELLO, so it takes the channel over when the owner falls silent. Its identity
    is random per client and kept across reconnects, so a dropped TCP connection does not cost it the
    channel.

    `send_part(request)` hands the daemon a PLC's part id (docs/PROTOCOL.md); the daemon's answers are
    collected in `part_replies` by `recv`.
    """

    def __init__(self, endpoint: str, curve: ClientCurve | None = None, hello_interval_s: float = 1.0,
                 remember: int = 100_000, context=None):
        import zmq

        self._zmq = zmq
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self.socket = self._context.socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.routing_id = b"bridge-" + secrets.token_hex(8).encode()
        if curve is not None:
            apply_client(self.socket, curve)
        self._connect(endpoint)
        self.hello_interval_s = hello_interval_s
        self.refused: str | None = None
        self._refusals_log = RepeatLimiter()
        self.duplicates = 0
        self.unsent = 0  # messages to the publisher ZeroMQ could not even queue (see _send)
        self._seen: dict[tuple[str, int], bool] = {}  # (session, seq) → acknowledged
        self._seen_order: collections.deque = collections.deque()
        self._remember = remember
        self.part_replies: collections.deque[wire.PartReply] = collections.deque()  # answers to send_part
        self._hello()

    def _send(self, frames: list) -> bool:
        """Never blocks: with the publisher gone (or not reading) ZeroMQ queues up to the high-water mark
        and would then block the caller for ever. A message not queued is counted and False returned; what
        it carried comes round again (an ACK is sent again by the caller, a HELLO is due again, a part's job
        is resent or times out)."""
        try:
            self.socket.send_multipart(frames, flags=self._zmq.NOBLOCK)
            return True
        except self._zmq.Again:
            self.unsent += 1
            return False

    def _hello(self) -> None:
        self._send([wire.RELIABLE_HELLO, str(wire.SCHEMA_VERSION).encode()])
        self._last_hello = time.monotonic()

    def recv(self, timeout: float | None) -> wire.Decision | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            now = time.monotonic()
            wait = self.hello_interval_s - (now - self._last_hello)
            if deadline is not None:
                wait = min(wait, deadline - now)
            if self.socket.poll(max(0, int(wait * 1000))):
                frames = self.socket.recv_multipart()
                if frames == [wire.RELIABLE_PING]:
                    continue
                if frames[0] == wire.RELIABLE_REFUSED:
                    self.refused = b" ".join(frames[1:2]).decode("utf-8", "replace")
                    self._refusals_log.log(log, logging.WARNING, "refused", "acknowledged channel %s: refused: %s",
                                           self.endpoint, self.refused)
                    continue
                if len(frames) == 2 and frames[0] == wire.RELIABLE_PART_ACK:
                    self.part_replies.append(wire.decode_part_reply(frames[1]))
                    continue
                if len(frames) < 2 or frames[0] != wire.RELIABLE_DECISION:
                    raise wire.WireError(f"reliable channel: message starting {frames[0][:20]!r}, expected DECISION")
                decision = wire.decode(frames[1:])
                if not isinstance(decision, wire.Decision):
                    raise wire.WireError(f"reliable channel: got a {wire.kind_of(decision)}, expected a decision")
                self._last_hello = time.monotonic()  # traffic proves the publisher knows us
                self.refused = None
                key = (decision.session, decision.seq)
                if key in self._seen:
                    # A resend: our ACK was lost (re-send it) or we have not acted on it yet (wait).
                    self.duplicates += 1
                    if self._seen[key]:
                        self.ack(decision)
                    continue
                self._remember_key(key)
                return decision
            now = time.monotonic()
            if now - self._last_hello >= self.hello_interval_s:
                self._hello()
            if deadline is not None and now >= deadline:
                return None

    def _remember_key(self, key) -> None:
        self._seen[key] = False
        self._seen_order.append(key)
        if len(self._seen_order) > self._remember:
            self._seen.pop(self._seen_order.popleft(), None)

    def send_part(self, request: wire.PartRequest) -> None:
        """Hand a PLC's part id to the daemon; its answer arrives in `part_replies` during `recv`."""
        self._send([wire.RELIABLE_PART, wire.encode_part_request(request)])

    def ack(self, decision: wire.Decision) -> bool:
        """False when ZeroMQ could not queue the ACK (the publisher is gone or not reading): acknowledge
        it again later, or the publisher resends the decision."""
        key = (decision.session, decision.seq)
        if key in self._seen:
            self._seen[key] = True  # acted on: a resend is acknowledged again, whether this ACK left or not
        return self._send([wire.RELIABLE_ACK, wire.ack_body(decision.session, decision.seq)])



# -------------------------------------------------------------------------------- hlgfa subscribe

def _save_map(directory: Path, message: wire.MapMessage) -> Path:
    import cv2
    import numpy as np

    if message.data.dtype == np.uint8:
        image = message.data
    else:
        values = message.values()
        lo, hi = float(values.min()), float(values.max())
        image = np.clip((values - lo) * (255.0 / (hi - lo if hi > lo else 1.0)), 0, 255).astype(np.uint8)
    path = directory / f"{message.camera}_{message.session}_{message.frame_id:010d}.png"
    if not cv2.imwrite(str(path), image):
        raise ConfigError(f"--save-maps {directory}: cannot write {path.name}")
    return path


def _human(message: wire.Decision) -> str:
    score = "-" if message.score is None else f"{message.score:.4g}"
    threshold = "-" if message.threshold is None else f"{message.threshold:.4g}"
    text = (f"{message.camera} frame {message.frame_id} seq {message.seq}: {message.verdict.upper()} "
            f"score {score} threshold {threshold} latency {message.latency_ms:.1f} ms")
    return f"{text} ({message.reason})" if message.reason else text


def _handler(args: argparse.Namespace) -> int:
    curve = None
    if args.curve_secret or args.curve_server_key:
        if not (args.curve_secret and args.curve_server_key):
            raise ConfigError("CURVE needs both --curve-secret CLIENT.key_secret and --curve-server-key SERVER.key")
        curve = ClientCurve(Path(args.curve_secret), Path(args.curve_server_key))
    topics = [wire.DECISION, wire.HEARTBEAT, wire.FAULT]
    if args.save_maps:
        from edge.core.paths import writable_dir

        writable_dir(args.save_maps, f"--save-maps {args.save_maps}")
        topics.append(wire.MAP)
    decisions = 0
    out = sys.stdout

    def emit(record: dict, human: str, to_stderr: bool = False) -> None:
        if args.json:
            print(json.dumps(record, separators=(",", ":")), file=out, flush=True)
        else:
            print(human, file=sys.stderr if to_stderr else out, flush=True)

    with Subscriber(args.connect, cameras=args.camera or None, topics=topics, curve=curve) as sub:
        while args.count is None or decisions < args.count:
            try:
                message = sub.recv(args.timeout)
            except wire.WireError as error:
                emit({"type": "error", "error": str(error)}, f"malformed message: {error}", to_stderr=True)
                continue
            if message is None:
                raise NoMessagesError(f"no message from {args.connect} for {args.timeout} s (publisher down, "
                                      "unreachable, or refusing this CURVE key)")
            for event in sub.pop_events():
                record = {"type": "gap" if isinstance(event, Gap) else "restart", **asdict(event)}
                human = (f"GAP: {event.lost} {event.kind} message(s) of {event.camera} lost after seq {event.after_seq}"
                         if isinstance(event, Gap) else
                         f"RESTART: publisher of {event.camera} restarted (session {event.new_session})")
                emit(record, human, to_stderr=True)
            if isinstance(message, wire.Decision):
                decisions += 1
                emit(wire.to_json_dict(message), _human(message))
            elif isinstance(message, wire.Fault):
                emit(wire.to_json_dict(message), f"FAULT {message.camera} {message.code}: {message.message}",
                     to_stderr=True)
            elif isinstance(message, wire.MapMessage):
                _save_map(args.save_maps, message)
    return 0


def configure(parser) -> None:
    """The arguments and handler of `hlgfa subscribe` (edge/cli.py names the command and its one-line help)."""
    parser.add_argument("--connect", required=True, metavar="ENDPOINT", help="e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--camera", action="append", metavar="CAM", help="only this camera (repeatable)")
    parser.add_argument("--count", type=int, metavar="N", help="exit after N decisions")
    parser.add_argument("--json", action="store_true", help="one JSON line per decision, gap, restart and fault")
    parser.add_argument("--save-maps", type=Path, metavar="DIR", help="write each heat map as a PNG")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="exit 69 when nothing (not even a heartbeat) arrives for S seconds")
    parser.add_argument("--curve-secret", metavar="FILE", help="this subscriber's NAME.key_secret")
    parser.add_argument("--curve-server-key", metavar="FILE", help="the publisher's public SERVER.key")
    parser.set_defaults(handler=_handler)
