"""`hlgfa bridge` configuration: the file, the flags, and errors that name the key."""

import pytest

from edge.bridge.cli import build_config
from edge.bridge.core import Bridge, CameraLink
from edge.cli import main
from edge.core.errors import ConfigError

CAMERA = '[[cameras]]\nname = "line1"\nconnect = "tcp://127.0.0.1:5555"\nreliable = "tcp://127.0.0.1:5556"\n'


def test_a_file_with_every_protocol_resolves_paths_against_its_directory(tmp_path):
    path = tmp_path / "bridge.toml"
    path.write_text(CAMERA + '[modbus_server]\nlisten = "0.0.0.0:1502"\n'
                    '[modbus_client]\nplc = "10.0.0.5:502"\nreject_coil = 3\n'
                    '[mqtt]\nbroker = "10.0.0.9:8883"\ntls_ca = "ca.pem"\n'
                    '[opcua]\nendpoint = "opc.tcp://0.0.0.0:4840/hlgfa/"\ncertificate = "c/server.der"\n'
                    'private_key = "c/server.key.pem"\ntrusted_clients = "c/trusted"\n')
    config = build_config(path, {})
    assert config.cameras[0].name == "line1" and config.modbus_client.reject_coil == 3
    assert config.mqtt.tls_ca == tmp_path / "ca.pem" and config.opcua.trusted_clients == tmp_path / "c" / "trusted"


@pytest.mark.parametrize("text, expected", [
    (CAMERA + '[modbus_server]\nlisten = "nowhere"\n', "key modbus_server.listen (line 6)"),
    (CAMERA + '[modbus_server]\nlisten = "127.0.0.1:502"\nlisen = 1\n', "key modbus_server.lisen (line 7): unknown key"),
    (CAMERA + '[modbus_client]\nplc = "127.0.0.1:502"\ndevice_id = 300\n', "Modbus unit id 0-255"),
    (CAMERA, "no protocol enabled"),
    (CAMERA + CAMERA + '[mqtt]\nbroker = "127.0.0.1:1883"\n', "each may appear once"),
    (CAMERA.replace("line1", "line.1") + '[mqtt]\nbroker = "127.0.0.1:1883"\n', "cameras.0.name"),
    (CAMERA + '[mqtt]\nbroker = "127.0.0.1:1883"\nprefix = "a/#"\n', "key mqtt.prefix"),
    ("[[cameras]\n", "not valid TOML"),
])
def test_bad_files_name_the_key_and_exit_78(tmp_path, text, expected):
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as caught:
        build_config(path, {})
    assert expected in str(caught.value) and caught.value.exit_code == 78


def test_flags_describe_one_camera_and_refuse_to_add_to_a_file_with_cameras(tmp_path, capsys):
    assert main(["bridge", "--check", "--camera", "cam7", "--connect", "tcp://127.0.0.1:1",
                 "--reliable", "tcp://127.0.0.1:2", "--mqtt-broker", "127.0.0.1:1883"]) == 0
    assert '"name": "cam7"' in capsys.readouterr().out
    assert main(["bridge", "--check", "--connect", "tcp://127.0.0.1:1", "--mqtt-broker", "127.0.0.1:1883"]) == 78
    path = tmp_path / "bridge.toml"
    path.write_text(CAMERA)
    assert main(["bridge", "--check", "--config", str(path), "--connect", "tcp://127.0.0.1:1",
                 "--reliable", "tcp://127.0.0.1:2", "--mqtt-broker", "127.0.0.1:1883"]) == 78
    assert "already lists cameras" in capsys.readouterr().err


@pytest.mark.parametrize("links, says", [
    ([], "at least one camera"),
    ([CameraLink("a", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2")] * 2, "each camera may appear once"),
])
def test_a_bridge_built_without_the_cli_refuses_a_bad_camera_list_as_a_config_error(links, says):
    with pytest.raises(ConfigError, match=says):
        Bridge(links, adapters=[])
