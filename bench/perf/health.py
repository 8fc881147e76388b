"""Per-frame cost of edge.service.health on the pipeline's hot path, and of one notify datagram.

    .venv/bin/python -m bench.perf.health
"""

import os
import statistics
import socket
import tempfile
import threading
import time
import timeit

from edge.core.notify import SystemdNotifier
from edge.service.health import Health

LATENCIES = {"preprocess": 0.002, "infer": 0.012, "decide": 0.001}


def per_call_us(function, number: int, repeat: int = 5) -> float:
    return min(timeit.repeat(function, number=number, repeat=repeat)) / number * 1e6


def datagram_us(notifier: SystemdNotifier) -> float:
    # One at a time, with a pause, as the pipeline sends them: back to back they would fill
    # the socket queue (net.unix.max_dgram_qlen) and measure dropping instead of sending.
    times = []
    for _ in range(200):
        start = time.perf_counter()
        sent = notifier.watchdog()
        times.append(time.perf_counter() - start)
        if not sent:
            raise RuntimeError("a datagram was dropped: the reader fell behind; rerun on a quieter machine")
        time.sleep(0.002)
    return statistics.median(times) * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "notify.sock")
        manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        manager.bind(path)
        manager.settimeout(0.2)
        stop = threading.Event()

        def drain():  # what systemd does: read every datagram
            while not stop.is_set():
                try:
                    manager.recv(4096)
                except OSError:
                    pass

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        health = Health("line1", notifier=SystemdNotifier({"NOTIFY_SOCKET": path}))
        try:
            print("| call | µs per call |\n|---|---|")
            print(f"| `Health.frame_done('ok', 3 stage latencies)` | {per_call_us(lambda: health.frame_done('ok', LATENCIES), 20000):.1f} |")
            print(f"| `Health.tick()`, nothing due | {per_call_us(health.tick, 20000):.2f} |")
            print(f"| `Health.status_text()` | {per_call_us(health.status_text, 20000):.1f} |")
            print(f"| `WATCHDOG=1` datagram sent (median of 200) | {datagram_us(health.notifier):.1f} |")
        finally:
            stop.set()
            health.close()
            reader.join()
            manager.close()


if __name__ == "__main__":
    main()
