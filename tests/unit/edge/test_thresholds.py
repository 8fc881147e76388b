"""The thresholds file as the daemon reads it: every damaged file is a ConfigError (exit 78) naming the
file and what was expected, never another exception (which on SIGHUP would end the daemon)."""

import pytest

from edge.errors import ConfigError
from edge.thresholds import Thresholds, load_thresholds, write_json_atomic

HASH = "a" * 64


def test_a_thresholds_file_that_is_not_utf8_is_a_config_error_naming_the_file(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_bytes(b'{"format": "hlgfa-thresholds/1", "version": "\xff\xfe"}')
    with pytest.raises(ConfigError, match="not UTF-8") as caught:
        load_thresholds(path, HASH)
    assert str(path) in str(caught.value)
