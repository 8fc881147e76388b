"""The bridge's core: one thread per camera daemon, fanning decisions and health out to protocol adapters.

Per camera, one thread owns two ZeroMQ sockets (they are not thread-safe): a `Subscriber` on the
daemon's PUB socket for heartbeats and faults (liveness, losses, restarts) and a `ReliableClient` on
its acknowledged channel for decisions. A decision is handed to every adapter in the order it arrived;
it is acknowledged to the daemon only once every adapter has accepted it (`Adapter.deliver` returned).
An adapter that refuses (broker gone, PLC unreachable) gets the same decision again every
`retry_s`, in order, while the others go on; the daemon keeps the decision pending (and resends it)
until then, so a bridge crash in between loses nothing. When `backlog` decisions wait for a refusing
adapter the bridge stops taking decisions from that daemon: its own bounded buffer then fills and
reports `reliable_buffer_full` (a fault: the camera turns unhealthy) instead of the bridge growing
without bound.

Health (edge/bridge/health.py) is re-evaluated every `tick_s`, and shown on every adapter
(`Adapter.show`) whenever it changes or a heartbeat arrives, so a dead daemon is unhealthy on every
protocol within misses × period + tick_s + the adapters' own write time.

The other way, from the PLC: an adapter hands over a part id (`Bridge.request_part`), acknowledges a
result (`Bridge.acknowledge_result`) or resets a latched error (`Bridge.reset`). The camera's thread
sends the part id to the daemon on the acknowledged channel (`wire.PartRequest`) and resolves the
returned future with the daemon's answer (edge/bridge/handshake.py); a socket pair wakes the thread,
so a part id never waits for the next tick.
"""

import collections
import logging
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Protocol

from edge.transport import wire
from edge.bridge.handshake import PartJobs, ResultAcks
from edge.bridge.health import CameraHealth, CameraState, FaultRateConfig, stopped
from edge.transport.curve_keys import ClientCurve
from edge.core.errors import ConfigError, OutputError
from edge.core.logs import camera_log
from edge.transport.subscriber import Gap, ReliableClient, Restart, Subscriber

log = logging.getLogger(__name__)


class DeliveryError(OutputError):
    """A protocol did not accept a value (the PLC or broker is unreachable, or refused it)."""


class Adapter(Protocol):
    """One protocol. Called from every camera's thread at once: implementations are thread-safe.

    `deliver` returns once the protocol accepted the decision (the write returned, the variable was set
    and the event fired, the PUBACK arrived) and raises DeliveryError otherwise. `show` publishes the
    camera's health and counters; it must not raise for an unreachable peer (log, and show again later).
    """

    name: str

    def start(self, cameras: list[str], controls: "Controls") -> None: ...

    def deliver(self, decision: wire.Decision, state: CameraState) -> None: ...

    def show(self, state: CameraState) -> None: ...

    def close(self) -> None: ...


class Controls(Protocol):
    """What an adapter may ask of the bridge on behalf of the PLC (the `Bridge` implements it)."""

    def request_part(self, camera: str, part_id: str) -> Future: ...

    def acknowledge_result(self, camera: str, seq: int) -> None: ...

    def reset(self, camera: str) -> None: ...

    def halt(self, camera: str) -> None: ...


@dataclass(frozen=True)
class CameraLink:
    """Where one camera daemon publishes: its PUB endpoint and its acknowledged channel."""

    camera: str
    connect: str
    reliable: str
    curve: ClientCurve | None = None


class _Pending:
    __slots__ = ("decision", "accepted")

    def __init__(self, decision: wire.Decision):
        self.decision = decision
        self.accepted: set[str] = set()


class CameraBridge:
    """One camera's thread. `state()` is safe from any thread."""

    def __init__(self, link: CameraLink, adapters: list, misses: int = 3, tick_s: float = 0.05,
                 retry_s: float = 0.5, backlog: int = 10_000, context=None, fault_rate: FaultRateConfig | None = None,
                 result_ack_timeout_s: float | None = None, part_answer_timeout_s: float = 1.0):
        self.link = link
        self.log = camera_log(__name__, link.camera)
        self.adapters = adapters
        self.tick_s = tick_s
        self.retry_s = retry_s
        self.backlog_limit = backlog
        self._health = CameraHealth(link.camera, misses, fault_rate)
        self._state = self._health.state(time.monotonic())
        self.jobs = PartJobs(part_answer_timeout_s)
        self.results = ResultAcks(result_ack_timeout_s)
        self._reset = threading.Event()
        self._halt = threading.Event()
        self._late_logged_at = -float("inf")
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._lock = threading.Lock()
        self._context = context
        self._pending: collections.deque[_Pending] = collections.deque()
        self._retry_at: dict[str, float] = {}
        self.delivered = collections.Counter()  # adapter name → decisions accepted
        self.refused = collections.Counter()    # adapter name → refusals (each retried)
        self.acked = 0
        self.loop_at = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"bridge-{link.camera}", daemon=True)

    def start(self) -> None:
        """Connects here, so a bad endpoint is an error of the start (exit 78), not of the thread. The
        sockets then belong to the thread alone (starting it is the memory barrier ZeroMQ asks for)."""
        link = self.link
        self._sub = Subscriber(link.connect, cameras=[link.camera], topics=(wire.HEARTBEAT, wire.FAULT),
                               curve=link.curve, context=self._context)
        try:
            self._reliable = ReliableClient(link.reliable, curve=link.curve, context=self._context)
        except Exception:
            self._sub.close()
            raise
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._show(stopped(self.state()))
        self._wake_in.close()
        self._wake_out.close()

    def request_part(self, part_id: str) -> Future:
        """Any thread: hand part `part_id` to the daemon; the future's result is its `wire.PartReply`."""
        future = self.jobs.submit(wire.check_part_id(part_id))
        self._wake()
        return future

    def acknowledge_result(self, seq: int) -> None:
        self.results.acknowledge(seq)

    def reset(self) -> None:
        """Any thread: end a halt and forget a latched error (the operator's Reset); health is evaluated afresh."""
        self._reset.set()
        self._wake()

    def halt(self) -> None:
        """Any thread: the operator's Halt: not healthy ("halted") until reset."""
        self._halt.set()
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_in.send(b"w")
        except (BlockingIOError, OSError):
            pass  # full (the thread has wake-ups pending anyway) or closed

    def _show(self, state: CameraState) -> None:
        for adapter in self.adapters:
            try:
                adapter.show(state)
            except Exception:  # noqa: BLE001 - health on the other protocols must still change
                self.log.exception("%s failed to show its state", adapter.name)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def state(self) -> CameraState:
        with self._lock:
            return self._state

    def pending(self) -> int:
        return len(self._pending)

    # ---------------------------------------------------------------------------- the thread

    def _run(self) -> None:
        import zmq

        with self._sub as sub, self._reliable as reliable:
            poller = zmq.Poller()
            poller.register(sub.socket, zmq.POLLIN)
            poller.register(reliable.socket, zmq.POLLIN)
            poller.register(self._wake_out.fileno(), zmq.POLLIN)
            shown = None
            while not self._stop.is_set():
                self.loop_at = time.monotonic()
                accepting = len(self._pending) < self.backlog_limit
                poller.modify(reliable.socket, zmq.POLLIN if accepting else 0)
                events = dict(poller.poll(int(self.tick_s * 1000)))
                if self._wake_out.fileno() in events:
                    self._drain_wake()
                beat = self._drain_subscriber(sub) if sub.socket in events else False
                if accepting:
                    self._drain_reliable(reliable)  # also says HELLO when due
                self._send_parts(reliable)
                self._deliver(reliable)
                now = time.monotonic()
                with self._lock:
                    self._state = self._evaluate(now)
                    state = self._state
                if beat or _shown_fields(state) != shown:
                    shown = _shown_fields(state)
                    self._show(state)

    def _drain_wake(self) -> None:
        try:
            while self._wake_out.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _evaluate(self, now: float) -> CameraState:
        """The camera's state now, with what the PLC's side of the handshake adds to it."""
        if self._halt.is_set():
            self._halt.clear()
            self._health.halted = True
            self.log.warning("halted by the PLC side: not healthy until reset")
        if self._reset.is_set():
            self._reset.clear()
            self._health.clear()
            self.log.info("reset by the PLC side (halt ended, latched error forgotten)")
        late = self.results.expire(now)
        if late and now - self._late_logged_at >= 10:
            self.log.warning("%d result(s) not acknowledged by the PLC within %g s (seq %s); %d late in all",
                             len(late), self.results.timeout_s, ", ".join(str(seq) for _, seq in late[:10]),
                             self.results.late)
            self._late_logged_at = now
        return replace(self._health.state(now), late_results=self.results.late, acked_seq=self.results.acked_seq,
                       parts_pending=len(self.jobs.pending_parts))

    def _answered(self, reliable: ReliableClient) -> None:
        while reliable.part_replies:
            self.jobs.answered(reliable.part_replies.popleft())

    def _send_parts(self, reliable: ReliableClient) -> None:
        self._answered(reliable)
        for request in self.jobs.due(self._health.session, time.monotonic()):
            reliable.send_part(request)

    def _drain_subscriber(self, sub: Subscriber) -> bool:
        beat = False
        while True:
            try:
                message = sub.recv(timeout=0)
            except wire.WireError as error:
                # A daemon speaking another schema, or garbage on the port: never guess, fail safe.
                self.log.error("%s", error)
                self._health.fault(time.monotonic(), "bad_message", str(error))
                continue
            if message is None:
                return beat
            now = time.monotonic()
            for event in sub.pop_events():
                if isinstance(event, Gap):
                    self.log.warning("%d %s message(s) lost after seq %d", event.lost, event.kind, event.after_seq)
                    self._health.gap(now)
                elif isinstance(event, Restart):
                    self.log.warning("daemon restarted (session %s → %s)", event.old_session, event.new_session)
                    self._health.restart(now)
                    self.jobs.forget_pending()
            if isinstance(message, wire.Heartbeat):
                self._health.heartbeat(message, now)
                beat = True
            elif isinstance(message, wire.Fault):
                self.log.warning("fault %s: %s", message.code, message.message)
                self._health.fault(now, message.code, message.message)

    def _drain_reliable(self, reliable: ReliableClient) -> None:
        while len(self._pending) < self.backlog_limit:
            try:
                decision = reliable.recv(timeout=0)
            except wire.WireError as error:
                self.log.error("reliable channel: %s", error)
                self._health.fault(time.monotonic(), "bad_message", str(error))
                continue
            if decision is None:
                return
            # the daemon's answers to part ids that came before this decision, first: a part armed and
            # decided at once must not stay "pending" because its decision was counted before its answer
            self._answered(reliable)
            if decision.camera != self.link.camera:
                self.log.error("the acknowledged channel at %s delivered a decision of camera %r; check the "
                               "bridge's camera/endpoint pairs", self.link.reliable, decision.camera)
                self._health.fault(time.monotonic(), "wrong_camera",
                                   f"decision of camera {decision.camera!r} on {self.link.reliable}")
                continue
            now = time.monotonic()
            self._health.decision(decision, now)
            self.jobs.decided(decision.part_id)
            # due from now: before any protocol shows it, so a PLC's acknowledgement can never come first
            self.results.delivered(decision, now)
            self._pending.append(_Pending(decision))

    def _deliver(self, reliable: ReliableClient) -> None:
        if not self._pending:
            return
        now = time.monotonic()
        with self._lock:
            self._state = self._evaluate(now)
            state = self._state
        for adapter in self.adapters:
            if self._retry_at.get(adapter.name, 0.0) > now:
                continue
            for item in self._pending:
                if adapter.name in item.accepted:
                    continue
                try:
                    adapter.deliver(item.decision, state)
                except Exception as error:  # noqa: BLE001 - a bug in one protocol must not stop the others
                    if not isinstance(error, DeliveryError):
                        self.log.exception("%s failed on decision seq %d", adapter.name, item.decision.seq)
                    self.refused[adapter.name] += 1
                    self._retry_at[adapter.name] = now + self.retry_s
                    self.log.warning("%s did not accept decision seq %d (frame %d): %s; retrying in %.1f s",
                                     adapter.name, item.decision.seq, item.decision.frame_id, error, self.retry_s)
                    break
                item.accepted.add(adapter.name)
                self.delivered[adapter.name] += 1
        names = {adapter.name for adapter in self.adapters}
        while self._pending and self._pending[0].accepted >= names:
            # not queued (the daemon is not reading): stays pending, acknowledged on a later turn; the
            # bridge's backlog then stops it taking more, never a hang on the socket
            if not reliable.ack(self._pending[0].decision):
                break
            self._pending.popleft()
            self.acked += 1


def _shown_fields(state: CameraState) -> tuple:
    return (state.healthy, state.reason, state.ready, state.busy, state.fault, state.session, state.faults,
            state.late_results, state.acked_seq, state.parts_pending)


class Bridge:
    """Every camera's thread and every adapter. `start()` starts the adapters, then the cameras."""

    def __init__(self, links: list[CameraLink], adapters: list, **camera_options):
        import zmq

        if not links:
            raise ConfigError("the bridge needs at least one camera ([[cameras]] or --camera)")
        names = [link.camera for link in links]
        if len(set(names)) != len(names):
            raise ConfigError(f"cameras {names}: each camera may appear once")
        self.adapters = adapters
        self._context = zmq.Context()
        self.cameras = {link.camera: CameraBridge(link, adapters, context=self._context, **camera_options)
                        for link in links}

    def start(self) -> None:
        started = []
        try:
            for adapter in self.adapters:
                adapter.start(list(self.cameras), self)
                started.append(adapter)
        except BaseException:
            for adapter in reversed(started):
                adapter.close()
            self._context.destroy(linger=0)
            raise
        try:
            for camera in self.cameras.values():
                camera.start()
        except BaseException:
            self.close()
            raise

    # Controls, for the adapters (any thread)

    def request_part(self, camera: str, part_id: str) -> Future:
        return self.cameras[camera].request_part(part_id)

    def acknowledge_result(self, camera: str, seq: int) -> None:
        self.cameras[camera].acknowledge_result(seq)

    def reset(self, camera: str) -> None:
        self.cameras[camera].reset()

    def halt(self, camera: str) -> None:
        self.cameras[camera].halt()

    def states(self) -> dict[str, CameraState]:
        return {name: camera.state() for name, camera in self.cameras.items()}

    def stalled(self, max_age_s: float) -> list[str]:
        """Cameras whose thread died or has not turned its loop for `max_age_s`."""
        now = time.monotonic()
        return [name for name, camera in self.cameras.items()
                if not camera.alive() or now - camera.loop_at > max_age_s]

    def close(self) -> None:
        for camera in self.cameras.values():
            camera.stop()
        for adapter in self.adapters:
            try:
                adapter.close()
            except Exception:  # one adapter's failure to close must not keep the others open
                log.exception("closing %s failed", adapter.name)
        self._context.destroy(linger=0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
