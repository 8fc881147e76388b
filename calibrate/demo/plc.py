"""The demo's PLC step: `hlgfa run` on the replay → `hlgfa bridge` → the verdicts read back over Modbus
TCP and OPC UA, as a PLC would; then the daemon stops and the healthy bit drops on both.

Needs the `bridge` extra (pymodbus, asyncua); without it the step says so and is skipped.
"""

import asyncio
import logging
import subprocess
import sys
import time
from pathlib import Path

from calibrate.demo.processes import DEMO_CAMERA, free_port

FRAMES = 40  # enough to see verdicts change; the full replay was judged in the step before


def _opcua_read(endpoint: str, names: tuple[str, ...]) -> dict | None:
    from asyncua import Client

    from edge.bridge.opcua import NAMESPACE

    async def read():
        async with Client(endpoint, timeout=5) as client:
            idx = await client.get_namespace_index(NAMESPACE)
            cam = await client.nodes.objects.get_child([f"{idx}:HLGFA", f"{idx}:{DEMO_CAMERA}"])
            return {name: await (await cam.get_child(f"{idx}:{name}")).read_value() for name in names}

    try:
        return asyncio.run(read())
    except (OSError, asyncio.TimeoutError):
        return None  # the server is still starting


def plc_step(out: Path, model: Path, onnx_path: Path, thresholds: Path, line_rate: float, replayed: int) -> int:
    frames = min(FRAMES, replayed)
    try:
        from pymodbus.client import ModbusTcpClient
        from pymodbus.exceptions import ModbusException
    except ImportError:
        print("  skipped: the PLC bridge needs the `bridge` extra (pip install -c constraints.txt '.[bridge]')")
        return 0
    from edge.bridge import registers as R
    from edge.bridge.health import REASONS

    reasons = {code: name for name, code in REASONS.items()}
    publish, reliable = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    modbus_port, opcua = free_port(), f"opc.tcp://127.0.0.1:{free_port()}/hlgfa/"
    log = (out / "bridge.log").open("w")
    bridge = subprocess.Popen([sys.executable, "-m", "edge.cli", "--log-level", "WARNING", "bridge",
                               "--camera", DEMO_CAMERA, "--connect", publish, "--reliable", reliable,
                               "--modbus-server", f"127.0.0.1:{modbus_port}", "--opcua-server", opcua], stderr=log)
    plc = ModbusTcpClient("127.0.0.1", port=modbus_port, timeout=5)
    print(f"  bridge: Modbus TCP server 127.0.0.1:{modbus_port}, OPC UA {opcua} (log: {out / 'bridge.log'})")
    # the polls below expect refusals while the bridge starts; the clients' own logs would drown the output
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    def modbus_block():
        try:
            return plc.read_holding_registers(0, count=R.BLOCK).registers if plc.connect() else None
        except ModbusException:
            return None

    words = None
    daemon = None
    try:
        deadline = time.monotonic() + 120
        while modbus_block() is None or _opcua_read(opcua, ("Healthy",)) is None:
            if time.monotonic() > deadline or bridge.poll() is not None:
                print(f"  the bridge did not come up; see {out / 'bridge.log'}")
                return 1
            time.sleep(0.5)
        # The bridge first: a daemon that ends before any bridge connected takes its decisions with it.
        daemon = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "--log-level", "WARNING", "run", "--camera", DEMO_CAMERA, "--model",
             str(model), "--thresholds", str(thresholds), "--source", f"folder:{out / 'data' / 'replay'}",
             "--max-frames", str(frames), "--publish", publish, "--reliable", reliable, "--backend", "onnxruntime",
             "--onnx", str(onnx_path), "--set", f"source.fps={line_rate}"])
        deadline = time.monotonic() + 120 + frames / line_rate
        while time.monotonic() < deadline:
            time.sleep(1.0)
            words = modbus_block()
            values = _opcua_read(opcua, ("Healthy", "Verdict", "Seq", "Reason"))
            if words is None or values is None:
                continue
            counts = [R.read_number(words, offset, 2) for offset in (R.COUNT_OK, R.COUNT_REJECT, R.COUNT_FAULT)]
            print(f"  Modbus: healthy {words[R.STATUS] & R.HEALTHY} verdict {words[R.VERDICT]} "
                  f"seq {R.read_number(words, R.SEQ, 2):3d} ok/reject/fault {counts} reason "
                  f"{reasons[words[R.REASON]] or '-'} | OPC UA: Healthy {values['Healthy']} "
                  f"Verdict {values['Verdict'] or '-'} Seq {values['Seq']}", flush=True)
            if daemon.poll() is not None and not words[R.STATUS] & R.HEALTHY:
                break
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
        if daemon is not None:
            daemon.wait(60)
        plc.close()
        bridge.terminate()
        bridge.wait(30)
        log.close()
    seen = 0 if words is None else sum(R.read_number(words, offset, 2) for offset in
                                       (R.COUNT_OK, R.COUNT_REJECT, R.COUNT_FAULT))
    stopped = words is not None and not words[R.STATUS] & R.HEALTHY
    print(f"\n  {seen}/{frames} decisions counted by the PLC side; daemon stopped → healthy bit "
          f"{'0 (the line would stop)' if stopped else 'still 1 (wrong)'}")
    return 0 if seen == frames and stopped and daemon.returncode == 0 else 1
