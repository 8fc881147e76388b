"""The operator's page, measured in a real headless Chromium (/usr/bin/chromium, driven by Playwright).

    .venv/bin/python -m bench.perf.view latency [--rates 4,50,200] [--baseline-rev REV]
    .venv/bin/python -m bench.perf.view load [--records 100000]
    .venv/bin/python -m bench.perf.view hash

latency: a real Publisher sends decisions (64 × 64 maps, 10 % rejects) at each rate; `hlgfa view`
serves a page that watches the camera's verdict. Publish → page is the time from just before
`publish_decision` to the moment the page shows a state that includes that decision (the verdict's
`data-seq` reaches its seq; a MutationObserver stamps it with the page's clock, the same host clock).
With `--baseline-rev`, the same is measured on the view of that git revision, in the same run.

load: a records folder of N decisions over 24 h (two cameras, 10 % rejects with maps), served by
`hlgfa view`: the page's first camera card and the first thumbnails of the parts gallery, and the
API's answers (median and worst of 20), on the same machine.

hash: what it costs to bind a record to its frame by hash, per frame: the daemon hashing the decoded
pixels (on its hot path) against the view hashing the replayed file (once per file; a looped replay
then costs one `stat`).
"""

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import socket
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from bench.harness import ROOT, percentiles

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
SECONDS = {4: 30.0, 50: 20.0, 200: 15.0}
OBSERVE = """() => {
  window.__shown = [];
  const target = document.querySelector('[data-testid=camera-bench] [data-testid=verdict]');
  new MutationObserver(() => window.__shown.push([Number(target.dataset.seq), performance.timeOrigin + performance.now()]))
    .observe(target, { attributes: true, attributeFilter: ['data-seq'] });
}"""


def view(root: Path, records: Path, *args: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "edge.cli", "--log-level", "WARNING", "view", "--http",
                                "127.0.0.1:0", "--records", str(records), *args], cwd=root, stdout=subprocess.PIPE,
                               text=True)
    line = process.stdout.readline()
    if not line.startswith("view: "):
        process.kill()
        raise SystemExit(f"bench_view: the view in {root} did not start")
    return process, line.split()[1]


def latency_summary(values) -> dict:
    values = np.asarray(values, dtype=float)
    return percentiles(values, (50, 90, 99), 1) | {"max": round(float(values.max()), 1)}


def latency_at(browser, root: Path, rate: float, seconds: float, rng) -> dict:
    import cv2

    from edge.transport import wire
    from edge.transport.publisher import PublishConfig, Publisher

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    publisher = Publisher("bench", PublishConfig(endpoint=endpoint, heartbeat_period_s=1.0, linger_ms=0))
    records = Path(tempfile.mkdtemp(prefix="bench_view."))
    process, url = view(root, records, "--connect", endpoint)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.goto(url)
        until = time.monotonic() + 60
        while not page.query_selector("[data-testid=camera-bench] [data-testid=verdict]"):
            publisher.heartbeat(wire.Counters())
            time.sleep(0.1)
            if time.monotonic() > until:
                raise SystemExit("bench_view: the page never showed the camera")
        page.evaluate(OBSERVE)
        maps = [cv2.GaussianBlur(rng.random((64, 64), dtype=np.float32), (0, 0), 2) for _ in range(16)]
        sent: list[float] = []
        period, due, end = 1.0 / rate, time.monotonic(), time.monotonic() + seconds
        frame = 0
        while due < end:
            verdict = "reject" if rng.random() < 0.1 else "ok"
            decision = wire.Decision(camera="bench", frame_id=frame, verdict=verdict, reason="", score=0.2,
                                     threshold=0.5, device_timestamp_ns=0, receive_ns=0, decision_ns=0, latency_ms=1.0,
                                     model_hash="ab" * 32, thresholds_version="bench", region_px=0)
            sent.append(time.time() * 1000.0)
            publisher.publish_decision(decision, maps[frame % len(maps)])
            publisher.maybe_heartbeat(wire.Counters())
            frame += 1
            due += period
            time.sleep(max(0.0, due - time.monotonic()))
        until = time.monotonic() + 30
        while page.evaluate("() => window.__shown.length ? window.__shown[window.__shown.length - 1][0] : 0") < len(sent):
            if time.monotonic() > until:
                break
            time.sleep(0.2)
        shown = page.evaluate("() => window.__shown")
    finally:
        page.close()
        process.terminate()
        process.wait(timeout=60)
        publisher.close()
        shutil.rmtree(records, ignore_errors=True)
    latencies, index = [], 0
    for seq, published in enumerate(sent, start=1):
        while index < len(shown) and shown[index][0] < seq:
            index += 1
        if index < len(shown):
            latencies.append(shown[index][1] - published)
    return {"rate": rate, "sent": len(sent), "shown": len(latencies), "page_updates": len(shown),
            **{f"latency_ms.{k}": v for k, v in latency_summary(latencies).items()}}


def git_tree(rev: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="bench_view_rev."))
    subprocess.run(["git", "worktree", "add", "--detach", str(folder), rev], cwd=ROOT, check=True, capture_output=True)
    return folder


def latency(args) -> list[dict]:
    from playwright.sync_api import sync_playwright

    trees = [("this tree", ROOT)]
    if args.baseline_rev:
        trees.insert(0, (args.baseline_rev, git_tree(args.baseline_rev)))
    rows = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            for rate in (float(r) for r in args.rates.split(",")):
                for name, root in trees:
                    row = latency_at(browser, root, rate, SECONDS.get(int(rate), 15.0), np.random.default_rng(0))
                    rows.append({"view": name, **row})
            browser.close()
    finally:
        for name, root in trees:
            if root != ROOT:
                subprocess.run(["git", "worktree", "remove", "--force", str(root)], cwd=ROOT, check=False)
    return rows


def build_records(folder: Path, count: int, rng) -> int:
    """`count` decisions of two cameras over the last 24 h, 10 % rejects with 64 × 64 maps; a middle id."""
    from edge.records.store import RecordStore, Retention
    from edge.transport import wire

    store = RecordStore(folder, Retention(max_age_s=None, max_bytes=None, min_free_bytes=0, pass_map_every=100),
                        commit_interval_s=1.0)
    now = time.time_ns()
    base = rng.random((64, 64), dtype=np.float32)
    for i in range(count):
        camera = "cam1" if i % 2 == 0 else "cam2"
        verdict = "reject" if rng.random() < 0.1 else ("fault" if rng.random() < 0.005 else "ok")
        wall_ns = now - int((count - i) / count * 86400e9)
        score = None if verdict == "fault" else float(rng.gamma(4.0, 0.1) + (0.5 if verdict == "reject" else 0.0))
        d = wire.Decision(camera=camera, frame_id=i // 2, verdict=verdict, reason="" if verdict == "ok" else verdict,
                          score=score, threshold=None if verdict == "fault" else 0.6, device_timestamp_ns=0,
                          receive_ns=0, decision_ns=0, latency_ms=float(rng.gamma(2.0, 5.0)), model_hash="ab" * 32,
                          thresholds_version="bench", region_px=0, session="0123456789abcdef", seq=i // 2 + 1,
                          wall_ns=wall_ns)
        store.record_decision(d)
        store.record_map(wire.MapMessage(camera, d.frame_id, (base * 255).astype(np.uint8), (0.0, 1.2),
                                         session=d.session, seq=d.seq, wall_ns=wall_ns))
    store.close()
    return count // 2


def timed(call, repeat: int = 20, digits: int = 1) -> dict:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(float(np.median(times)), digits), "max_ms": round(float(np.max(times)), digits)}


def load(args) -> list[dict]:
    from playwright.sync_api import sync_playwright

    rng = np.random.default_rng(0)
    records = Path(tempfile.mkdtemp(prefix="bench_view_load."))
    middle = build_records(records, args.records, rng)
    started = time.monotonic()
    process, url = view(ROOT, records, "--connect", "tcp://127.0.0.1:9")
    view_start_s = time.monotonic() - started
    rows = [{"what": f"hlgfa view start, {args.records} records (to its URL)", "median_ms": round(view_start_s * 1000),
             "max_ms": ""}]
    get = lambda path: urllib.request.urlopen(url + path.lstrip("/"), timeout=60).read()  # noqa: E731
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            first_card, gallery = [], []
            for _ in range(5):
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                started = time.perf_counter()
                page.goto(url)
                page.wait_for_selector("[data-testid=camera-cam1]")
                first_card.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                page.click("nav button[data-tab=parts]")
                page.wait_for_function("() => [...document.querySelectorAll('[data-testid=thumb] img')].slice(0, 12)"
                                       ".every((i) => i.complete && i.naturalWidth > 0) && "
                                       "document.querySelectorAll('[data-testid=thumb]').length >= 12")
                gallery.append((time.perf_counter() - started) * 1000)
                page.close()
            browser.close()
        rows.append({"what": "page: first camera card (goto → card)", "median_ms": round(float(np.median(first_card)), 1),
                     "max_ms": round(float(np.max(first_card)), 1)})
        rows.append({"what": "page: parts gallery, 200 parts, first 12 thumbnails drawn",
                     "median_ms": round(float(np.median(gallery)), 1), "max_ms": round(float(np.max(gallery)), 1)})
        reject = json.loads(get("/api/records?verdict=reject&limit=1"))[0]["id"]
        for what, path in (("GET /api/state", "/api/state"),
                           ("GET /api/records (newest 100)", "/api/records"),
                           ("GET /api/records rejects + faults, 8 h, 200", "/api/records?verdict=reject&verdict=fault"
                                                                          "&since=8h&limit=200"),
                           ("GET /api/records camera, page 2 (before=)", f"/api/records?camera=cam2&before={middle}"
                                                                          "&limit=200"),
                           ("GET /api/records?frame= (Find a part)", f"/api/records?frame={middle // 2}&limit=50"),
                           ("GET /api/records?frame=&camera=", f"/api/records?frame={middle // 2}&camera=cam1"),
                           ("GET /api/records/<id>", f"/api/records/{reject}"),
                           ("GET /api/records/<id>/thumb.png (map)", f"/api/records/{reject}/thumb.png"),
                           ("GET /api/trends?hours=24", "/api/trends?hours=24")):
            get(path)
            rows.append({"what": what, **timed(lambda: get(path))})
    finally:
        process.terminate()
        process.wait(timeout=60)
        shutil.rmtree(records, ignore_errors=True)
    return rows


def frame_hash(args) -> list[dict]:
    import cv2

    from edge.records.frames import FrameFolder

    rng = np.random.default_rng(0)
    rows = []
    folder = Path(tempfile.mkdtemp(prefix="bench_view_hash."))
    try:
        for name, shape in (("300 × 300 mono8 (an ELPV cell)", (300, 300)), ("2448 × 2048 mono8 (5 MP)", (2048, 2448))):
            pixels = cv2.GaussianBlur(rng.integers(0, 256, shape, dtype=np.uint8), (0, 0), 2)
            path = folder / f"{shape[1]}x{shape[0]}.png"
            cv2.imwrite(str(path), pixels)
            frames = FrameFolder(folder)
            daemon = timed(lambda: hashlib.sha256(pixels.data).digest(), 50, 3)["median_ms"]
            fresh = timed(lambda: hashlib.sha256(path.read_bytes()).digest(), 50, 3)["median_ms"]
            frames.sha256(path)
            cached = timed(lambda: frames.sha256(path), 200, 3)["median_ms"]
            rows.append({"frame": name, "png_kib": round(path.stat().st_size / 1024), "daemon: sha256 of pixels, ms": daemon,
                         "view: sha256 of the file, ms": fresh, "view: cached (a stat), ms": cached})
            path.unlink()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("latency", "load", "hash"))
    parser.add_argument("--rates", default="4,50,200")
    parser.add_argument("--baseline-rev", help="also measure the view of this git revision (same run, same page)")
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    for row in {"latency": latency, "load": load, "hash": frame_hash}[args.part](args):
        print(json.dumps(row, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
