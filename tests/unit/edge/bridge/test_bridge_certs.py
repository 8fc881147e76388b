"""`hlgfa bridge certs` and `hlgfa bridge nodeset`: what a plant's OPC UA clients and engineering tools get."""

import ipaddress
import logging

import pytest

pytest.importorskip("asyncua")

from cryptography import x509  # noqa: E402

from edge.cli import main  # noqa: E402

ENDPOINT = "opc.tcp://10.0.5.2:4840/hlgfa/"


def _certificate(path) -> x509.Certificate:
    return x509.load_der_x509_certificate(path.read_bytes())


def test_a_server_certificate_is_valid_ten_years_and_names_the_endpoints_address(tmp_path):
    assert main(["bridge", "certs", "--out", str(tmp_path), "--endpoint", ENDPOINT, "--hostname", "cell3.plant"]) == 0
    certificate = _certificate(tmp_path / "server.der")
    days = (certificate.not_valid_after_utc - certificate.not_valid_before_utc).days
    assert days == 3650
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.5.2")]
    assert names.get_values_for_type(x509.DNSName) == ["cell3.plant"]
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:hlgfa-edge:bridge"]
    assert (tmp_path / "server.key.pem").stat().st_mode & 0o077 == 0


def test_renew_issues_a_new_certificate_for_the_same_key_and_keeps_the_old_one(tmp_path, capsys):
    assert main(["bridge", "certs", "--out", str(tmp_path), "--endpoint", ENDPOINT, "--days", "30"]) == 0
    key = (tmp_path / "server.key.pem").read_bytes()
    old = _certificate(tmp_path / "server.der")
    assert main(["bridge", "certs", "--out", str(tmp_path), "--endpoint", ENDPOINT]) == 78  # no silent overwrite
    assert "--renew" in capsys.readouterr().err
    assert main(["bridge", "certs", "--out", str(tmp_path), "--endpoint", ENDPOINT, "--renew"]) == 0
    new = _certificate(tmp_path / "server.der")
    assert (tmp_path / "server.key.pem").read_bytes() == key and new.public_key() == old.public_key()
    assert new.not_valid_after_utc > old.not_valid_after_utc and (tmp_path / "server.der.old").exists()
    assert main(["bridge", "certs", "--out", str(tmp_path / "none"), "--renew"]) == 78


def test_a_certificate_near_its_end_is_warned_about_at_start(tmp_path, caplog):
    from edge.bridge.opcua import OpcuaConfig, OpcuaServer

    assert main(["bridge", "certs", "--out", str(tmp_path), "--endpoint", ENDPOINT, "--days", "20"]) == 0
    server = OpcuaServer(OpcuaConfig(endpoint=ENDPOINT, security=["None"], allow_anonymous=True))
    with caplog.at_level(logging.WARNING, logger="edge.bridge.opcua"):
        server._check_certificate(tmp_path / "server.der")
    assert server.certificate_days_left in (19, 20) and "hlgfa bridge certs --renew" in caplog.text


def test_nodeset_export_holds_our_address_space_with_string_node_ids(tmp_path, capsys):
    out = tmp_path / "bridge.xml"
    assert main(["bridge", "nodeset", "--out", str(out), "--camera", "line7"]) == 0
    text = out.read_text()
    assert "http://opcfoundation.org/UA/MachineVision" in text and "urn:hlgfa-edge:bridge" in text
    for node in ("line7", "line7.Healthy", "line7.VisionStateMachine.CurrentState", "line7.CmdPartId",
                 "line7.ResultManagement.GetResultById"):
        assert f';s={node}"' in text, node
    assert "HlgfaResultReadyEventType" in text and "nodes of namespace" in capsys.readouterr().out
