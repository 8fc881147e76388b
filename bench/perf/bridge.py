"""Latency from a daemon's decision to the value visible on each of the bridge's protocols, on loopback.

    .venv/bin/python -m bench.perf.bridge [--frames 2000] [--rate 200] [--cameras 4] [--reject-path-rates 50,200]

`hlgfa bridge` runs as its own process, as in production. This process plays the camera daemons
(edge.transport.publisher, what `hlgfa run` publishes with; heartbeats every 0.2 s) and the counterparts:

* modbus-server: a PLC polling the camera's 32-register block back to back (pymodbus client); a
  decision is visible when its seq is in the block read.
* modbus-client: a pymodbus server as the PLC; visible when the bridge's FC16 write arrives.
* opcua: an asyncua client subscribed to the ResultReady events (publishing interval 10 ms).
* mqtt: a paho subscriber (QoS 1) through Mosquitto.

Latency = host wall clock at the counterpart − the decision's `wall_ns` (stamped by the publisher as
it sends). One camera, decisions at `--rate` per second, one protocol at a time. Then the load run:
`--cameras` daemons at `--rate` each into one bridge serving Modbus server + MQTT, counting decisions
not acknowledged to the daemons or missing at the MQTT subscriber. Last, the fail-safe bound: time
from a daemon's last heartbeat to "not healthy" on Modbus, OPC UA and MQTT (heartbeats every 0.2 s,
so 3 missed periods = 0.6 s; the counterparts poll every ~2 ms). And the reject path at each of
`--reject-path-rates` parts/s, every decision a reject: decision → the PLC's reject coil set (the bridge as
Modbus client: its FC5 write arriving at the PLC), and decision → ResultReady event at an OPC UA client.
"""

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.harness import ROOT, percentile
from edge.bridge import registers as R
from edge.bridge.opcua import MV_NAMESPACE, NAMESPACE
from tests.integration.bridge_parts import (  # the same real counterparts as the tests
    FakeCamera, Mosquitto, MqttRecorder, RecordingPlc, free_port, wait_for)


def _bridge(directory: Path, cameras: list, sections: str) -> subprocess.Popen:
    config = directory / "bridge.toml"
    config.write_text("".join(f'[[cameras]]\nname = "{c.camera}"\nconnect = "{c.endpoint}"\nreliable = "{c.reliable}"\n\n'
                              for c in cameras) + sections)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "edge.cli", "--log-level", "WARNING", "bridge", "--config",
                             str(config)], cwd=ROOT, env=env, stderr=(directory / "bridge.log").open("w"))


def _drive(cameras: list, frames: int, rate: float, verdict=lambda i: "reject" if i % 10 == 0 else "ok") -> dict:
    """Decisions at `rate`/s per camera (all cameras in step); returns (camera, seq) → wall_ns."""
    sent = {}
    period = 1.0 / rate
    start = time.monotonic()
    for i in range(frames):
        for camera in cameras:
            decision = camera.decide(verdict(i))
            sent[(camera.camera, decision.seq)] = decision.wall_ns
        delay = start + (i + 1) * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return sent


def _summary(latencies_ns: list, sent: int) -> dict:
    ms = np.array(latencies_ns, dtype=np.float64) / 1e6
    return {"decisions": sent, "seen": len(ms), "p50_ms": percentile(ms, 50, 2),
            "p99_ms": percentile(ms, 99, 2), "max_ms": round(float(ms.max()), 2)}


def _wait_healthy(check) -> None:
    wait_for(check, "the camera healthy through the bridge", timeout_s=120)


def bench_modbus_server(directory: Path, frames: int, rate: float) -> dict:
    from pymodbus.client import ModbusTcpClient

    camera = FakeCamera("cam1")
    port = free_port()
    bridge = _bridge(directory, [camera], f'[modbus_server]\nlisten = "127.0.0.1:{port}"\n')
    seen: dict[int, int] = {}
    stop = threading.Event()
    plc = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
    try:
        _wait_healthy(lambda: plc.connect() and (plc.read_holding_registers(0, count=R.BLOCK).registers[R.STATUS]
                                                 & R.HEALTHY))

        def poll():
            while not stop.is_set():
                words = plc.read_holding_registers(0, count=R.BLOCK).registers
                now = time.time_ns()
                seen.setdefault(R.read_number(words, R.SEQ, 2), now)

        poller = threading.Thread(target=poll)
        poller.start()
        sent = _drive([camera], frames, rate)
        wait_for(lambda: max(seen) >= frames, "the last decision polled")
        stop.set()
        poller.join()
    finally:
        stop.set()
        plc.close()
        bridge.terminate()
        bridge.wait(30)
        camera.close()
    latencies = [seen[seq] - sent[("cam1", seq)] for seq in seen if ("cam1", seq) in sent]
    return _summary(latencies, len(sent))


def bench_modbus_client(directory: Path, frames: int, rate: float, coil: bool = False) -> dict:
    """The bridge as Modbus client writing into a pymodbus server standing in for the PLC: a decision is
    there when its block's FC16 write arrives; with `coil`, every decision is a reject and it is there
    when the FC5 write that sets the reject coil after its block arrives (decision → reject coil set)."""
    camera = FakeCamera("cam1")
    plc = RecordingPlc()
    seen: dict[int, int] = {}

    def written():
        block_seq = None
        for (code, _, values), at in zip(list(plc.writes), list(plc.write_times)):
            if code == 16:
                block_seq = R.read_number(values, R.SEQ, 2)
                if not coil:
                    seen.setdefault(block_seq, at)
            elif coil and code == 5 and values[0] and block_seq:
                seen.setdefault(block_seq, at)
        return seen and max(seen) >= frames

    bridge = _bridge(directory, [camera], f'[modbus_client]\nplc = "127.0.0.1:{plc.port}"\nreject_coil = 0\n'
                                          + ("pulse_ms = 5\n" if coil else ""))
    try:
        _wait_healthy(lambda: any(b[R.STATUS] & R.HEALTHY for b in plc.blocks(0)))
        sent = _drive([camera], frames, rate, **({"verdict": lambda i: "reject"} if coil else {}))
        wait_for(written, "the last decision written")
    finally:
        bridge.terminate()
        bridge.wait(30)
        plc.close()
        camera.close()
    latencies = [seen[seq] - sent[("cam1", seq)] for seq in seen if ("cam1", seq) in sent]
    return _summary(latencies, len(sent))


def bench_opcua(directory: Path, frames: int, rate: float) -> dict:
    camera = FakeCamera("cam1")
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/hlgfa/"
    bridge = _bridge(directory, [camera], f'[opcua]\nendpoint = "{endpoint}"\nsecurity = ["None"]\n'
                                          "allow_anonymous = true\n")
    seen: dict[int, int] = {}
    result: dict = {}

    class Handler:
        def event_notification(self, event):
            seen.setdefault(int(event.Seq), time.time_ns())

    async def client_side():
        from asyncua import Client

        deadline = time.monotonic() + 120
        while True:
            try:
                client = Client(endpoint, timeout=10)
                await client.connect()
                break
            except (OSError, asyncio.TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        try:
            idx = await client.get_namespace_index(NAMESPACE)
            cam = await client.nodes.objects.get_child([f"{idx}:HLGFA", f"{idx}:cam1"])
            healthy = await cam.get_child(f"{idx}:Healthy")
            while not await healthy.read_value():
                await asyncio.sleep(0.05)
            subscription = await client.create_subscription(10, Handler())
            mv = await client.get_namespace_index(MV_NAMESPACE)
            event_type = await client.nodes.base_event_type.get_child(
                [f"{mv}:ResultReadyEventType", f"{idx}:HlgfaResultReadyEventType"])
            await subscription.subscribe_events(cam, event_type)
            await asyncio.sleep(1.0)
            sent = await asyncio.to_thread(_drive, [camera], frames, rate)
            while not seen or max(seen) < frames:
                await asyncio.sleep(0.05)
            result["sent"] = sent
        finally:
            await client.disconnect()

    try:
        asyncio.run(client_side())
    finally:
        bridge.terminate()
        bridge.wait(30)
        camera.close()
    sent = result["sent"]
    latencies = [seen[seq] - sent[("cam1", seq)] for seq in seen if ("cam1", seq) in sent]
    return _summary(latencies, len(sent))


class _TimedRecorder(MqttRecorder):
    def __init__(self, *args, **kwargs):
        self.arrived: list[tuple[str, int, int]] = []  # (camera, seq, wall_ns at arrival)
        super().__init__(*args, **kwargs)
        on_message = self.client.on_message

        def timed(client, userdata, message):
            if message.topic.endswith("/decision"):
                body = json.loads(message.payload)
                self.arrived.append((body["camera"], body["seq"], time.time_ns()))
            on_message(client, userdata, message)

        self.client.on_message = timed


def bench_mqtt(directory: Path, frames: int, rate: float, cameras: int = 1, modbus: bool = False) -> dict:
    broker = Mosquitto(directory)
    recorder = _TimedRecorder(broker.port, "hlgfa/bench/#", client_id=f"bench-{cameras}")
    daemons = [FakeCamera(f"cam{i + 1}") for i in range(cameras)]
    sections = f'[mqtt]\nbroker = "127.0.0.1:{broker.port}"\nbridge_id = "bench"\n'
    if modbus:
        sections += f'[modbus_server]\nlisten = "127.0.0.1:{free_port()}"\n'
    bridge = _bridge(directory, daemons, sections)
    try:
        _wait_healthy(lambda: {h["camera"] for h in recorder.payloads("/health") if h["healthy"]}
                      >= {d.camera for d in daemons})
        sent = _drive(daemons, frames, rate)
        wait_for(lambda: all(d.acked() >= frames for d in daemons), "every decision acknowledged", timeout_s=300)
        wait_for(lambda: len(recorder.arrived) >= len(sent), "every decision at the subscriber", timeout_s=60)
        unacked = sum(frames - d.acked() for d in daemons)
        evicted = sum(d.publisher.reliable_stats()["evicted"] for d in daemons)
    finally:
        bridge.terminate()
        bridge.wait(30)
        recorder.close()
        for daemon in daemons:
            daemon.close()
        broker.stop()
    arrived = {(camera, seq): at for camera, seq, at in reversed(recorder.arrived)}
    out = _summary([at - sent[key] for key, at in arrived.items() if key in sent], len(sent))
    out.update(missing=len(set(sent) - set(arrived)), duplicates=len(recorder.arrived) - len(arrived),
               unacknowledged=unacked, evicted=evicted)
    return out


def bench_failsafe(directory: Path, repeats: int = 5, period_s: float = 0.2) -> dict:
    """Time from a daemon's last heartbeat to "not healthy" on the Modbus server, OPC UA and MQTT at once
    (one bridge with all three); a fresh daemon each round (its heartbeats stop as a killed daemon's do)."""
    from asyncua.sync import Client
    from pymodbus.client import ModbusTcpClient

    broker = Mosquitto(directory)
    recorder = MqttRecorder(broker.port, "hlgfa/bench/+/health", client_id="bench-failsafe")
    times: dict[str, list] = {"modbus-server": [], "opcua": [], "mqtt": []}
    for round_ in range(repeats):
        camera = FakeCamera(f"cam{round_}", period_s=period_s)
        port, endpoint = free_port(), f"opc.tcp://127.0.0.1:{free_port()}/hlgfa/"
        bridge = _bridge(directory, [camera], f'[modbus_server]\nlisten = "127.0.0.1:{port}"\n'
                                              f'[opcua]\nendpoint = "{endpoint}"\nsecurity = ["None"]\n'
                                              f'allow_anonymous = true\n[mqtt]\nbroker = "127.0.0.1:{broker.port}"\n'
                                              'bridge_id = "bench"\n')
        plc = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
        try:
            _wait_healthy(lambda: plc.connect() and (plc.read_holding_registers(0, count=R.BLOCK).registers[R.STATUS]
                                                     & R.HEALTHY))
            client = wait_for(lambda: _connected(Client, endpoint), "OPC UA connected", timeout_s=60)
            idx = client.get_namespace_index(NAMESPACE)
            healthy = client.nodes.objects.get_child([f"{idx}:HLGFA", f"{idx}:{camera.camera}", f"{idx}:Healthy"])
            wait_for(lambda: healthy.read_value(), "healthy on OPC UA")
            with recorder._lock:
                recorder.messages.clear()
            camera.silence()
            last_beat = camera.last_beat_ns
            pending = set(times)
            while pending:
                now = time.time_ns()
                if "modbus-server" in pending and not (
                        plc.read_holding_registers(0, count=R.BLOCK).registers[R.STATUS] & R.HEALTHY):
                    times["modbus-server"].append(now - last_beat)
                    pending.discard("modbus-server")
                if "opcua" in pending and not healthy.read_value():
                    times["opcua"].append(now - last_beat)
                    pending.discard("opcua")
                if "mqtt" in pending and any(not h["healthy"] for h in recorder.payloads(f"{camera.camera}/health")):
                    times["mqtt"].append(now - last_beat)
                    pending.discard("mqtt")
                time.sleep(0.002)
            client.disconnect()
        finally:
            plc.close()
            bridge.terminate()
            bridge.wait(30)
            camera.close()
    recorder.close()
    broker.stop()
    return {"period_s": period_s, "misses": 3, "repeats": repeats,
            **{f"{name}_ms": [round(t / 1e6) for t in values] for name, values in times.items()}}


def _connected(client_class, endpoint: str):
    client = client_class(endpoint, timeout=10)
    try:
        client.connect()
    except (OSError, TimeoutError):
        return None
    return client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--reject-path-rates", default="50,200", metavar="R1,R2",
                        help="parts/s of the reject-path runs (decision → coil set, decision → OPC UA event)")
    parser.add_argument("--only", choices=("modbus-server", "modbus-client", "opcua", "mqtt", "load", "failsafe",
                                           "reject-path"))
    args = parser.parse_args()
    rates = [float(rate) for rate in args.reject_path_rates.split(",")]
    runs = {"modbus-server": lambda d: bench_modbus_server(d, args.frames, args.rate),
            "modbus-client": lambda d: bench_modbus_client(d, args.frames, args.rate),
            "opcua": lambda d: bench_opcua(d, args.frames, args.rate),
            "mqtt": lambda d: bench_mqtt(d, args.frames, args.rate),
            "load": lambda d: bench_mqtt(d, args.frames, args.rate, cameras=args.cameras, modbus=True),
            "failsafe": bench_failsafe,
            "reject-path": lambda d: [{"path": "decision → reject coil set (Modbus client, FC5)", "rate": rate,
                                       **bench_modbus_client(d, args.frames, rate, coil=True)} for rate in rates]
            + [{"path": "decision → ResultReady event at an OPC UA client", "rate": rate,
                **bench_opcua(d, args.frames, rate)} for rate in rates]}
    print(json.dumps({"machine": platform.machine(), "cpus": os.cpu_count(), "load_before": os.getloadavg(),
                      "frames": args.frames, "rate_per_camera": args.rate}))
    for name, run in runs.items():
        if args.only and name != args.only:
            continue
        with tempfile.TemporaryDirectory() as directory:
            result = run(Path(directory))
        for row in result if isinstance(result, list) else [result]:
            label = name if name != "load" else f"load: {args.cameras} cameras, modbus-server + mqtt"
            print(json.dumps({"protocol": label, **row, "load_after": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
