"""The bridge's OPC UA server read and subscribed to by an asyncua client on loopback."""

import asyncio
import math

import pytest

pytest.importorskip("asyncua")

from edge.bridge.core import Bridge, CameraLink  # noqa: E402
from edge.bridge.opcua import NAMESPACE, OpcuaConfig, OpcuaServer  # noqa: E402
from tests.integration.bridge_parts import WAIT_S, FakeCamera, free_port  # noqa: E402


@pytest.fixture
def camera():
    camera = FakeCamera("cam1")
    yield camera
    camera.close()


async def _poll(read, predicate, what: str):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while loop.time() < deadline:
        value = await read()
        if predicate(value):
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: not within {WAIT_S} s")


class _Events:
    def __init__(self):
        self.seen = []

    def event_notification(self, event):
        self.seen.append(event)


async def _client_session(endpoint: str, camera: FakeCamera, bridge):
    from asyncua import Client, ua

    async with Client(endpoint, timeout=10) as client:
        idx = await client.get_namespace_index(NAMESPACE)
        cam = await client.nodes.objects.get_child([f"{idx}:HLGFA", f"{idx}:cam1"])

        async def var(name):
            return await (await cam.get_child(f"{idx}:{name}")).read_value()

        await _poll(lambda: var("Healthy"), bool, "Healthy true")
        handler = _Events()
        subscription = await client.create_subscription(20, handler)
        event_type = await client.nodes.root.get_child(
            ["0:Types", "0:EventTypes", "0:BaseEventType", f"{idx}:ResultReadyEventType"])
        await subscription.subscribe_events(cam, event_type)
        await asyncio.sleep(0.5)  # the subscription's first publish cycle
        sent = [camera.decide(v) for v in ("ok", "reject", "fault", "ok")]
        await _poll(lambda: var("Seq"), lambda seq: seq == sent[-1].seq, "the last decision's Seq")
        assert await var("Verdict") == "ok" and await var("FrameId") == sent[-1].frame_id
        assert await var("CountReject") == 1 and await var("CountFault") == 1 and await var("CountOk") == 2
        assert len(await var("RecentResults")) == 4

        async def events():
            return len(handler.seen)

        await _poll(events, lambda n: n >= len(sent), "a ResultReady event per decision")
        assert [int(e.Seq) for e in handler.seen] == [d.seq for d in sent]
        assert [e.Verdict for e in handler.seen] == ["ok", "reject", "fault", "ok"]
        assert math.isnan(handler.seen[2].Score) and handler.seen[1].Score == pytest.approx(0.1)

        assert bridge.states()["cam1"].fault_code == "fault_verdict"
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await (await cam.get_child(f"{idx}:Healthy")).write_value(True)
        assert await var("Seq") == sent[-1].seq  # and the server lives on

        camera.silence()
        await _poll(lambda: var("Reason"), lambda r: r == "heartbeat_timeout", "unhealthy once the daemon is quiet")
        assert await var("Healthy") is False


def test_variables_events_and_fail_safe_over_opcua(camera):
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/hlgfa/"
    server = OpcuaServer(OpcuaConfig(endpoint=endpoint, security=["None"], allow_anonymous=True))
    with Bridge([CameraLink(camera.camera, camera.endpoint, camera.reliable)], [server]) as bridge:
        bridge.start()
        asyncio.run(_client_session(endpoint, camera, bridge))
        assert camera.acked() == 4


async def _secure_read(endpoint: str, certs, name: str | None):
    """Read Healthy as client `name` (its certificate from `hlgfa bridge certs`), over Basic256Sha256
    SignAndEncrypt; `name` None: no security, anonymous."""
    from asyncua import Client
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

    client = Client(endpoint, timeout=10)
    if name is not None:
        client.application_uri = f"urn:test:{name}"
        await client.set_security(SecurityPolicyBasic256Sha256, str(certs / f"{name}.der"),
                                  str(certs / f"{name}.key.pem"), server_certificate=str(certs / "server.der"))
        # the same certificate as its identity (anonymous is off)
        await client.load_client_certificate(str(certs / f"{name}.der"))
        await client.load_private_key(str(certs / f"{name}.key.pem"))
    async with client:
        idx = await client.get_namespace_index(NAMESPACE)
        node = await client.nodes.objects.get_child([f"{idx}:HLGFA", f"{idx}:cam1", f"{idx}:Healthy"])
        return await node.read_value()


def test_basic256sha256_with_certificates_from_hlgfa_bridge_certs_admits_only_trusted_clients(tmp_path, camera):
    from edge.cli import main

    certs, trusted = tmp_path / "certs", tmp_path / "trusted"
    trusted.mkdir()
    assert main(["bridge", "certs", "--out", str(certs), "--hostname", "localhost"]) == 0
    for name in ("plc", "stranger"):
        assert main(["bridge", "certs", "--out", str(certs), "--name", name, "--client-uri", f"urn:test:{name}"]) == 0
    assert (certs / "server.key.pem").stat().st_mode & 0o077 == 0
    (trusted / "plc.der").write_bytes((certs / "plc.der").read_bytes())
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/hlgfa/"
    server = OpcuaServer(OpcuaConfig(endpoint=endpoint, certificate=certs / "server.der",
                                     private_key=certs / "server.key.pem", trusted_clients=trusted))
    with Bridge([CameraLink(camera.camera, camera.endpoint, camera.reliable)], [server]) as bridge:
        bridge.start()
        assert asyncio.run(_secure_read(endpoint, certs, "plc")) in (True, False)
        from asyncua.ua import UaError
        from asyncua.ua.uaerrors import BadCertificateUntrusted

        with pytest.raises(BadCertificateUntrusted):
            asyncio.run(_secure_read(endpoint, certs, "stranger"))
        with pytest.raises(UaError, match="No matching endpoints"):  # no unsecured endpoint exists
            asyncio.run(_secure_read(endpoint, certs, None))


def test_opcua_config_refuses_insecure_defaults():
    from edge.core.errors import ConfigError
    from edge.bridge.cli import build_config

    base = {"cameras": [{"name": "cam1", "connect": "tcp://127.0.0.1:1", "reliable": "tcp://127.0.0.1:2"}]}
    with pytest.raises(ConfigError, match="certificate, private_key"):
        build_config(None, {**base, "opcua": {"endpoint": "opc.tcp://127.0.0.1:4840"}})
    with pytest.raises(ConfigError, match="allow_anonymous"):
        build_config(None, {**base, "opcua": {"endpoint": "opc.tcp://127.0.0.1:4840", "security": ["None"]}})
    with pytest.raises(ConfigError, match="opc.tcp://HOST:PORT"):
        build_config(None, {**base, "opcua": {"endpoint": "http://x", "security": ["None"], "allow_anonymous": True}})
