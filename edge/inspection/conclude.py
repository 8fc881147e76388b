"""Concluding frames: each frame read gets exactly one decision (ok, reject or fault), published and counted.

A ledger of open frames (keyed by an internal number, since a camera may restart its frame ids) is the
one place a frame is concluded; whichever path gets there first publishes, any later one is ignored, so
a backend that returns after its frames were already faulted cannot publish twice.

Fault kinds of a frame (also the `reason_kind` label of `hlgfa_faults_total`): frame_error, preprocess,
frame_quality, overload, deadline, backend, decide, shutdown; `frame_quality` is the gate of
edge/imaging/quality.py, whose image statistics the pipeline checks before inference and the map here. Faults
not tied to a frame: source_unavailable, backend_restarted, backend_failed, stage_stalled,
thresholds_reload_failed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from edge.imaging import quality

from edge.transport import wire
from edge.inspection.decide import FAULT, OK, REJECT, decide
from edge.inspection.drift import DriftWatch
from edge.core.errors import HlgfaError, OutputError
from edge.core.frame import Frame

if TYPE_CHECKING:
    from edge.core.logs import CameraLog
    from edge.inspection.parts import PartTracker


class Deadline:
    """`pipeline.deadline_ms`, counted from a frame's receipt: checked before each costly step, when
    the score is ready, and last when the verdict is handed to the socket, since a late verdict would
    be acted on for the part after."""

    def __init__(self, deadline_ms: float, clock_ns: Callable[[], int] = time.monotonic_ns):
        self.ms = deadline_ms
        self.clock_ns = clock_ns

    def of(self, frame: Frame) -> int:
        return frame.receive_ns + int(self.ms * 1e6)

    def missed(self, item: Item, step: str, now: int | None = None) -> str | None:
        """None while `item` is in time (at `now`, default the clock's); else the fault message, e.g.
        "not yet inferred 612.3 ms after receipt…"."""
        now = self.clock_ns() if now is None else now
        if now <= item.deadline_ns:
            return None
        return f"{step} {(now - item.frame.receive_ns) / 1e6:.1f} ms after receipt, past the {self.ms:g} ms deadline"


@dataclass(eq=False)
class Item:
    """A frame in the ledger, on its way through the stages."""

    key: int
    frame: Frame
    deadline_ns: int
    tensor: np.ndarray | None = None
    seconds: dict = field(default_factory=dict)
    part_id: str | None = None  # the PLC's part id for this frame (edge/inspection/parts.py), if it gave one


@dataclass(eq=False)
class Result:
    """What a path found for one frame: a score (and map), or a fault."""

    item: Item
    score: float | None = None
    anomaly_map: np.ndarray | None = None
    fault_kind: str | None = None
    fault_message: str = ""


@dataclass(frozen=True)
class VerdictSettings:
    """What concluding needs of the config: `pipeline.deadline_ms`, `publish.maps` and `[quality]`'s
    overrides of the calibrated frame-quality ranges."""

    deadline_ms: float
    publish_maps: bool = True
    quality_overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Criteria:
    """The thresholds and the frame-quality gate's ranges taken from them, replaced whole on a reload."""

    thresholds: object
    image_ranges: dict
    map_ranges: dict


class Concluder:
    """The ledger, the verdicts and what is published of them; `health` counts them.

    `fail(error)` is told when decisions can no longer be published; the pipeline then stops."""

    def __init__(self, camera: str, settings: VerdictSettings, thresholds, model_hash: str, publisher, health,
                 fail: Callable[[HlgfaError], None], log: CameraLog, parts: PartTracker | None = None):
        self.camera = camera
        self.model_hash = model_hash
        self.publisher = publisher
        self.health = health
        self.deadline = Deadline(settings.deadline_ms)
        self.drift = DriftWatch()  # passed parts' scores against the calibration (edge/inspection/drift.py)
        self._maps = settings.publish_maps
        self._quality_overrides = settings.quality_overrides
        self._fail = fail
        self._log = log
        self.set_thresholds(thresholds)
        self._lock = threading.Lock()
        self._concluded = threading.Condition(self._lock)  # notified whenever a frame leaves the ledger
        self._conclude_lock = threading.Lock()
        self._open: dict[int, Item] = {}
        self._next_key = 0
        self.parts = parts

    # --------------------------------------------------------------------------------- ledger

    def register(self, frame: Frame) -> Item:
        with self._lock:
            item = Item(self._next_key, frame, self.deadline.of(frame),
                        part_id=None if self.parts is None else self.parts.bind())
            self._next_key += 1
            self._open[item.key] = item
        return item

    def wait_for_room(self, limit: int, stop: threading.Event, poll_s: float) -> None:
        """Block until fewer than `limit` frames are open (or `stop` is set)."""
        with self._concluded:
            while len(self._open) >= limit and not stop.is_set():
                self._concluded.wait(poll_s)

    def open_items(self) -> list[Item]:
        with self._lock:
            return sorted(self._open.values(), key=lambda item: item.key)

    # ------------------------------------------------------------------------------ criteria

    @property
    def thresholds(self):
        return self.criteria.thresholds

    def set_thresholds(self, thresholds) -> None:
        image_ranges, map_ranges = quality.split(quality.effective_ranges(
            getattr(thresholds, "quality", None), self._quality_overrides,
            f"camera {self.camera}: thresholds {thresholds.version}"))
        self.criteria = Criteria(thresholds, image_ranges, map_ranges)

    # ---------------------------------------------------------------------------- conclusion

    def conclude(self, result: Result) -> bool:
        """Publish the one decision of `result.item`; False if that frame was already concluded.

        One conclusion at a time, from taking the frame out of the ledger to publishing: at shutdown
        the main thread faults what is left while the output stage may still be publishing the frame
        before, and without this the later frame's decision could overtake it on the wire."""
        with self._conclude_lock:
            with self._lock:
                if self._open.pop(result.item.key, None) is None:
                    return False
                self._concluded.notify_all()
            self._publish(result)
            return True

    def _verdict(self, result: Result, criteria: Criteria) -> tuple[str, str, str | None, int]:
        """(verdict, reason, fault kind or None, largest region in px) of a result."""
        kind, message = result.fault_kind, result.fault_message
        if kind is None:
            if (late := self.deadline.missed(result.item, "score ready")) is not None:
                kind, message = "deadline", late
            elif criteria.map_ranges and result.anomaly_map is not None and (unusable := quality.unjudgeable(
                    map_stats := quality.map_stats(result.anomaly_map), criteria.map_ranges)) is not None:
                # out of distribution: another product, a moved camera
                kind, message = "frame_quality", unusable
            else:
                try:
                    verdict = decide(result.score, result.anomaly_map, criteria.thresholds)
                except Exception as error:
                    kind, message = "decide", f"{type(error).__name__}: {error}"
                else:
                    if verdict.verdict == OK and criteria.map_ranges and result.anomaly_map is not None and (
                            everywhere := quality.anomalous_everywhere(map_stats, criteria.map_ranges)) is not None:
                        return REJECT, everywhere, None, verdict.largest_region_px
                    if verdict.verdict != FAULT:
                        return verdict.verdict, verdict.reason, None, verdict.largest_region_px
                    kind, message = "decide", verdict.reason
        return FAULT, f"{kind}: {message}", kind, 0

    def _publish(self, result: Result) -> None:
        start = time.monotonic()
        item, frame, criteria = result.item, result.item.frame, self.criteria
        verdict, reason, kind, region_px = self._verdict(result, criteria)
        decision_ns = time.monotonic_ns()
        score = float(result.score) if result.score is not None and np.isfinite(result.score) else None
        decision = wire.Decision(
            camera=self.camera, frame_id=int(frame.frame_id), verdict=verdict, reason=reason,
            score=score, threshold=float(criteria.thresholds.image_threshold),
            device_timestamp_ns=int(frame.device_timestamp_ns), receive_ns=int(frame.receive_ns),
            decision_ns=decision_ns, latency_ms=(decision_ns - frame.receive_ns) / 1e6,
            model_hash=self.model_hash, thresholds_version=criteria.thresholds.version, region_px=int(region_px),
            part_id=item.part_id)
        try:
            decision = self.publisher.publish_decision(decision, result.anomaly_map if kind is None and self._maps
                                                       else None, at_handover=lambda d: self._at_handover(item, d))
            if kind is None and decision.verdict == FAULT:
                kind = "deadline"
            if kind is not None:
                self.publisher.publish_fault(kind, decision.reason, decision.frame_id)
        except Exception as error:
            self._log.error("cannot publish the decision on frame %s: %s", frame.frame_id, error)
            self._fail(OutputError(f"cannot publish: {error}"))
        self.drift.observe(decision.verdict, decision.score, criteria.thresholds)
        item.seconds["decide"] = time.monotonic() - start
        item.seconds["total"] = decision.latency_ms / 1000
        self.health.frame_done(decision.verdict, item.seconds, fault_kind=kind)
        if kind == "overload":
            self.health.dropped(1)

    def _at_handover(self, item: Item, decision: wire.Decision) -> wire.Decision:
        """The decision as it leaves, judged against the deadline at that moment (the publisher calls
        this under its send lock): an ok or reject past it becomes a `deadline` fault, since the part
        it belongs to has moved on; its latency is the time to this moment."""
        now = self.deadline.clock_ns()
        decision = replace(decision, decision_ns=now, latency_ms=(now - decision.receive_ns) / 1e6)
        if decision.verdict == FAULT or (late := self.deadline.missed(item, "handed to the socket", now)) is None:
            return decision
        return replace(decision, verdict=FAULT, reason=f"deadline: {late}", region_px=0)

    def conclude_missing_parts(self) -> int:
        """Publish a fault decision for each part id no frame was read for (edge/inspection/parts.py)."""
        missing = [] if self.parts is None else self.parts.missing()
        for part in missing:
            now_ns = time.monotonic_ns()
            thresholds = self.criteria.thresholds
            decision = wire.Decision(
                camera=self.camera, frame_id=wire.NO_FRAME, verdict=FAULT, reason=f"part_missing: {part.message}",
                score=None, threshold=float(thresholds.image_threshold), device_timestamp_ns=0, receive_ns=now_ns,
                decision_ns=now_ns, latency_ms=0.0, model_hash=self.model_hash, thresholds_version=thresholds.version,
                part_id=part.part_id)
            self._log.warning("part %r: %s", part.part_id, part.message)
            self.health.fault("part_missing")
            with self._conclude_lock:
                try:
                    self.publisher.publish_decision(decision)
                    self.publisher.publish_fault("part_missing", decision.reason)
                except Exception as error:
                    self._fail(OutputError(f"cannot publish: {error}"))
        return len(missing)

    def report_fault(self, code: str, message: str, frame_id: int | None = None) -> None:
        """A fault not tied to one frame's verdict: fault topic + metrics + log."""
        self._log.warning("%s: %s", code, message)
        self.health.fault(code)
        try:
            self.publisher.publish_fault(code, message, frame_id)
        except Exception as error:  # the publisher is gone: nothing to tell, the daemon is ending
            self._fail(OutputError(f"cannot publish: {error}"))
