"""End-to-end cost of the inspection pipeline, and a zero-loss soak of the pipeline and the wire.

    .venv/bin/python -m bench.perf.pipeline [--model DIR --onnx FILE --images DIR] [--frames 300] [--rounds 3]
                                             [--soak-frames 100000] [--soak-fps 2000] [--skip-soak]
                                             [--switch-interval-ms MS] [--offloaded-infer-ms MS]
                                             [--frame-size HxW]

Without --model it trains the tiny test model (128 px, 2 epochs on 24 good elpv cells) and exports it.

1. bare: the ONNX Runtime backend alone, batch 1, on the frames already preprocessed (frames/s).
2. throughput: `Daemon` (folder source looping over the same images, overload "block", batch 1, maps on)
   as fast as it goes for --frames frames; frames/s vs bare (the ratio the pipeline keeps), bare and
   end-to-end alternating for --rounds rounds.
3. latency: the same, the source paced at half the bare rate so frames do not queue; per frame,
   receive → decision (the publish call) and receive → recv in a subscriber process, minus that frame's own
   `backend.infer` time (measured around the call by a wrapper): p50/p99 added by the pipeline, and
   where it goes: stamps around each frame's preprocessing, inference and publish call give the
   gaps between the stages (thread hand-offs) and each stage's own time.
   With --offloaded-infer-ms, inference is replaced by a stand-in that holds each batch for that long
   with the CPU idle and returns the real model's outputs for a blank frame: the pipeline's own cost
   when inference runs elsewhere (a GPU), without the 2-core contention of CPU inference. Not a
   GPU measurement: the pipeline's threads run on this machine's CPU.
   Preprocessing's cost depends on the frame's size, so a folder of images of many sizes (a
   dataset) mixes size into the latency's spread; a camera delivers one size. --frame-size replays
   the images scaled to one size (written as BMP, so decoding, which happens before receipt,
   stays cheap). Added latency is reported with and without the frame's preprocessing.
4. soak: --soak-frames tiny frames (16×16 Mono8, synthetic) through the real Pipeline, Publisher and
   wire with a trivial backend; a subscriber in another process counts decisions and gaps.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.harness import ROOT, load_average, machine, percentile, percentiles
from edge.transport import wire
from edge.service.daemon_cli import DAEMON_SWITCH_INTERVAL_S


def tiny_model(work: Path):
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import elpv_labels
    from calibrate.train import train
    from engines.export import export_onnx

    rows = elpv_labels()
    good = sorted(p for p, prob in rows if prob == 0.0)
    defect = sorted(p for p, prob in rows if prob == 1.0)
    (work / "good").mkdir()
    (work / "line").mkdir()
    for path in good[:24]:
        shutil.copy(path, work / "good" / path.name)
    for index, path in enumerate(good[24:40] + defect[:8]):
        shutil.copy(path, work / "line" / f"{index:03d}_{path.name}")
    train(work / "good", work / "model", epochs=2, image_size=128, seed=0, batch_size=8, progress=False)
    return work / "model", export_onnx(work / "model", work / "model.onnx"), work / "line"


class Gated:
    def __init__(self, source, gate):
        self._s, self._gate, self.source_id = source, gate, source.source_id

    def open(self):
        self._s.open()

    def read(self, timeout_s):
        self._gate.wait(60)
        return self._s.read(timeout_s)

    def stats(self):
        return self._s.stats()

    def close(self):
        self._s.close()


class TimedBackend:
    def __init__(self, backend):
        self._b = backend
        self.kind, self.model_hash, self.input_size, self.max_batch = (backend.kind, backend.model_hash,
                                                                        backend.input_size, backend.max_batch)
        self.durations: list[float] = []
        self.spans_ns: list[tuple[int, int]] = []

    def infer(self, batch):
        start = time.monotonic_ns()
        out = self._b.infer(batch)
        end = time.monotonic_ns()
        self.durations.append((end - start) / 1e9)
        self.spans_ns.append((start, end))
        return out

    def warmup(self):
        self._b.warmup()

    def close(self):
        self._b.close()


class OffloadedStandIn:
    """Holds each batch for `milliseconds` with the GIL released and the CPU idle, as a GPU engine
    would, and returns the real backend's outputs for a blank frame (right shapes and dtypes)."""

    def __init__(self, backend, milliseconds: float):
        self._b, self._seconds = backend, milliseconds / 1000
        self.kind, self.model_hash, self.input_size, self.max_batch = (backend.kind, backend.model_hash,
                                                                        backend.input_size, backend.max_batch)
        maps, scores = backend.infer(np.zeros((1, 3) + backend.input_size, np.float32))
        self._map, self._score = np.asarray(maps)[0], np.asarray(scores).reshape(-1)[0]

    def infer(self, batch):
        time.sleep(self._seconds)
        return (np.repeat(self._map[None], len(batch), axis=0),
                np.full(len(batch), self._score, dtype=np.asarray(self._score).dtype))

    def warmup(self):
        pass

    def close(self):
        self._b.close()


def bare_fps(model, onnx, images, frames: int, offloaded_ms: float | None = None) -> tuple[float, float]:
    import cv2

    from edge.backends.base import open_backend
    from edge.artifacts.model_dir import load_model_info
    from edge.imaging.preprocess import preprocess

    info = load_model_info(model)
    backend = open_backend("onnxruntime", model, onnx=onnx, max_batch=1, threads=1)
    backend.warmup()
    if offloaded_ms:
        backend = OffloadedStandIn(backend, offloaded_ms)
    tensors = [preprocess([cv2.imread(str(p), cv2.IMREAD_UNCHANGED)], info.preprocess) for p in sorted(images.iterdir())]
    durations = []
    start = time.perf_counter()
    for index in range(frames):
        t = time.perf_counter()
        backend.infer(tensors[index % len(tensors)])
        durations.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    backend.close()
    return frames / wall, float(np.median(durations)) * 1000


class StageStamps:
    """Stamps (monotonic ns) around each frame's preprocessing and publish call in the daemon's pipeline.
    Instrumentation for this bench only: it wraps the methods the pipeline calls."""

    def __init__(self):
        from edge.inspection import pipeline
        from edge.transport import publisher

        self.preprocess: list[tuple[int, int]] = []
        self.publish: list[tuple[int, int]] = []
        self._modules = (pipeline, publisher)
        self._originals = (pipeline.Pipeline._prepare, publisher.Publisher.publish_decision)
        prepare, publish_decision = self._originals

        def timed_preprocess(pipeline_self, item):
            start = time.monotonic_ns()
            out = prepare(pipeline_self, item)
            self.preprocess.append((start, time.monotonic_ns()))
            return out

        def timed_publish(publisher_self, decision, anomaly_map=None):
            start = time.monotonic_ns()
            out = publish_decision(publisher_self, decision, anomaly_map)
            self.publish.append((start, time.monotonic_ns()))
            return out

        pipeline.Pipeline._prepare = timed_preprocess
        publisher.Publisher.publish_decision = timed_publish

    def restore(self):
        pipeline, publisher = self._modules
        pipeline.Pipeline._prepare, publisher.Publisher.publish_decision = self._originals


def stage_breakdown(decisions, stamps: StageStamps, infer_spans) -> dict:
    """Per frame, in frame order (batch 1, no faults): the gaps and stages from receipt to the
    subscriber's recv, p50/p99 in ms."""
    n = min(len(decisions), len(stamps.preprocess), len(infer_spans), len(stamps.publish))
    parts = {"receipt_to_preprocess": [], "preprocess": [], "preprocess_to_infer": [],
             "infer_to_decision": [], "publish_call": [], "decision_to_subscriber_process": []}
    for index in range(n):
        decision, received_ns = decisions[index]
        pre_start, pre_end = stamps.preprocess[index]
        infer_start, infer_end = infer_spans[index]
        publish_start, publish_end = stamps.publish[index]
        for name, value in (("receipt_to_preprocess", pre_start - decision.receive_ns),
                            ("preprocess", pre_end - pre_start), ("preprocess_to_infer", infer_start - pre_end),
                            ("infer_to_decision", decision.decision_ns - infer_end),
                            ("publish_call", publish_end - publish_start),
                            ("decision_to_subscriber_process", received_ns - decision.decision_ns)):
            parts[name].append(value / 1e6)
    return {name: percentiles(values) for name, values in parts.items() if values}


# The subscriber of the throughput and latency runs: another process, as the PLC bridge is, so the
# daemon's process holds only the daemon. CLOCK_MONOTONIC is one clock for all processes, so its
# receive times compare with the daemon's stamps.
LATENCY_SUBSCRIBER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])
from edge.transport import wire
from edge.transport.subscriber import Subscriber
sub = Subscriber(sys.argv[1], topics=("decision", "heartbeat"))
want = int(sys.argv[2]); rows = []; joined = False
while len(rows) < want:
    m = sub.recv(timeout=60 if not rows else 30)
    if m is None: break
    if isinstance(m, wire.Heartbeat) and not joined:
        joined = True; print("joined", flush=True)
    elif isinstance(m, wire.Decision):
        rows.append([m.frame_id, m.receive_ns, m.decision_ns, m.latency_ms, m.verdict, time.monotonic_ns()])
print(json.dumps({"rows": rows, "lost": sum(sub.lost.values())}), flush=True)
"""


@dataclass(frozen=True)
class ReceivedDecision:
    """The header fields of a decision the subscriber process reported."""

    frame_id: int
    receive_ns: int
    decision_ns: int
    latency_ms: float
    verdict: str


def run_daemon(model, onnx, thresholds, images, frames: int, fps: float | None, offloaded_ms: float | None = None):
    import socket

    from edge.config.daemon import build_config
    from edge.service.daemon import Daemon

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    source = {"kind": "folder", "path": str(images), "loop": True, **({"fps": fps} if fps else {})}
    config = build_config(None, [(k.split("."), v) for k, v in {
        "model": str(model), "thresholds": str(thresholds), "source": source, "backend.kind": "onnxruntime",
        "backend.onnx": str(onnx), "backend.threads": 1, "pipeline.max_frames": frames,
        "pipeline.deadline_ms": 60_000, "publish.endpoint": endpoint}.items()])
    timed = []
    gate = threading.Event()

    def wrap(backend):
        timed.append(TimedBackend(OffloadedStandIn(backend, offloaded_ms) if offloaded_ms else backend))
        return timed[-1]

    stamps = StageStamps()
    daemon = Daemon(config, backend_wrapper=wrap, source_wrapper=lambda source: Gated(source, gate))
    child = subprocess.Popen([sys.executable, "-c", LATENCY_SUBSCRIBER, endpoint, str(frames), str(ROOT)],
                             stdout=subprocess.PIPE, text=True)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", daemon.run()))
    thread.start()
    try:
        # No frame before the subscription is live (a slow joiner would miss the first decisions).
        if child.stdout.readline().strip() != "joined":
            raise RuntimeError(f"the subscriber process on {endpoint} saw no heartbeat within 60 s")
        gate.set()
        opened_ns = time.monotonic_ns()
        report = json.loads(child.communicate(timeout=600)[0])
    finally:
        # On any failure above, stop the daemon too: its gated source would otherwise hold the bench.
        daemon.signals.request_stop()
        gate.set()
        thread.join(60)
        child.kill()
        stamps.restore()

    decisions = [(ReceivedDecision(*row[:5]), row[5]) for row in sorted(report["rows"])]
    # One entry per frame, in frame order (batch 1): the warm-up goes to the wrapped backend directly.
    durations = timed[-1].durations
    n = min(len(decisions), len(durations))
    added_publish = [decisions[i][0].latency_ms - durations[i] * 1000 for i in range(n)]
    preprocess_ms = [(end - start) / 1e6 for start, end in stamps.preprocess[:n]]
    added_recv = [(decisions[i][1] - decisions[i][0].receive_ns) / 1e6 - durations[i] * 1000 for i in range(n)]
    faults = sum(1 for d, _ in decisions if d.verdict == "fault")
    wall = (max(received for _, received in decisions) - opened_ns) / 1e9 if decisions else float("nan")
    return {"code": result.get("code"), "frames": len(decisions), "fps": len(decisions) / wall, "faults": faults,
            "lost_on_the_wire": report["lost"],
            "added_to_publish_ms": added_publish, "added_to_subscriber_ms": added_recv,
            "added_to_publish_beyond_preprocess_ms": [a - b for a, b in zip(added_publish, preprocess_ms)],
            "infer_ms_median": float(np.median(durations)) * 1000,
            "stages_ms": stage_breakdown(decisions, stamps, timed[-1].spans_ns) if faults == 0 else None}


SUBSCRIBER = r"""
import sys, time
sys.path.insert(0, sys.argv[3])
from edge.transport import wire
from edge.transport.subscriber import Subscriber
sub = Subscriber(sys.argv[1], topics=("decision", "heartbeat"), rcvhwm=100000)
print("ready", flush=True)
want = int(sys.argv[2]); ids = set(); dup = 0
while len(ids) < want:
    m = sub.recv(timeout=30)
    if m is None: break
    if isinstance(m, wire.Decision):
        if m.frame_id in ids: dup += 1
        ids.add(m.frame_id)
print(len(ids), dup, sum(sub.lost.values()), flush=True)
"""


class SyntheticSource:
    """`count` 16×16 Mono8 frames from memory at `fps` (None: as fast as asked)."""

    source_id = "synthetic"

    def __init__(self, count: int, fps: float | None):
        self.count, self.period, self.next = count, (1 / fps if fps else 0), 0
        self.image = np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8)
        self.due = None

    def open(self):
        pass

    def read(self, timeout_s):
        from edge.core.frame import Frame
        from edge.sources.base import SourceExhausted

        if self.next >= self.count:
            raise SourceExhausted("done")
        if self.period:
            now = time.perf_counter()
            self.due = now if self.due is None else self.due + self.period
            if self.due > now:
                time.sleep(self.due - now)
        self.next += 1
        return Frame(self.next - 1, "synthetic", "Mono8", self.image, time.monotonic_ns())

    def stats(self):
        return {"frames": self.next}

    def close(self):
        pass


class TrivialBackend:
    kind, model_hash, input_size, max_batch = "trivial", "0" * 64, (16, 16), 8

    def infer(self, batch):
        maps = batch.mean(axis=1)
        return maps, maps.reshape(len(batch), -1).mean(axis=1)

    def warmup(self):
        pass

    def close(self):
        pass


def soak(frames: int, fps: float | None) -> dict:
    import socket

    from edge.service.health import Health
    from edge.backends.base import BackendSettings
    from edge.inspection.conclude import VerdictSettings
    from edge.inspection.pipeline import Pipeline, PipelineConfig
    from edge.imaging.preprocess import PreprocessSpec
    from edge.transport.publisher import PublishConfig
    from edge.transport.publisher import Publisher
    from edge.artifacts.thresholds import Thresholds

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    child = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, endpoint, str(frames), str(ROOT)],
                             stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    publisher = Publisher("soak", PublishConfig(endpoint=endpoint))
    # The child subscribed before we bound; wait for its subscription to arrive (first heartbeat seen there
    # is not observable here, so wait until the PUB socket has a peer by sending heartbeats for a moment).
    for _ in range(10):
        publisher.heartbeat(wire.Counters())
        time.sleep(0.05)
    health = Health("soak")
    thresholds = Thresholds(model_hash="0" * 64, image_threshold=0.0, version="soak")
    pipeline = Pipeline("soak", PipelineConfig(overload="block", deadline_ms=60_000), SyntheticSource(frames, fps),
                        0.5, TrivialBackend(), None, BackendSettings(max_batch=8), PreprocessSpec(16),
                        VerdictSettings(deadline_ms=60_000, publish_maps=False), thresholds, publisher, health, "0" * 64)
    start = time.perf_counter()
    cpu0 = time.process_time()
    pipeline.start()
    while not pipeline.done:
        publisher.maybe_heartbeat(health.counters())
        time.sleep(0.05)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    pipeline.finish(10)
    publisher.heartbeat(health.counters(), state="stopping")
    publisher.close()
    health.close()
    got, dup, lost = (int(x) for x in child.communicate(timeout=120)[0].split())
    c = health.counters()
    return {"frames": frames, "decided": c.frames, "faults": c.fault, "received": got, "duplicates": dup,
            "lost_seq": lost, "fps": frames / wall, "cpu_ms_per_frame": 1000 * cpu / frames}


def frame_size(text: str) -> tuple[int, int]:
    """"HxW" → (height, width)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HEIGHTxWIDTH in pixels, e.g. 1024x1280") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: height and width must be at least 1")
    return height, width


def scaled_copies(images: Path, size: tuple[int, int], out: Path) -> Path:
    import cv2

    height, width = size
    out.mkdir()
    for path in sorted(images.iterdir()):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is not None:
            cv2.imwrite(str(out / f"{path.stem}.bmp"), cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--onnx")
    parser.add_argument("--images")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--soak-frames", type=int, default=100_000)
    parser.add_argument("--soak-fps", type=float, default=2000)
    parser.add_argument("--skip-soak", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="bare/end-to-end rounds; the paced run gets frames × rounds")
    parser.add_argument("--switch-interval-ms", type=float, default=DAEMON_SWITCH_INTERVAL_S * 1000,
                        help="Python's GIL switch interval for this run (default: what `hlgfa run` sets, "
                             f"{DAEMON_SWITCH_INTERVAL_S * 1000:g} ms; CPython's own is 5 ms)")
    parser.add_argument("--frame-size", type=frame_size,
                        help="HxW: replay the images scaled to this one size, as a camera delivers")
    parser.add_argument("--offloaded-infer-ms", type=float,
                        help="replace inference by a stand-in that holds each batch this long with the CPU idle")
    args = parser.parse_args()
    sys.setswitchinterval(args.switch_interval_ms / 1000)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from edge.artifacts.model_dir import load_model_info
    from edge.core.paths import write_json_atomic
    from edge.artifacts.thresholds import Thresholds
    from edge.imaging.quality import STATISTIC_DOMAINS

    work = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    try:
        if args.model:
            model, onnx, images = Path(args.model), Path(args.onnx), Path(args.images)
        else:
            model, onnx, images = tiny_model(work)
        if args.frame_size:
            images = scaled_copies(images, args.frame_size, work / "frames")
        info = load_model_info(model)
        thresholds = work / "thresholds.json"
        data = Thresholds(model_hash=info.model_hash, image_threshold=1.0, version="b").to_dict()
        # a complete file; the gate wide open (the whole range of each statistic): this times the path
        data.update(details={"normal_scores": {"min": 0.0, "median": 1.0, "max": 1.0}},
                    quality={name: list(domain) for name, domain in STATISTIC_DOMAINS.items()})
        write_json_atomic(thresholds, data)
        out = {"machine": machine(python=True),
               "load_average": load_average(), "switch_interval_ms": sys.getswitchinterval() * 1000,
               "offloaded_infer_ms": args.offloaded_infer_ms, "frame_size": "x".join(map(str, args.frame_size)) if args.frame_size else "as in the folder"}
        # Bare and end-to-end alternate, so slow drifts of a shared machine hit both sides alike;
        # the ratio reported is the median of the per-round ratios.
        rounds = []
        for _ in range(args.rounds):
            fps_bare, infer_ms = bare_fps(model, onnx, images, args.frames, args.offloaded_infer_ms)
            through = run_daemon(model, onnx, thresholds, images, args.frames, None, args.offloaded_infer_ms)
            rounds.append({"bare_fps": round(fps_bare, 1), "bare_infer_ms_median": round(infer_ms, 3),
                           "fps": round(through["fps"], 1), "ratio": round(through["fps"] / fps_bare, 3),
                           "frames": through["frames"], "faults": through["faults"],
                           "lost_on_the_wire": through["lost_on_the_wire"], "exit": through["code"]})
        out["throughput_rounds"] = rounds
        out["throughput_ratio_median"] = float(np.median([r["ratio"] for r in rounds]))
        bare_median = float(np.median([r["bare_fps"] for r in rounds]))
        paced = run_daemon(model, onnx, thresholds, images, args.frames * args.rounds, bare_median / 2,
                           args.offloaded_infer_ms)
        out["latency_paced_at_half_bare"] = {
            "infer_ms_median": round(paced["infer_ms_median"], 3),
            "added_to_publish_ms_p50": percentile(paced["added_to_publish_ms"], 50),
            "added_to_publish_ms_p99": percentile(paced["added_to_publish_ms"], 99),
            "added_to_publish_beyond_preprocess_ms_p50": percentile(paced["added_to_publish_beyond_preprocess_ms"], 50),
            "added_to_publish_beyond_preprocess_ms_p99": percentile(paced["added_to_publish_beyond_preprocess_ms"], 99),
            "added_to_subscriber_ms_p50": percentile(paced["added_to_subscriber_ms"], 50),
            "added_to_subscriber_ms_p99": percentile(paced["added_to_subscriber_ms"], 99),
            "frames": paced["frames"], "faults": paced["faults"], "lost_on_the_wire": paced["lost_on_the_wire"],
            "stages_ms": paced["stages_ms"]}
        if not args.skip_soak:
            out["soak"] = {k: round(v, 3) if isinstance(v, float) else v
                           for k, v in soak(args.soak_frames, args.soak_fps or None).items()}
        out["load_average_after"] = load_average()
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
