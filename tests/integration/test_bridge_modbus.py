"""The bridge against real parts on loopback: camera publishers (edge.transport.publisher, as `hlgfa run` uses),
its Modbus server polled by a pymodbus client, its Modbus client writing into a pymodbus server."""

import time

import pytest

pytest.importorskip("pymodbus")

from edge.bridge import registers as R  # noqa: E402
from edge.bridge.core import Bridge, CameraLink  # noqa: E402
from edge.bridge.health import REASONS  # noqa: E402
from edge.bridge.modbus import ModbusClient, ModbusClientConfig, ModbusServer, ModbusServerConfig  # noqa: E402
from tests.integration.bridge_parts import FakeCamera, RecordingPlc, free_port, wait_for  # noqa: E402


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
                             plc.client.write_coil(0, True, device_id=1)):
                assert response.isError() and response.exception_code == 2
            assert server.refused_writes == 3
            outside = plc.client.read_holding_registers(R.BLOCK, count=1, device_id=1)
            assert outside.isError() and outside.exception_code == 2
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
        time.sleep(0.5)  # the daemon resends (ack_timeout 0.25 s): give a wrong ack the chance to happen
        assert cam.acked() == 0
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
