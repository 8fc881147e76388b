"""The inspection pipeline: acquire → preprocess → infer (micro-batched) → decide → publish.

One thread per stage, joined by bounded queues, so a slow model never stalls the camera's
buffers and inference overlaps with acquisition and publishing (numpy, cv2 and the inference
runtimes release the GIL while they work).

Every frame ends in exactly one published decision: ok, reject or fault. A ledger of open frames
(keyed by an internal number, since a camera may restart its frame ids) is the one place a frame is
concluded; whichever path gets there first publishes, any later one is ignored, so a backend that
returns after its frames were already faulted cannot publish twice. At shutdown everything still
in the ledger is published as a fault ("shutdown"): nothing read is ever silently lost.

Fault kinds (also the `reason_kind` label of `hlgfa_faults_total`): frame_error, preprocess,
frame_quality, overload, deadline, backend, decide, shutdown. `frame_quality` is the frame-quality
gate (edge/quality.py): a frame whose image statistics (checked before inference) or anomaly-map mean
(after) lie outside the calibrated ranges cannot be judged by the model, so it is a fault, never ok.
Faults not tied to a frame go to the fault topic:
source_unavailable, backend_restarted, stage_stalled, thresholds_reload_failed. A triggered camera
waiting for its trigger (`SourceIdle`) is not a fault: `source_status()` shows it in the heartbeats.

Decisions are published in the order they are concluded, which is frame order except where a fault
overtakes earlier frames (an overload fault is published at once): the header's frame id is the key.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from edge import wire
from edge.errors import HlgfaError, OutputError, StageError
from edge.decide import FAULT, OK, REJECT, decide
from edge.frame import Frame
from edge import quality
from edge.drift import DriftWatch
from edge.preprocess import PreprocessSpec, check_image, normalize, resize_to
from edge.sources.base import FrameError, ReconnectSchedule, SourceExhausted, SourceIdle, SourceUnavailable

if TYPE_CHECKING:
    from edge.config import DaemonConfig

log = logging.getLogger(__name__)

_END = object()  # end of stream, passed stage to stage after the last frame
_POLL_S = 0.1    # how often an idle stage looks at its stop flag
# Frames with this many times the model input's pixels get a warning: from 16× (1 MP for 256²) the
# resize costs 0.8 ms (1.3 MP) to 3–4 ms (2.3–5 MP) and 8 ms (12 MP), as much as or more than the
# rest of the pipeline's own work (BENCHMARKS.md).
OVERSIZED_FRAME_FACTOR = 16


class _UnusableFrame(Exception):
    """A frame outside the frame-quality gate's ranges; the message names the statistic."""


@dataclass
class _Item:
    key: int
    frame: Frame
    deadline_ns: int
    tensor: np.ndarray | None = None
    seconds: dict = field(default_factory=dict)


@dataclass
class _Result:
    item: _Item
    score: float | None = None
    anomaly_map: np.ndarray | None = None
    fault_kind: str | None = None
    fault_message: str = ""


class _Stage:
    """Liveness of one stage thread: `busy_since` is set while it works on one item."""

    def __init__(self, name: str):
        self.name = name
        self.thread: threading.Thread | None = None
        self.busy_since: float | None = None
        self.finished = False

    def stalled_for(self, now: float) -> float:
        since = self.busy_since
        return 0.0 if since is None else now - since


class Pipeline:
    """Runs the stages; the daemon's main loop watches `health_state()` and drives heartbeats.

    `backend_factory()` opens and warms up a fresh backend; it is used to restart a backend that
    keeps failing. `publisher` is an `edge.publisher.Publisher` (thread-safe), `health` an
    `edge.health.Health`.
    """

    def __init__(self, source, backend, backend_factory: Callable[[], object] | None, spec: PreprocessSpec,
                 thresholds, publisher, health, model_hash: str, config: DaemonConfig, source_open: bool = True):
        self.source = source
        self.backend = backend
        self.backend_factory = backend_factory
        self.spec = spec
        self.thresholds = thresholds  # replaced whole by set_thresholds(); read once per frame
        self.publisher = publisher
        self.health = health
        self.drift = DriftWatch()  # passed parts' scores against the calibration (edge/drift.py)
        self.camera = config.camera
        self.model_hash = model_hash
        self.settings = config.pipeline
        self.max_batch = config.backend.max_batch
        self.restart_policy = config.backend  # restart_after_failures, max_restarts, restart_window_s
        self.overload = config.overload_policy
        self.read_timeout_s = config.source.timeout_s
        self.maps = config.publish.maps
        self.quality_overrides = config.quality.overrides()
        self._source_open = source_open
        self._quality = self._quality_ranges(thresholds)  # (image ranges, map ranges), replaced with the thresholds

        self._pre_q: queue.Queue = queue.Queue(self.settings.acquire_queue)
        self._infer_q: queue.Queue = queue.Queue(self.settings.infer_queue)
        self._out_q: queue.Queue = queue.Queue(self.settings.output_queue)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._concluded = threading.Condition(self._lock)  # notified whenever a frame leaves the ledger
        # A source that can wait for us (an unpaced replay: `backpressure` True) is read only while
        # fewer than this many frames are open, so its frames never queue long enough to miss a
        # deadline set at read time: waiting is the daemon's, not the line's (see _wait_for_room).
        self._backpressure_limit = (2 * self.max_batch) if getattr(source, "backpressure", False) else None
        self._conclude_lock = threading.Lock()
        self._open: dict[int, _Item] = {}
        self._next_key = 0
        self._counts = {"frames": 0, OK: 0, REJECT: 0, FAULT: 0, "dropped": 0}
        self.reads = 0
        self.fatal: HlgfaError | None = None  # once the pipeline cannot go on; its exit_code ends the daemon
        # Of the last read (see wire.SourceStatus); a source not open at start has delivered nothing yet.
        self.source_state = "delivering" if source_open else "unavailable"
        self._last_frame_at = time.monotonic()
        self.restarts: deque = deque()
        self._stages = {name: _Stage(name) for name in ("acquire", "preprocess", "infer", "output")}
        self._stalled_reported: set = set()

    # ------------------------------------------------------------------ control (main thread)

    def start(self) -> None:
        targets = {"acquire": self._acquire, "preprocess": self._preprocess, "infer": self._infer,
                   "output": self._output}
        for name, stage in self._stages.items():
            stage.thread = threading.Thread(target=self._guard, args=(stage, targets[name]),
                                            name=f"{name}-{self.camera}", daemon=True)
            stage.thread.start()

    def request_stop(self) -> None:
        """Stop acquiring; the frames already read flow on to their verdicts."""
        self._stop.set()

    @property
    def done(self) -> bool:
        """Every stage has ended (the source ran out, max_frames, or a stop request)."""
        return all(stage.finished for stage in self._stages.values())

    def running_stages(self) -> list[str]:
        """Stages whose thread has not ended; after `finish()`, those still inside a call (an
        inference, a camera read) that outlasted the drain timeout."""
        return [stage.name for stage in self._stages.values() if stage.thread is not None and stage.thread.is_alive()]

    def finish(self, timeout_s: float) -> int:
        """Stop, let frames in flight finish for up to `timeout_s`, then fault whatever is left.
        Returns the number of frames faulted as "shutdown"."""
        self.request_stop()
        deadline = time.monotonic() + timeout_s
        for stage in self._stages.values():
            if stage.thread is not None:
                stage.thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = sorted(self._open.values(), key=lambda item: item.key)
        for item in left:
            self._conclude(_Result(item, fault_kind="shutdown",
                                   fault_message=f"not inspected within the {timeout_s:g} s allowed at shutdown"))
        return len(left)

    def set_thresholds(self, thresholds) -> None:
        self._quality = self._quality_ranges(thresholds)
        self.thresholds = thresholds

    def _quality_ranges(self, thresholds) -> tuple[dict, dict]:
        return quality.split(quality.effective_ranges(getattr(thresholds, "quality", None),
                                                      self.quality_overrides,
                                                      f"camera {self.camera}: thresholds {thresholds.version}"))

    def counters(self) -> wire.Counters:
        with self._lock:
            c = dict(self._counts)
        return wire.Counters(frames=c["frames"], ok=c[OK], reject=c[REJECT], fault=c[FAULT], dropped=c["dropped"])

    def health_state(self, now: float | None = None) -> tuple[bool, list[str]]:
        """(healthy, problems). Unhealthy: a stage thread died, a stage is stuck on one item
        longer than stall_timeout_s, or the pipeline hit a fatal error."""
        now = time.monotonic() if now is None else now
        problems = []
        if self.fatal is not None:
            problems.append(str(self.fatal))
        for stage in self._stages.values():
            if stage.thread is not None and not stage.thread.is_alive() and not stage.finished:
                problems.append(f"stage {stage.name} died")
            stuck = stage.stalled_for(now)
            if stuck > self.settings.stall_timeout_s:
                problems.append(f"stage {stage.name} stuck on one item for {stuck:.1f} s")
                if stage.name not in self._stalled_reported:
                    self._stalled_reported.add(stage.name)
                    self.report_fault("stage_stalled", problems[-1])
        return not problems, problems

    def source_status(self) -> wire.SourceStatus:
        return wire.SourceStatus(self.source_state, round(time.monotonic() - self._last_frame_at, 3))

    def queue_depths(self) -> dict[str, int]:
        return {"preprocess": self._pre_q.qsize(), "infer": self._infer_q.qsize(), "output": self._out_q.qsize()}

    # ------------------------------------------------------------------------------ stages

    def _guard(self, stage: _Stage, body: Callable[[_Stage], None]) -> None:
        try:
            body(stage)
            stage.finished = True
        except Exception as error:  # a bug: the main loop sees the dead stage and ends the daemon
            log.exception("stage %s of camera %s failed", stage.name, self.camera)
            self._set_fatal(StageError(f"stage {stage.name} failed: {error}"))
            self._stop.set()

    def _set_fatal(self, error: HlgfaError) -> None:
        if self.fatal is None:
            self.fatal = error

    def _register(self, frame: Frame) -> _Item:
        with self._lock:
            key = self._next_key
            self._next_key += 1
            item = _Item(key, frame, frame.receive_ns + int(self.settings.deadline_ms * 1e6))
            self._open[key] = item
        return item

    def _to_output(self, result: _Result) -> None:
        """Hand a result to the output stage; never drops it (the output queue only fills if
        the output stage itself is stuck, which the stall check reports)."""
        while True:
            try:
                self._out_q.put(result, timeout=_POLL_S)
                return
            except queue.Full:
                if self._stages["output"].finished or self.fatal is not None:
                    self._conclude(result)
                    return

    def _fault(self, item: _Item, kind: str, message: str) -> None:
        self._to_output(_Result(item, fault_kind=kind, fault_message=message))

    def _pass_on(self, target: queue.Queue, item: _Item, stage_name: str, next_name: str) -> None:
        """Put `item` on the next stage's queue, applying the overload policy when it is full."""
        if self.overload == "fault":
            try:
                target.put_nowait(item)
            except queue.Full:
                self._fault(item, "overload", f"{next_name} queue full ({target.maxsize} frames waiting)")
            return
        while True:  # "block": wait for room (the camera's own buffers take the overrun)
            try:
                target.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                if self.fatal is not None or self._stages[next_name].finished:
                    self._fault(item, "overload", f"{next_name} stage is not taking frames")
                    return

    def _put_end(self, target: queue.Queue) -> None:
        while True:
            try:
                target.put(_END, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def report_fault(self, code: str, message: str, frame_id: int | None = None) -> None:
        """A fault not tied to one frame's verdict: fault topic + metrics + log."""
        log.warning("camera %s: %s: %s", self.camera, code, message)
        self.health.fault(code)
        try:
            self.publisher.publish_fault(code, message, frame_id)
        except Exception as error:  # the publisher is gone: nothing to tell, the daemon is ending
            self._set_fatal(OutputError(f"cannot publish: {error}"))

    def _acquire(self, stage: _Stage) -> None:
        timeout = self.read_timeout_s
        last_fault = None
        # Retrying a source that has not opened yet; one that has reconnects inside its own read().
        opening = ReconnectSchedule(initial_s=0.5, max_s=10.0)
        last_frame_id = -1
        try:
            while not self._stop.is_set():
                if self.settings.max_frames is not None and self.reads >= self.settings.max_frames:
                    break
                self._wait_for_room()
                stage.busy_since = time.monotonic()
                try:
                    if not self._source_open:
                        self.source.open()
                        self._source_open = True
                        opening.reset()
                    frame = self.source.read(timeout)
                except FrameError as error:
                    stage.busy_since = None
                    self.reads += 1
                    frame_id = error.frame_id if error.frame_id is not None else last_frame_id + 1
                    last_frame_id = frame_id
                    item = self._register(Frame(frame_id, getattr(self.source, "source_id", ""), "", None,
                                                time.monotonic_ns()))
                    self._fault(item, "frame_error", str(error))
                    continue
                except SourceExhausted:
                    log.info("camera %s: source ended after %d frames", self.camera, self.reads)
                    break
                except SourceIdle:
                    # A triggered camera with no part before it, which answered: no fault, or a line
                    # stopped for a break would flood the fault topic. Heartbeats show the idle time.
                    stage.busy_since = None
                    self._source_back("idle")
                    continue
                except SourceUnavailable as error:
                    stage.busy_since = None
                    now = time.monotonic()
                    if (self.source_state != "unavailable" or last_fault is None
                            or now - last_fault >= self.settings.source_fault_repeat_s):
                        self.report_fault("source_unavailable", str(error))
                        last_fault = now
                    self.source_state = "unavailable"
                    if not self._source_open:
                        self._stop.wait(opening.delay_s)
                        opening.failed()
                    continue
                stage.busy_since = None
                self._last_frame_at = time.monotonic()
                self._source_back("delivering")
                self.reads += 1
                last_frame_id = frame.frame_id
                self._pass_on(self._pre_q, self._register(frame), "acquire", "preprocess")
        finally:
            stage.busy_since = None
            self._put_end(self._pre_q)

    def _wait_for_room(self) -> None:
        """For a source with back-pressure: block until fewer than the limit of frames are open.

        An unpaced replay could be read as fast as files decode; its frames would then wait in the
        queues for inference, and a deadline counted from the read would fault them for the daemon's
        own queueing (1.7 % of 3000 frames on a loaded box), faults no camera would cause. A camera
        cannot wait (its frames arrive when the part is there), so it keeps the queues and the
        deadline; a replay is read when the pipeline has room, like a camera triggered by the line.
        2 × max_batch keeps one batch preprocessing while the other infers."""
        if self._backpressure_limit is None:
            return
        with self._concluded:
            while len(self._open) >= self._backpressure_limit and not self._stop.is_set():
                self._concluded.wait(_POLL_S)

    def _source_back(self, state: str) -> None:
        if self.source_state == "unavailable":
            log.info("camera %s: source is back (%s)", self.camera, state)
        self.source_state = state

    def _take(self, source: queue.Queue):
        """The items of `source` until the end-of-stream marker, which is consumed."""
        while True:
            try:
                item = source.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is _END:
                return
            yield item

    def _preprocess(self, stage: _Stage) -> None:
        warned_size = False
        for item in self._take(self._pre_q):
            stage.busy_since = start = time.monotonic()
            if time.monotonic_ns() > item.deadline_ns:
                self._fault(item, "deadline", f"not preprocessed within {self.settings.deadline_ms:g} ms")
            else:
                try:
                    image = check_image(item.frame.image, "frame")
                    resized = resize_to(image, self.spec.input_size)
                    self._check_image_quality(resized, image.shape)
                    item.tensor = normalize(resized, self.spec)
                except _UnusableFrame as error:
                    item.frame.image = None
                    self._fault(item, "frame_quality", str(error))
                except Exception as error:
                    self._fault(item, "preprocess", str(error))
                else:
                    if not warned_size:
                        warned_size = self._warn_if_oversized(item.frame.image)
                    item.frame.image = None  # the tensor is all later stages need; free the pixels now
                    item.seconds["preprocess"] = time.monotonic() - start
                    self._pass_on(self._infer_q, item, "preprocess", "infer")
            stage.busy_since = None
        self._put_end(self._infer_q)

    def _check_image_quality(self, resized: np.ndarray, frame_shape: tuple) -> None:
        """Raise _UnusableFrame when the frame's image statistics are outside the gate's ranges:
        before inference, so a blank frame does not cost one."""
        image_ranges = self._quality[0]
        if image_ranges:
            message = quality.out_of_range(quality.resized_stats(resized, frame_shape), image_ranges)
            if message is not None:
                raise _UnusableFrame(message)

    def _warn_if_oversized(self, image: np.ndarray) -> bool:
        """Log once when frames are far larger than the model's input: the CPU then spends
        milliseconds per frame averaging pixels away that the camera can drop for free (5 MP: 3.7 ms
        here; BENCHMARKS.md, preprocessing by frame size). True once the warning was given."""
        height, width = image.shape[:2]
        input_height, input_width = self.spec.input_size
        if height * width < OVERSIZED_FRAME_FACTOR * self.spec.pixels:
            return False
        log.warning("camera %s: frames of %d×%d px are %.0f× the model's %d×%d input; resizing them costs CPU "
                    "time on every frame. Bin, decimate or crop on the camera (GenICam BinningHorizontal/"
                    "BinningVertical, DecimationHorizontal/DecimationVertical or Width/Height/OffsetX/OffsetY "
                    "in [source.settings]) so frames arrive nearer the model's size, ideally with width and "
                    "height whole multiples of %d and %d (the resize's fast path).",
                    self.camera, width, height, height * width / self.spec.pixels, input_width, input_height,
                    input_width, input_height)
        return True

    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        batch, ended = [first], False
        if self.max_batch <= 1:
            return batch, ended
        until = time.monotonic() + self.settings.max_batch_wait_ms / 1000
        while len(batch) < self.max_batch:
            remaining = until - time.monotonic()
            try:
                item = self._infer_q.get(timeout=remaining) if remaining > 0 else self._infer_q.get_nowait()
            except queue.Empty:
                break
            if item is _END:
                ended = True
                break
            batch.append(item)
        return batch, ended

    def _infer(self, stage: _Stage) -> None:
        failures = 0
        for first in self._take(self._infer_q):
            batch, ended = self._gather(first)
            stage.busy_since = start = time.monotonic()
            now_ns = time.monotonic_ns()
            live = []
            for item in batch:
                if now_ns > item.deadline_ns:
                    self._fault(item, "deadline", f"not inferred within {self.settings.deadline_ms:g} ms")
                else:
                    live.append(item)
            if live and self.fatal is not None:
                for item in live:
                    self._fault(item, "backend", f"backend unavailable: {self.fatal}")
                live = []
            if live:
                try:
                    # A batch of one is a view, not a copy (3×S×S float32 per frame, on the latency path).
                    batch = live[0].tensor[None] if len(live) == 1 else np.stack([item.tensor for item in live])
                    maps, scores = self.backend.infer(batch)
                    maps, scores = np.asarray(maps), np.asarray(scores).reshape(-1)
                    if len(scores) != len(live) or len(maps) != len(live):
                        raise ValueError(f"backend returned {len(scores)} scores and {len(maps)} maps "
                                         f"for a batch of {len(live)}")
                except Exception as error:
                    failures += 1
                    message = f"{type(error).__name__}: {error}"
                    log.error("camera %s: inference failed on a batch of %d (%d in a row): %s",
                              self.camera, len(live), failures, message)
                    for item in live:
                        self._fault(item, "backend", message)
                    if failures >= self.restart_policy.restart_after_failures:
                        self._restart_backend(failures, message)
                        failures = 0
                else:
                    failures = 0
                    seconds = time.monotonic() - start
                    for index, item in enumerate(live):
                        item.tensor = None
                        item.seconds["infer"] = seconds
                        self._to_output(_Result(item, float(scores[index]), maps[index]))
            stage.busy_since = None
            if ended:
                break
        self._put_end(self._out_q)

    def _restart_backend(self, failures: int, message: str) -> None:
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > self.restart_policy.restart_window_s:
            self.restarts.popleft()
        if self.backend_factory is None or len(self.restarts) >= self.restart_policy.max_restarts:
            reason = (f"backend failed {failures} times in a row ({message}) after {len(self.restarts)} restarts "
                      f"within {self.restart_policy.restart_window_s:g} s; giving up so the service manager restarts us")
            self.report_fault("backend_failed", reason)
            self._set_fatal(StageError(reason))
            self._stop.set()
            return
        self.restarts.append(now)
        try:
            self.backend.close()
        except Exception as error:
            log.warning("camera %s: closing the failed backend: %s", self.camera, error)
        try:
            self.backend = self.backend_factory()
        except Exception as error:
            reason = f"backend restart failed: {error}"
            self.report_fault("backend_failed", reason)
            self._set_fatal(StageError(reason))
            self._stop.set()
            return
        self.report_fault("backend_restarted", f"backend reopened after {failures} failed batches in a row ({message}); "
                                         f"restart {len(self.restarts)} of {self.restart_policy.max_restarts} allowed "
                                         f"within {self.restart_policy.restart_window_s:g} s")

    def _output(self, stage: _Stage) -> None:
        for result in self._take(self._out_q):
            stage.busy_since = time.monotonic()
            self._conclude(result)
            stage.busy_since = None

    # ------------------------------------------------------------------------- conclusion

    def _conclude(self, result: _Result) -> bool:
        """Publish the one decision of `result.item`; False if that frame was already concluded.

        One conclusion at a time, from taking the frame out of the ledger to publishing: at shutdown
        the main thread faults what is left while the output stage may still be publishing the frame
        before, and without this the later frame's decision could overtake it on the wire."""
        with self._conclude_lock:
            return self._conclude_one(result)

    def _map_quality(self, anomaly_map: np.ndarray | None) -> str | None:
        """The gate's map statistic (out-of-distribution: another product, a moved camera), after
        inference; a message when it is outside its range."""
        map_ranges = self._quality[1]
        if not map_ranges or anomaly_map is None:
            return None
        return quality.out_of_range(quality.map_stats(anomaly_map), map_ranges)

    def _conclude_one(self, result: _Result) -> bool:
        item = result.item
        with self._lock:
            if self._open.pop(item.key, None) is None:
                return False
            self._concluded.notify_all()
        start = time.monotonic()
        thresholds = self.thresholds
        score, kind, message = result.score, result.fault_kind, result.fault_message
        region_px = 0
        if kind is None:
            if time.monotonic_ns() > item.deadline_ns:
                kind, message = "deadline", (f"score ready after {(time.monotonic_ns() - item.frame.receive_ns) / 1e6:.1f} ms, "
                                             f"deadline {self.settings.deadline_ms:g} ms")
            elif (unusable := self._map_quality(result.anomaly_map)) is not None:
                kind, message = "frame_quality", unusable
            else:
                try:
                    verdict = decide(score, result.anomaly_map, thresholds)
                except Exception as error:
                    verdict = None
                    kind, message = "decide", f"{type(error).__name__}: {error}"
                if verdict is not None:
                    if verdict.verdict == FAULT:
                        kind, message = "decide", verdict.reason
                    else:
                        region_px = verdict.largest_region_px
        if kind is not None:
            verdict_name, reason = FAULT, f"{kind}: {message}"
        else:
            verdict_name, reason = verdict.verdict, verdict.reason
        decision_ns = time.monotonic_ns()
        frame = item.frame
        finite = score is not None and np.isfinite(score)
        decision = wire.Decision(
            camera=self.camera, frame_id=int(frame.frame_id), verdict=verdict_name, reason=reason,
            score=float(score) if finite else None, threshold=float(thresholds.image_threshold),
            device_timestamp_ns=int(frame.device_timestamp_ns), receive_ns=int(frame.receive_ns),
            decision_ns=decision_ns, latency_ms=(decision_ns - frame.receive_ns) / 1e6,
            model_hash=self.model_hash, thresholds_version=thresholds.version, region_px=int(region_px))
        self.drift.observe(verdict_name, decision.score, thresholds)
        anomaly_map = result.anomaly_map if (kind is None and self.maps) else None
        try:
            self.publisher.publish_decision(decision, anomaly_map)
            if kind is not None:
                self.publisher.publish_fault(kind, reason, int(frame.frame_id))
        except Exception as error:
            log.error("camera %s: cannot publish the decision on frame %s: %s", self.camera, frame.frame_id, error)
            self._set_fatal(OutputError(f"cannot publish: {error}"))
            self._stop.set()
        with self._lock:
            self._counts["frames"] += 1
            self._counts[verdict_name] += 1
            if kind == "overload":
                self._counts["dropped"] += 1
        item.seconds["decide"] = time.monotonic() - start
        item.seconds["total"] = decision.latency_ms / 1000
        self.health.frame_done(verdict_name, item.seconds, fault_kind=kind)
        if kind == "overload":
            self.health.dropped(1)
        return True
