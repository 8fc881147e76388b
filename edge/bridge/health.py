"""Per-camera health as the bridge shows it to PLCs: pure logic over received messages, time injected.

Two signals, never one. A part's verdict (ok, reject, fault) concerns that part: a `fault` verdict
means it could not be judged, and the PLC diverts it like a reject; the line goes on. The **system**
is healthy or not, and only that stops the line. A camera is healthy only while all of these hold:
  * a heartbeat arrived within `misses` × its promised period (3 × 1 s by default),
  * that heartbeat said `state: "running"` and its camera was not `unavailable`,
  * no system fault (a fault message whose code is not one of `wire.PART_FAULTS`: camera lost,
    backend restarted, reliable buffer full, ...), sequence gap or daemon restart happened within the
    hold time (the same `misses` × period): the event latches "not healthy" for at least that long,
    so a PLC that samples the bit every few hundred milliseconds cannot miss it, and it clears by
    itself once heartbeats have run clean for the hold time,
  * the parts' faults stay under the fault rate (`FaultRateConfig`): `consecutive` fault verdicts in
    a row, or more than `max_in_window` of the last `window`, mean the camera or the model is failing
    rather than a part; that latches "fault_rate" for the hold time and starts counting afresh.
Every reason has a number (`REASONS`) that the protocols show next to the healthy bit.
"""

import collections
import math
from dataclasses import dataclass, field, replace

from pydantic import Field, model_validator

from edge.core.settings import Section
from edge.transport import wire

# Stable numbers: they are part of the Modbus register map and the OPC UA address space.
REASONS = {
    "": 0,                     # healthy
    "no_heartbeat_yet": 1,     # the bridge has not heard from the daemon since it started
    "heartbeat_timeout": 2,    # no heartbeat for misses × period: daemon dead, hung or unreachable
    "seq_gap": 3,              # heartbeats or faults were lost between the daemon and the bridge
    "fault": 4,                # a system fault message (camera lost, backend restarted, buffer full, ...)
    "restart": 5,              # the daemon restarted (new session)
    "stopping": 6,             # the daemon announced a clean stop
    "source_unavailable": 7,   # the daemon runs but its camera is lost
    "bridge_stopped": 8,       # the bridge itself is shutting down
    "fault_rate": 9,           # too many fault verdicts in a row or in the last parts (FaultRateConfig)
    "halted": 10,              # an operator called Halt (OPC UA) and no Reset since
}
VERDICT_CODES = {"": 0, "ok": 1, "reject": 2, "fault": 3}
# Why a part was faulted, as a number (Modbus register, OPC UA FaultCode): the kind its reason starts with.
FAULT_CODES = {"": 0, "frame_error": 1, "preprocess": 2, "frame_quality": 3, "overload": 4, "deadline": 5,
               "backend": 6, "decide": 7, "shutdown": 8, "part_missing": 9}


def fault_kind(decision: wire.Decision | None) -> str:
    """The fault kind of a fault decision ("frame_quality", ...; its reason is "<kind>: <message>"), else ""."""
    if decision is None or decision.verdict != "fault":
        return ""
    kind = decision.reason.partition(":")[0]
    return kind if kind in FAULT_CODES else ""


class FaultRateConfig(Section):
    """`[fault_rate]`: when the parts' fault verdicts say the system, not a part, is failing. Defaults and how
    they were chosen: docs/PLC.md, "Two signals"."""

    consecutive: int = Field(default=10, ge=1, le=10_000)  # this many fault verdicts in a row
    window: int = Field(default=100, ge=1, le=100_000)     # ... or more than max_in_window of the last window
    max_in_window: int = Field(default=35, ge=0)

    @model_validator(mode="after")
    def _fits(self):
        if self.max_in_window >= self.window:
            raise ValueError(f"max_in_window {self.max_in_window} must be below window {self.window} "
                             "(otherwise the rule can never trip)")
        return self


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
    recent_faults: int = 0  # fault verdicts among the last `window` parts (FaultRateConfig)
    heartbeat_wall_ns: int = 0  # the daemon's wall clock at its last heartbeat
    late_results: int = 0  # results the PLC did not acknowledge within result_ack_timeout_s
    acked_seq: int = 0  # the last result seq the PLC acknowledged
    parts_pending: int = 0  # part ids the daemon armed whose decision has not come yet

    @property
    def reason_code(self) -> int:
        return REASONS[self.reason]

    @property
    def thresholds_version(self) -> str:
        return "" if self.last is None else self.last.thresholds_version


class CameraHealth:
    """Feed it what arrives (`heartbeat`, `fault`, `gap`, `restart`, `decision`) and ask `state(now)`.
    Times are `time.monotonic()` seconds, passed in so tests need no sleeps."""

    def __init__(self, camera: str, misses: int = 3, fault_rate: FaultRateConfig | None = None):
        if misses < 1:
            raise ValueError(f"misses {misses!r}: expected ≥ 1")
        self.misses = misses
        self.fault_rate = fault_rate or FaultRateConfig()
        self._window: collections.deque[bool] = collections.deque(maxlen=self.fault_rate.window)
        self._recent = 0  # True values in the window
        self._in_a_row = 0
        self._state = CameraState(camera=wire.check_camera(camera))
        self._period_s = 1.0
        self._last_heartbeat_at: float | None = None
        self._source_state = ""
        self._latched: tuple[str, float] | None = None  # (reason, until)
        self.halted = False  # the operator's Halt, until clear()

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
                              daemon_state=beat.state, heartbeat_wall_ns=beat.wall_ns)

    def fault(self, now: float, code: str, message: str) -> None:
        """A fault message. One about a part (`wire.PART_FAULTS`: its decision is the part's fault
        verdict, counted there) is only shown; any other is the system's and latches "fault"."""
        if code in wire.PART_FAULTS:
            self._state = replace(self._state, fault_code=code, fault_message=message)
            return
        self._state = replace(self._state, faults=self._state.faults + 1, fault_code=code, fault_message=message)
        self._latch("fault", now)

    @property
    def session(self) -> str:
        """The daemon session of the last heartbeat ("" before the first)."""
        return self._state.session

    def clear(self) -> None:
        """End a halt, forget a latched event and the fault-rate window (an operator's reset): the camera
        is healthy again at once if nothing else is wrong."""
        self.halted = False
        self._latched = None
        self._forget_faults()

    def gap(self, now: float) -> None:
        self._latch("seq_gap", now)

    def restart(self, now: float) -> None:
        self._latch("restart", now)

    def decision(self, decision: wire.Decision, now: float) -> None:
        counts = dict(self._state.counts)
        counts[decision.verdict] = counts.get(decision.verdict, 0) + 1
        faulted = decision.verdict == "fault"
        if len(self._window) == self._window.maxlen:
            self._recent -= self._window[0]
        self._window.append(faulted)
        self._recent += faulted
        self._in_a_row = self._in_a_row + 1 if faulted else 0
        self._state = replace(self._state, last=decision, counts=counts, recent_faults=self._recent)
        if faulted:
            part = "" if decision.part_id is None else f" part {decision.part_id}"
            self._state = replace(self._state, faults=self._state.faults + 1, fault_code="fault_verdict",
                                  fault_message=f"frame {decision.frame_id}{part}: {decision.reason}")
        rule = self.fault_rate
        if self._in_a_row >= rule.consecutive or self._recent > rule.max_in_window:
            how = (f"{self._in_a_row} fault verdicts in a row" if self._in_a_row >= rule.consecutive else
                   f"{self._recent} fault verdicts in the last {len(self._window)} parts")
            self._state = replace(self._state, faults=self._state.faults + 1, fault_code="fault_rate",
                                  fault_message=f"{how} (last: {decision.reason})")
            self._latch("fault_rate", now)
            self._forget_faults()
            self._state = replace(self._state, recent_faults=0)

    def _forget_faults(self) -> None:
        self._window.clear()
        self._recent = 0
        self._in_a_row = 0

    def _reason(self, now: float) -> str:
        if self._last_heartbeat_at is None:
            return "no_heartbeat_yet"
        if now - self._last_heartbeat_at > self.misses * self._period_s:
            return "heartbeat_timeout"
        if self._state.daemon_state != "running":
            return "stopping"
        if self._source_state == "unavailable":
            return "source_unavailable"
        if self.halted:
            return "halted"
        if self._latched is not None and now < self._latched[1]:
            return self._latched[0]
        return ""

    def state(self, now: float) -> CameraState:
        reason = self._reason(now)
        healthy = reason == ""
        latched_fault = self._latched is not None and now < self._latched[1] and self._latched[0] in ("fault",
                                                                                                     "fault_rate")
        self._state = replace(
            self._state, healthy=healthy, reason=reason,
            ready=healthy and self._source_state in ("", "delivering", "idle"),
            busy=healthy and self._source_state == "delivering",
            fault=latched_fault or reason == "source_unavailable")
        return self._state


def stopped(state: CameraState) -> CameraState:
    """The state every protocol shows once the bridge stops serving a camera."""
    return replace(state, healthy=False, reason="bridge_stopped", ready=False, busy=False)
