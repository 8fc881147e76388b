"""The frame-quality gate in the real daemon: the session's tiny model, ranges fitted by the real
calibration code on real good cells, frames over a folder source, decisions over real sockets.

Blank, black, white, blurred and 1×1 frames scored `ok` before the gate (issue 13, item 1); here
each must be a `frame_quality` fault naming the statistic, and the good cells around them must not.
"""

import json
import shutil

import cv2
import numpy as np
import pytest

from edge.transport import wire
from edge.core.paths import write_json_atomic

# The daemon harness and its fixtures (ONNX export, bare backend, line images, a thresholds file
# without ranges), shared rather than copied.
from tests.integration.test_daemon import (  # noqa: F401 - fixtures are found by name
    Running, _base, _one_decision_per_frame, bare_backend, calibrated, line_images, no_daemon_outlives_its_test,
    onnx_file)


@pytest.fixture(scope="module")
def gated(tmp_path_factory, calibrated, bare_backend, elpv_images):
    """The `calibrated` thresholds plus frame-quality ranges fitted on 60 good cells that neither
    the tiny model (cells 0-23) nor the line frames (24-31) use."""
    from calibrate.calibrate_cli import score_images
    from calibrate.quality_fit import fit_quality_ranges

    stats: list[dict] = []
    score_images(bare_backend, calibrated["info"].preprocess, elpv_images["good"][40:100], "normal image", stats=stats)
    ranges, details = fit_quality_ranges(stats)
    data = {**calibrated["data"], "version": "t1-gated", "quality": {k: list(v) for k, v in ranges.items()}}
    data["details"] = {**data["details"], "quality": details}
    path = tmp_path_factory.mktemp("gated") / "thresholds.json"
    write_json_atomic(path, data)
    return {"path": path, "ranges": ranges}


def _frames(folder, elpv_images) -> dict[str, str]:
    """Good cells the gate must pass and unusable frames it must fault, in name (= frame) order."""
    folder.mkdir()
    good = elpv_images["good"][24:28]
    cell = cv2.imread(str(elpv_images["good"][28]), cv2.IMREAD_UNCHANGED)
    unusable = {
        "grey128": np.full(cell.shape, 128, np.uint8),
        "grey80": np.full(cell.shape, 80, np.uint8),
        "grey170": np.full(cell.shape, 170, np.uint8),
        "black": np.zeros(cell.shape, np.uint8),
        "white": np.full(cell.shape, 255, np.uint8),
        "blurred": cv2.GaussianBlur(cell, (0, 0), 4),
        "one_pixel": np.full((1, 1), 128, np.uint8),
    }
    kinds = {}
    for index, path in enumerate(good):
        shutil.copy(path, folder / f"{2 * index:03d}_good.png")
        kinds[f"{2 * index:03d}_good.png"] = "good"
    for index, (name, image) in enumerate(unusable.items()):
        file = f"{2 * index + 1:03d}_{name}.png"
        cv2.imwrite(str(folder / file), image)
        kinds[file] = name
    return dict(sorted(kinds.items()))


def test_blank_black_white_blurred_and_one_pixel_frames_are_frame_quality_faults(
        tmp_path, tiny_model_dir, calibrated, gated, elpv_images):
    kinds = _frames(tmp_path / "frames", elpv_images)
    run = Running(_base(tiny_model_dir, calibrated, tmp_path / "frames", thresholds=str(gated["path"])))
    assert run.collect_until_stopped() == 0
    by_id = _one_decision_per_frame(run, range(len(kinds)))
    for frame_id, (file, kind) in enumerate(kinds.items()):
        decision = by_id[frame_id]
        if kind == "good":
            assert decision.verdict != "fault", (file, decision.reason)
        else:
            assert decision.verdict == "fault", (file, decision.verdict, decision.score)
            assert decision.reason.startswith("frame_quality: "), (file, decision.reason)
            statistic = decision.reason.split()[1]
            low, high = gated["ranges"][statistic]
            assert f"outside the calibrated range [{low:.6g}, {high:.6g}]" in decision.reason, decision.reason
    faults = run.of(wire.Fault)
    assert sorted(f.frame_id for f in faults) == [i for i, k in enumerate(kinds.values()) if k != "good"]
    assert {f.code for f in faults} == {"frame_quality"}


def test_a_config_range_replaces_the_files_range_of_one_statistic(tmp_path, tiny_model_dir, calibrated, line_images):
    """The `calibrated` file's ranges pass every frame (each statistic's whole domain); a config range
    for one statistic, `map_mean`, below every frame's map makes every frame anomalous everywhere: a
    reject with that reason, judged after inference (image statistics in range: judgeable, no fault)."""
    assert json.loads(calibrated["path"].read_text())["quality"]["map_mean"] == [-1e9, 1e9]
    run = Running(_base(tiny_model_dir, calibrated, line_images, **{"quality.map_mean": [-2.0, -1.0]}))
    assert run.collect_until_stopped() == 0
    names = sorted(p.name for p in line_images.iterdir())
    by_id = _one_decision_per_frame(run, range(len(names)))
    threshold = calibrated["thresholds"].image_threshold
    assert any(d.score <= threshold for d in by_id.values()), "no frame the score alone would pass"
    for decision in by_id.values():
        assert decision.verdict == "reject" and decision.score is not None
        if decision.score <= threshold and not decision.reason.startswith("region"):  # else ok: anomalous everywhere
            assert decision.reason.startswith("map_mean ") and \
                decision.reason.endswith("above the calibrated range [-2, -1]: anomalous everywhere"), decision.reason
