"""The frame-quality gate's statistics, its fitting on normals, the thresholds file and the config."""

import numpy as np
import pytest

from calibrate.quality_fit import fit_quality_ranges, fit_range
from edge.imaging import quality
from edge.config.daemon import build_config
from edge.imaging.quality import QualityConfig
from edge.core.errors import ConfigError, InputDataError
from edge.core.paths import write_json_atomic
from edge.artifacts.thresholds import Thresholds, load_thresholds
from tests.thresholds_file import calibrated_data


def test_uniform_frame_has_no_contrast_no_sharpness_and_its_raw_size():
    stats = quality.image_stats(np.full((100, 80), 128, np.uint8), 64)
    assert stats == {"mean": 128.0, "contrast": 0.0, "sharpness": 0.0, "saturated_fraction": 0.0,
                     "black_fraction": 0.0, "width": 80.0, "height": 100.0}


def test_checkerboard_statistics_are_exact():
    board = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    stats = quality.image_stats(board, 64)
    # Every interior pixel has four neighbours of the other colour: Laplacian ±4·255, variance
    # 1020², over the grey-level variance 127.5².
    assert stats["mean"] == pytest.approx(127.5) and stats["contrast"] == pytest.approx(127.5)
    assert stats["sharpness"] == pytest.approx(1020.0 ** 2 / 127.5 ** 2)
    assert stats["saturated_fraction"] == 0.5 and stats["black_fraction"] == 0.5


def test_colour_frames_are_measured_in_luma():
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 255
    assert quality.image_stats(red, 32)["mean"] == pytest.approx(0.299 * 255, rel=1e-5)
    assert quality.image_stats(red[..., :1], 32)["mean"] == 255.0  # H×W×1 is Mono8


def test_sharpness_is_measured_at_the_model_size_so_the_frame_size_does_not_change_it(rng):
    blocks = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    small = np.kron(blocks, np.ones((8, 8), np.uint8))   # 128×128
    large = np.kron(blocks, np.ones((32, 32), np.uint8))  # 512×512: the same scene at 4× the resolution
    assert quality.image_stats(large, 128)["sharpness"] == pytest.approx(quality.image_stats(small, 128)["sharpness"])


def test_a_one_pixel_frame_is_measured_not_refused():
    stats = quality.image_stats(np.full((1, 1), 200, np.uint8), 64)
    assert (stats["width"], stats["height"], stats["contrast"], stats["sharpness"]) == (1.0, 1.0, 0.0, 0.0)


def test_out_of_range_names_the_statistic_its_value_and_the_range_and_fails_closed_on_nan():
    ranges = {"mean": (40.0, 200.0), "sharpness": (10.0, 500.0)}
    assert quality.out_of_range({"mean": 100.0, "sharpness": 20.0}, ranges) is None
    assert quality.out_of_range({"mean": 250.0, "sharpness": 20.0}, ranges) == \
        "mean 250 outside the calibrated range [40, 200]"
    assert quality.out_of_range({"mean": float("nan"), "sharpness": 20.0}, ranges).startswith("mean nan outside")
    assert quality.out_of_range({"map_mean": 9.0}, ranges) is None  # no range: not checked


def normal_stats(rng, n=200):
    return [{"mean": float(rng.normal(120, 5)), "contrast": float(rng.normal(30, 2)),
             "sharpness": float(rng.lognormal(-2, 0.2)), "saturated_fraction": 0.0, "black_fraction": 0.0,
             "width": 300.0, "height": 300.0, "map_mean": float(rng.normal(1.0, 0.05))} for _ in range(n)]


def test_fitted_ranges_hold_every_normal_widen_the_extremes_and_exclude_broken_frames(rng):
    stats = normal_stats(rng)
    ranges, details = fit_quality_ranges(stats)
    assert set(ranges) == set(quality.STATISTICS)
    assert details["calibration_faults"] == 0
    means = [s["mean"] for s in stats]
    assert ranges["mean"][0] < min(means) and ranges["mean"][1] > max(means)
    assert ranges["width"] == (300.0, 300.0)  # a fixed camera: no floor on the frame size
    assert ranges["saturated_fraction"] == (0.0, pytest.approx(0.05))  # the floor, not a zero-width band
    assert ranges["sharpness"][0] > 0  # fitted on a log scale: a blurred frame has a floor to fall under
    fresh = normal_stats(np.random.default_rng(1), 2000)
    assert sum(quality.out_of_range(s, ranges) is not None for s in fresh) <= 10  # ≤ 0.5 %
    good = fresh[0]
    for broken in ({**good, "mean": 0.0}, {**good, "contrast": 0.0}, {**good, "sharpness": good["sharpness"] / 10},
                   {**good, "saturated_fraction": 0.3}, {**good, "width": 1.0}, {**good, "map_mean": 0.5}):
        assert quality.out_of_range(broken, ranges) is not None, broken


def test_fitting_refuses_too_few_or_broken_normals():
    with pytest.raises(InputDataError, match="need at least 20"):
        fit_range("mean", [100.0] * 5)
    with pytest.raises(InputDataError, match="non-finite"):
        fit_range("mean", [100.0] * 30 + [float("nan")])


def _thresholds_file(tmp_path, **more) -> dict:
    data = calibrated_data(Thresholds(model_hash="abc", image_threshold=1.5, version="v1"))
    data.update(more)
    return data


def test_a_thresholds_file_without_ranges_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "thresholds.json"
    data = _thresholds_file(tmp_path)
    del data["quality"]
    write_json_atomic(path, data)
    with pytest.raises(ConfigError, match="key 'quality' is missing.*hlgfa calibrate"):
        load_thresholds(path, "abc")


def test_ranges_round_trip_through_the_thresholds_file_and_bad_ones_are_refused(tmp_path):
    path = tmp_path / "thresholds.json"
    ranges = {**_thresholds_file(tmp_path)["quality"], "mean": [40, 200], "map_mean": [0.5, 2.0]}
    write_json_atomic(path, _thresholds_file(tmp_path, quality=ranges))
    loaded = load_thresholds(path, "abc").quality
    assert (loaded["mean"], loaded["map_mean"], len(loaded)) == ((40.0, 200.0), (0.5, 2.0), len(quality.STATISTICS))
    for bad, message in (({**ranges, "mean": [200, 40]}, "low ≤ high"), ({**ranges, "mean": [1, float("nan")]}, "finite"),
                         ({**ranges, "brightness": [1, 2]}, "not one of"), ([1, 2], "must be an object"),
                         ({"mean": [40, 200]}, "no range for contrast")):
        write_json_atomic(path, _thresholds_file(tmp_path, quality=bad))
        with pytest.raises(ConfigError, match=message):
            load_thresholds(path, "abc")


def test_the_config_overrides_one_range_and_keeps_the_others(tmp_path):
    config = build_config(None, [(["model"], str(tmp_path)), (["source"], {"kind": "folder", "path": str(tmp_path)}),
                                 (["quality", "mean"], [10, 250])])
    assert config.quality.overrides() == {"mean": (10.0, 250.0)}
    ranges = quality.effective_ranges({"mean": (40.0, 200.0), "contrast": (5.0, 60.0)}, config.quality.overrides(), "c")
    assert ranges == {"mean": (10.0, 250.0), "contrast": (5.0, 60.0)}
    with pytest.raises(ConfigError, match=r"key quality: mean = \[250.0, 10.0\]"):
        build_config(None, [(["model"], str(tmp_path)), (["source"], {"kind": "folder", "path": str(tmp_path)}),
                            (["quality", "mean"], [250, 10])])
    with pytest.raises(ConfigError, match="quality.brightness: unknown key"):
        build_config(None, [(["model"], str(tmp_path)), (["source"], {"kind": "folder", "path": str(tmp_path)}),
                            (["quality", "brightness"], [1, 2])])


def test_the_config_knows_every_statistic_and_no_other():
    assert tuple(QualityConfig.model_fields) == quality.STATISTICS


def test_at_the_floor_of_normals_the_gate_faults_the_blank_dark_and_overexposed_frames_and_passes_good_ones(
        elpv_images):
    """`hlgfa calibrate` warns below GATE_FLOOR_NORMALS; at it, ranges fitted on that many good cells
    fault every image-statistic kind of unusable frame made from 20 other cells, and no held-out good
    cell (bench/detection/quality_floor.py measures it over 200 draws; a defocused frame is left to the map
    statistic, which needs the model)."""
    from calibrate.demo.run import unusable_frame
    from calibrate.quality_fit import GATE_FLOOR_NORMALS, floor_note
    from edge.imaging.files import read_image

    cells = elpv_images["good"]
    order = np.random.default_rng(0).permutation(len(cells))
    normals = [quality.image_stats(read_image(cells[i]), 256) for i in order[:GATE_FLOOR_NORMALS]]
    ranges, _ = fit_quality_ranges(normals)
    sources = [read_image(cells[i]) for i in order[GATE_FLOOR_NORMALS:GATE_FLOOR_NORMALS + 20]]
    held_out = [quality.image_stats(read_image(cells[i]), 256) for i in order[GATE_FLOOR_NORMALS + 20:][:100]]
    for kind in ("black", "dark", "grey128", "overexposed", "white"):
        passed = [i for i, cell in enumerate(sources)
                  if quality.out_of_range(quality.image_stats(unusable_frame(kind, cell), 256), ranges) is None]
        assert passed == [], f"{kind} frames of source cells {passed} passed the gate"
    assert sum(quality.out_of_range(stats, ranges) is not None for stats in held_out) == 0
    assert floor_note(GATE_FLOOR_NORMALS) is None and "fewer than 100" in floor_note(GATE_FLOOR_NORMALS - 1)
