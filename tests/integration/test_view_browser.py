"""The operator's page in a real browser: Debian's chromium, driven headless by Playwright through the
system browser's executable (this machine downloads no browser of its own; `make test` apt-installs
chromium as root). The real daemon runs the tiny model on a replay of real cells; `hlgfa view`
subscribes to it, records, and serves the page. The test sees verdicts update live, opens a reject,
marks it good, and finds the review in the database and in the exported MVTec folder.

Screenshots go to $HLGFA_VIEW_SCREENSHOTS when set (docs/ holds the ones made that way).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.records.store import open_reader, query
from edge.core.paths import write_json_atomic
from tests.thresholds_file import calibrated_data
from edge.artifacts.thresholds import Thresholds
from tests.integration.test_view import ROOT, ViewProcess, free_endpoint

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
PAGE_WAIT_MS = 90_000  # the daemon loads the model and scores on a loaded 2-core machine


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


def test_operator_sees_live_verdicts_opens_a_reject_and_marks_it_good(tmp_path, browser, line, replay):
    shots = Path(os.environ["HLGFA_VIEW_SCREENSHOTS"]) if os.environ.get("HLGFA_VIEW_SCREENSHOTS") else tmp_path
    endpoint, records = free_endpoint(), tmp_path / "records"
    view = ViewProcess("--connect", endpoint, "--http", "127.0.0.1:0", "--records", str(records),
                       "--frames", str(replay))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "--log-level", "WARNING", "run", "--camera", "line1",
         "--model", str(line["model"]), "--thresholds", str(line["thresholds"]), "--source", f"folder:{replay}",
         "--publish", endpoint, "--backend", "onnxruntime", "--onnx", str(line["onnx"]), "--threads", "1",
         "--set", "source.fps=4", "--set", "source.loop=true"], cwd=ROOT)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
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
        page.wait_for_function("() => document.querySelector('[data-testid=camera-line1] img').complete && "
                               "document.querySelector('[data-testid=camera-line1] img').naturalWidth > 0",
                               timeout=PAGE_WAIT_MS)
        page.screenshot(path=str(shots / "view-live.png"))

        # rejects: the gallery, one reject opened with its frame, map and fields, marked good
        page.click("nav button[data-tab=rejects]")
        thumbs = page.locator("[data-testid=thumb]")
        thumbs.first.wait_for(timeout=PAGE_WAIT_MS)
        page.screenshot(path=str(shots / "view-rejects.png"))
        chosen = int(page.locator("[data-testid=thumb]:has(.tag.reject)").first.get_attribute("data-id"))
        page.locator(f"[data-testid=thumb][data-id='{chosen}']").first.click()
        page.wait_for_selector("#detail[open]")
        for picture in ("d-frame", "d-map"):  # the frame with the map laid over it, and the map alone
            page.wait_for_function(f"() => document.getElementById('{picture}').src.includes('/api/records/{chosen}/') "
                                   f"&& document.getElementById('{picture}').complete "
                                   f"&& document.getElementById('{picture}').naturalWidth > 0", timeout=PAGE_WAIT_MS)
        page.click("#r-good")
        page.wait_for_selector("[data-testid=reviewed]:has-text('false reject')")
        assert "anna" in page.inner_text("[data-testid=reviewed]")
        page.screenshot(path=str(shots / "view-reject.png"))
    finally:
        print("page errors:", errors)
        page.close()
        daemon.terminate()
        daemon_code = daemon.wait(timeout=60)
        view_code = view.stop()
    assert (daemon_code, view_code) == (0, 0)

    conn = open_reader(records)
    reviewed = query(conn, reviewed=True)
    conn.close()
    assert [(r["id"], r["review"], r["reviewer"], r["verdict"]) for r in reviewed] == [(chosen, "false_reject", "anna",
                                                                                        "reject")]
    out = tmp_path / "export"
    subprocess.run([sys.executable, "-m", "edge.cli", "records", "export", "--records", str(records), "--reviews",
                    "--frames", str(replay), "--out", str(out)], cwd=ROOT, check=True)
    exported = sorted((out / "good").iterdir())
    assert len(exported) == 1
    frame_id = reviewed[0]["frame_id"] % len(list(replay.iterdir()))
    source = sorted(replay.iterdir())[frame_id]
    assert exported[0].read_bytes() == source.read_bytes()  # the frame itself, ready for calibrate --normals
    assert not (out / "defect").exists()
