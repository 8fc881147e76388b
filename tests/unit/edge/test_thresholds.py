"""The thresholds file as the daemon reads it: every damaged file is a ConfigError (exit 78) naming the
file and what was expected, never another exception (which on SIGHUP would end the daemon)."""

import pytest

from edge.core.errors import ConfigError
from edge.core.paths import write_json_atomic
from edge.artifacts.thresholds import Thresholds, load_thresholds
from tests.thresholds_file import calibrated_data

HASH = "a" * 64


def test_a_thresholds_file_that_is_not_utf8_is_a_config_error_naming_the_file(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_bytes(b'{"format": "hlgfa-thresholds/1", "version": "\xff\xfe"}')
    with pytest.raises(ConfigError, match="not UTF-8") as caught:
        load_thresholds(path, HASH)
    assert str(path) in str(caught.value)


def calibrated_file(tmp_path, **changes):
    """A file as `hlgfa calibrate` writes it (version = time + content digest), with `changes` applied after."""
    from calibrate.calibrate_cli import make_version

    data = calibrated_data(Thresholds(model_hash=HASH, image_threshold=2.0, version="pending"),
                           {"min": 1.0, "median": 1.5, "max": 1.9})
    data.pop("version")
    data["version"] = make_version(data)
    data.update(changes)
    path = tmp_path / "thresholds.json"
    write_json_atomic(path, data)
    return path, data


def test_a_calibrated_file_keeps_its_version_and_a_hand_edit_gets_another(tmp_path):
    path, data = calibrated_file(tmp_path)
    assert load_thresholds(path, HASH).version == data["version"]
    path, _ = calibrated_file(tmp_path, image_threshold=2.5)
    edited = load_thresholds(path, HASH).version
    assert edited.startswith(data["version"] + "+") and edited != data["version"]


@pytest.mark.parametrize("changes, reason", [
    ({"image_threshold": 0.0}, "below every good part's score at calibration"),
    ({"image_threshold": -1.5}, "below every good part's score at calibration"),
    ({"image_threshold": 0.5}, "below every good part's score at calibration"),
    ({"image_threshold": 1e9}, "over 10 spreads of the good scores at calibration above the highest"),
    ({"image_threshold": 11.0}, "over 10 spreads"),
    ({"image_threshold": 1.2}, "below the median good score at calibration \\(1.5\\)"),
])
def test_thresholds_no_calibration_produces_are_refused_with_the_reason(tmp_path, changes, reason):
    path, _ = calibrated_file(tmp_path, **changes)
    with pytest.raises(ConfigError, match=reason) as caught:
        load_thresholds(path, HASH)
    assert caught.value.exit_code == 78 and str(path) in str(caught.value)


@pytest.mark.parametrize("change, reason", [
    (lambda d: d.pop("details"), "key 'details' is missing"),
    (lambda d: d.pop("quality"), "key 'quality' is missing"),
    (lambda d: d.update(note="hand-tuned"), "unknown key 'note'"),
    (lambda d: d.update(imagethreshold=1e9), "unknown key 'imagethreshold'"),
    (lambda d: d.update(details={}), "key 'details': normal_scores None, expected finite min ≤ median ≤ max"),
    (lambda d: d["details"].update(normal_scores={"min": 1.0, "median": float("nan"), "max": 1.9}),
     "key 'details': normal_scores"),
    (lambda d: d["details"].update(normal_scores={"min": 2.0, "median": 1.5, "max": 1.9}), "min ≤ median ≤ max"),
    (lambda d: d["quality"].pop("sharpness"), "key 'quality': no range for sharpness"),
    (lambda d: d.update(quality={**d["quality"], "brightness": [1, 2]}), "'brightness' is not one of"),
    (lambda d: d.update(region={"pixel_threshold": 1.0}), "key 'region'"),
    (lambda d: d.update(policy=None), "key 'policy'"),
])
def test_a_thresholds_file_is_checked_against_its_schema_strictly_with_the_fix(tmp_path, change, reason):
    """A file without `details` skipped every sanity check: threshold 1e9 loaded and passed rejects."""
    path, data = calibrated_file(tmp_path)
    change(data)
    write_json_atomic(path, data)
    with pytest.raises(ConfigError, match=reason) as caught:
        load_thresholds(path, HASH)
    assert "recalibrate" in str(caught.value).lower() and caught.value.exit_code == 78


def test_a_threshold_of_1e9_without_details_is_refused_not_loaded(tmp_path):
    path, data = calibrated_file(tmp_path, image_threshold=1e9)
    del data["details"]
    write_json_atomic(path, data)
    with pytest.raises(ConfigError, match="key 'details' is missing"):
        load_thresholds(path, HASH)
