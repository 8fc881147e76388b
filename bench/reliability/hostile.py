"""Hostile peers and a long run, against the real daemon (`hlgfa run` in its own process), on the tiny
model of bench/reliability/table.py (24 good elpv cells, 128 px, ONNX; thresholds from `hlgfa calibrate`).

    .venv/bin/python -m bench.reliability.hostile flood [--subscriptions 2000] [--seconds 60]
    .venv/bin/python -m bench.reliability.hostile soak [--frames 100000]

flood: the daemon replays at 20 fps, a PLC bridge acknowledges every decision and a subscriber reads
them; meanwhile one peer connects a SUB socket holding `--subscriptions` subscriptions of 50 KB each
(ZeroMQ reconnects it every 100 ms and sends them all again each time). Sampled every 0.5 s: the
daemon's RSS; per decision, the delay from its publication (`wall_ns`) to the subscriber's receipt, and
the daemon's own latency (`latency_ms`, receipt to hand-over). Before, during and after the flood.

soak: an unpaced looping replay of `--frames` frames with maps; a bridge acknowledges every decision,
a SIGHUP every 10 s reloads the thresholds, a subscriber closes and reconnects every 5 s. At the end:
holes and duplicates in what the bridge received (seqs and frame ids), the reloads, and the daemon's
RSS and open file descriptors, first against last sample.
"""

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import load_average
from bench.reliability.table import ENV, ROOT, free_endpoint, hlgfa_argv, setup

# One peer speaking ZMTP 3.0 as a SUB socket would, without keeping the subscriptions itself (a real SUB
# socket stores what it subscribes to, gigabytes here, which would load this machine rather than the
# daemon): greeting, READY, then `count` subscriptions of 50 KB; reconnecting 100 ms after each drop,
# as ZeroMQ does, for `seconds`. Prints how many connections it made and how many subscriptions were sent.
FLOODER = """
import os, socket, struct, sys, time
host, port = sys.argv[1].rsplit("//", 1)[1].rsplit(":", 1)
count, seconds = int(sys.argv[2]), float(sys.argv[3])
greeting = b"\\xff" + bytes(8) + b"\\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\\0") + bytes(32)
ready = b"\\x05READY" + b"\\x0bSocket-Type" + struct.pack(">I", 3) + b"SUB"
end, connections, sent = time.monotonic() + seconds, 0, 0
print("flooding", flush=True)
while time.monotonic() < end:
    try:
        with socket.create_connection((host, int(port)), timeout=5) as peer:
            connections += 1
            peer.sendall(greeting + bytes([0x04, len(ready)]) + ready)
            for _ in range(count):
                body = b"\\x01" + os.urandom(25_000).hex().encode()
                peer.sendall(bytes([0x02]) + struct.pack(">Q", len(body)) + body)
                sent += 1
    except OSError:
        pass
    time.sleep(0.1)
print(connections, sent, flush=True)
"""


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) / 1024


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def start_daemon(s: dict, work: Path, *args) -> tuple[subprocess.Popen, str, str, Path]:
    publish, reliable = free_endpoint(), free_endpoint()
    log = work / f"daemon-{int(time.time())}.log"
    process = subprocess.Popen(
        hlgfa_argv("run", "--model", s["model"], "--onnx", s["onnx"], "--threads", "1", "--thresholds",
                   s["thresholds"], "--source", f"folder:{s['replay']}", "--set", "source.loop=true",
                   "--publish", publish, "--reliable", reliable, *args),
        cwd=ROOT, env=ENV, stderr=open(log, "w"))
    return process, publish, reliable, log


def flood(s: dict, work: Path, subscriptions: int, seconds: float) -> dict:
    from edge.transport import wire
    from edge.transport.subscriber import ReliableClient, Subscriber

    process, publish, reliable, log = start_daemon(s, work, "--set", "source.fps=20")
    subscriber, bridge = Subscriber(publish, topics=(wire.DECISION,)), ReliableClient(reliable)
    phases = {"before": [], "during": [], "after": []}
    rss = {"before": [], "during": [], "after": []}
    flooder, connections, sent = None, None, None
    started = time.monotonic()
    next_sample = started
    plan = (("before", seconds / 3), ("during", seconds), ("after", seconds / 3))
    try:
        for phase, length in plan:
            if phase == "during":
                flooder = subprocess.Popen([sys.executable, "-c", FLOODER, publish, str(subscriptions), str(length)],
                                           stdout=subprocess.PIPE, text=True)
            if phase == "after" and flooder is not None:
                connections, sent = flooder.communicate(timeout=60)[0].split()[-2:]
            end = time.monotonic() + length
            while time.monotonic() < end:
                if process.poll() is not None:
                    raise RuntimeError(f"the daemon ended with {process.returncode}; see {log}")
                message = subscriber.recv(timeout=0.05)
                if message is not None:
                    phases[phase].append(((time.time_ns() - message.wall_ns) / 1e6, message.latency_ms))
                while (decision := bridge.recv(timeout=0)) is not None:
                    bridge.ack(decision)
                if time.monotonic() >= next_sample:
                    rss[phase].append(rss_mib(process.pid))
                    next_sample += 0.5
    finally:
        if flooder is not None and flooder.poll() is None:
            flooder.kill()
        process.send_signal(signal.SIGTERM)
        process.wait(120)
        subscriber.close()
        bridge.close()
    out = {"subscriptions": subscriptions, "subscription_bytes": 50_000, "flood_seconds": seconds,
           "flooder_connections": connections, "subscriptions_sent": sent,
           "daemon_exit": process.returncode, "lost_decisions_at_subscriber": sum(subscriber.lost.values())}
    for phase in phases:
        delays = [d for d, _ in phases[phase]]
        out[phase] = {"decisions": len(delays), "rss_mib_max": round(max(rss[phase]), 1),
                      "delivery_ms_p50": round(percentile(delays, 0.5), 2),
                      "delivery_ms_p99": round(percentile(delays, 0.99), 2),
                      "delivery_ms_max": round(max(delays), 2) if delays else None,
                      "latency_ms_p99": round(percentile([lat for _, lat in phases[phase]], 0.99), 2)}
    return out


def soak(s: dict, work: Path, frames: int) -> dict:
    from edge.transport import wire
    from edge.transport.subscriber import ReliableClient, Subscriber

    process, publish, reliable, log = start_daemon(s, work, "--max-frames", str(frames))
    bridge = ReliableClient(reliable)
    subscriber = Subscriber(publish, topics=(wire.DECISION, wire.FAULT, wire.HEARTBEAT))
    seqs, frame_ids, faults, heartbeats = [], [], [], []
    samples = []  # (seconds, rss MiB, fds)
    reloads = reconnects = 0
    started = time.monotonic()
    next_hup, next_reconnect, next_sample = started + 10, started + 5, started + 30
    last_stopping = None
    try:
        while True:
            decision = bridge.recv(timeout=0.05)
            if decision is not None:
                bridge.ack(decision)
                seqs.append(decision.seq)
                frame_ids.append(decision.frame_id)
            while (message := subscriber.recv(timeout=0)) is not None:
                if isinstance(message, wire.Fault):
                    faults.append(message.code)
                elif isinstance(message, wire.Heartbeat) and message.state == "stopping":
                    last_stopping = message
            now = time.monotonic()
            if process.poll() is not None:
                if decision is None:
                    break
                continue
            if now >= next_hup:
                process.send_signal(signal.SIGHUP)
                reloads += 1
                next_hup += 10
            if now >= next_reconnect:
                subscriber.close()
                subscriber = Subscriber(publish, topics=(wire.DECISION, wire.FAULT, wire.HEARTBEAT))
                reconnects += 1
                next_reconnect += 5
            if now >= next_sample:
                samples.append((round(now - started), rss_mib(process.pid), open_fds(process.pid)))
                next_sample += 10
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(120)
        bridge.close()
        subscriber.close()
    seconds = time.monotonic() - started
    expected = set(range(1, max(seqs) + 1)) if seqs else set()
    stderr = log.read_text()
    return {"frames": frames, "seconds": round(seconds), "frames_per_s": round(len(seqs) / seconds, 1),
            "daemon_exit": process.returncode, "decisions_at_bridge": len(seqs),
            "holes": len(expected - set(seqs)), "duplicate_seqs": len(seqs) - len(set(seqs)),
            "duplicate_frame_ids": len(frame_ids) - len(set(frame_ids)),
            "resends_skipped_by_bridge": bridge.duplicates, "sighups": reloads,
            "reloads_logged": stderr.count("thresholds reloaded"), "reload_failures": faults.count("thresholds_reload_failed"),
            "subscriber_reconnects": reconnects, "fault_codes": dict(collections.Counter(faults)),
            "last_heartbeat_frames": last_stopping.counters.frames if last_stopping else None,
            "rss_mib_first_last": [samples[0][1], samples[-1][1]] if samples else None,
            "rss_mib_max": max(sample[1] for sample in samples) if samples else None,
            "fds_first_last": [samples[0][2], samples[-1][2]] if samples else None,
            "fds_max": max(sample[2] for sample in samples) if samples else None,
            "tracebacks": stderr.count("Traceback")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("flood", "soak"))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hlgfa_reliability")
    parser.add_argument("--subscriptions", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--frames", type=int, default=100_000)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    s = setup(args.work)
    result = flood(s, args.work, args.subscriptions, args.seconds) if args.what == "flood" else \
        soak(s, args.work, args.frames)
    result["load_average"] = load_average()
    print("| measure | value |\n|---|---|")
    for key, value in result.items():
        if isinstance(value, dict):
            for sub, item in value.items():
                print(f"| {key}.{sub} | {item} |")
        else:
            print(f"| {key} | {value} |")


if __name__ == "__main__":
    main()
