"""The inspection pipeline: acquire → preprocess → infer (micro-batched) → conclude.

One thread per stage, joined by bounded queues, so a slow model never stalls the camera's
buffers and inference overlaps with acquisition and publishing (numpy, cv2 and the inference
runtimes release the GIL while they work). This module only wires the stages: every frame read is
registered in the ledger of edge/inspection/conclude.py and ends there in exactly one published decision (ok,
reject or fault; at shutdown, a "shutdown" fault); the backend's restarts are edge/inspection/supervisor.py's.
A triggered camera waiting for its trigger (`SourceIdle`) is not a fault: `source_status()` shows it.

Decisions are published in the order they are concluded, which is frame order except where a fault
overtakes earlier frames (an overload fault is published at once): the header's frame id is the key.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
from pydantic import Field, model_validator

from edge.imaging import quality

from edge.transport import wire
from edge.backends.base import BackendSettings
from edge.inspection.conclude import Concluder, Item, Result, VerdictSettings
from edge.inspection.parts import PartTracker
from edge.core.errors import HlgfaError, StageError
from edge.core.frame import FRAME_ID_LIMIT, Frame, is_frame_id
from edge.core.logs import camera_log
from edge.core.settings import Section
from edge.imaging.preprocess import PreprocessSpec, check_image, normalize, resize_to
from edge.sources.base import FrameError, ReconnectSchedule, SourceExhausted, SourceIdle, SourceUnavailable
from edge.inspection.supervisor import BackendSupervisor, InferenceFailed

_END = object()  # end of stream, passed stage to stage after the last frame
_POLL_S = 0.1    # how often a stage waiting for room looks again whether it should give up waiting
# Frames with this many times the model input's pixels get a warning: from 16× (1 MP for 256²)
# preprocessing costs about 1 ms (1.3 MP), 2.5–3 ms (2.3–5 MP) and 9 ms (12 MP) on a 2-core x86_64, as
# much as or more than the rest of the pipeline's own work (BENCHMARKS.md, preprocessing by frame size).
OVERSIZED_FRAME_FACTOR = 16
# The longest deadline: an hour. A verdict later than that is no use on a line.
MAX_DEADLINE_MS = 3_600_000.0


class PipelineConfig(Section):
    # Frames waiting between acquisition and preprocessing, and between preprocessing and inference.
    acquire_queue: int = Field(default=8, ge=1, le=10_000)
    infer_queue: int = Field(default=8, ge=1, le=10_000)
    # Results waiting to be decided and published; large, since a fault must always find room.
    output_queue: int = Field(default=1024, ge=16, le=100_000)
    # A frame without a verdict this long after it arrived is a fault ("deadline"), even if a score
    # comes later: the part has moved on and a late verdict would be acted on for the wrong part.
    # There is no "no deadline": an offline replay that must never fault on time asks for the longest,
    # MAX_DEADLINE_MS (an hour).
    deadline_ms: float = Field(default=500.0, gt=0, le=MAX_DEADLINE_MS)
    # After the first frame of a batch, wait at most this long for more (only with max_batch > 1);
    # less than the deadline, or every frame of a batch would wait past it.
    max_batch_wait_ms: float = Field(default=2.0, ge=0, le=1000)
    # What a full queue does to a new frame: "fault" publishes it as a fault ("overload") at once;
    # "block" makes acquisition wait (the camera's own buffers then overrun, counted by the source).
    # Unset: "block" for a folder replay (no camera to overrun), "fault" for cameras.
    overload: Literal["fault", "block"] | None = None
    # A stage busy with one item for longer than this is stalled: a fault, then exit 70. Longer than
    # the source's read timeout, or a camera waiting for a frame would read as stalled.
    stall_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # How long SIGTERM waits for frames in flight before publishing them as faults ("shutdown"); within
    # systemd's stop timeout (docs/DEPLOYMENT.md).
    drain_timeout_s: float = Field(default=10.0, gt=0, le=600)
    # While the camera stays unavailable, repeat the fault event this often.
    source_fault_repeat_s: float = Field(default=10.0, gt=0, le=3600)
    # Stop after this many frames (replays, tests, benchmarks); unset runs until the source ends.
    max_frames: int | None = Field(default=None, ge=1, le=2 ** 63 - 1)

    @model_validator(mode="after")
    def _batch_wait_within_deadline(self):
        if self.max_batch_wait_ms >= self.deadline_ms:
            raise ValueError(f"max_batch_wait_ms {self.max_batch_wait_ms:g} is not less than deadline_ms "
                             f"{self.deadline_ms:g}: every frame waiting for a batch would miss its deadline")
        return self


@dataclass(eq=False)
class _Stage:
    """Liveness of one stage thread."""

    name: str
    thread: threading.Thread | None = None
    busy_since: float | None = None  # while it works on one item
    finished: bool = False


class Pipeline:
    """Runs the stages; the daemon's main loop watches `health_state()` and drives heartbeats.

    Each part gets its own settings: `settings` (its `overload` decided: "fault" or "block"),
    `read_timeout_s` of the source, `backend_settings` (the batch and the restart policy),
    `verdicts` (what the concluder needs). `backend_factory()` opens and warms up a fresh backend; it
    is used to restart a backend that keeps failing. `publisher` is an
    `edge.transport.publisher.Publisher` (thread-safe), `health` an `edge.service.health.Health`.
    """

    def __init__(self, camera: str, settings: PipelineConfig, source, read_timeout_s: float, backend,
                 backend_factory: Callable[[], object] | None, backend_settings: BackendSettings, spec: PreprocessSpec,
                 verdicts: VerdictSettings, thresholds, publisher, health, model_hash: str, source_open: bool = True,
                 parts: PartTracker | None = None):
        if settings.overload not in ("fault", "block"):
            raise ValueError(f"pipeline overload policy {settings.overload!r}: expected fault or block")
        self.source = source
        self.spec = spec
        self.camera = camera
        self.log = camera_log(__name__, camera)
        self.settings = settings
        self.max_batch = backend_settings.max_batch
        self.overload = settings.overload
        self.read_timeout_s = read_timeout_s
        self.concluder = Concluder(camera, verdicts, thresholds, model_hash, publisher, health, self._fail, self.log,
                                   parts)
        # "per_part": read a frame only while the PLC has a part armed (edge/inspection/parts.py)
        self._read_per_part = parts is not None and parts.per_part
        self.supervisor = BackendSupervisor(backend, backend_factory, backend_settings,
                                            self.concluder.report_fault, self.log)
        self._source_open = source_open

        self._pre_q: queue.Queue = queue.Queue(self.settings.acquire_queue)
        self._infer_q: queue.Queue = queue.Queue(self.settings.infer_queue)
        self._out_q: queue.Queue = queue.Queue(self.settings.output_queue)
        self._stop = threading.Event()
        # A source that can wait for us (an unpaced replay: `backpressure` True) is read only while
        # fewer than this many frames are open, so its frames never queue long enough to miss a
        # deadline set at read time: waiting is the daemon's, not the line's (see _wait_for_room).
        self._backpressure_limit = (2 * self.max_batch) if getattr(source, "backpressure", False) else None
        self.reads = 0
        self.fatal: HlgfaError | None = None  # once the pipeline cannot go on; its exit_code ends the daemon
        # Of the last read (see wire.SourceStatus); a source not open at start has delivered nothing yet.
        self.source_state = "delivering" if source_open else "unavailable"
        self._last_frame_at = time.monotonic()
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
        self._stop.set()  # stop acquiring; the frames already read flow on to their verdicts
        deadline = time.monotonic() + timeout_s
        for stage in self._stages.values():
            if stage.thread is not None:
                stage.thread.join(max(0.0, deadline - time.monotonic()))
        left = self.concluder.open_items()
        for item in left:
            self.concluder.conclude(Result(item, fault_kind="shutdown",
                                           fault_message=f"not inspected within the {timeout_s:g} s allowed at shutdown"))
        return len(left)

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
            since = stage.busy_since
            stuck = 0.0 if since is None else now - since
            if stuck > self.settings.stall_timeout_s:
                problems.append(f"stage {stage.name} stuck on one item for {stuck:.1f} s")
                if stage.name not in self._stalled_reported:
                    self._stalled_reported.add(stage.name)
                    self.concluder.report_fault("stage_stalled", problems[-1])
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
            self.log.exception("stage %s failed", stage.name)
            self._fail(StageError(f"stage {stage.name} failed: {error}"))

    def _fail(self, error: HlgfaError) -> None:
        """The pipeline cannot go on: stop acquiring; the first error's exit code ends the daemon."""
        if self.fatal is None:
            self.fatal = error
        self._stop.set()

    def _to_output(self, result: Result) -> None:
        """Hand a result to the output stage; never drops it (the output queue only fills if
        the output stage itself is stuck, which the stall check reports)."""
        while True:
            try:
                self._out_q.put(result, timeout=_POLL_S)
                return
            except queue.Full:
                if self._stages["output"].finished or self.fatal is not None:
                    self.concluder.conclude(result)
                    return

    def _fault(self, item: Item, kind: str, message: str) -> None:
        self._to_output(Result(item, fault_kind=kind, fault_message=message))

    def _pass_on(self, target: queue.Queue, item: Item, next_name: str) -> None:
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

    def _acquire(self, stage: _Stage) -> None:
        last_fault = None
        # Retrying a source that has not opened yet; one that has reconnects inside its own read().
        opening = ReconnectSchedule(initial_s=0.5, max_s=10.0)
        last_frame_id = -1
        try:
            while not self._stop.is_set():
                if self.settings.max_frames is not None and self.reads >= self.settings.max_frames:
                    break
                self._wait_for_room()
                if self._read_per_part and not self.concluder.parts.wait_armed(_POLL_S):
                    continue  # no part before the camera: nothing to read (heartbeats go on)
                stage.busy_since = time.monotonic()
                try:
                    if not self._source_open:
                        self.source.open()
                        self._source_open = True
                        opening.reset()
                    frame = self.source.read(self.read_timeout_s)
                except FrameError as error:
                    stage.busy_since = None
                    last_frame_id = self._frame_error(error.frame_id, last_frame_id, str(error))
                    continue
                except SourceExhausted:
                    self.log.info("source ended after %d frames", self.reads)
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
                        self.concluder.report_fault("source_unavailable", str(error))
                        last_fault = now
                    self.source_state = "unavailable"
                    if not self._source_open:
                        self._stop.wait(opening.delay_s)
                        opening.failed()
                    continue
                stage.busy_since = None
                self._last_frame_at = time.monotonic()
                self._source_back("delivering")
                if not is_frame_id(frame.frame_id):
                    # One frame's bad id is that frame's fault; it never reaches the wire, which could not carry it.
                    last_frame_id = self._frame_error(None, last_frame_id, f"the source gave frame id {frame.frame_id!r}, "
                                                      f"expected an integer from 0 to 2**64 - 1")
                    continue
                self.reads += 1
                last_frame_id = frame.frame_id
                self._pass_on(self._pre_q, self.concluder.register(frame), "preprocess")
        finally:
            stage.busy_since = None
            self._pre_q.put(_END)

    def _frame_error(self, frame_id: int | None, last_frame_id: int, message: str) -> int:
        """Publish a `frame_error` fault for a frame the source could not deliver, under its own id when
        it has a usable one, else the one after the last; returns the id used."""
        self.reads += 1
        if frame_id is None or not is_frame_id(frame_id):
            frame_id = (last_frame_id + 1) % FRAME_ID_LIMIT
        self._fault(self.concluder.register(Frame(frame_id, getattr(self.source, "source_id", ""), "", None,
                                                  time.monotonic_ns())), "frame_error", message)
        return frame_id

    def _wait_for_room(self) -> None:
        """For a source with back-pressure: block until fewer than the limit of frames are open.

        An unpaced replay could be read as fast as files decode; its frames would then wait in the
        queues for inference, and a deadline counted from the read would fault them for the daemon's
        own queueing (1.7 % of 3000 frames on a loaded box), faults no camera would cause. A camera
        cannot wait (its frames arrive when the part is there), so it keeps the queues and the
        deadline; a replay is read when the pipeline has room, like a camera triggered by the line.
        2 × max_batch keeps one batch preprocessing while the other infers."""
        if self._backpressure_limit is not None:
            self.concluder.wait_for_room(self._backpressure_limit, self._stop, _POLL_S)

    def _source_back(self, state: str) -> None:
        if self.source_state == "unavailable":
            self.log.info("source is back (%s)", state)
        self.source_state = state

    def _preprocess(self, stage: _Stage) -> None:
        warned_size = False
        for item in iter(self._pre_q.get, _END):
            stage.busy_since = start = time.monotonic()
            if (late := self.concluder.deadline.missed(item, "not yet preprocessed")) is not None:
                self._fault(item, "deadline", late)
            else:
                try:
                    unusable = self._prepare(item)
                except Exception as error:
                    self._fault(item, "preprocess", str(error))
                else:
                    if unusable is None and not warned_size:
                        warned_size = self._warn_if_oversized(item.frame.image)
                    item.frame.image = None  # the tensor is all later stages need; free the pixels now
                    if unusable is not None:
                        self._fault(item, "frame_quality", unusable)
                    else:
                        item.seconds["preprocess"] = time.monotonic() - start
                        self._pass_on(self._infer_q, item, "infer")
            stage.busy_since = None
        self._infer_q.put(_END)

    def _prepare(self, item: Item) -> str | None:
        """The frame resized and normalised into `item.tensor`; or, when its image statistics are
        outside the frame-quality gate's ranges, the gate's message (before inference, so a blank
        frame does not cost one)."""
        image = check_image(item.frame.image, "frame")
        resized = resize_to(image, self.spec.input_size)
        ranges = self.concluder.criteria.image_ranges
        if ranges and (unusable := quality.out_of_range(quality.resized_stats(resized, image.shape), ranges)):
            return unusable
        item.tensor = normalize(resized, self.spec)
        return None

    def _warn_if_oversized(self, image: np.ndarray) -> bool:
        """Log once when frames are far larger than the model's input: the CPU then spends
        milliseconds per frame averaging pixels away that the camera can drop for free (5 MP: 2.5 ms
        on a 2-core x86_64; BENCHMARKS.md, preprocessing by frame size). True once the warning was given."""
        height, width = image.shape[:2]
        input_height, input_width = self.spec.input_size
        if height * width < OVERSIZED_FRAME_FACTOR * self.spec.pixels:
            return False
        self.log.warning("frames of %d×%d px are %.0f× the model's %d×%d input; resizing them costs CPU "
                         "time on every frame. Bin, decimate or crop on the camera (GenICam BinningHorizontal/"
                         "BinningVertical, DecimationHorizontal/DecimationVertical or Width/Height/OffsetX/OffsetY "
                         "in [source.settings]) so frames arrive nearer the model's size, ideally with width and "
                         "height whole multiples of %d and %d (the resize's fast path).",
                         width, height, height * width / self.spec.pixels, input_width, input_height,
                         input_width, input_height)
        return True

    def _gather(self, first: Item) -> tuple[list[Item], bool]:
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
        for first in iter(self._infer_q.get, _END):
            batch, ended = self._gather(first)
            stage.busy_since = start = time.monotonic()
            live = []
            for item in batch:
                if (late := self.concluder.deadline.missed(item, "not yet inferred")) is not None:
                    self._fault(item, "deadline", late)
                elif self.fatal is not None:
                    self._fault(item, "backend", f"backend unavailable: {self.fatal}")
                else:
                    live.append(item)
            if live:
                self._infer_batch(live, start)
            stage.busy_since = None
            if ended:
                break
        self._out_q.put(_END)

    def _infer_batch(self, live: list[Item], start: float) -> None:
        # A batch of one is a view, not a copy (3×S×S float32 per frame, on the latency path).
        tensors = live[0].tensor[None] if len(live) == 1 else np.stack([item.tensor for item in live])
        try:
            maps, scores = self.supervisor.infer(tensors)
        except InferenceFailed as failure:
            for item in live:
                self._fault(item, "backend", str(failure))
            try:
                self.supervisor.recover(str(failure))
            except StageError as error:
                self._fail(error)
            return
        seconds = time.monotonic() - start
        for index, item in enumerate(live):
            item.tensor = None
            item.seconds["infer"] = seconds
            self._to_output(Result(item, float(scores[index]), maps[index]))

    def _output(self, stage: _Stage) -> None:
        for result in iter(self._out_q.get, _END):
            stage.busy_since = time.monotonic()
            self.concluder.conclude(result)
            stage.busy_since = None
