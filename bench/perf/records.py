"""The inspection record under load: a real Publisher sends decisions with 256 × 256 maps at a paced
200 frames/s, 10 % of them rejects, for a few minutes; `hlgfa view` (its own process) records them
into a records folder with a size limit small enough that retention must prune during the run.

Reported: decisions sent; rows in the database, pruned by retention, dropped, and lost on the wire
(sequence gaps); the folder's size against its limit; the view's CPU; and the publisher's cost per
decision (what the daemon pays) with no subscriber, with a subscriber that keeps nothing, and with
the view recording, as percentiles.

    .venv/bin/python -m bench.perf.records [--seconds 180] [--rate 200] [--max-mb 20]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from bench.harness import ROOT, load_average, percentiles

DISCARD = """
import sys, zmq
sub = zmq.Context().socket(zmq.SUB)
sub.rcvhwm = 10000
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.connect(sys.argv[1])
print("ready", flush=True)
while True:
    sub.recv_multipart()
"""


def maps(count: int, rng) -> list[np.ndarray]:
    """Heat-map-like arrays: smooth background with a blob or two, as the model's maps look."""
    import cv2

    out = []
    for _ in range(count):
        field = cv2.GaussianBlur(rng.random((256, 256), dtype=np.float32), (0, 0), 6)
        for _ in range(rng.integers(1, 3)):
            y, x = rng.integers(20, 236, 2)
            cv2.circle(field, (int(x), int(y)), int(rng.integers(4, 20)), float(field.max() * 2), -1)
        out.append(cv2.GaussianBlur(field, (0, 0), 3))
    return out


def publish(publisher, seconds: float, rate: float, pool, rng, first_frame: int) -> tuple[np.ndarray, int]:
    """Decisions at `rate`/s for `seconds`; the time each publish_decision call took (µs)."""
    from edge.transport import wire

    costs, frame, period = [], first_frame, 1.0 / rate
    due = time.monotonic()
    end = due + seconds
    while due < end:
        verdict = "reject" if rng.random() < 0.1 else "ok"
        decision = wire.Decision(camera="bench", frame_id=frame, verdict=verdict,
                                 reason="" if verdict == "ok" else "score 0.9 > threshold 0.5",
                                 score=0.9 if verdict == "reject" else 0.2, threshold=0.5, device_timestamp_ns=0,
                                 receive_ns=time.monotonic_ns(), decision_ns=time.monotonic_ns(), latency_ms=1.0,
                                 model_hash="ab" * 32, thresholds_version="bench", region_px=0)
        started = time.perf_counter_ns()
        publisher.publish_decision(decision, pool[frame % len(pool)])
        costs.append((time.perf_counter_ns() - started) / 1000)
        publisher.maybe_heartbeat(wire.Counters(frames=frame))
        frame += 1
        due += period
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return np.asarray(costs), frame


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    from edge.transport.publisher import PublishConfig
    from edge.transport.publisher import Publisher
    from edge.records.store import open_reader, saved_counters

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--max-mb", type=float, default=20.0, help="the records folder's size limit")
    parser.add_argument("--baseline-seconds", type=float, default=20.0)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    pool = maps(64, rng)
    records = Path(tempfile.mkdtemp(prefix="bench_records."))
    config = records.parent / f"{records.name}.toml"
    config.write_text(f"[retention]\nmax_gb = {args.max_mb / 1024}\nmin_free_mb = 0\n")
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    publisher = Publisher("bench", PublishConfig(endpoint=endpoint, map_size=(256, 256)))
    alone, frame = publish(publisher, args.baseline_seconds, args.rate, pool, rng, 0)

    # the same traffic read by a subscriber that keeps nothing: what any subscriber costs the publisher
    plain = subprocess.Popen([sys.executable, "-c", DISCARD, endpoint], stdout=subprocess.PIPE, text=True)
    while plain.stdout.readline().strip() != "ready":
        pass
    heartbeats_until = time.monotonic() + 1.0
    while time.monotonic() < heartbeats_until:
        publisher.heartbeat()
        time.sleep(0.05)
    plain_costs, frame = publish(publisher, args.baseline_seconds, args.rate, pool, rng, frame)
    plain.terminate()
    plain.wait(timeout=30)

    view = subprocess.Popen([sys.executable, "-m", "edge.cli", "--log-level", "WARNING", "view", "--config", str(config),
                             "--connect", endpoint, "--http", "127.0.0.1:0", "--records", str(records)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    url = view.stdout.readline().split()[1]
    state = lambda: json.loads(urllib.request.urlopen(url + "api/state", timeout=10).read())  # noqa: E731
    while "bench" not in state()["cameras"]:  # heartbeats until the subscription is live
        publisher.heartbeat()
        time.sleep(0.1)
    cpu_before = cpu_s(view.pid)
    first_recorded = frame
    recorded, frame = publish(publisher, args.seconds, args.rate, pool, rng, frame)
    cpu_used = cpu_s(view.pid) - cpu_before
    sent = frame - first_recorded
    time.sleep(5.0)  # let the recorder drain and run retention once more
    stats = state()["recorder"]
    view.terminate()
    view.wait(timeout=60)
    publisher.close()
    conn = open_reader(records)
    rows = conn.execute("SELECT COUNT(*), COUNT(image) FROM decisions").fetchone()
    saved = saved_counters(conn)
    conn.close()
    on_disk = sum(p.stat().st_size for p in records.rglob("*") if p.is_file())
    print(json.dumps({
        "rate": args.rate, "seconds": args.seconds, "sent": sent, "sent_rejects_approx": round(0.1 * sent),
        "rows_now": rows[0], "maps_now": rows[1], "records_written": saved.get("records"),
        "pruned": saved.get("pruned_records"), "dropped_records": saved.get("dropped_records"),
        "dropped_maps": saved.get("dropped_images"), "lost_on_wire": stats["lost"],
        "accounted": saved.get("records", 0) + saved.get("dropped_records", 0) + stats["lost"],
        "limit_mb": args.max_mb, "used_mb_accounted": round(stats["bytes"] / 2**20, 2),
        "folder_mb_on_disk": round(on_disk / 2**20, 2), "view_cpu_percent_of_one_core": round(100 * cpu_used / args.seconds, 1),
        "publish_us_no_subscriber": percentiles(alone, (50, 99, 99.9), 1), "publish_us_discarding_subscriber": percentiles(plain_costs, (50, 99, 99.9), 1),
        "publish_us_view_recording": percentiles(recorded, (50, 99, 99.9), 1),
        "load_avg": load_average()}, indent=2))
    shutil.rmtree(records, ignore_errors=True)
    config.unlink()


if __name__ == "__main__":
    main()
