"""Per-camera health as the bridge shows it to PLCs: pure logic over received messages, time injected.

A camera is **healthy** only while all of these hold:
  * a heartbeat arrived within `misses` × its promised period (3 × 1 s by default),
  * that heartbeat said `state: "running"` and its camera was not `unavailable`,
  * no fault, sequence gap or daemon restart happened within the hold time (the same
    `misses` × period): the event latches "not healthy" for at least that long, so a PLC that
    samples the bit every few hundred milliseconds cannot miss it, and it clears by itself once
    heartbeats have run clean for the hold time.
Every reason has a number (`REASONS`) that the protocols show next to the healthy bit.
"""

import math
from dataclasses import dataclass, field, replace

from edge.transport import wire

# Stable numbers: they are part of the Modbus register map and the OPC UA address space.
REASONS = {
    "": 0,                     # healthy
    "no_heartbeat_yet": 1,     # the bridge has not heard from the daemon since it started
    "heartbeat_timeout": 2,    # no heartbeat for misses × period: daemon dead, hung or unreachable
    "seq_gap": 3,              # heartbeats or faults were lost between the daemon and the bridge
    "fault": 4,                # a fault message, or a decision with verdict "fault"
    "restart": 5,              # the daemon restarted (new session)
    "stopping": 6,             # the daemon announced a clean stop
    "source_unavailable": 7,   # the daemon runs but its camera is lost
    "bridge_stopped": 8,       # the bridge itself is shutting down
}
VERDICT_CODES = {"": 0, "ok": 1, "reject": 2, "fault": 3}


@dataclass(frozen=True)
class CameraState:
    """What every protocol shows for one camera. `last` is the newest decision received (None before
    the first); `counts` are decisions received by verdict since the bridge started."""

    camera: str
    healthy: bool = False
    reason: str = "no_heartbeat_yet"
    ready: bool = False
    busy: bool = False
    fault: bool = False
    session: str = ""
    heartbeats: int = 0
    last: wire.Decision | None = None
    counts: dict = field(default_factory=lambda: {"ok": 0, "reject": 0, "fault": 0})
    daemon_state: str = ""
    faults: int = 0  # faults seen since the bridge started (fault messages, fault verdicts, bad messages)
    fault_code: str = ""  # of the last one
    fault_message: str = ""

    @property
    def reason_code(self) -> int:
        return REASONS[self.reason]

    @property
    def thresholds_version(self) -> str:
        return "" if self.last is None else self.last.thresholds_version


class CameraHealth:
    """Feed it what arrives (`heartbeat`, `fault`, `gap`, `restart`, `decision`) and ask `state(now)`.
    Times are `time.monotonic()` seconds, passed in so tests need no sleeps."""

    def __init__(self, camera: str, misses: int = 3):
        if misses < 1:
            raise ValueError(f"misses {misses!r}: expected ≥ 1")
        self.misses = misses
        self._state = CameraState(camera=wire.check_camera(camera))
        self._period_s = 1.0
        self._last_heartbeat_at: float | None = None
        self._source_state = ""
        self._latched: tuple[str, float] | None = None  # (reason, until)

    def _latch(self, reason: str, now: float) -> None:
        until = now + self.misses * self._period_s
        if self._latched is None or self._latched[1] <= now or reason != self._latched[0]:
            self._latched = (reason, until)
        else:
            self._latched = (reason, max(until, self._latched[1]))

    def heartbeat(self, beat: wire.Heartbeat, now: float) -> None:
        if math.isfinite(beat.period_s) and beat.period_s > 0:
            self._period_s = beat.period_s
        self._last_heartbeat_at = now
        self._source_state = beat.source.state if beat.source is not None else ""
        self._state = replace(self._state, heartbeats=self._state.heartbeats + 1, session=beat.session,
                              daemon_state=beat.state)

    def fault(self, now: float, code: str, message: str) -> None:
        self._state = replace(self._state, faults=self._state.faults + 1, fault_code=code, fault_message=message)
        self._latch("fault", now)

    def gap(self, now: float) -> None:
        self._latch("seq_gap", now)

    def restart(self, now: float) -> None:
        self._latch("restart", now)

    def decision(self, decision: wire.Decision, now: float) -> None:
        counts = dict(self._state.counts)
        counts[decision.verdict] = counts.get(decision.verdict, 0) + 1
        self._state = replace(self._state, last=decision, counts=counts)
        if decision.verdict == "fault":
            self.fault(now, "fault_verdict", f"frame {decision.frame_id}: {decision.reason}")

    def _reason(self, now: float) -> str:
        if self._last_heartbeat_at is None:
            return "no_heartbeat_yet"
        if now - self._last_heartbeat_at > self.misses * self._period_s:
            return "heartbeat_timeout"
        if self._state.daemon_state != "running":
            return "stopping"
        if self._source_state == "unavailable":
            return "source_unavailable"
        if self._latched is not None and now < self._latched[1]:
            return self._latched[0]
        return ""

    def state(self, now: float) -> CameraState:
        reason = self._reason(now)
        healthy = reason == ""
        latched_fault = self._latched is not None and now < self._latched[1] and self._latched[0] == "fault"
        self._state = replace(
            self._state, healthy=healthy, reason=reason,
            ready=healthy and self._source_state in ("", "delivering", "idle"),
            busy=healthy and self._source_state == "delivering",
            fault=latched_fault or reason == "source_unavailable")
        return self._state


def stopped(state: CameraState) -> CameraState:
    """The state every protocol shows once the bridge stops serving a camera."""
    return replace(state, healthy=False, reason="bridge_stopped", ready=False, busy=False)
