"""The bridge's OPC UA server (OPC 40100-1 from the official NodeSet, and the flat variables) read,
called and subscribed to by an independent asyncua client on loopback."""

import asyncio
import math

import pytest

asyncua = pytest.importorskip("asyncua")

from edge.bridge.core import Bridge, CameraLink  # noqa: E402
from edge.bridge.opcua import MV_NAMESPACE, NAMESPACE, OpcuaConfig, OpcuaServer  # noqa: E402
from tests.integration.bridge_parts import WAIT_S, FakeCamera, free_port  # noqa: E402

_NULL = asyncua.ua.Variant(None, asyncua.ua.VariantType.ExtensionObject)  # an argument left out


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


MANDATORY_MV_FIELDS = ("ResultId", "IsPartial", "ResultState", "JobId", "CreationTime", "InternalRecipeId",
                       "InternalConfigurationId")


async def _client_session(endpoint: str, camera: FakeCamera, bridge):
    from asyncua import Client, ua

    async with Client(endpoint, timeout=10) as client:
        await client.load_data_type_definitions()  # the MV structures (ResultDataType, JobIdDataType, ...)
        idx = await client.get_namespace_index(NAMESPACE)
        mv = await client.get_namespace_index(MV_NAMESPACE)
        cam = await client.nodes.objects.get_child([f"{idx}:HLGFA", f"{idx}:cam1"])
        assert cam.nodeid == ua.NodeId("cam1", idx)
        assert await cam.read_type_definition() == ua.NodeId(1003, mv)  # VisionSystemType
        machine = await cam.get_child(f"{mv}:VisionStateMachine")
        assert machine.nodeid == ua.NodeId("cam1.VisionStateMachine", idx)
        assert await machine.read_type_definition() == ua.NodeId(1017, mv)
        for method in ("Halt", "Reset"):
            await machine.get_child(f"{mv}:{method}")
        results = await cam.get_child(f"{mv}:ResultManagement")
        assert await results.read_type_definition() == ua.NodeId(1007, mv)
        current = await machine.get_child("0:CurrentState")

        async def var(name):
            return await (await cam.get_child(f"{idx}:{name}")).read_value()

        async def status(name):
            return (await (await cam.get_child(f"{idx}:{name}")).read_data_value(raise_on_bad_status=False)).StatusCode

        assert (await status("Verdict")).value == ua.StatusCodes.BadWaitingForInitialData  # no decision yet
        build = await client.nodes.server.get_child(["0:ServerStatus", "0:BuildInfo"])
        assert await (await build.get_child("0:ProductName")).read_value() == "hlgfa-edge PLC bridge"
        assert await (await build.get_child("0:ManufacturerName")).read_value() == "hlgfa-edge"
        assert await (await build.get_child("0:SoftwareVersion")).read_value() not in ("", None)
        await _poll(lambda: var("Healthy"), bool, "Healthy true")
        await _poll(current.read_value, lambda text: text.Text == "Operational", "Operational")
        assert await (await current.get_child("0:Id")).read_value() == ua.NodeId(5031, mv)

        on_camera, on_server = _Events(), _Events()
        event_type = await client.nodes.base_event_type.get_child(
            [f"{mv}:ResultReadyEventType", f"{idx}:HlgfaResultReadyEventType"])
        await (await client.create_subscription(20, on_camera)).subscribe_events(cam, event_type)
        await (await client.create_subscription(20, on_server)).subscribe_events(client.nodes.server, event_type)
        # no wait: the server holds both monitored items once subscribe_events returns, so every event after
        # this point is queued for the subscriptions' next publish
        sent = [await asyncio.to_thread(camera.decide, v) for v in ("ok", "reject", "fault", "ok")]
        # the daemon has its ACKs once the bridge received the decisions, which may be before the values
        # are written: until the first, Seq is BadWaitingForInitialData
        seq = await cam.get_child(f"{idx}:Seq")
        await _poll(lambda: seq.read_data_value(raise_on_bad_status=False),
                    lambda value: value.StatusCode.is_good() and value.Value.Value == sent[-1].seq,
                    "the last decision's Seq")
        assert await var("Verdict") == "ok" and await var("FrameId") == sent[-1].frame_id
        assert await var("CountReject") == 1 and await var("CountFault") == 1 and await var("CountOk") == 2
        value = await (await cam.get_child(f"{idx}:Verdict")).read_data_value()
        assert value.StatusCode.is_good() and value.SourceTimestamp.timestamp() == pytest.approx(sent[-1].wall_ns / 1e9,
                                                                                                abs=1e-3)
        recent = await cam.get_child(f"{idx}:RecentResults")
        assert len(await recent.read_value()) == 4 and await recent.read_value_rank() == 1
        # the fault diverted one part; the system stays healthy
        assert await var("Healthy") is True and (await current.read_value()).Text == "Operational"

        await _poll(lambda: _count(on_camera), lambda n: n >= len(sent), "a ResultReady event per decision")
        await _poll(lambda: _count(on_server), lambda n: n >= len(sent), "... also from the Server object")
        events = on_camera.seen
        assert [int(e.Seq) for e in events] == [d.seq for d in sent]
        assert [e.EventId for e in on_server.seen] == [e.EventId for e in events]
        assert [e.Verdict for e in events] == ["ok", "reject", "fault", "ok"]
        assert [e.Severity for e in events] == [100, 500, 700, 100]
        assert [e.ResultState for e in events] == [1, 1, 4, 1]  # Completed, ..., Failed
        for event, decision in zip(events, sent):
            assert all(getattr(event, name) is not None for name in MANDATORY_MV_FIELDS), event
            assert event.ResultId.Id == f"{decision.session}-{decision.seq}" and event.IsPartial is False
            assert event.InternalRecipeId.Id == "model" and event.InternalConfigurationId.Id == "t1"
            assert event.CreationTime.timestamp() == pytest.approx(decision.wall_ns / 1e9, abs=1e-3)
        assert math.isnan(events[2].Score) and events[1].Score == pytest.approx(0.1)

        got = await results.call_method(f"{mv}:GetResultById", ua.ResultIdDataType(Id=events[1].ResultId.Id), 1000)
        assert got[1].ResultId.Id == events[1].ResultId.Id and got[1].ResultContent[0].Value == "reject" and got[2] == 0
        listed = await results.call_method(
            f"{mv}:GetResultListFiltered", ua.Variant(4, ua.VariantType.Int32), *[_NULL] * 8,
            ua.Variant(0, ua.VariantType.UInt32), ua.Variant(0, ua.VariantType.UInt32), 1000)
        assert listed[0] is True and listed[1] == 1 and listed[3][0].ResultContent[0].Value == "fault"
        with pytest.raises(ua.uaerrors.BadNotFound):
            await results.call_method(f"{mv}:GetResultById", ua.ResultIdDataType(Id="nope"), 1000)

        # StartSingleJob: the part id rides on the next frame's decision, event and result
        automatic = await machine.get_child(f"{mv}:AutomaticModeStateMachine")
        job, error = await automatic.call_method(f"{mv}:StartSingleJob", _NULL, ua.PartIdDataType(Id="P-17"), _NULL,
                                                 _NULL, ua.Variant([], ua.VariantType.Variant))
        assert error == 0 and job.Id
        decided = await asyncio.to_thread(camera.decide, "reject")
        assert decided.part_id == "P-17"
        await _poll(lambda: _count(on_camera), lambda n: n > len(sent), "the part's event")
        assert on_camera.seen[-1].PartId.Id == "P-17" and on_camera.seen[-1].JobId.Id == job.Id
        assert await var("PartId") == "P-17"
        # ... and the same over two writable variables, for clients that only write
        await (await cam.get_child(f"{idx}:CmdPartId")).write_value(ua.Variant("P-18", ua.VariantType.String))
        await (await cam.get_child(f"{idx}:CmdTrigger")).write_value(ua.Variant(1, ua.VariantType.UInt32))
        await _poll(lambda: var("TriggerAck"), lambda ack: ack == 1, "the trigger armed")
        assert (await asyncio.to_thread(camera.decide, "ok")).part_id == "P-18"
        with pytest.raises(ua.uaerrors.BadNotSupported):
            await automatic.call_method(f"{mv}:StartContinuous", _NULL, _NULL, _NULL,
                                        ua.Variant([], ua.VariantType.Variant))

        assert bridge.states()["cam1"].fault_code == "fault_verdict"
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await (await cam.get_child(f"{idx}:Healthy")).write_value(True)

        # Halt stops the line until Reset
        await machine.call_method(f"{mv}:Halt", ua.Variant(1, ua.VariantType.Int32), "maintenance")
        await _poll(current.read_value, lambda text: text.Text == "Halted", "Halted")
        assert await var("Healthy") is False and await var("Reason") == "halted"
        await machine.call_method(f"{mv}:Reset", ua.Variant(0, ua.VariantType.Int32), "done")
        await _poll(current.read_value, lambda text: text.Text == "Operational", "Operational after Reset")

        camera.silence()
        await _poll(lambda: var("Reason"), lambda r: r == "heartbeat_timeout", "unhealthy once the daemon is quiet")
        assert await var("Healthy") is False and (await current.read_value()).Text == "Error"
        assert (await status("Heartbeat")).value == ua.StatusCodes.BadNoCommunication
        assert (await status("Verdict")).value == ua.StatusCodes.UncertainLastUsableValue
        assert (await status("Healthy")).is_good()


async def _count(handler: _Events) -> int:
    return len(handler.seen)


def test_vision_system_state_machine_results_events_and_fail_safe_over_opcua(camera):
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/hlgfa/"
    server = OpcuaServer(OpcuaConfig(endpoint=endpoint, security=["None"], allow_anonymous=True))
    with Bridge([CameraLink(camera.camera, camera.endpoint, camera.reliable)], [server]) as bridge:
        bridge.start()
        asyncio.run(_client_session(endpoint, camera, bridge))
        assert camera.acked() == 6


def _node_ids(path) -> set:
    import re

    return set(re.findall(r'NodeId="ns=\d+;s=([^"]+)"', path.read_text()))


def test_adding_a_camera_changes_no_existing_node_id(tmp_path):
    from edge.bridge.opcua import export_nodeset

    one, two = tmp_path / "one.xml", tmp_path / "two.xml"
    asyncio.run(export_nodeset(["line1"], one))
    asyncio.run(export_nodeset(["line0", "line1"], two))
    before, after = _node_ids(one), _node_ids(two)
    assert "line1.Healthy" in before and "line1.VisionStateMachine.CurrentState" in before
    assert before <= after and {n for n in after - before if not n.startswith("line0")} == set()


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
