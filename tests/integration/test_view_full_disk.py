"""A full disk under a running `hlgfa view`: a real 3 MiB tmpfs filled by a ballast file mid-run and
freed again (where this machine lets the test mount one, as root), and a file-size limit
(`ulimit -f`, RLIMIT_FSIZE) that every machine can set. A real Publisher sends decisions with maps at
a paced rate, a page listens to the live stream. Recording must go on after space returns, every
decision must be a row, pruned, dropped and counted, or counted lost on the wire, and the live page
must keep updating throughout."""

import json
import resource
import subprocess
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest

from edge.records.store import open_reader, saved_counters
from edge.transport import wire
from tests.integration.test_view import Client, ViewProcess, decision, new_publisher, until_seen, wait_for

RATE = 200.0
PHASE = 600  # decisions before the disk fills, while it is full, after space returns


@pytest.fixture
def small_disk(tmp_path):
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"mounting a tmpfs is not permitted here ({mounted.stderr.decode().strip()}): the file-size limit "
                    "case covers a refusing disk")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


class LivePage:
    """What a page receives: every decision pushed on /events, counted in a thread of its own."""

    def __init__(self, url: str):
        self.stream = urllib.request.urlopen(url + "events", timeout=60)
        self.decisions = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for line in self.stream:
                if line.startswith(b"data:"):
                    self.decisions += sum(1 for event, _ in json.loads(line[5:]) if event == "decision")
        except (OSError, ValueError):
            pass

    def close(self):
        self.stream.close()


def publish(publisher, first: int, count: int, maps) -> None:
    period, due = 1.0 / RATE, time.monotonic()
    for frame_id in range(first, first + count):
        publisher.publish_decision(decision(frame_id, "reject" if frame_id % 10 == 0 else "ok"),
                                   maps[frame_id % len(maps)])
        publisher.maybe_heartbeat(wire.Counters())
        due += period
        time.sleep(max(0.0, due - time.monotonic()))


class Ballast:
    """Another program filling the disk: it takes every block that comes free until stopped."""

    def __init__(self, folder):
        self.path = folder / "ballast"
        self.handle = open(self.path, "wb", buffering=0)
        self.stopping = threading.Event()
        self.full = threading.Event()
        self.thread = threading.Thread(target=self._fill, daemon=True)
        self.thread.start()
        assert self.full.wait(30), "the ballast never filled the disk"

    def _fill(self):
        while not self.stopping.is_set():
            try:
                self.handle.write(b"\xff" * 4096)
            except OSError:
                self.full.set()
                self.stopping.wait(0.01)

    def remove(self):
        self.stopping.set()
        self.thread.join()
        self.handle.close()
        self.path.unlink()


def noise_maps(rng) -> list:
    # 64 × 64 maps that barely compress: each kept map takes real room
    return [cv2.GaussianBlur(rng.random((64, 64), dtype=np.float32), (0, 0), 1) for _ in range(16)]


def run(records, rng, between=None, preexec_fn=None):
    """Three phases of PHASE decisions; `between(phase)` runs after the first and second. The view's
    state and the saved counters at the end."""
    config = records.parent / "view.toml"
    config.write_text("[retention]\nmin_free_mb = 0\n")
    publisher = new_publisher()
    view = ViewProcess("--config", str(config), "--connect", publisher.config.endpoint, "--http", "127.0.0.1:0",
                       "--records", str(records), preexec_fn=preexec_fn)
    page = None
    try:
        assert view.url, view.process.stderr.read()
        client = Client(view.url)
        until_seen(publisher, client)
        page = LivePage(view.url)
        wait_for(lambda: client.get("/api/state") and page.thread.is_alive(), "the live page")
        maps = noise_maps(rng)
        for phase in range(3):
            publish(publisher, phase * PHASE, PHASE, maps)
            if between is not None and phase < 2:
                between(phase)
        sent = 3 * PHASE

        def settled():
            publisher.heartbeat(wire.Counters())
            r = client.get("/api/state")["recorder"]
            return r if r["records"] + r["dropped_records"] + r["lost"] >= sent and page.decisions + r["lost"] >= sent \
                else None
        recorder = wait_for(settled, "every decision recorded, dropped or counted lost")
        assert recorder["alive"] and recorder["errors"] == 0, recorder
    finally:
        if page is not None:
            page.close()
        code = view.stop()
        publisher.close()
    assert code == 0, view.stderr
    conn = open_reader(records)
    rows = [r[0] for r in conn.execute("SELECT frame_id FROM decisions ORDER BY id")]
    saved = saved_counters(conn)
    conn.close()
    # exact: every decision sent is a record (a row or pruned) or dropped and counted, or lost on the wire
    assert recorder["records"] + recorder["dropped_records"] + recorder["lost"] == sent, recorder
    assert page.decisions + recorder["lost"] == sent  # the live page kept updating throughout
    assert saved["records"] == len(rows) + saved["pruned_records"], (saved, len(rows))
    assert (saved["records"], saved["dropped_records"]) == (recorder["records"], recorder["dropped_records"])
    return rows, saved


def test_a_full_tmpfs_drops_and_counts_and_recording_goes_on_when_space_returns(small_disk, rng):
    ballast = []

    def between(phase):
        if phase == 0:
            ballast.append(Ballast(small_disk))
        else:
            ballast[0].remove()

    rows, saved = run(small_disk / "rec", rng, between)
    assert saved["dropped_records"] > 0  # the disk did refuse
    assert rows[-PHASE // 2:] == list(range(3 * PHASE - PHASE // 2, 3 * PHASE))  # recording went on
    assert len(rows) > PHASE // 2  # pruned to make room, never down to nothing


def test_a_file_size_limit_never_stops_the_record(tmp_path, rng):
    limit = 512 * 2**10

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    rows, saved = run(tmp_path / "rec", rng, preexec_fn=limited)
    assert (tmp_path / "rec" / "records.sqlite").stat().st_size <= limit
    assert rows[-1] == 3 * PHASE - 1 and saved["pruned_records"] > 0
