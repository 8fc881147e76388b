"""The demo's PLC step: `hlgfa run` on the replay → `hlgfa bridge` → a PLC over Modbus TCP that hands over a
part id for each part and reads the verdict back on that part id, as a line would; the replay's unusable
frames reach the PLC as faulted parts (diverted) while the healthy bit stays 1; then the daemon stops and
the healthy bit drops. OPC UA shows the same.

The daemon reads a frame only once the PLC handed over its part (`parts.acquire = "per_part"`): the
replay advances part by part, like a camera triggered by the part's arrival.

Needs the `bridge` extra (pymodbus, asyncua); without it the step says so and is skipped.
"""

import asyncio
import logging
import subprocess
import sys
import time
from pathlib import Path

from calibrate.demo.processes import DEMO_CAMERA, free_port

FIRST_PART = 1001  # part ids 1001, 1002, ... for frames 0, 1, ...
PRINT_EVERY_S = 1.0


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


def plc_step(out: Path, model: Path, onnx_path: Path, thresholds: Path, replayed: int) -> int:
    try:
        from pymodbus.client import ModbusTcpClient
        from pymodbus.exceptions import ModbusException
    except ImportError:
        print("  skipped: the PLC bridge needs the `bridge` extra (pip install -c constraints.txt '.[bridge]')")
        return 0
    from edge.bridge import registers as R
    from edge.bridge.health import FAULT_CODES, REASONS

    reasons = {code: name for name, code in REASONS.items()}
    kinds = {code: name for name, code in FAULT_CODES.items()}
    replay = sorted(p.name for p in (out / "data" / "replay").iterdir())
    unusable = {index for index, name in enumerate(replay) if "_unusable_" in name}
    publish, reliable = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    modbus_port, opcua = free_port(), f"opc.tcp://127.0.0.1:{free_port()}/hlgfa/"
    log = (out / "bridge.log").open("w")
    bridge = subprocess.Popen([sys.executable, "-m", "edge.cli", "--log-level", "WARNING", "bridge",
                               "--camera", DEMO_CAMERA, "--connect", publish, "--reliable", reliable,
                               "--modbus-server", f"127.0.0.1:{modbus_port}", "--opcua-server", opcua], stderr=log)
    plc = ModbusTcpClient("127.0.0.1", port=modbus_port, timeout=5)
    print(f"  bridge: Modbus TCP server 127.0.0.1:{modbus_port}, OPC UA {opcua} (log: {out / 'bridge.log'})")
    print(f"  the PLC hands over part ids {FIRST_PART}..{FIRST_PART + replayed - 1}, one per part, and reads each "
          "verdict back on its part id")
    # the polls below expect refusals while the bridge starts; the clients' own logs would drown the output
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    def modbus_block():
        try:
            return plc.read_holding_registers(0, count=R.BLOCK).registers if plc.connect() else None
        except ModbusException:
            return None

    def wait(predicate, seconds: float):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            words = modbus_block()
            if words is not None:
                polls.append(bool(words[R.STATUS] & R.HEALTHY))
                if predicate(words):
                    return words
            time.sleep(0.005)
        return None

    polls: list[bool] = []  # the healthy bit at every read while the daemon ran
    round_trips = 0
    faulted: list[tuple[int, int, str]] = []  # (frame, part, fault kind)
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
             "--max-frames", str(replayed), "--publish", publish, "--reliable", reliable, "--backend", "onnxruntime",
             "--onnx", str(onnx_path), "--set", "parts.acquire=per_part"])
        if wait(lambda w: w[R.STATUS] & R.HEALTHY, 120) is None:
            print("  the daemon did not become healthy")
            return 1
        polls.clear()
        printed = 0.0
        for frame in range(replayed):
            part, trigger = FIRST_PART + frame, (frame + 1) & 0xFFFF
            seq = R.read_number(modbus_block(), R.SEQ, 2)
            plc.write_registers(R.CMD_PART_ID, [*R._words(part, 2), trigger])
            words = wait(lambda w: (R.read_number(w, R.SEQ, 2) > seq and not w[R.STATUS] & R.PART_PENDING)
                         or (w[R.TRIGGER_ERROR] and w[R.TRIGGER_ACK] != trigger), 60)
            if words is None or words[R.TRIGGER_ACK] != trigger:
                error = "no answer" if words is None else {v: k for k, v in R.TRIGGER_ERRORS.items()}[words[R.TRIGGER_ERROR]]
                print(f"  part {part}: not armed ({error}); a line would divert it")
                break
            round_trips += R.read_number(words, R.PART_ID, 2) == part
            if words[R.VERDICT] == 3:
                faulted.append((R.read_number(words, R.FRAME_ID, 4), part, kinds[words[R.FAULT_CODE]]))
            if frame == replayed // 2 and (values := _opcua_read(opcua, ("Healthy", "Verdict", "PartId", "Seq"))):
                print(f"  OPC UA: Healthy {values['Healthy']} Verdict {values['Verdict']} PartId {values['PartId']} "
                      f"Seq {values['Seq']}", flush=True)
            if time.monotonic() - printed >= PRINT_EVERY_S or frame in unusable:
                printed = time.monotonic()
                counts = [R.read_number(words, offset, 2) for offset in (R.COUNT_OK, R.COUNT_REJECT, R.COUNT_FAULT)]
                note = f"  <- unusable frame: {kinds[words[R.FAULT_CODE]]}" if frame in unusable else ""
                print(f"  Modbus: part {R.read_number(words, R.PART_ID, 2)} frame {R.read_number(words, R.FRAME_ID, 4):3d} "
                      f"verdict {words[R.VERDICT]} healthy {words[R.STATUS] & R.HEALTHY} ok/reject/fault {counts} "
                      f"reason {reasons[words[R.REASON]] or '-'}{note}", flush=True)
        healthy_throughout = bool(polls) and all(polls)
        words = wait(lambda w: not w[R.STATUS] & R.HEALTHY, 60)  # the daemon ends after the replay
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
        if daemon is not None:
            daemon.wait(60)
        plc.close()
        bridge.terminate()
        bridge.wait(30)
        log.close()
    stopped = words is not None and not words[R.STATUS] & R.HEALTHY
    unusable_faulted = sorted(frame for frame, _, kind in faulted if kind == "frame_quality" and frame in unusable)
    print(f"\n  {round_trips}/{replayed} decisions came back on their own part id")
    print(f"  {len(faulted)} parts faulted and diverted ({', '.join(f'part {p} {k}' for _, p, k in faulted) or 'none'}); "
          f"the {len(unusable)} unusable frames among them: {len(unusable_faulted)}/{len(unusable)}")
    print(f"  healthy bit while the daemon ran: {'1 at every one of' if healthy_throughout else '0 at some of'} "
          f"{len(polls)} reads (a faulted part never stops the line)")
    print(f"  daemon stopped → healthy bit {'0 (the line would stop)' if stopped else 'still 1 (wrong)'}")
    ok = (round_trips == replayed and healthy_throughout and len(unusable_faulted) == len(unusable) and stopped
          and daemon.returncode == 0)
    return 0 if ok else 1
