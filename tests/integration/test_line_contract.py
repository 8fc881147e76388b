"""The line contract end to end: part ids from a PLC through `hlgfa bridge` into `hlgfa run` and back on
exactly that part's decision, over Modbus (an independent pymodbus client) and OPC UA (an independent
asyncua client); a part whose frame is lost becomes a fault for its part id; a killed daemon turns the
OPC UA values Bad."""

import asyncio
import signal
import threading

import pytest

pytest.importorskip("pymodbus")
pytest.importorskip("asyncua")

from edge.bridge import registers as R  # noqa: E402
from edge.bridge.core import Bridge, CameraLink  # noqa: E402
from edge.bridge.modbus import ModbusServer, ModbusServerConfig  # noqa: E402
from edge.bridge.opcua import MV_NAMESPACE, NAMESPACE  # noqa: E402
from edge.transport import wire  # noqa: E402
from tests.integration.bridge_parts import free_port, wait_for  # noqa: E402
from tests.integration.test_bridge_end_to_end import _hlgfa, _stop  # noqa: E402
from tests.integration.test_daemon import (  # noqa: E402,F401 - fixtures are found by name
    Running, WrappedSource, _base, bare_backend, calibrated, line_images, onnx_file)


class _Plc:
    """A PLC polling the bridge's Modbus server and writing its commands."""

    def __init__(self, port: int):
        from pymodbus.client import ModbusTcpClient

        self.client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)

    def block(self) -> list[int] | None:
        from pymodbus.exceptions import ModbusException

        try:
            if not self.client.connected and not self.client.connect():
                return None
            response = self.client.read_holding_registers(0, count=R.BLOCK, device_id=1)
        except ModbusException:
            return None
        return None if response.isError() else response.registers

    def part(self, part: int, trigger: int) -> list[int]:
        """Hand over `part` and wait for its decision; the block showing it."""
        seq = R.read_number(self.block(), R.SEQ, 2)
        assert not self.client.write_registers(R.CMD_PART_ID, [*R._words(part, 2), trigger], device_id=1).isError()
        wait_for(lambda: (w := self.block()) and w[R.TRIGGER_ACK] == trigger, f"part {part} armed", timeout_s=60)
        return wait_for(lambda: (w := self.block()) and R.read_number(w, R.SEQ, 2) > seq
                        and not w[R.STATUS] & R.PART_PENDING and w, f"part {part}'s decision", timeout_s=120)


async def _opcua_parts(endpoint: str, parts: list[str]) -> list:
    """Start a single job for each part (StartSingleJob, then the writable variables for the last) and
    collect the ResultReady events."""
    from asyncua import Client, ua

    events = []

    class Handler:
        def event_notification(self, event):
            events.append(event)

    null = ua.Variant(None, ua.VariantType.ExtensionObject)
    async with Client(endpoint, timeout=10) as client:
        await client.load_data_type_definitions()
        idx, mv = await client.get_namespace_index(NAMESPACE), await client.get_namespace_index(MV_NAMESPACE)
        camera = client.get_node(ua.NodeId("line1", idx))
        event_type = await client.nodes.base_event_type.get_child(
            [f"{mv}:ResultReadyEventType", f"{idx}:HlgfaResultReadyEventType"])
        await (await client.create_subscription(20, Handler())).subscribe_events(camera, event_type)
        automatic = client.get_node(ua.NodeId("line1.VisionStateMachine.AutomaticModeStateMachine", idx))
        for count, part in enumerate(parts, start=1):
            if count < len(parts):
                await automatic.call_method(f"{mv}:StartSingleJob", null, ua.PartIdDataType(Id=part), null, null,
                                            ua.Variant([], ua.VariantType.Variant))
            else:
                await client.get_node(ua.NodeId("line1.CmdPartId", idx)).write_value(ua.Variant(part, ua.VariantType.String))
                await client.get_node(ua.NodeId("line1.CmdTrigger", idx)).write_value(ua.Variant(1, ua.VariantType.UInt32))
            deadline = asyncio.get_running_loop().time() + 120
            while len(events) < count:
                assert asyncio.get_running_loop().time() < deadline, f"no ResultReady event for part {part}"
                await asyncio.sleep(0.05)
    return events


async def _statuses(endpoint: str) -> dict:
    from asyncua import Client, ua

    async with Client(endpoint, timeout=10) as client:
        idx = await client.get_namespace_index(NAMESPACE)
        return {name: (await client.get_node(ua.NodeId(f"line1.{name}", idx)).read_data_value(
            raise_on_bad_status=False)).StatusCode for name in ("Healthy", "Heartbeat", "Verdict")}


def test_part_ids_over_modbus_and_opcua_come_back_on_their_parts_decisions_through_hlgfa_run(
        tmp_path, tiny_model_dir, calibrated, line_images):
    publish, reliable = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    modbus_port, opcua = free_port(), f"opc.tcp://127.0.0.1:{free_port()}/hlgfa/"
    config = tmp_path / "bridge.toml"
    config.write_text(f'[[cameras]]\nname = "line1"\nconnect = "{publish}"\nreliable = "{reliable}"\n'
                      f'[modbus_server]\nlisten = "127.0.0.1:{modbus_port}"\n'
                      f'[opcua]\nendpoint = "{opcua}"\nsecurity = ["None"]\nallow_anonymous = true\n')
    bridge = _hlgfa(tmp_path / "bridge.log", "bridge", "--config", str(config))
    # per_part: a frame is read only once a part is armed, so every part has its frame and none is left over
    daemon = _hlgfa(tmp_path / "daemon.log", "run", "--camera", "line1", "--model", str(tiny_model_dir),
                    "--thresholds", str(calibrated["path"]), "--publish", publish, "--reliable", reliable,
                    "--backend", "onnxruntime", "--onnx", str(calibrated["onnx"]), "--threads", "1",
                    "--deadline-ms", "120000", "--source", f"folder:{line_images}", "--set", "source.loop=true",
                    "--set", "parts.acquire=per_part", "--set", "publish.heartbeat_period_s=0.5")
    plc = _Plc(modbus_port)
    try:
        wait_for(lambda: (w := plc.block()) and w[R.STATUS] & R.HEALTHY, "healthy on Modbus", timeout_s=180)
        frames = []
        for trigger, part in enumerate((101, 102, 103), start=1):
            words = plc.part(part, trigger)
            assert R.read_number(words, R.PART_ID, 2) == part and words[R.STATUS] & R.HEALTHY
            frames.append(R.read_number(words, R.FRAME_ID, 4))
        assert frames == [0, 1, 2]  # one frame per part, in order: the replay advances only per part
        events = asyncio.run(_opcua_parts(opcua, ["opc-A", "opc-B", "opc-C"]))
        assert [e.PartId.Id for e in events] == ["opc-A", "opc-B", "opc-C"]
        assert [int(e.FrameId) for e in events] == [3, 4, 5]
        assert all(e.JobId.Id for e in events)

        daemon.send_signal(signal.SIGKILL)
        daemon.wait(30)
        wait_for(lambda: (w := plc.block()) and not w[R.STATUS] & R.HEALTHY, "unhealthy on Modbus after the kill")
        from asyncua import ua

        statuses = wait_for(lambda: (s := asyncio.run(_statuses(opcua)))["Heartbeat"].value
                            == ua.StatusCodes.BadNoCommunication and s, "Bad on OPC UA after the kill")
        assert statuses["Verdict"].value == ua.StatusCodes.UncertainLastUsableValue and statuses["Healthy"].is_good()
    finally:
        plc.client.close()
        _stop(daemon)
        bridge_log = _stop(bridge)
    assert "Traceback" not in bridge_log, bridge_log


class _LosingSource(WrappedSource):
    """A camera whose frames the test lets through one at a time (`deliver`), or loses: the frame is taken
    from the camera and never reaches the daemon (`lose`)."""

    def __init__(self, source):
        super().__init__(source)
        self.allowed = threading.Semaphore(0)

    def deliver(self) -> None:
        self.allowed.release()

    def lose(self) -> None:
        self.source.read(5.0)

    def read(self, timeout_s):
        if not self.allowed.acquire(timeout=timeout_s):
            from edge.sources.base import SourceIdle

            raise SourceIdle(f"no part within {timeout_s} s")
        return self.source.read(timeout_s)


def test_a_lost_frame_is_a_fault_for_its_part_id_and_the_next_part_keeps_its_own_verdict(
        tiny_model_dir, calibrated, line_images):
    """Through the daemon (in this process) and a real bridge with its Modbus server, polled by pymodbus."""
    sources = []

    def losing(source):
        sources.append(_LosingSource(source))
        return sources[0]

    run = Running(_base(tiny_model_dir, calibrated, line_images, camera="line1", **{
        "source.timeout_s": 0.2, "parts.timeout_s": 1.0}), reliable=True, source_wrapper=losing)
    port = free_port()
    link = CameraLink("line1", run.endpoint, run.config.publish.reliable_endpoint)
    with Bridge([link], [ModbusServer(ModbusServerConfig(listen=f"127.0.0.1:{port}"))]) as bridge:
        bridge.start()
        plc = _Plc(port)
        try:
            wait_for(lambda: (w := plc.block()) and w[R.STATUS] & R.HEALTHY, "healthy")
            seq = 0

            def hand_over(part: int, trigger: int) -> None:
                assert not plc.client.write_registers(R.CMD_PART_ID, [*R._words(part, 2), trigger],
                                                      device_id=1).isError()
                wait_for(lambda: plc.block()[R.TRIGGER_ACK] == trigger, f"part {part} armed")

            def next_decision() -> list[int]:
                nonlocal seq
                words = wait_for(lambda: (w := plc.block()) and R.read_number(w, R.SEQ, 2) > seq and w, "a decision")
                seq = R.read_number(words, R.SEQ, 2)
                return words

            hand_over(201, 1)
            sources[0].deliver()
            first = next_decision()
            hand_over(202, 2)
            sources[0].lose()  # 202's frame never arrives
            missing = next_decision()
            hand_over(203, 3)
            sources[0].deliver()
            third = next_decision()
        finally:
            plc.client.close()
        states = bridge.states()["line1"]
    run.daemon.signals.request_stop()
    assert run.collect_until_stopped() == 0
    assert R.read_number(first, R.PART_ID, 2) == 201 and first[R.VERDICT] in (1, 2)
    assert R.read_number(missing, R.PART_ID, 2) == 202 and missing[R.VERDICT] == 3
    assert missing[R.FAULT_CODE] == 9 and R.read_number(missing, R.FRAME_ID, 4) == 2**64 - 1  # part_missing, no frame
    assert missing[R.STATUS] & R.HEALTHY, "one part's fault must not stop the line"
    assert R.read_number(third, R.PART_ID, 2) == 203 and third[R.VERDICT] in (1, 2)
    assert R.read_number(third, R.FRAME_ID, 4) == 2  # the frame after the lost one, with its own part id
    assert states.counts["fault"] == 1
    decisions = run.of(wire.Decision)
    assert [(d.part_id, d.frame_id) for d in decisions] == [("201", 0), ("202", wire.NO_FRAME), ("203", 2)]
    assert decisions[1].reason.startswith("part_missing: no frame for part '202' within 1 s")


class _ConsumingPlc:
    """A protocol adapter whose PLC consumes and acknowledges each result the moment it is shown."""

    name = "consuming-plc"
    consuming = True

    def start(self, cameras, controls):
        self.controls = controls

    def deliver(self, decision, state):
        if self.consuming:
            self.controls.acknowledge_result(decision.camera, decision.seq)

    def show(self, state):
        pass

    def close(self):
        pass


def test_a_result_acknowledged_as_soon_as_it_is_shown_is_never_counted_late():
    """The acknowledgement can reach the bridge before the decision has gone through every protocol:
    the result is due from its receipt, so that acknowledgement counts."""
    from tests.integration.bridge_parts import FakeCamera

    camera, plc = FakeCamera("cam1"), _ConsumingPlc()
    try:
        with Bridge([CameraLink("cam1", camera.endpoint, camera.reliable)], [plc],
                    result_ack_timeout_s=0.2) as bridge:
            bridge.start()
            wait_for(lambda: bridge.states()["cam1"].healthy, "healthy")
            sent = [camera.decide("ok") for _ in range(5)]
            wait_for(lambda: camera.acked() == len(sent), "every decision acknowledged to the daemon")
            wait_for(lambda: bridge.states()["cam1"].acked_seq == sent[-1].seq, "the PLC's last acknowledgement")
            plc.consuming = False
            camera.decide("ok")  # one the PLC does not acknowledge: counted, so the clock does run
            wait_for(lambda: bridge.states()["cam1"].late_results >= 1, "a late result")
            assert bridge.states()["cam1"].late_results == 1
    finally:
        camera.close()
