"""End to end, as on a line: `hlgfa run` on a replay (its own process) → `hlgfa bridge` (its own process,
Modbus server + OPC UA + MQTT through Mosquitto) → a Modbus poller, an OPC UA client and an MQTT
subscriber. Every decision arrives in order, none lost, none duplicated; a killed daemon is unhealthy
on every protocol within the bound; a killed bridge is "offline" on MQTT through its Last Will."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("pymodbus")
pytest.importorskip("paho.mqtt")
pytest.importorskip("asyncua")

from edge.bridge import registers as R  # noqa: E402
from edge.bridge.health import REASONS  # noqa: E402
from edge.bridge.opcua import NAMESPACE  # noqa: E402
from tests.integration.bridge_parts import Mosquitto, MqttRecorder, free_port, wait_for  # noqa: E402
from tests.integration.test_daemon import (  # noqa: E402,F401 - fixtures are found by name
    ROOT, bare_backend, calibrated, line_images, onnx_file)

PERIOD_S = 0.5


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}


def _hlgfa(log, *args: str) -> subprocess.Popen:
    """`hlgfa ARGS` with its stderr in the file `log` (a pipe nobody reads until the end would fill
    and block the process on a log line)."""
    process = subprocess.Popen([sys.executable, "-m", "edge.cli", *args], cwd=ROOT, env=_env(),
                               stderr=log.open("w"), text=True)
    process.log = log
    return process


async def _opcua_values(endpoint: str) -> dict:
    from asyncua import Client

    async with Client(endpoint, timeout=10) as client:
        idx = await client.get_namespace_index(NAMESPACE)
        cam = await client.nodes.objects.get_child([f"{idx}:HLGFA", f"{idx}:line1"])
        values = {}
        for name in ("Healthy", "Reason", "Seq", "CountOk", "CountReject", "CountFault"):
            value = await (await cam.get_child(f"{idx}:{name}")).read_data_value(raise_on_bad_status=False)
            values[name], values[f"{name}.status"] = value.Value.Value, value.StatusCode
        return values


def _stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.kill()
    process.wait(60)
    return process.log.read_text()


def test_replay_through_the_bridge_to_every_protocol_then_kill_the_daemon_then_the_bridge(
        tmp_path, tiny_model_dir, calibrated, line_images):
    broker = Mosquitto(tmp_path)
    recorder = MqttRecorder(broker.port, "hlgfa/e2e/#")
    publish, reliable = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    modbus_port, opcua = free_port(), f"opc.tcp://127.0.0.1:{free_port()}/hlgfa/"
    config = tmp_path / "bridge.toml"
    config.write_text(f"""
[[cameras]]
name = "line1"
connect = "{publish}"
reliable = "{reliable}"

[modbus_server]
listen = "127.0.0.1:{modbus_port}"

[opcua]
endpoint = "{opcua}"
security = ["None"]
allow_anonymous = true

[mqtt]
broker = "127.0.0.1:{broker.port}"
bridge_id = "e2e"
""")
    bridge = _hlgfa(tmp_path / "bridge.log", "bridge", "--config", str(config))
    daemon = _hlgfa(tmp_path / "daemon.log", "run", "--camera", "line1", "--model", str(tiny_model_dir), "--thresholds", str(calibrated["path"]),
                    "--publish", publish, "--reliable", reliable, "--backend", "onnxruntime",
                    "--onnx", str(calibrated["onnx"]), "--threads", "1", "--deadline-ms", "120000",
                    "--source", f"folder:{line_images}", "--set", "source.loop=true", "--set", "source.fps=20",
                    "--set", f"publish.heartbeat_period_s={PERIOD_S}")
    from pymodbus.client import ModbusTcpClient
    from pymodbus.exceptions import ModbusException

    plc = ModbusTcpClient("127.0.0.1", port=modbus_port, timeout=5)
    try:
        def block():
            assert bridge.poll() is None, f"the bridge exited: {bridge.log.read_text()[-3000:]}"
            assert daemon.poll() is None, f"the daemon exited: {daemon.log.read_text()[-3000:]}"
            if not plc.connected and not plc.connect():
                return None  # the bridge still starting
            try:
                response = plc.read_holding_registers(0, count=R.BLOCK, device_id=1)
            except ModbusException:
                return None
            return None if response.isError() else response.registers

        wait_for(lambda: (w := block()) and w[R.STATUS] & R.HEALTHY, "healthy on Modbus", timeout_s=120)
        wait_for(lambda: len(recorder.payloads("line1/decision")) >= 30, "30 decisions over MQTT", timeout_s=120)

        killed_at = time.monotonic()
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(30)
        words = wait_for(lambda: (w := plc.read_holding_registers(0, count=R.BLOCK, device_id=1).registers)
                         and not w[R.STATUS] & R.HEALTHY and w, "unhealthy on Modbus after the kill")
        modbus_s = time.monotonic() - killed_at
        assert words[R.REASON] == REASONS["heartbeat_timeout"]
        values = asyncio.run(_opcua_values(opcua))
        assert values["Healthy"] is False and values["Reason"] == "heartbeat_timeout"
        assert values["Healthy.status"].is_good()  # the bridge's own judgement; the daemon's values are stale:
        assert values["Seq.status"].is_uncertain() and values["CountOk.status"].is_bad()
        wait_for(lambda: any(h["reason"] == "heartbeat_timeout" for h in recorder.payloads("line1/health")),
                 "unhealthy on MQTT")
        mqtt_s = time.monotonic() - killed_at
        # 3 periods plus the bridge's 50 ms tick; the slack is for a loaded 2-core machine
        assert modbus_s < 3 * PERIOD_S + 2.0 and mqtt_s < 3 * PERIOD_S + 3.0, (modbus_s, mqtt_s)

        decisions = recorder.payloads("line1/decision")
        seqs = [d["seq"] for d in decisions]
        assert seqs == list(range(1, len(seqs) + 1)), "lost, duplicated or out of order"
        assert len({d["session"] for d in decisions}) == 1
        last = R.read_number(words, R.SEQ, 2)
        counts = [R.read_number(words, offset, 2) for offset in (R.COUNT_OK, R.COUNT_REJECT, R.COUNT_FAULT)]
        assert last == seqs[-1] == sum(counts), (last, seqs[-1], counts)
        assert values["Seq"] == last  # the last result, still readable as UncertainLastUsableValue
        assert [sum(d["verdict"] == v for d in decisions) for v in ("ok", "reject", "fault")] == counts

        bridge.send_signal(signal.SIGKILL)
        bridge.wait(30)
        wait_for(lambda: recorder.payloads("e2e/status")[-1:] == ["offline"], "the Last Will", timeout_s=60)
    finally:
        plc.close()
        recorder.close()
        _stop(daemon)
        bridge_err = _stop(bridge)
        broker.stop()
    assert "Traceback" not in bridge_err, bridge_err
