"""The operator's page in a real browser: Debian's chromium, driven headless by Playwright through the
system browser's executable (this machine downloads no browser of its own; `make test` apt-installs
chromium as root).

The real daemon runs the tiny model on a replay of real cells; `hlgfa view` subscribes to it, records,
and serves the page. The test sees verdicts update live and the line's state green, opens a reject
with its region outlined on the frame and the legend of the map's fixed scale, marks it good, kills
the daemon and sees the state turn red as disconnected, and finds the review in the database and in
the exported MVTec folder. Faster tests drive the page from a real Publisher: a fault and drift, the
page losing its connection to the view, a typo and an ambiguous frame id in *Find a part*, and the
two roles.

Screenshots go to $HLGFA_VIEW_SCREENSHOTS when set (docs/ holds the ones made that way, shrunk).
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.artifacts.thresholds import Thresholds
from edge.core.paths import write_json_atomic
from edge.records.store import open_reader, query
from edge.transport import wire
from edge.view.auth import hash_password
from tests.thresholds_file import calibrated_data
from tests.integration.test_view import (ROOT, Client, ViewProcess, decision, free_endpoint, new_publisher,
                                         until_seen, wait_for)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
PAGE_WAIT_MS = 90_000  # the daemon loads the model and scores on a loaded 2-core machine
SHOT_WIDTH = 960  # docs/ screenshots are shrunk to this width


def shoot(page, shots: Path, name: str) -> None:
    """A screenshot at the test's own path, shrunk for docs/ (a small PNG)."""
    path = shots / name
    page.screenshot(path=str(path))
    image = cv2.imread(str(path))
    factor = SHOT_WIDTH / image.shape[1]
    cv2.imwrite(str(path), cv2.resize(image, (SHOT_WIDTH, round(image.shape[0] * factor)), interpolation=cv2.INTER_AREA),
                [cv2.IMWRITE_PNG_COMPRESSION, 9])


@pytest.fixture
def shots(tmp_path) -> Path:
    return Path(os.environ["HLGFA_VIEW_SCREENSHOTS"]) if os.environ.get("HLGFA_VIEW_SCREENSHOTS") else tmp_path


def level(page) -> str:
    return page.get_attribute("[data-testid=banner]", "data-level")

@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the `browser` extra (make test)")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} missing: `make test` installs Debian's chromium when run as root with apt-get")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def replay(tmp_path_factory, elpv_images) -> Path:
    """12 cells the tiny model never saw: 8 good, 4 defective, interleaved."""
    folder = tmp_path_factory.mktemp("replay")
    cells = [c for pair in zip(elpv_images["good"][24:32:2], elpv_images["good"][25:33:2], elpv_images["defect"][:4])
             for c in pair]
    for index, path in enumerate(cells):
        shutil.copy(path, folder / f"{index:03d}_{path.name}")
    return folder


@pytest.fixture(scope="module")
def line(tmp_path_factory, tiny_model_dir, replay):
    """The tiny model as ONNX, and thresholds at the median score of the replay: both verdicts occur."""
    pytest.importorskip("onnxruntime")
    import cv2

    from edge.backends.base import open_backend
    from edge.artifacts.model_dir import load_model_info
    from edge.imaging.preprocess import preprocess
    from engines.export import export_onnx

    folder = tmp_path_factory.mktemp("line")
    onnx = export_onnx(tiny_model_dir, folder / "model.onnx")
    info = load_model_info(tiny_model_dir)
    backend = open_backend("onnxruntime", tiny_model_dir, onnx=onnx, max_batch=1, threads=1)
    try:
        scores = [float(backend.infer(preprocess([cv2.imread(str(p), cv2.IMREAD_UNCHANGED)], info.preprocess))[1][0])
                  for p in sorted(replay.iterdir())]
    finally:
        backend.close()
    thresholds = folder / "thresholds.json"
    write_json_atomic(thresholds, calibrated_data(Thresholds(info.model_hash, float(np.median(scores)), "view-test"),
                                                  {"min": min(scores), "median": float(np.median(scores)),
                                                   "max": max(scores)}))
    return {"model": tiny_model_dir, "onnx": onnx, "thresholds": thresholds}


def test_operator_sees_the_line_opens_a_reject_with_its_region_marks_it_good_and_sees_the_daemon_die(
        tmp_path, browser, line, replay, shots):
    endpoint, records = free_endpoint(), tmp_path / "records"
    view = ViewProcess("--connect", endpoint, "--http", "127.0.0.1:0", "--records", str(records),
                       "--frames", f"line1={replay}")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "--log-level", "WARNING", "run", "--camera", "line1",
         "--model", str(line["model"]), "--thresholds", str(line["thresholds"]), "--source", f"folder:{replay}",
         "--publish", endpoint, "--backend", "onnxruntime", "--onnx", str(line["onnx"]), "--threads", "1",
         "--set", "source.fps=4", "--set", "source.loop=true", "--set", "publish.heartbeat_period_s=5"], cwd=ROOT)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        assert view.url
        page.goto(view.url)
        page.fill("#login-name", "anna")
        page.click("#login button[type=submit]")
        page.wait_for_selector("[data-testid=user]:has-text('anna')")

        # live: the verdict on the camera's card changes as decisions arrive, without a reload
        verdict = page.locator("[data-testid=camera-line1] [data-testid=verdict]")
        verdict.wait_for(timeout=PAGE_WAIT_MS)
        page.wait_for_function("() => Number(document.querySelector('[data-testid=camera-line1] "
                               "[data-testid=verdict]').dataset.seq) > 0", timeout=PAGE_WAIT_MS)
        first = int(verdict.get_attribute("data-seq"))
        page.wait_for_function(f"() => Number(document.querySelector('[data-testid=camera-line1] "
                               f"[data-testid=verdict]').dataset.seq) >= {first + 3}", timeout=PAGE_WAIT_MS)
        assert verdict.inner_text() in ("OK", "REJECT", "FAULT")
        page.wait_for_selector("[data-testid=camera-line1] [data-testid=health].good", timeout=PAGE_WAIT_MS)
        page.wait_for_selector("[data-testid=banner][data-level=ok]", timeout=PAGE_WAIT_MS)
        page.wait_for_function("() => document.querySelector('[data-testid=camera-line1] img').complete && "
                               "document.querySelector('[data-testid=camera-line1] img').naturalWidth > 0",
                               timeout=PAGE_WAIT_MS)
        assert int(page.inner_text("[data-testid=shift-line1] td:nth-child(2)")) + \
            int(page.inner_text("[data-testid=shift-line1] td:nth-child(3)")) > 0
        shoot(page, shots, "view-live.png")

        # parts: the gallery shows the parts themselves; a reject opened with its frame, region and legend
        page.click("nav button[data-tab=parts]")
        thumbs = page.locator("[data-testid=thumb]:has(.tag.reject) img")
        thumbs.first.wait_for(timeout=PAGE_WAIT_MS)
        chosen = int(page.locator("[data-testid=thumb]:has(.tag.reject)").first.get_attribute("data-id"))
        page.locator(f"[data-testid=thumb][data-id='{chosen}']").first.click()
        page.wait_for_selector("#detail[open]")
        for picture in ("d-frame", "d-map"):  # the frame with the region outlined, and the map alone
            page.wait_for_function(f"() => document.getElementById('{picture}').src.includes('/api/records/{chosen}/') "
                                   f"&& document.getElementById('{picture}').complete "
                                   f"&& document.getElementById('{picture}').naturalWidth > 0", timeout=PAGE_WAIT_MS)
        assert page.locator("#detail .legend .scale").is_visible()
        client = Client(view.url)
        outlined, raw = (cv2.imdecode(np.frombuffer(client.get(f"/api/records/{chosen}/frame.png?overlay={o}"), np.uint8),
                                      cv2.IMREAD_COLOR) for o in (1, 0))
        assert outlined.shape == raw.shape and (outlined != raw).any(axis=2).sum() > 0  # the region is drawn
        page.click("#r-good")
        page.wait_for_selector("[data-testid=reviewed]:has-text('false reject')")
        assert "anna" in page.inner_text("[data-testid=reviewed]")
        assert "→ false_reject" in page.inner_text("[data-testid=history]")
        shoot(page, shots, "view-reject.png")
        page.click("#detail form[method=dialog] button")

        # the daemon dies: its TCP connection closes, the page turns red as disconnected — not after the
        # heartbeat silence (3 periods of 5 s), at once
        page.click("nav button[data-tab=live]")
        daemon.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        page.wait_for_selector("[data-testid=banner][data-level=bad]", timeout=PAGE_WAIT_MS)
        print(f"daemon killed → banner red in {time.monotonic() - killed:.2f} s")
        assert "disconnected" in page.inner_text("[data-testid=banner]")
        page.wait_for_selector("[data-testid=camera-line1] [data-testid=verdict].stale")
        shoot(page, shots, "view-disconnected.png")
    finally:
        print("page errors:", errors)
        page.close()
        if daemon.poll() is None:
            daemon.terminate()
        daemon.wait(timeout=60)
        view_code = view.stop()
    assert view_code == 0 and not errors

    conn = open_reader(records)
    reviewed = query(conn, reviewed=True)
    conn.close()
    assert [(r["id"], r["review"], r["reviewer"], r["verdict"]) for r in reviewed] == [(chosen, "false_reject", "anna",
                                                                                        "reject")]
    out = tmp_path / "export"
    subprocess.run([sys.executable, "-m", "edge.cli", "records", "export", "--records", str(records), "--reviews",
                    "--frames", f"line1={replay}", "--out", str(out)], cwd=ROOT, check=True)
    exported = sorted((out / "good").iterdir())
    assert len(exported) == 1
    frame_id = reviewed[0]["frame_id"] % len(list(replay.iterdir()))
    source = sorted(replay.iterdir())[frame_id]
    assert exported[0].read_bytes() == source.read_bytes()  # the frame itself, ready for calibrate --normals
    assert not (out / "defect").exists()


class Line:
    """A view fed by a real Publisher (camera line1, the replay as its frames), and a browser page on it."""

    def __init__(self, browser, tmp_path, replay, *extra):
        self.publisher = new_publisher("line1")
        self.view = ViewProcess("--connect", self.publisher.config.endpoint, "--http", "127.0.0.1:0", "--records",
                                str(tmp_path / "records"), "--frames", f"line1={replay}", *extra)
        assert self.view.url, self.view.process.stderr.read()
        self.client = Client(self.view.url)
        self.page = browser.new_page(viewport={"width": 1280, "height": 800})
        self.errors = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def beat(self, drift: str = "stable") -> None:
        self.publisher.heartbeat(wire.Counters(), source=wire.SourceStatus("delivering", 0.0), drift={
            "state": drift, "ks": {"stable": 0.03, "drifting": 0.08, "drifted": 0.12}[drift], "ks_drifting": 0.07,
            "ks_drifted": 0.09, "above_p95": {"stable": 0.05, "drifting": 0.11, "drifted": 0.2}[drift],
            "above_p99": 0.01, "n": 500})

    def decide(self, frame_id: int, verdict: str, reason: str = "", camera_map=None) -> None:
        d = decision(frame_id, verdict, "line1")
        if verdict == "fault":
            d = wire.Decision(**{**vars(d), "score": None, "threshold": None, "reason": reason})
        self.publisher.publish_decision(d, camera_map)

    def close(self) -> int:
        self.page.close()
        code = self.view.stop()
        self.publisher.close()
        return code


def test_a_fault_shows_its_reason_and_frame_and_drift_turns_the_line_amber(tmp_path, browser, replay, shots):
    line = Line(browser, tmp_path, replay)
    try:
        until_seen(line.publisher, line.client)
        line.page.goto(line.view.url)
        blob = np.zeros((32, 32), np.float32)
        blob[8:14, 18:26] = 0.9  # above the 0.5 threshold: the region
        for frame_id in range(6):
            line.beat()
            line.decide(frame_id, "reject" if frame_id == 2 else "ok", camera_map=blob if frame_id == 2 else blob * 0.3)
        line.decide(6, "fault", "frame_quality: mean brightness 3.1 outside [40, 210] (lens cap? light off?)")
        line.beat()
        line.page.wait_for_selector("[data-testid=camera-line1] [data-testid=verdict]:has-text('FAULT')")
        line.page.wait_for_selector("[data-testid=banner][data-level=ok]")
        line.page.click("nav button[data-tab=parts]")
        fault = line.page.locator("[data-testid=thumb]:has(.tag.fault)")
        fault.wait_for()
        fault.click()
        line.page.wait_for_selector("#detail[open]")
        assert "lens cap" in line.page.inner_text("#d-reason")
        line.page.wait_for_function("() => document.getElementById('d-frame').complete && "
                                    "document.getElementById('d-frame').naturalWidth > 0")
        assert line.page.locator("#d-map").is_hidden()  # no broken picture: the fault has no map, and says so
        assert "before scoring" in line.page.inner_text("[data-testid=d-noimage]")
        shoot(line.page, shots, "view-fault.png")
        line.page.click("#detail form[method=dialog] button")

        line.page.click("nav button[data-tab=live]")
        line.beat("drifting")
        line.page.wait_for_selector("[data-testid=banner][data-level=warn]")
        assert "drifting" in line.page.inner_text("[data-testid=banner]")
        shoot(line.page, shots, "view-drift.png")
        line.beat("drifted")
        line.page.wait_for_selector("[data-testid=banner][data-level=bad]")
        assert "drifted" in line.page.inner_text("[data-testid=camera-line1] [data-testid=drift]")
    finally:
        assert line.close() == 0 and not line.errors


def test_the_page_turns_red_when_it_loses_the_view(tmp_path, browser, replay):
    line = Line(browser, tmp_path, replay)
    try:
        until_seen(line.publisher, line.client)
        line.page.goto(line.view.url)
        line.decide(0, "ok", camera_map=np.zeros((8, 8), np.float32))
        line.beat()
        line.page.wait_for_selector("[data-testid=banner][data-level=ok]")
        line.view.stop()  # the view goes away; the daemon is fine
        line.page.wait_for_selector("[data-testid=banner][data-level=bad]")
        assert "lost its connection to the view" in line.page.inner_text("[data-testid=banner]")
        assert line.page.inner_text("[data-testid=link]") != "live"
    finally:
        line.close()
    assert not line.errors


def test_find_a_part_says_what_is_wrong_and_lists_ambiguous_matches(tmp_path, browser, replay):
    line = Line(browser, tmp_path, replay)
    second = new_publisher("line2")
    line.view.stop()
    line.view = ViewProcess("--connect", line.publisher.config.endpoint, "--connect", second.config.endpoint, "--http",
                            "127.0.0.1:0", "--records", str(tmp_path / "records"), "--frames", f"line1={replay}")
    line.client = Client(line.view.url)
    try:
        until_seen(line.publisher, line.client)
        until_seen(second, line.client)
        for frame_id in range(3):
            line.decide(frame_id, "ok", camera_map=np.zeros((8, 8), np.float32))
        second.publish_decision(decision(1, "reject", "line2"), np.zeros((8, 8), np.float32))
        wait_for(lambda: len(line.client.get("/api/records")) == 4, "four records")
        line.page.goto(line.view.url)
        line.page.click("nav button[data-tab=parts]")
        for typo in ("12a", " 1 2", "-1"):
            line.page.fill("#find-frame", typo)
            line.page.click("#find button[type=submit]")
            line.page.wait_for_selector("[data-testid=find-message]:has-text('not a frame id')")
            assert line.page.locator("#detail").is_hidden()
        line.page.fill("#find-frame", "")
        line.page.click("#find button[type=submit]")
        line.page.wait_for_selector("[data-testid=find-message]:has-text('give a frame id')")
        line.page.fill("#find-frame", "1")  # frame 1 of line1 and of line2: the person chooses
        line.page.click("#find button[type=submit]")
        line.page.wait_for_selector("[data-testid=matches] [data-testid=match] >> nth=1")
        assert line.page.locator("[data-testid=match]").count() == 2
        line.page.click("[data-testid=match]:has-text('line2')")
        line.page.wait_for_selector("#detail[open]")
        assert line.page.inner_text("#d-title") == "line2 · frame 1 · REJECT"
        line.page.click("#detail form[method=dialog] button")
        line.page.select_option("#find-camera", "line1")
        line.page.click("#find button[type=submit]")
        line.page.wait_for_selector("#detail[open]")
        assert line.page.inner_text("#d-title") == "line1 · frame 1 · OK"
    finally:
        line.close()
        second.close()
    assert not line.errors


def test_operators_mark_and_engineers_review(tmp_path, browser, replay):
    config = tmp_path / "view.toml"
    config.write_text(f'password_hash = "{hash_password("operator-pass")}"\n'
                      f'engineer_password_hash = "{hash_password("engineer-pass")}"\n')
    line = Line(browser, tmp_path, replay, "--config", str(config))
    try:
        line.client.post("/api/login", {"name": "probe", "password": "operator-pass"})
        until_seen(line.publisher, line.client)
        line.decide(0, "reject", camera_map=np.ones((8, 8), np.float32))
        wait_for(lambda: line.client.get("/api/records"), "the reject")
        for who, password, role in (("olga", "operator-pass", "operator"), ("emil", "engineer-pass", "engineer")):
            page = line.page
            page.context.clear_cookies()
            page.goto(line.view.url)
            page.fill("#login-name", who)
            page.fill("#login-password", password)
            page.click("#login button[type=submit]")
            page.wait_for_selector(f"[data-testid=role]:has-text('{role}')")
            page.click("nav button[data-tab=parts]")
            page.locator("[data-testid=thumb]").first.click()
            page.wait_for_selector("#detail[open]")
            if role == "operator":
                assert page.locator("#r-good").is_hidden() and page.locator("[data-testid=shift-reset]").is_hidden()
                page.fill("#m-note", "looks scratched")
                page.click("[data-testid=mark]")
                page.wait_for_selector("[data-testid=history]:has-text('looks scratched')")
            else:
                assert page.locator("[data-testid=shift-reset]").is_visible()
                page.click("#r-defect")
                page.wait_for_selector("[data-testid=reviewed]:has-text('defect confirmed')")
                assert "olga (operator): marked" in page.inner_text("[data-testid=history]")
                assert "emil (engineer)" in page.inner_text("[data-testid=history]")
            page.click("#detail form[method=dialog] button")
    finally:
        assert line.close() == 0
    assert not line.errors
