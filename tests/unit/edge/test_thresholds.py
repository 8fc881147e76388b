"""The thresholds file as the daemon reads it: every damaged file is a ConfigError (exit 78) naming the
file and what was expected, never another exception (which on SIGHUP would end the daemon)."""

import pytest

from edge.core.errors import ConfigError
from edge.core.paths import write_json_atomic
from edge.artifacts.thresholds import Thresholds, load_thresholds

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

    data = Thresholds(model_hash=HASH, image_threshold=2.0, version="pending",
                      details={"normal_scores": {"min": 1.0, "median": 1.5, "max": 1.9}}).to_dict()
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
