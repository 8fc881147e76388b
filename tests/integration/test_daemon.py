"""`hlgfa run` end to end: real images, the tiny trained model, real sockets on random loopback ports.

Most tests run the daemon in a thread of this process (one torch import, one model load); the signal
tests run it as a subprocess (`DaemonProcess`) and send real SIGHUP/SIGTERM. The source is held back
by a gate until the subscriber has seen a heartbeat, so no decision is published before the
subscription is live (instead of sleeping and hoping).
"""

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge.transport import wire
from edge.config.daemon import build_config
from edge.service.daemon import Daemon
from edge.inspection.decide import decide
from edge.imaging.preprocess import preprocess
from edge.sources.base import SourceIdle, SourceUnavailable
from edge.transport.subscriber import ReliableClient, Subscriber
from edge.core.paths import write_json_atomic
from edge.artifacts.thresholds import RegionRule, Thresholds, load_thresholds
from tests.ports import free_endpoint, free_port
from tests.thresholds_file import calibrated_data

ROOT = Path(__file__).resolve().parents[2]
RECV_S = 60.0  # generous: a loaded 2-core machine; a hang fails instead of blocking for ever


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory, tiny_model_dir) -> Path:
    pytest.importorskip("onnxruntime")
    from engines.export import export_onnx

    return export_onnx(tiny_model_dir, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="module")
def bare_backend(tiny_model_dir, onnx_file):
    from edge.backends.base import open_backend

    backend = open_backend("onnxruntime", tiny_model_dir, onnx=onnx_file, max_batch=1, threads=1)
    yield backend
    backend.close()


def _scores(backend, info, paths):
    import cv2

    out = {}
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        maps, scores = backend.infer(preprocess([image], info.preprocess))
        out[path.name] = (float(scores[0]), maps[0])
    return out


@pytest.fixture(scope="module")
def line_images(tmp_path_factory, elpv_images) -> Path:
    """12 frames the model never trained on: 8 good cells and 4 defective ones."""
    folder = tmp_path_factory.mktemp("line")
    chosen = elpv_images["good"][24:32] + elpv_images["defect"][:4]
    for index, path in enumerate(chosen):
        shutil.copy(path, folder / f"{index:03d}_{path.name}")
    return folder


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, tiny_model_dir, onnx_file, bare_backend, elpv_images, line_images):
    """A thresholds file for the tiny model (image threshold at the median score of the line frames, so
    both verdicts occur, plus a region rule) and the bare backend's (score, map) for every line frame."""
    from edge.artifacts.model_dir import load_model_info

    info = load_model_info(tiny_model_dir)
    expected = _scores(bare_backend, info, sorted(line_images.iterdir()))
    scores = [score for score, _ in expected.values()]
    maps = np.stack([m for _, m in expected.values()])
    thresholds = Thresholds(model_hash=info.model_hash, image_threshold=float(np.median(scores)), version="t1",
                            region=RegionRule(float(np.quantile(maps, 0.995)), 40))
    data = calibrated_data(thresholds, {"min": min(scores), "median": float(np.quantile(scores, 0.25)),
                                        "max": max(scores)})
    path = tmp_path_factory.mktemp("thresholds") / "thresholds.json"
    write_json_atomic(path, data)
    return {"path": path, "data": data, "info": info, "expected": expected, "onnx": onnx_file,
            "thresholds": load_thresholds(path, info.model_hash)}


def receive_until(subscriber, messages: list, predicate, exit_code):
    """Receive into `messages` until one satisfies `predicate`, and return it. `exit_code()` is the
    daemon's exit status, None while it runs: a daemon that ended fails the wait at once."""
    deadline = time.monotonic() + RECV_S
    while time.monotonic() < deadline:
        message = subscriber.recv(timeout=1.0)
        if message is not None:
            messages.append(message)
            if predicate(message):
                return message
        elif (code := exit_code()) is not None:
            raise AssertionError(f"daemon ended with {code} before the expected message")
    raise AssertionError("expected message did not arrive within RECV_S")


class WrappedSource:
    """Delegates to the real source; the wrappers below change what read() does."""

    def __init__(self, source):
        self.source = source
        self.source_id = source.source_id
        self.backpressure = getattr(source, "backpressure", False)  # an unpaced replay waits for the pipeline

    def open(self):
        self.source.open()

    def read(self, timeout_s):
        return self.source.read(timeout_s)

    def stats(self):
        return self.source.stats()

    def close(self):
        self.source.close()


class GatedSource(WrappedSource):
    """read() waits until the test opens the gate."""

    def __init__(self, source, gate: threading.Event):
        super().__init__(source)
        self._gate = gate

    def read(self, timeout_s):
        assert self._gate.wait(RECV_S), "the test never opened the gate"
        return self.source.read(timeout_s)


class QuietSource(WrappedSource):
    """The line stops while `quiet` is set: each read waits out its timeout, then raises `silence`,
    what the camera's source raises for it: `SourceIdle` for a camera waiting for its hardware
    trigger (the genicam source with trigger = "hardware" while the device answers, see
    tests/unit/edge/sources/test_sources_genicam.py), `SourceUnavailable` for a free-running one."""

    def __init__(self, source, silence: type):
        super().__init__(source)
        self.silence = silence
        self.quiet = threading.Event()

    def read(self, timeout_s):
        if self.quiet.is_set():
            time.sleep(timeout_s)
            raise self.silence(f"no frame within {timeout_s} s")
        return self.source.read(timeout_s)


class Running:
    """A daemon in a thread plus a subscriber that collects every message until the daemon stops."""

    started: list["Running"] = []

    def __init__(self, overrides: dict, backend_wrapper=None, reliable: bool = False, extra_subscriber=None,
                 source_wrapper=None):
        overrides = {"publish.endpoint": free_endpoint(), "backend.kind": "onnxruntime", "backend.threads": 1,
                     "pipeline.deadline_ms": 120_000, "publish.heartbeat_period_s": 0.2, **overrides}
        if reliable:
            overrides["publish.reliable_endpoint"] = free_endpoint()
        self.config = build_config(None, [(key.split("."), value) for key, value in overrides.items()])
        self.endpoint = self.config.publish.endpoint
        self.gate = threading.Event()
        self.daemon = Daemon(self.config, backend_wrapper=backend_wrapper,
                             source_wrapper=lambda source: GatedSource(
                                 source if source_wrapper is None else source_wrapper(source), self.gate))
        self.subscriber = Subscriber(self.endpoint, cameras=[self.config.camera])
        self.messages: list = []
        self.code = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        Running.started.append(self)
        self.thread.start()
        self._wait_for(lambda m: isinstance(m, wire.Heartbeat))
        self.gate.set()

    def _run(self):
        self.code = self.daemon.run()

    def _wait_for(self, predicate):
        return receive_until(self.subscriber, self.messages, predicate,
                             lambda: None if self.thread.is_alive() else self.code)

    def collect_until_stopped(self) -> int:
        self._wait_for(lambda m: isinstance(m, wire.Heartbeat) and m.state == "stopping")
        self.thread.join(RECV_S)
        assert not self.thread.is_alive(), "daemon did not stop"
        # Drain what is still buffered (the publisher's own closing heartbeat).
        while (message := self.subscriber.recv(timeout=0.5)) is not None:
            self.messages.append(message)
        self.subscriber.close()
        return self.code

    def wait_exit(self) -> int:
        self.thread.join(RECV_S)
        assert not self.thread.is_alive(), "daemon did not stop"
        self.subscriber.close()
        return self.code

    def of(self, cls):
        return [m for m in self.messages if isinstance(m, cls)]


@pytest.fixture(autouse=True)
def no_daemon_outlives_its_test():
    """A failed assertion leaves its daemon running. At interpreter exit Python then ends the stage
    threads with pthread_exit as they come back from native code; unwinding through onnxruntime's
    C++ frames calls std::terminate, and the whole pytest run aborts ("terminate called without an
    active exception") instead of reporting the failure."""
    yield
    while Running.started:
        run = Running.started.pop()
        if run.thread.is_alive():
            run.daemon.signals.request_stop()
            run.wait_exit()


def _base(tiny_model_dir, calibrated, line_images, **more):
    return {"model": str(tiny_model_dir), "thresholds": str(calibrated["path"]), "backend.onnx": str(calibrated["onnx"]),
            "source": {"kind": "folder", "path": str(line_images)}, **more}


def _one_decision_per_frame(run: Running, frame_ids):
    decisions = run.of(wire.Decision)
    assert sorted(d.frame_id for d in decisions) == sorted(frame_ids), "a frame was lost or decided twice"
    assert run.subscriber.lost == {}, f"messages lost on the wire: {dict(run.subscriber.lost)}"
    return {d.frame_id: d for d in decisions}


def test_every_frame_one_decision_matching_decide(tiny_model_dir, calibrated, line_images):
    run = Running(_base(tiny_model_dir, calibrated, line_images, camera="line1"))
    assert run.collect_until_stopped() == 0
    names = sorted(p.name for p in line_images.iterdir())
    by_id = _one_decision_per_frame(run, range(len(names)))
    verdicts = set()
    for frame_id, name in enumerate(names):
        score, anomaly_map = calibrated["expected"][name]
        expected = decide(score, anomaly_map, calibrated["thresholds"])
        got = by_id[frame_id]
        assert (got.verdict, got.reason) == (expected.verdict, expected.reason), name
        assert got.score == pytest.approx(score, rel=1e-5)
        assert got.thresholds_version == calibrated["thresholds"].version and got.model_hash == calibrated["info"].model_hash
        verdicts.add(got.verdict)
    assert verdicts == {"ok", "reject"}
    maps = run.of(wire.MapMessage)
    assert sorted(m.frame_id for m in maps) == list(range(len(names)))
    assert maps[0].data.shape == calibrated["info"].preprocess.input_size and maps[0].data.dtype == np.uint8
    last = [h for h in run.of(wire.Heartbeat) if h.state == "stopping"][0]
    assert (last.counters.frames, last.counters.ok + last.counters.reject) == (len(names), len(names))
    assert run.of(wire.Fault) == []


def test_corrupt_image_is_a_fault_for_that_frame(tmp_path, tiny_model_dir, calibrated, line_images):
    folder = tmp_path / "frames"
    shutil.copytree(line_images, folder)
    names = sorted(p.name for p in folder.iterdir())
    (folder / names[3]).write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 10)
    run = Running(_base(tiny_model_dir, calibrated, folder))
    assert run.collect_until_stopped() == 0
    by_id = _one_decision_per_frame(run, range(len(names)))
    assert by_id[3].verdict == "fault" and by_id[3].reason.startswith("frame_error:") and by_id[3].score is None
    assert all(by_id[i].verdict != "fault" for i in by_id if i != 3)
    faults = run.of(wire.Fault)
    assert [(f.code, f.frame_id) for f in faults] == [("frame_error", 3)]


@pytest.mark.parametrize("damage", ["zero bytes", "PNG header claiming 60000x60000 px"])
def test_an_empty_or_oversized_file_in_a_replay_is_one_fault_and_the_replay_goes_on(
        tmp_path, tiny_model_dir, calibrated, line_images, damage):
    import struct
    import zlib

    folder = tmp_path / "frames"
    shutil.copytree(line_images, folder)
    names = sorted(p.name for p in folder.iterdir())
    target = folder / names[3]
    if damage == "zero bytes":
        target.write_bytes(b"")
    else:
        png = target.read_bytes()
        ihdr = png[12:16] + struct.pack(">II", 60000, 60000) + png[24:29]
        target.write_bytes(png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:])
    run = Running(_base(tiny_model_dir, calibrated, folder))
    assert run.collect_until_stopped() == 0
    by_id = _one_decision_per_frame(run, range(len(names)))
    assert by_id[3].verdict == "fault" and by_id[3].reason.startswith("frame_error:")
    assert all(by_id[i].verdict != "fault" for i in by_id if i != 3)
    assert [(f.code, f.frame_id) for f in run.of(wire.Fault)] == [("frame_error", 3)]


def test_frames_far_larger_than_the_model_input_are_decided_and_warned_about_once(
        tmp_path, caplog, tiny_model_dir, calibrated, line_images):
    import cv2

    folder = tmp_path / "frames"
    shutil.copytree(line_images, folder)
    names = sorted(p.name for p in folder.iterdir())
    side = max(calibrated["info"].preprocess.input_size) * 5  # ≥ 25× the input's pixels: over the 16× limit
    for name in names[2:4]:
        image = cv2.imread(str(folder / name), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(folder / name), cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC))
    with caplog.at_level("WARNING", logger="edge.inspection.pipeline"):
        run = Running(_base(tiny_model_dir, calibrated, folder))
        assert run.collect_until_stopped() == 0
    by_id = _one_decision_per_frame(run, range(len(names)))
    assert all(decision.verdict != "fault" for decision in by_id.values())
    warnings = [record.getMessage() for record in caplog.records if "resizing them costs" in record.getMessage()]
    assert len(warnings) == 1 and f"frames of {side}×{side} px are 25×" in warnings[0], warnings
    assert "Binning" in warnings[0]


class FailingBackend:
    """The real backend, raising on the batches whose 1-based numbers are in `fail_on` (or all)."""

    def __init__(self, backend, fail_on=None, delay_s=0.0):
        self._backend, self.fail_on, self.delay_s = backend, fail_on, delay_s
        self.kind, self.model_hash = backend.kind, backend.model_hash
        self.input_size, self.max_batch = backend.input_size, backend.max_batch
        self.calls = 0

    def infer(self, batch):
        self.calls += 1
        if self.fail_on is None or self.calls in self.fail_on:
            raise RuntimeError(f"injected failure on batch {self.calls}")
        if self.delay_s:
            time.sleep(self.delay_s)
        return self._backend.infer(batch)

    def warmup(self):
        self._backend.warmup()  # through the real backend: the injected count starts at the first frame

    def close(self):
        self._backend.close()


def test_backend_exception_faults_its_batch_and_the_daemon_goes_on(tiny_model_dir, calibrated, line_images):
    run = Running(_base(tiny_model_dir, calibrated, line_images),
                  backend_wrapper=lambda b: FailingBackend(b, fail_on={3, 4}))
    assert run.collect_until_stopped() == 0
    by_id = _one_decision_per_frame(run, range(12))
    faulted = sorted(i for i, d in by_id.items() if d.verdict == "fault")
    assert faulted == [2, 3]
    assert "injected failure" in by_id[2].reason and by_id[2].reason.startswith("backend:")
    assert [(f.code, f.frame_id) for f in run.of(wire.Fault)] == [("backend", 2), ("backend", 3)]


def test_backend_that_keeps_failing_is_restarted_then_the_daemon_exits_nonzero(tiny_model_dir, calibrated, line_images):
    run = Running(_base(tiny_model_dir, calibrated, line_images, **{
        "backend.restart_after_failures": 2, "backend.max_restarts": 1}),
        backend_wrapper=lambda b: FailingBackend(b, fail_on=None))
    assert run.collect_until_stopped() == 70
    decisions = run.of(wire.Decision)
    ids = [d.frame_id for d in decisions]
    assert len(ids) == len(set(ids)) and all(d.verdict == "fault" for d in decisions)
    codes = [f.code for f in run.of(wire.Fault) if f.frame_id is None]
    assert codes == ["backend_restarted", "backend_failed"]
    assert run.daemon.pipeline.reads == len(ids), "a frame read before the exit has no decision"


def test_frames_past_their_deadline_are_faults(tiny_model_dir, calibrated, line_images):
    run = Running(_base(tiny_model_dir, calibrated, line_images, **{"pipeline.deadline_ms": 50, "pipeline.max_frames": 4}),
                  backend_wrapper=lambda b: FailingBackend(b, fail_on=set(), delay_s=0.2))
    assert run.collect_until_stopped() == 0
    by_id = _one_decision_per_frame(run, range(4))
    assert all(d.verdict == "fault" and d.reason.startswith("deadline:") for d in by_id.values())


class SleepsAfterScoring(FailingBackend):
    """Scores the batch, then sleeps `delay_s` before returning it (a device synchronising late)."""

    def infer(self, batch):
        result = self._backend.infer(batch)
        time.sleep(self.delay_s)
        return result


def test_a_backend_that_sleeps_past_the_deadline_after_scoring_gives_deadline_faults_never_ok_or_reject(
        tiny_model_dir, calibrated, line_images):
    """Each decision is judged when it is handed to the socket (tests/unit/edge/test_conclude.py steps
    the clock between scoring and that moment); here a whole daemon, end to end."""
    run = Running(_base(tiny_model_dir, calibrated, line_images, **{"pipeline.deadline_ms": 400,
                                                                  "pipeline.max_frames": 4}),
                  backend_wrapper=lambda b: SleepsAfterScoring(b, fail_on=set(), delay_s=0.5))
    assert run.collect_until_stopped() == 0
    by_id = _one_decision_per_frame(run, range(4))
    assert all(d.verdict == "fault" and d.reason.startswith("deadline:") for d in by_id.values()), \
        [(d.verdict, d.reason, d.latency_ms) for d in by_id.values()]
    assert all(d.latency_ms > 400 for d in by_id.values())
    assert run.of(wire.MapMessage) == [] and sorted(f.frame_id for f in run.of(wire.Fault)) == [0, 1, 2, 3]


def test_overload_faults_frames_instead_of_dropping_them(tiny_model_dir, calibrated, line_images):
    # Paced (fast): an unpaced replay waits for the pipeline instead, and never overloads it.
    run = Running(_base(tiny_model_dir, calibrated, line_images, **{
        "source": {"kind": "folder", "path": str(line_images), "fps": 1000},
        "pipeline.overload": "fault", "pipeline.acquire_queue": 1, "pipeline.infer_queue": 1}),
        backend_wrapper=lambda b: FailingBackend(b, fail_on=set(), delay_s=0.3))
    assert run.collect_until_stopped() == 0
    by_id = _one_decision_per_frame(run, range(12))
    overloaded = [d for d in by_id.values() if d.reason.startswith("overload:")]
    assert overloaded and all(d.verdict == "fault" for d in overloaded)
    last = [h for h in run.of(wire.Heartbeat) if h.state == "stopping"][0]
    assert last.counters.dropped == len(overloaded) and last.counters.frames == 12


def test_an_unpaced_replay_waits_for_the_pipeline_instead_of_faulting_frames_past_their_deadline(
        tiny_model_dir, calibrated, line_images):
    """Inference takes 0.3 s a frame and the deadline is 2 s. Read ahead into the queues (16 places), the
    12th frame would wait 3.6 s for its turn: a `deadline` fault the daemon made itself. Read only when
    the pipeline has room, every frame is decided within about two inferences."""
    run = Running(_base(tiny_model_dir, calibrated, line_images, **{"pipeline.deadline_ms": 2000}),
                  backend_wrapper=lambda b: FailingBackend(b, fail_on=set(), delay_s=0.3))
    assert run.collect_until_stopped() == 0
    by_id = _one_decision_per_frame(run, range(12))
    assert [d.reason for d in by_id.values() if d.verdict == "fault"] == []


def _line_stops(tiny_model_dir, calibrated, line_images, silence: type):
    """A daemon on a looping 20 frames/s replay whose line stops at the test's word: reads time out
    every 0.1 s, and a fault not tied to a frame would be repeated every 0.3 s."""
    handle = {}

    def wrap(source):
        handle["source"] = QuietSource(source, silence)
        return handle["source"]

    run = Running(_base(tiny_model_dir, calibrated, line_images,
                        source={"kind": "folder", "path": str(line_images), "loop": True, "fps": 20},
                        **{"source.timeout_s": 0.1, "pipeline.source_fault_repeat_s": 0.3}),
                  source_wrapper=wrap)
    run._wait_for(lambda m: isinstance(m, wire.Decision) and m.frame_id >= 2)
    return run, handle["source"]


def _source_is(state: str, older_than_s: float = 0.0, younger_than_s: float = math.inf):
    return lambda m: (isinstance(m, wire.Heartbeat) and m.source.state == state
                      and older_than_s <= m.source.last_frame_age_s < younger_than_s)


def test_a_triggered_camera_waiting_for_parts_is_idle_not_a_fault(tiny_model_dir, calibrated, line_images):
    run, source = _line_stops(tiny_model_dir, calibrated, line_images, SourceIdle)
    source.quiet.set()
    idle_beats = []
    run._wait_for(lambda m: _source_is("idle")(m) and idle_beats.append(m) is None and len(idle_beats) >= 5)
    source.quiet.clear()
    run._wait_for(_source_is("delivering", younger_than_s=0.5))
    run.daemon.signals.request_stop()
    assert run.collect_until_stopped() == 0
    assert run.of(wire.Fault) == [], "an idle line raised faults"
    decisions = _one_decision_per_frame(run, range(run.daemon.pipeline.reads))
    assert all(d.verdict != "fault" for d in decisions.values())
    idle = [h.source.last_frame_age_s for h in run.of(wire.Heartbeat) if h.source.state == "idle"]
    assert len(idle) >= 5 and idle == sorted(idle), "heartbeats did not show the idle time growing"


def test_a_free_running_camera_that_stops_sending_is_a_repeated_fault(tiny_model_dir, calibrated, line_images):
    run, source = _line_stops(tiny_model_dir, calibrated, line_images, SourceUnavailable)
    source.quiet.set()
    first = run._wait_for(lambda m: isinstance(m, wire.Fault))
    second = run._wait_for(lambda m: isinstance(m, wire.Fault))
    run._wait_for(_source_is("unavailable", older_than_s=0.3))
    source.quiet.clear()
    run._wait_for(_source_is("delivering", younger_than_s=0.5))
    run.daemon.signals.request_stop()
    assert run.collect_until_stopped() == 0
    faults = run.of(wire.Fault)
    assert {(f.code, f.frame_id) for f in faults} == {("source_unavailable", None)}
    assert "no frame within 0.1 s" in first.message
    # Repeated at source_fault_repeat_s (0.3 s), not at every read timeout (0.1 s): the stamps are
    # taken as each fault is sent, so compare with the point halfway between the two.
    assert (second.wall_ns - first.wall_ns) / 1e9 >= 0.2
    decisions = _one_decision_per_frame(run, range(run.daemon.pipeline.reads))
    assert all(d.verdict != "fault" for d in decisions.values())


def test_invalid_thresholds_on_reload_keep_the_old_ones_and_a_good_file_is_taken(
        tmp_path, tiny_model_dir, calibrated, line_images):
    path = tmp_path / "thresholds.json"
    write_json_atomic(path, calibrated["data"])
    run = Running(_base(tiny_model_dir, calibrated, line_images, thresholds=str(path),
                        source={"kind": "folder", "path": str(line_images), "loop": True, "fps": 20}))
    run._wait_for(lambda m: isinstance(m, wire.Decision))
    path.write_text("{ not json")
    run.daemon.signals.request_reload()
    fault = run._wait_for(lambda m: isinstance(m, wire.Fault))
    assert fault.code == "thresholds_reload_failed" and "not valid JSON" in fault.message and "t1" in fault.message
    write_json_atomic(path, {**calibrated["data"], "model_hash": "0" * 64})
    run.daemon.signals.request_reload()
    fault = run._wait_for(lambda m: isinstance(m, wire.Fault))
    assert fault.code == "thresholds_reload_failed" and "fitted on model" in fault.message
    normal = calibrated["data"]["details"]["normal_scores"]  # the line frames' own: t2 passes all of them
    write_json_atomic(path, {**calibrated["data"], "version": "t2", "region": None,
                             "image_threshold": normal["max"] + 5 * (normal["max"] - normal["min"])})
    run.daemon.signals.request_reload()
    first_t2 = run._wait_for(lambda m: isinstance(m, wire.Decision) and m.thresholds_version.startswith("t2+"))
    run._wait_for(lambda m: isinstance(m, wire.Decision) and m.frame_id >= first_t2.frame_id + 2)
    run.daemon.signals.request_stop()
    assert run.collect_until_stopped() == 0
    decisions = run.of(wire.Decision)
    assert [d.frame_id for d in decisions] == list(range(len(decisions)))
    versions = [d.thresholds_version for d in decisions]
    assert versions == sorted(versions), "a t1 decision came after the switch to t2"
    assert all(d.verdict == "ok" for d in decisions if d.thresholds_version.startswith("t2+"))
    assert all(d.verdict != "fault" for d in decisions)


def test_a_thresholds_file_that_is_not_utf8_on_reload_is_a_fault_and_the_old_thresholds_stay(
        tmp_path, tiny_model_dir, calibrated, line_images):
    path = tmp_path / "thresholds.json"
    write_json_atomic(path, calibrated["data"])
    run = Running(_base(tiny_model_dir, calibrated, line_images, thresholds=str(path),
                        source={"kind": "folder", "path": str(line_images), "loop": True, "fps": 20}))
    first = run._wait_for(lambda m: isinstance(m, wire.Decision))
    path.write_bytes(b"\xff\xfe" + path.read_bytes())
    run.daemon.signals.request_reload()
    fault = run._wait_for(lambda m: isinstance(m, wire.Fault))
    assert fault.code == "thresholds_reload_failed" and "not UTF-8" in fault.message
    assert f"keeping thresholds version {first.thresholds_version}" in fault.message
    after = run._wait_for(lambda m: isinstance(m, wire.Decision) and m.frame_id >= first.frame_id + 3)
    assert after.thresholds_version == first.thresholds_version
    run.daemon.signals.request_stop()
    assert run.collect_until_stopped() == 0


def test_a_thresholds_file_that_is_not_utf8_refuses_to_start_with_78(tmp_path, tiny_model_dir, calibrated,
                                                                      line_images):
    from edge.cli import main

    path = tmp_path / "latin1.json"
    path.write_bytes(b"\xff\xfe{}")
    code = main(["run", "--model", str(tiny_model_dir), "--thresholds", str(path), "--source", f"folder:{line_images}",
                 "--publish", free_endpoint(), "--backend", "onnxruntime", "--onnx", str(calibrated["onnx"])])
    assert code == 78


def test_a_subscriber_that_stops_reading_blocks_nothing(tiny_model_dir, calibrated, line_images):
    """PUB drops for the stalled subscriber alone; it can count every loss from sequence numbers, and the
    PLC bridge on the acknowledged channel still gets every decision."""
    import zmq

    many = {"source": {"kind": "folder", "path": str(line_images), "loop": True, "fps": 30},
            "publish.sndhwm": 5, "publish.map_format": "float16", "publish.map_size": [512, 512]}
    endpoint = free_endpoint()
    context = zmq.Context()
    stalled = Subscriber(endpoint, rcvhwm=1, context=context)  # connected from the start, reads only at the end
    try:
        run = Running(_base(tiny_model_dir, calibrated, line_images, **many, **{"publish.endpoint": endpoint}),
                      reliable=True)
        bridge = ReliableClient(run.config.publish.reliable_endpoint, context=context)
        got = []
        while len(got) < 60:
            decision = bridge.recv(timeout=RECV_S)
            assert decision is not None, f"reliable channel stalled after {len(got)} decisions"
            bridge.ack(decision)
            got.append(decision.frame_id)
        bridge.close()
        assert got == list(range(60))
        # Catch up while the daemon still runs: the next heartbeat's seqs reveal what was dropped.
        deadline = time.monotonic() + RECV_S
        while sum(stalled.lost.values()) == 0 and time.monotonic() < deadline:
            stalled.recv(timeout=0.5)
        assert sum(stalled.lost.values()) > 0
        run.daemon.signals.request_stop()
        # The daemon's own test subscriber did not read either: only the acked channel is complete.
        assert run.wait_exit() == 0
        assert run.daemon.health.counters().frames >= 60
    finally:
        stalled.close()
        context.term()


class BadIds(WrappedSource):
    """The real frames, with the id of the third replaced by `bad_id`."""

    def __init__(self, source, bad_id):
        super().__init__(source)
        self.bad_id = bad_id

    def read(self, timeout_s):
        frame = self.source.read(timeout_s)
        if frame.frame_id == 2:
            frame.frame_id = self.bad_id
        return frame


@pytest.mark.parametrize("bad_id", [-5, 2 ** 64, 2 ** 70])
def test_a_frame_id_the_wire_cannot_carry_is_that_frames_fault_and_the_bridge_gets_every_decision(
        tiny_model_dir, calibrated, line_images, bad_id):
    run = Running(_base(tiny_model_dir, calibrated, line_images, **{"pipeline.max_frames": 6}), reliable=True,
                  source_wrapper=lambda source: BadIds(source, bad_id))
    bridge = ReliableClient(run.config.publish.reliable_endpoint)
    got = []
    try:
        while len(got) < 6:
            decision = bridge.recv(timeout=RECV_S)
            assert decision is not None, f"reliable channel stalled after {[d.frame_id for d in got]}"
            bridge.ack(decision)
            got.append(decision)
    finally:
        bridge.close()
    assert run.collect_until_stopped() == 0
    # a fault may overtake the frames still in inference; the seqs have no hole
    assert sorted(d.frame_id for d in got) == list(range(6)) and [d.seq for d in got] == list(range(1, 7))
    by_id = {d.frame_id: d for d in got}
    assert by_id[2].verdict == "fault" and by_id[2].reason.startswith("frame_error:") and repr(bad_id) in by_id[2].reason
    assert all(by_id[i].verdict != "fault" for i in (0, 1, 3, 4, 5))


def test_thresholds_for_another_model_refuse_to_start(tmp_path, tiny_model_dir, calibrated, line_images):
    from edge.cli import main

    path = tmp_path / "other.json"
    write_json_atomic(path, {**calibrated["data"], "model_hash": "f" * 64})
    code = main(["run", "--model", str(tiny_model_dir), "--thresholds", str(path), "--source", f"folder:{line_images}",
                 "--publish", free_endpoint(), "--backend", "onnxruntime", "--onnx", str(calibrated["onnx"])])
    assert code == 78


def test_run_before_export_is_an_error_naming_hlgfa_export_not_a_torch_fallback(tiny_model_dir, calibrated,
                                                                                 line_images, capsys):
    from edge.cli import main

    assert not (tiny_model_dir / "model.onnx").exists()
    code = main(["run", "--model", str(tiny_model_dir), "--thresholds", str(calibrated["path"]),
                 "--source", f"folder:{line_images}", "--publish", free_endpoint()])
    assert code == 66
    assert f"hlgfa export --model {tiny_model_dir}" in capsys.readouterr().err


class DaemonProcess:
    """`hlgfa run` as its own process (`python -m edge.cli`, what the console script runs) with a
    subscriber on its PUB endpoint; `until(predicate)` collects messages until one matches."""

    def __init__(self, tiny_model_dir, calibrated, thresholds: Path, *flags: str):
        self.endpoint = free_endpoint()
        self.subscriber = Subscriber(self.endpoint)
        self.messages: list = []
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "run", "--model", str(tiny_model_dir), "--thresholds", str(thresholds),
             "--publish", self.endpoint, "--backend", "onnxruntime", "--onnx", str(calibrated["onnx"]),
             "--threads", "1", "--deadline-ms", "120000", *flags],
            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)

    def until(self, predicate):
        return receive_until(self.subscriber, self.messages, predicate, self.process.poll)

    def terminate(self) -> str:
        """SIGTERM; wait for the exit; collect what is still buffered. Returns the daemon's stderr."""
        self.process.send_signal(signal.SIGTERM)
        _, stderr = self.process.communicate(timeout=RECV_S)
        while (message := self.subscriber.recv(timeout=0.5)) is not None:
            self.messages.append(message)
        return stderr

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.subscriber.close()

    def of(self, cls):
        return [m for m in self.messages if isinstance(m, cls)]


def test_signals_in_a_subprocess_sighup_invalid_then_sigterm_loses_nothing(tmp_path, tiny_model_dir, calibrated,
                                                                        line_images):
    path = tmp_path / "thresholds.json"
    write_json_atomic(path, calibrated["data"])
    daemon = DaemonProcess(tiny_model_dir, calibrated, path, "--source", f"folder:{line_images}",
                           "--set", "source.loop=true", "--set", "source.fps=20")
    try:
        daemon.until(lambda m: isinstance(m, wire.Decision) and m.frame_id >= 3)
        path.write_text("[]")
        daemon.process.send_signal(signal.SIGHUP)
        fault = daemon.until(lambda m: isinstance(m, wire.Fault))
        assert fault.code == "thresholds_reload_failed"
        target = fault_frame(daemon.messages) + 2
        daemon.until(lambda m: isinstance(m, wire.Decision) and m.frame_id >= target)
        stderr = daemon.terminate()
    finally:
        daemon.close()
    assert daemon.process.returncode == 0, stderr
    assert [h.state for h in daemon.of(wire.Heartbeat)][-1] == "stopping"
    _every_read_frame_decided(daemon, stderr)
    assert all(d.verdict != "fault" and d.thresholds_version == calibrated["thresholds"].version
               for d in daemon.of(wire.Decision))
    assert "still running at exit" not in stderr


def _catches(pid: int, signum: int) -> bool:
    """The process has a handler for `signum` (its SigCgt mask in /proc says so)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc to see a process's handlers")
def test_sighup_and_ctrl_c_while_the_daemon_starts_are_requests_not_a_death(tmp_path, tiny_model_dir, calibrated,
                                                                           line_images):
    """The gate is the moment the process first catches SIGHUP: with handlers installed before anything
    slow, that is before the imports and the model load, so both signals land while it starts, and it
    must end with 0, before opening anything, with no traceback (was: SIGHUP killed it, exit 129)."""
    daemon = DaemonProcess(tiny_model_dir, calibrated, calibrated["path"], "--source", f"folder:{line_images}")
    try:
        while daemon.process.poll() is None and not _catches(daemon.process.pid, signal.SIGHUP):
            time.sleep(0.001)
        daemon.process.send_signal(signal.SIGHUP)
        daemon.process.send_signal(signal.SIGINT)
        _, stderr = daemon.process.communicate(timeout=RECV_S)
    finally:
        daemon.close()
    assert daemon.process.returncode == 0, stderr
    assert "stop requested while starting; exiting before opening anything" in stderr
    assert "Traceback" not in stderr and "onnxruntime backend:" not in stderr


def _every_read_frame_decided(daemon: DaemonProcess, stderr: str) -> None:
    """Every frame the daemon says it read has exactly one decision on the wire."""
    decisions = daemon.of(wire.Decision)
    ids = [d.frame_id for d in decisions]
    # A SUB socket may join after the first decisions (the daemon is another process, with no hook to
    # hold its source back; an unpaced source decides several before the subscription lands). The
    # sequence number says how many were published before the first one received: exactly the
    # frames before it, and from there on nothing may be missing.
    assert ids[0] == decisions[0].seq - 1, "decisions published before the subscriber joined are not frames 0.."
    assert ids == list(range(ids[0], ids[0] + len(ids))), "lost or duplicated decisions"
    assert sum(daemon.subscriber.lost.values()) == 0
    read = ids[-1] + 1
    assert f"stopped after {read} frames read, {read} decided" in stderr


def test_sigterm_while_inference_runs_past_the_drain_timeout_exits_0_not_abort(tiny_model_dir, calibrated,
                                                                            line_images):
    """Frames are read faster than the model infers them, so large queues fill; at SIGTERM that backlog
    (seconds of inference) outlasts drain_timeout_s, and the daemon exits while its infer stage is
    still calling onnxruntime's session.run. Left to the interpreter, that thread is ended by
    pthread_exit on its way back to the GIL and onnxruntime's C++ frames turn this into
    std::terminate: SIGABRT (-6) instead of 0."""
    port = free_port()
    # Paced (fast), so frames are read ahead into the queues: an unpaced replay would wait for the pipeline.
    daemon = DaemonProcess(tiny_model_dir, calibrated, calibrated["path"], "--source", f"folder:{line_images}",
                           "--set", "source.loop=true", "--set", "source.fps=10000", "--overload", "block",
                           "--set", "publish.maps=false",
                           "--set", "pipeline.acquire_queue=200", "--set", "pipeline.infer_queue=200",
                           "--set", "pipeline.drain_timeout_s=0.2", "--metrics-port", str(port))
    try:
        daemon.until(lambda m: isinstance(m, wire.Decision))
        _wait_for_queue_depth(port, "infer", 190)
        _wait_for_queue_depth(port, "preprocess", 190)
        stderr = daemon.terminate()
    finally:
        daemon.close()
    assert daemon.process.returncode == 0, stderr
    _every_read_frame_decided(daemon, stderr)
    shutdown = [d for d in daemon.of(wire.Decision) if d.verdict == "fault"]
    assert shutdown and all(d.reason.startswith("shutdown:") for d in shutdown)
    assert "threads still running at exit: infer-cam0" in stderr
    # The backend stays open under the running inference: closed, the stage would fail on it and
    # restart it in the middle of the shutdown.
    assert [f.code for f in daemon.of(wire.Fault) if f.frame_id is None] == []


def _wait_for_queue_depth(port: int, stage: str, depth: int) -> None:
    """Until the daemon's metrics show at least `depth` frames waiting for `stage`."""
    import urllib.request

    line = re.compile(rf'^hlgfa_queue_depth{{stage="{stage}"}} ([0-9.e+]+)$', re.M)
    deadline = time.monotonic() + RECV_S
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            found = line.search(response.read().decode())
        if found and float(found.group(1)) >= depth:
            return
        time.sleep(0.1)
    raise AssertionError(f"the {stage} queue never held {depth} frames")


def fault_frame(messages) -> int:
    return max(m.frame_id for m in messages if isinstance(m, wire.Decision))


class UnpluggableSource(WrappedSource):
    """Over the real genicam source: once `unplug` is set, the next read() first destroys the
    ImageAcquirer (what a pulled cable looks like from above harvesters). Done in the reading thread,
    so the destroy never races a fetch in progress. Remembers the last frame delivered before the
    unplug and the frames read after the reconnect: decisions for earlier frames may still be in
    flight when the loss is reported, so only these show that inspection resumed."""

    def __init__(self, source):
        super().__init__(source)
        self.unplug = threading.Event()
        self.last_before_unplug = None
        self.read_after_reconnect: set[int] = set()
        self._last_delivered = None
        self._unplugged = False

    def read(self, timeout_s):
        if self.unplug.is_set() and not self._unplugged:
            self._unplugged = True
            self.last_before_unplug = self._last_delivered
            self.source.acquirer.destroy()
        frame = self.source.read(timeout_s)
        self._last_delivered = frame.frame_id
        if self._unplugged and self.source.stats()["reconnects"]:
            self.read_after_reconnect.add(frame.frame_id)
        return frame


@pytest.mark.genicam
def test_a_camera_that_cannot_be_opened_at_start_is_ready_and_retried_and_reported_never_delivering(
        tiny_model_dir, calibrated, line_images):
    """The decision (docs/DEPLOYMENT.md §5): an absent camera does not end the daemon (no exit 69 using up
    systemd's restart budget while a PoE camera powers up); READY follows the backend's warm-up, the
    camera is retried with backoff, and every heartbeat says `unavailable` until it delivers."""
    from edge.sources.genicam import simulated_producer

    viky = simulated_producer()
    if viky is None:
        pytest.skip("needs harvesters and the genicam package's viky.cti")
    camera = {"kind": "genicam", "cti": str(viky), "device": "cam-42", "reconnect_backoff_initial_s": 0.05}
    run = Running(_base(tiny_model_dir, calibrated, line_images, camera="absent", source=camera,
                        **{"pipeline.source_fault_repeat_s": 0.2}))
    assert run.daemon.ready.is_set()
    first = run._wait_for(lambda m: isinstance(m, wire.Fault))
    assert first.code == "source_unavailable" and "'cam-42'" in first.message
    run._wait_for(lambda m: isinstance(m, wire.Fault) and m.wall_ns > first.wall_ns)  # retried, still reported
    run.daemon.signals.request_stop()
    assert run.collect_until_stopped() == 0
    assert run.of(wire.Decision) == []
    beats = run.of(wire.Heartbeat)
    assert beats and all(h.source.state == "unavailable" for h in beats), [h.source.state for h in beats]


def test_a_folder_source_that_does_not_exist_refuses_to_start_with_78_naming_it(tmp_path, tiny_model_dir, calibrated,
                                                                                capsys):
    from edge.cli import main

    missing = tmp_path / "no_such_recording"
    code = main(["run", "--model", str(tiny_model_dir), "--thresholds", str(calibrated["path"]),
                 "--source", f"folder:{missing}", "--publish", free_endpoint(), "--backend", "onnxruntime",
                 "--onnx", str(calibrated["onnx"])])
    assert code == 78
    assert f"folder source {missing}: not a directory" in capsys.readouterr().err


def test_genicam_camera_lost_is_a_fault_then_decisions_resume_after_reconnect(tiny_model_dir, calibrated, line_images):
    from edge.sources.genicam import simulated_producer

    viky = simulated_producer()
    if viky is None:
        pytest.skip("needs harvesters and the genicam package's viky.cti")
    handle = {}

    def wrap(source):
        handle["source"] = UnpluggableSource(source)
        return handle["source"]

    # "block": a camera faster than the tiny model overruns its own buffers, not our verdicts, so every
    # decision before and after the loss is a real one.
    camera = {"kind": "genicam", "cti": str(viky), "device": "2", "settings": {"AcquisitionFrameRate": 20},
              "reconnect_backoff_initial_s": 0.05}
    run = Running(_base(tiny_model_dir, calibrated, line_images, camera="viky2", source=camera,
                        **{"pipeline.overload": "block"}), source_wrapper=wrap)
    source = handle["source"]
    run._wait_for(lambda m: isinstance(m, wire.Decision) and len(run.of(wire.Decision)) >= 3)
    source.unplug.set()
    fault = run._wait_for(lambda m: isinstance(m, wire.Fault))
    assert fault.code == "source_unavailable" and fault.frame_id is None
    assert "genicam:2" in fault.message and "destroyed" in fault.message and "reconnecting" in fault.message
    assert run.thread.is_alive(), "the daemon ended on a lost camera"
    # A decision is published after its frame was read, so its id is already in the set when it arrives.
    resumed = run._wait_for(lambda m: isinstance(m, wire.Decision) and m.frame_id in source.read_after_reconnect)
    run._wait_for(lambda m: isinstance(m, wire.Decision) and m.frame_id in source.read_after_reconnect
                  and m.frame_id > resumed.frame_id)
    assert resumed.frame_id > source.last_before_unplug
    stats = source.stats()
    assert stats["lost"] == 1 and stats["reconnects"] == 1
    run.daemon.signals.request_stop()
    assert run.collect_until_stopped() == 0
    decisions = run.of(wire.Decision)
    ids = [d.frame_id for d in decisions]
    assert len(ids) == len(set(ids)) == run.daemon.pipeline.reads, "a frame read has no decision, or two"
    assert run.subscriber.lost == {}, f"messages lost on the wire: {dict(run.subscriber.lost)}"
    # Only the stop may fault frames (those still in flight); the camera loss itself faults none.
    assert all(d.verdict != "fault" or d.reason.startswith("shutdown:") for d in decisions)
    assert [f.code for f in run.of(wire.Fault) if f.frame_id is None] == ["source_unavailable"]
    assert any(d.verdict != "fault" and d.frame_id in source.read_after_reconnect for d in decisions)
