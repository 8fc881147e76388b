"""The daemon config: TOML + flags → one validated DaemonConfig; errors name the key and its line."""

import json
from pathlib import Path

import pytest

from edge.cli import main
from edge.config.daemon import build_config
from edge.core.settings import parse_override
from edge.core.errors import ConfigError
from edge.sources.factory import FolderSourceConfig, GenicamSourceConfig

GOOD = """
camera = "line1"
model = "models/cells"

[source]
kind = "genicam"
device = "1"
settings = { PixelFormat = "Mono8", ExposureTime = 8000 }

[backend]
kind = "onnxruntime"
onnx = "models/cells/model.onnx"
max_batch = 4

[pipeline]
deadline_ms = 200
overload = "fault"

[publish]
endpoint = "tcp://0.0.0.0:5555"
reliable_endpoint = "tcp://0.0.0.0:5556"
map_format = "float16"
map_size = "model"

[health]
metrics_port = 9101
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "line1.toml"
    path.write_text(text)
    return path


def test_full_file_validates_and_paths_are_relative_to_the_file(tmp_path):
    config = build_config(write(tmp_path, GOOD))
    assert config.camera == "line1"
    assert config.model == tmp_path / "models" / "cells"
    assert config.thresholds_path == tmp_path / "models" / "cells" / "thresholds.json"
    assert config.backend.onnx == tmp_path / "models" / "cells" / "model.onnx"
    assert isinstance(config.source, GenicamSourceConfig) and config.source.settings["ExposureTime"] == 8000
    assert (config.backend.kind, config.backend.max_batch, config.pipeline.deadline_ms) == ("onnxruntime", 4, 200)
    assert config.publish.map_size == "model" and config.health.metrics_port == 9101


def test_overload_default_blocks_for_a_replay_and_faults_for_a_camera(tmp_path):
    folder = build_config(None, [(["model"], "/m"), (["source"], {"kind": "folder", "path": "/x"})])
    camera = build_config(None, [(["model"], "/m"), (["source"], {"kind": "genicam"})])
    assert isinstance(folder.source, FolderSourceConfig)
    assert (folder.overload_policy, camera.overload_policy) == ("block", "fault")
    assert folder.resolved()["pipeline"]["overload"] == "block"


@pytest.mark.parametrize("text, key, line", [
    ('model = "m"\ncamera = "a.b"\n[source]\nkind = "genicam"\n', "key camera (line 2)", "[A-Za-z0-9_-]"),
    ('model = "m"\n[source]\nkind = "genicam"\n[pipeline]\n\ndeadline_ms = 0\n', "key pipeline.deadline_ms (line 6)",
     "greater than 0"),
    ('model = "m"\n[source]\nkind = "folder"\npath = "x"\nfpps = 3\n', "key source.fpss", "unknown key"),
    ('model = "m"\n[source]\nkind = "genicam"\n[backend]\nkind = "tensorflow"\n', "key backend.kind (line 5)",
     "'tensorrt'"),
    ('model = "m"\n[source]\nkind = "genicam"\n[publish]\nendpoint = "localhost:5555"\n',
     "key publish.endpoint (line 5)", "not a ZeroMQ endpoint"),
    ('model = "m"\n[source]\nkind = "genicam"\n[publish]\ncurve_secret_key = "k"\n', "key publish", "go together"),
    ('[source]\nkind = "genicam"\n', "key model", "required key is missing"),
    ('model = "m"\n[source]\nkind = "genicam"\n[pipline]\ndeadline_ms = 5\n', "key pipline (line 4)", "unknown key"),
])
def test_errors_name_the_key_and_line(tmp_path, text, key, line):
    # "fpss" → "fpps" mismatch above is deliberate in the expected key: the message must name what is in the file.
    key = key.replace("fpss", "fpps")
    with pytest.raises(ConfigError) as error:
        build_config(write(tmp_path, text))
    message = str(error.value)
    assert key in message and line in message, message
    assert message.startswith(f"config {tmp_path / 'line1.toml'}")


def test_invalid_toml_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid TOML .*line 2"):
        build_config(write(tmp_path, 'model = "m"\ncamera = \n'))


def test_overrides_parse_toml_values_and_bare_strings():
    assert parse_override("pipeline.deadline_ms=200") == (["pipeline", "deadline_ms"], 200)
    assert parse_override("publish.map_size=[64, 32]") == (["publish", "map_size"], [64, 32])
    assert parse_override("source.loop=true") == (["source", "loop"], True)
    assert parse_override("model=/var/lib/m") == (["model"], "/var/lib/m")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("deadline_ms")


def test_flags_override_the_file(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    assert main(["config", "check", str(path), "--schema-only", "--set", "pipeline.deadline_ms=75",
                 "--set", "backend.max_batch=2"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["pipeline"]["deadline_ms"] == 75 and resolved["backend"]["max_batch"] == 2
    assert resolved["camera"] == "line1" and resolved["source"]["kind"] == "genicam"


def test_config_check_exits_78_naming_the_key(tmp_path, capsys):
    path = write(tmp_path, GOOD.replace("max_batch = 4", "max_batch = 0"))
    assert main(["config", "check", str(path), "--schema-only"]) == 78
    assert "key backend.max_batch (line 13)" in capsys.readouterr().err


@pytest.mark.parametrize("table, key", [
    ('level = "loud"', "key logging.level (line 6)"),
    ('levels = { "edge.transport.publisher" = "debug", "edge.inspection.pipeline" = "chatty" }', "key logging.levels.edge.inspection.pipeline (line 6)"),
])
def test_config_check_refuses_a_log_level_naming_the_key(tmp_path, capsys, table, key):
    path = write(tmp_path, f'model = "m"\n[source]\nkind = "genicam"\n\n[logging]\n{table}\n')
    assert main(["config", "check", str(path), "--schema-only"]) == 78
    error = capsys.readouterr().err
    assert key in error and "'debug', 'info', 'warning', 'error' or 'critical'" in error, error


def test_log_levels_are_read_per_logger_and_default_to_info(tmp_path):
    config = build_config(write(tmp_path, GOOD + '[logging]\nlevel = "warning"\nlevels = { "edge.transport.publisher" = "debug" }\n'))
    assert (config.logging.level, config.logging.levels) == ("warning", {"edge.transport.publisher": "debug"})
    assert build_config(write(tmp_path, GOOD)).logging.level == "info"


def test_config_check_refuses_a_missing_model_directory(tmp_path, capsys):
    assert main(["config", "check", str(write(tmp_path, GOOD))]) == 66
    assert "does not exist" in capsys.readouterr().err


def test_run_without_config_or_model_is_a_config_error(capsys):
    assert main(["run", "--source", "folder:/nonexistent"]) == 78
    assert "--config" in capsys.readouterr().err


@pytest.mark.parametrize("endpoint, reason", [
    ("tcp://127.0.0.1:99999", "port '99999' must be a number from 1 to 65535"),
    ("tcp://127.0.0.1:0", "port '0' must be a number from 1 to 65535"),
    ("tcp://127.0.0.1:*", "port '*' must be a number"),
    ("tcp://127.0.0.1", "expected tcp://ADDRESS:PORT"),
    ("tcp://10.255.255.1:5555", "cannot be bound here"),
    ("tcp://no-such-host.invalid:5555", "does not resolve"),
    ("ipc:///no/such/folder/hlgfa.sock", "the folder /no/such/folder for the socket file does not exist"),
])
@pytest.mark.parametrize("key", ["endpoint", "reliable_endpoint"])
def test_an_endpoint_the_daemon_cannot_bind_fails_config_check_with_78_naming_it(tmp_path, capsys, endpoint, reason,
                                                                                 key):
    from edge.cli import main

    path = write(tmp_path, f'model = "m"\n[source]\nkind = "genicam"\n[publish]\n{key} = "{endpoint}"\n')
    assert main(["config", "check", str(path), "--schema-only"]) == 78
    err = capsys.readouterr().err
    assert f"key publish.{key} (line 5)" in err and reason in err, err


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5555", "tcp://*:5555", "tcp://localhost:5555", "tcp://lo:5555",
                                      "ipc://{tmp}/hlgfa.sock", "inproc://line1"])
def test_endpoints_that_can_be_bound_pass(tmp_path, endpoint):
    config = build_config(None, [(["model"], "/m"), (["source"], {"kind": "genicam"}),
                                 (["publish", "endpoint"], endpoint.format(tmp=tmp_path))])
    assert config.publish.endpoint == endpoint.format(tmp=tmp_path)
