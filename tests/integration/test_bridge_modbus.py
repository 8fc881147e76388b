"""The bridge against real parts on loopback: camera publishers (edge.transport.publisher, as `hlgfa run` uses),
its Modbus server polled by a pymodbus client, its Modbus client writing into a pymodbus server."""

import contextlib
import time

import pytest

pytest.importorskip("pymodbus")

from edge.bridge import registers as R  # noqa: E402
from edge.bridge.core import Bridge, CameraLink  # noqa: E402
from edge.bridge.health import FAULT_CODES, REASONS  # noqa: E402
from edge.bridge.modbus import ModbusClient, ModbusClientConfig, ModbusServer, ModbusServerConfig  # noqa: E402
from tests.integration.bridge_parts import (  # noqa: E402
    FakeCamera, RecordingPlc, free_port, wait_for, wait_resends_or_ack)


@pytest.fixture
def cameras():
    made = []

    def make(name, **options):
        camera = FakeCamera(name, **options)
        made.append(camera)
        return camera

    yield make
    for camera in made:
        camera.close()


def _link(camera: FakeCamera) -> CameraLink:
    return CameraLink(camera.camera, camera.endpoint, camera.reliable)


class Poller:
    """A PLC polling the bridge's Modbus server."""

    def __init__(self, port: int):
        from pymodbus.client import ModbusTcpClient

        self.client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
        assert self.client.connect()

    def block(self, index: int) -> list[int]:
        response = self.client.read_holding_registers(index * R.BLOCK, count=R.BLOCK, device_id=1)
        assert not response.isError(), response
        return response.registers

    def close(self):
        self.client.close()


def _healthy(words) -> bool:
    return bool(words[R.STATUS] & R.HEALTHY)


@contextlib.contextmanager
def _served(*cameras: FakeCamera, **options):
    """A bridge serving `cameras` on a Modbus server, and a PLC polling it, once every camera is healthy."""
    port = free_port()
    with Bridge([_link(camera) for camera in cameras], [ModbusServer(ModbusServerConfig(listen=f"127.0.0.1:{port}"))],
                **options) as bridge:
        bridge.start()
        plc = Poller(port)
        try:
            wait_for(lambda: all(_healthy(plc.block(index)) for index in range(len(cameras))), "healthy")
            yield bridge, plc
        finally:
            plc.close()


def test_server_map_shows_each_camera_and_fails_safe_when_its_daemon_goes_quiet(cameras):
    cam1, cam2 = cameras("cam1"), cameras("cam2")
    port = free_port()
    with Bridge([_link(cam1), _link(cam2)], [ModbusServer(ModbusServerConfig(listen=f"127.0.0.1:{port}"))]) as bridge:
        bridge.start()
        plc = Poller(port)
        try:
            wait_for(lambda: _healthy(plc.block(0)) and _healthy(plc.block(1)), "both cameras healthy")
            first = cam2.decide("reject", score=-1.25)
            words = wait_for(lambda: (w := plc.block(1)) and R.read_number(w, R.SEQ, 2) == first.seq and w, "decision")
            assert words[R.VERDICT] == 2 and words[R.STATUS] & R.REJECT and words[R.STATUS] & R.TOGGLE
            assert R.read_number(words, R.SCORE, 2, signed=True) == -1250
            assert R.read_number(words, R.THRESHOLD, 2, signed=True) == 500
            assert R.read_number(words, R.FRAME_ID, 4) == first.frame_id
            assert R.read_number(words, R.COUNT_REJECT, 2) == 1 and words[R.LAYOUT] == R.MAP_VERSION
            assert R.read_number(words, R.SESSION, 4) == int(cam2.publisher.session, 16)
            assert R.read_number(words, R.THRESHOLDS_VERSION, 2) == R.version_code("t1") != 0
            assert plc.block(0)[R.VERDICT] == 0  # cam1 decided nothing
            wait_for(lambda: cam2.acked() == 1, "the decision acknowledged to the daemon")

            beats = plc.block(0)[R.HEARTBEAT]
            wait_for(lambda: plc.block(0)[R.HEARTBEAT] != beats, "the heartbeat counter moving")
            silenced_at = time.monotonic()
            cam1.silence()
            wait_for(lambda: not _healthy(plc.block(0)), "cam1 unhealthy after its heartbeats stop")
            took = time.monotonic() - silenced_at
            assert plc.block(0)[R.REASON] == REASONS["heartbeat_timeout"]
            assert _healthy(plc.block(1)), "a quiet cam1 must not touch cam2"
            # 3 periods of 0.2 s; generous for a loaded machine, yet it fails a bridge that never times out
            assert took < 3 * 0.2 + 2.0, took
        finally:
            plc.close()


def test_server_refuses_writes_and_lives_on(cameras):
    cam = cameras("cam1")
    port = free_port()
    server = ModbusServer(ModbusServerConfig(listen=f"127.0.0.1:{port}"))
    with Bridge([_link(cam)], [server]) as bridge:
        bridge.start()
        plc = Poller(port)
        try:
            wait_for(lambda: _healthy(plc.block(0)), "healthy")
            for response in (plc.client.write_register(0, 0xFFFF, device_id=1),
                             plc.client.write_registers(2, [1, 2, 3], device_id=1),
                             plc.client.write_registers(R.CMD_RESULT_ACK, [0, 1, 2], device_id=1),  # one too far
                             plc.client.write_register(R.BLOCK + R.CMD_TRIGGER, 1, device_id=1)):  # no camera 1
                assert response.isError() and response.exception_code == 2
            for response in (plc.client.write_coil(0, True, device_id=1),
                             plc.client.write_coils(16, [True, False], device_id=1)):
                assert response.isError() and response.exception_code == 1  # the bits are a read-only view
            assert server.refused_writes == 5  # the write past the map pymodbus refuses before asking us
            outside = plc.client.read_holding_registers(R.BLOCK, count=1, device_id=1)
            assert outside.isError() and outside.exception_code == 2
            assert plc.block(0)[R.STATUS_WORDS:] == [0] * (R.BLOCK - R.STATUS_WORDS)  # nothing was written
            decision = cam.decide("ok")
            wait_for(lambda: R.read_number(plc.block(0), R.SEQ, 2) == decision.seq, "decisions after the garbage")
            assert _healthy(plc.block(0))
        finally:
            plc.close()


def test_daemon_restart_and_fault_clear_the_healthy_bit_on_the_map(cameras):
    cam = cameras("cam1")
    port = free_port()
    with Bridge([_link(cam)], [ModbusServer(ModbusServerConfig(listen=f"127.0.0.1:{port}"))]) as bridge:
        bridge.start()
        plc = Poller(port)
        try:
            wait_for(lambda: _healthy(plc.block(0)), "healthy")
            cam.publisher.publish_fault("source_unavailable", "camera lost")
            wait_for(lambda: plc.block(0)[R.REASON] == REASONS["fault"], "a fault shown")
            assert plc.block(0)[R.STATUS] & R.FAULT and not _healthy(plc.block(0))
            wait_for(lambda: _healthy(plc.block(0)), "healthy again once the hold time passed")

            cam.close()
            again = cameras("cam1", endpoint=cam.endpoint, reliable=cam.reliable)
            wait_for(lambda: plc.block(0)[R.REASON] == REASONS["restart"], "the restart shown")
            decision = again.decide("reject")
            wait_for(lambda: (w := plc.block(0)) and R.read_number(w, R.SESSION, 4) == int(again.publisher.session, 16)
                     and R.read_number(w, R.SEQ, 2) == decision.seq, "the new session's decision")
            wait_for(lambda: _healthy(plc.block(0)), "healthy after the restart's hold time")
        finally:
            plc.close()


def test_client_writes_every_decision_in_order_pulses_the_coil_and_acks_only_what_the_plc_took(cameras):
    """The PLC is down at first: nothing is acknowledged and the daemon keeps it all pending; once the PLC
    is up, every decision arrives once, in order, and only then is acknowledged."""
    cam = cameras("cam1")
    port = free_port()
    config = ModbusClientConfig(plc=f"127.0.0.1:{port}", base_address=100, reject_coil=7, pulse_ms=50,
                                timeout_s=0.5)
    with Bridge([_link(cam)], [ModbusClient(config)], retry_s=0.1) as bridge:
        bridge.start()
        wait_for(lambda: bridge.states()["cam1"].healthy, "healthy")
        verdicts = ["ok", "reject", "ok", "fault", "ok"] * 4
        sent = [cam.decide(verdict) for verdict in verdicts]
        wait_for(lambda: bridge.cameras["cam1"].refused["modbus-client"] >= 1, "the refusal of an absent PLC")
        wait_resends_or_ack(cam, 0, 2 * len(sent), "each decision resent twice while the PLC is absent")
        assert cam.acked() == 0, "a decision was acknowledged before the PLC took it"
        assert cam.publisher.reliable_stats()["pending"] == len(sent)

        plc = RecordingPlc(port)
        try:
            wait_for(lambda: cam.acked() == len(sent), "every decision acknowledged once the PLC took it")
            blocks = [b for b in plc.blocks(100) if R.read_number(b, R.SEQ, 2) != 0]
            seqs = [R.read_number(b, R.SEQ, 2) for b in blocks]
            # health writes repeat the last decision's seq; the decision writes are where the toggle flips
            delivered = [b for i, b in enumerate(blocks)
                         if i == 0 or (b[R.STATUS] & R.TOGGLE) != (blocks[i - 1][R.STATUS] & R.TOGGLE)]
            assert [R.read_number(b, R.SEQ, 2) for b in delivered] == [d.seq for d in sent]
            assert seqs == sorted(seqs)
            assert [b[R.VERDICT] for b in delivered] == [{"ok": 1, "reject": 2, "fault": 3}[v] for v in verdicts]
            wait_for(lambda: plc.coil_writes(7) and plc.coil_writes(7)[-1] is False, "the coil cleared after its pulse")
            assert True in plc.coil_writes(7)
        finally:
            plc.close()


def test_hlgfa_bridge_speaks_sd_notify_ready_watchdog_and_stopping(tmp_path, cameras):
    """`hlgfa bridge` as systemd runs it (Type=notify, WatchdogSec=): READY=1 once serving, WATCHDOG=1
    pings, STOPPING=1 and exit 0 on SIGTERM, with every camera shown not healthy when it stops."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    from tests.integration.test_daemon import ROOT

    cam = cameras("cam1")
    port = free_port()
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        notify.settimeout(60)
        env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000",
               "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
        env.pop("WATCHDOG_PID", None)
        process = subprocess.Popen([sys.executable, "-m", "edge.cli", "bridge", "--camera", "cam1",
                                    "--connect", cam.endpoint, "--reliable", cam.reliable,
                                    "--modbus-server", f"127.0.0.1:{port}"], cwd=ROOT, env=env,
                                   stderr=subprocess.DEVNULL)
        try:
            received = []
            while not any("WATCHDOG=1" in m for m in received):
                received.append(notify.recv(4096).decode())
            assert "READY=1" in received[0]
            plc = Poller(port)
            wait_for(lambda: _healthy(plc.block(0)), "healthy through the CLI")
            plc.close()
            process.send_signal(signal.SIGTERM)
            assert process.wait(60) == 0
            while not any("STOPPING=1" in m for m in received):
                received.append(notify.recv(4096).decode())
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_a_protocol_refusing_for_long_fills_the_backlog_then_the_daemon_evicts_and_the_camera_is_unhealthy(cameras):
    """The bridge holds at most `backlog` decisions for a refusing protocol, then stops taking more: the
    daemon's bounded buffer fills, evicts, reports reliable_buffer_full, and the camera turns unhealthy
    on every protocol (here the Modbus server) — never a silent loss."""
    cam = cameras("cam1", reliable_capacity=5)
    port = free_port()
    refusing = ModbusClient(ModbusClientConfig(plc=f"127.0.0.1:{free_port()}", timeout_s=0.2))
    with Bridge([_link(cam)], [ModbusServer(ModbusServerConfig(listen=f"127.0.0.1:{port}")), refusing],
                backlog=3, retry_s=0.1) as bridge:
        bridge.start()
        plc = Poller(port)
        try:
            wait_for(lambda: _healthy(plc.block(0)), "healthy")
            for _ in range(12):
                cam.decide("ok")
            wait_for(lambda: plc.block(0)[R.REASON] == REASONS["fault"], "unhealthy after the daemon's evictions")
            assert bridge.cameras["cam1"].pending() == 3 and cam.acked() == 0
            assert bridge.states()["cam1"].fault_code == "reliable_buffer_full"
            assert cam.publisher.reliable_stats()["evicted"] >= 1
        finally:
            plc.close()


def test_fc1_and_fc2_read_every_status_bit_the_same_from_every_start_address(cameras):
    """Bit address 16 × r + b is bit b of register r: the status word's bits read alike whatever the
    request's start address and count, with FC1 and FC2, for each camera."""
    cam1, cam2 = cameras("cam1"), cameras("cam2")
    with _served(cam1, cam2) as (_, plc):
        cam2.decide("reject")
        wait_for(lambda: plc.block(1)[R.STATUS] & R.REJECT, "cam2's reject")
        cam1.silence()  # freeze the words: cam1 goes unhealthy, then nothing changes but heartbeats
        wait_for(lambda: plc.block(0)[R.REASON] == REASONS["heartbeat_timeout"], "cam1 quiet")
        for index in (0, 1):
            status = plc.block(index)[R.STATUS]
            expected = [bool(status >> bit & 1) for bit in range(16)]
            base = index * R.BLOCK * 16
            for read in (plc.client.read_coils, plc.client.read_discrete_inputs):
                for start in range(16):
                    for count in (1, 16 - start, 24):
                        response = read(base + start, count=count, device_id=1)
                        assert not response.isError(), (read.__name__, start, count)
                        bits = response.bits[:count]
                        assert bits[:16 - start] == expected[start:start + count], (read.__name__, start, count)
            assert plc.block(index)[R.STATUS] == status, "the status word moved under the test"
        past = plc.client.read_discrete_inputs(2 * R.BLOCK * 16 - 8, count=16, device_id=1)
        assert past.isError() and past.exception_code == 2


def test_a_part_id_written_over_modbus_comes_back_on_that_parts_decision_and_results_are_acknowledged(cameras):
    cam = cameras("cam1")
    # ample time for the PLC below to acknowledge; the rules themselves: test_bridge_handshake.py
    with _served(cam, result_ack_timeout_s=3.0) as (_, plc):
        for trigger, part in enumerate((4711, 4712), start=1):
            # part id and trigger in one FC16: the bridge sees both at once
            assert not plc.client.write_registers(R.CMD_PART_ID, [*R._words(part, 2), trigger], device_id=1).isError()
            words = wait_for(lambda: (w := plc.block(0)) and w[R.TRIGGER_ACK] == trigger and w, "armed")
            assert words[R.TRIGGER_ERROR] == 0 and words[R.STATUS] & R.PART_PENDING
            assert R.read_number(words, R.CMD_PART_ID, 2) == part and words[R.CMD_TRIGGER] == trigger
            decision = cam.decide("fault" if part == 4712 else "ok")
            assert decision.part_id == str(part)
            words = wait_for(lambda: (w := plc.block(0)) and R.read_number(w, R.SEQ, 2) == decision.seq and w,
                             "the part's decision")
            assert R.read_number(words, R.PART_ID, 2) == part and not words[R.STATUS] & R.PART_PENDING
            if part == 4711:
                assert not plc.client.write_registers(R.CMD_RESULT_ACK, R._words(decision.seq, 2),
                                                      device_id=1).isError()
        # the fault (4712) diverts its part and leaves the camera healthy
        assert words[R.VERDICT] == 3 and words[R.FAULT_CODE] == FAULT_CODES["frame_quality"] and _healthy(words)
        words = wait_for(lambda: (w := plc.block(0)) and R.read_number(w, R.LATE_RESULTS, 2) >= 1 and w,
                         "the second result, never acknowledged, counted late")
        assert R.read_number(words, R.LATE_RESULTS, 2) == 1 and R.read_number(words, R.ACKED_SEQ, 2) == 1, words

        plc.client.write_register(R.CMD_PART_ID + 1, 0, device_id=1)  # part id 0 ...
        plc.client.write_register(R.CMD_TRIGGER, 3, device_id=1)       # ... is refused by the bridge itself
        wait_for(lambda: plc.block(0)[R.TRIGGER_ERROR] == R.TRIGGER_ERRORS["bad_part_id"], "part id 0 refused")
        assert plc.block(0)[R.TRIGGER_ACK] == 2


def test_a_trigger_for_a_daemon_that_stopped_answering_is_refused_not_silently_lost(cameras):
    cam = cameras("cam1")
    with _served(cam, part_answer_timeout_s=0.5) as (_, plc):
        cam.close()  # the daemon is gone; the bridge still knows its session
        plc.client.write_registers(R.CMD_PART_ID, [0, 5, 1], device_id=1)
        wait_for(lambda: plc.block(0)[R.TRIGGER_ERROR] == R.TRIGGER_ERRORS["no_answer"], "no answer reported")
        assert plc.block(0)[R.TRIGGER_ACK] == 0


def test_the_client_reads_the_plcs_command_words_and_writes_the_answer_into_the_plc(cameras):
    """Client mode with `read_commands_ms`: the PLC program puts a part id and a new trigger into its own
    registers (here a second Modbus client writes them into the recording PLC); the bridge reads them, the
    daemon arms the part, TRIGGER_ACK arrives in the PLC and the part's decision carries its id."""
    from pymodbus.client import ModbusTcpClient

    cam = cameras("cam1")
    port = free_port()
    plc = RecordingPlc(port)
    program = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
    assert program.connect()
    base = 128
    config = ModbusClientConfig(plc=f"127.0.0.1:{port}", base_address=base, reject_coil=None, timeout_s=0.5,
                                read_commands_ms=20)
    try:
        # a trigger already there when the bridge starts hands nothing over
        program.write_registers(base + R.CMD_PART_ID, [0, 7, 5], device_id=1)
        with Bridge([_link(cam)], [ModbusClient(config)]) as bridge:
            bridge.start()
            wait_for(lambda: any(b[R.STATUS] & R.HEALTHY for b in plc.blocks(base)), "healthy in the PLC")
            program.write_registers(base + R.CMD_PART_ID, [0, 4711, 6], device_id=1)
            wait_for(lambda: any(b[R.TRIGGER_ACK] == 6 for b in plc.blocks(base)), "the trigger's answer in the PLC")
            assert cam.decide("reject").part_id == "4711"
            assert not any(b[R.TRIGGER_ACK] == 5 for b in plc.blocks(base))
            assert all(len(b) == R.STATUS_WORDS for b in plc.blocks(base)), "the bridge wrote over the commands"
            wait_for(lambda: any(R.read_number(b, R.PART_ID, 2) == 4711 for b in plc.blocks(base)), "the verdict")
    finally:
        program.close()
        plc.close()


def test_a_part_decided_the_moment_it_is_armed_is_not_left_pending(cameras):
    """The daemon's answer and the part's decision arrive back to back: the answer is taken first, so
    PART_PENDING clears with the decision (a PLC waiting for it would otherwise wait for ever)."""
    cam = cameras("cam1", decide_when_armed=True)
    with _served(cam) as (bridge, plc):
        for trigger in range(1, 21):
            plc.client.write_registers(R.CMD_PART_ID, [0, 500 + trigger, trigger], device_id=1)
            words = wait_for(lambda: (w := plc.block(0)) and R.read_number(w, R.PART_ID, 2) == 500 + trigger
                             and w[R.TRIGGER_ACK] == trigger and w, f"part {500 + trigger} decided")
            wait_for(lambda: not plc.block(0)[R.STATUS] & R.PART_PENDING, f"part {500 + trigger} not pending")
        assert bridge.states()["cam1"].parts_pending == 0 and words[R.VERDICT] == 1
