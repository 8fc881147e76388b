"""Real counterparts for the bridge tests: a camera daemon's publisher on loopback that beats on its
own, a Modbus PLC (a pymodbus server) that records every write, and waiting helpers."""

import asyncio
import getpass
import os
import socket
import threading
import time

import pytest

from edge.inspection.parts import PartsConfig, PartTracker
from edge.transport import wire
from edge.transport.publisher import PublishConfig
from edge.transport.publisher import Publisher
from tests.ports import free_port

WAIT_S = 30.0  # generous on a loaded 2-core machine; a hang fails instead of blocking for ever


def wait_for(predicate, what: str, timeout_s: float = WAIT_S, interval_s: float = 0.01):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def wait_resends_or_ack(camera: "FakeCamera", acked: int, resends: int, what: str) -> None:
    """Until the daemon has resent `resends` more decisions than now, or acknowledged more than `acked`.
    A resend is a decision that went a whole ack timeout unacknowledged, so "still `acked`" then means
    something however slow the machine; a wrong ACK ends the wait at once, and the caller's check of
    `acked()` fails on it instead of this timing out."""
    resent = camera.publisher.reliable_stats()["resent"]
    wait_for(lambda: camera.acked() > acked or camera.publisher.reliable_stats()["resent"] >= resent + resends, what)


class FakeCamera:
    """A real `Publisher` (what `hlgfa run` publishes with) and a thread that sends its heartbeats
    every `period_s` until `silence()`: a daemon without a model, for tests of what the bridge does.
    Part ids the bridge hands over are armed in a real `PartTracker`, and `decide` binds the armed one
    to its frame, as the daemon's ledger does."""

    def __init__(self, camera: str, period_s: float = 0.2, endpoint: str | None = None,
                 reliable: str | None = None, reliable_capacity: int = 1000, decide_when_armed: bool = False):
        """`decide_when_armed`: decide each part as soon as it is armed, so its answer and its decision
        reach the bridge back to back (a camera triggered by the part's hand-over, with no latency)."""
        self.endpoint = endpoint or f"tcp://127.0.0.1:{free_port()}"
        self.reliable = reliable or f"tcp://127.0.0.1:{free_port()}"
        self.parts = PartTracker(PartsConfig())

        def arm(request):
            error = self.parts.arm(request)
            if error is None and decide_when_armed:
                self.decide("ok")
            return error

        self.publisher = Publisher(camera, PublishConfig(endpoint=self.endpoint, reliable_endpoint=self.reliable,
                                                         heartbeat_period_s=period_s,
                                                         reliable_capacity=reliable_capacity), on_part=arm)
        self.camera = camera
        self.period_s = period_s
        self.frames = 0
        self.last_beat_ns = 0
        self._quiet = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._quiet.wait(self.period_s):
            self.publisher.heartbeat(wire.Counters(frames=self.frames),
                                     source=wire.SourceStatus("delivering", 0.0))
            self.last_beat_ns = time.time_ns()

    def decide(self, verdict: str = "ok", score: float = 0.1) -> wire.Decision:
        self.frames += 1
        now = time.monotonic_ns()
        decision = wire.Decision(self.camera, self.frames, verdict,
                                 {"ok": "", "reject": "test", "fault": "frame_quality: test"}[verdict],
                                 None if verdict == "fault" else score, None if verdict == "fault" else 0.5,
                                 0, now, now, 0.0, "model", "t1", wall_ns=time.time_ns(), part_id=self.parts.bind())
        return self.publisher.publish_decision(decision)

    def acked(self) -> int:
        stats = self.publisher.reliable_stats()
        return stats["acked"] if stats else 0

    def silence(self) -> None:
        """Stop beating without a word, as a hung or killed daemon does."""
        self._quiet.set()
        self._thread.join()

    def close(self) -> None:
        self.silence()
        self.publisher.close()


class RecordingPlc:
    """A pymodbus TCP server standing in for a PLC: holding registers and coils, every write recorded
    as (function code, address, values) in order."""

    def __init__(self, port: int | None = None, size: int = 1024):
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        self.port = port or free_port()
        self.writes: list[tuple[int, int, list]] = []
        self.write_times: list[int] = []  # wall clock ns of each write, for latency benchmarks
        self._lock = threading.Lock()
        device = SimDevice(id=0, simdata=([SimData(0, count=size, datatype=DataType.BITS)],
                                          [SimData(0, count=size, datatype=DataType.BITS)],
                                          [SimData(0, count=size, datatype=DataType.REGISTERS)],
                                          [SimData(0, count=size, datatype=DataType.REGISTERS)]),
                           action=self._record)
        started = threading.Event()

        def serve():
            self._loop = asyncio.new_event_loop()

            async def main():
                self._server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
                await self._server.serve_forever(background=True)
                started.set()
                await self._server.serving

            self._loop.run_until_complete(main())
            self._loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        assert started.wait(WAIT_S), "the recording PLC did not start"

    async def _record(self, function_code, start_address, address, count, current, values):
        if values is not None:
            with self._lock:
                self.writes.append((function_code, address, list(values)))
                self.write_times.append(time.time_ns())
        return None

    def blocks(self, address: int) -> list[list[int]]:
        """Every FC16 write of a block at `address`, in order."""
        with self._lock:
            return [values for code, at, values in self.writes if code == 16 and at == address]

    def coil_writes(self, coil: int) -> list[bool]:
        with self._lock:
            return [bool(values[0]) for code, at, values in self.writes if code == 5 and at == coil]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(10)
        self._thread.join(10)


MOSQUITTO = "/usr/sbin/mosquitto"


class Mosquitto:
    """A real Mosquitto broker on a free loopback port, with persistence in `directory`, so a stop and
    a start keep durable sessions and their queued messages, as a production broker does."""

    def __init__(self, directory, port: int | None = None):
        import shutil

        binary = shutil.which("mosquitto") or (MOSQUITTO if os.path.exists(MOSQUITTO) else None)
        if binary is None:
            pytest.skip("mosquitto is not installed (`make test` apt-installs it when run as root)")
        self.binary = binary
        self.port = port or free_port()
        self.config = os.path.join(str(directory), "mosquitto.conf")
        with open(self.config, "w") as file:
            # user: run as whoever runs the tests (started as root it would switch to "mosquitto" and
            # could not write its persistence into the test's directory)
            file.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                       f"persistence_location {directory}/\nautosave_interval 1\nuser {getpass.getuser()}\n")
        self.process = None
        self.start()

    def start(self) -> None:
        import subprocess

        self.process = subprocess.Popen([self.binary, "-c", self.config], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)

        def listening():
            if self.process.poll() is not None:
                raise AssertionError(f"mosquitto exited with {self.process.returncode}: {self.process.stderr.read()}")
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(listening, f"mosquitto listening on {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.communicate(timeout=WAIT_S)
        self.process = None


class MqttRecorder:
    """A durable MQTT subscriber (QoS 1, persistent session) recording (topic, payload, retained)."""

    def __init__(self, port: int, topic: str, client_id: str = "test-recorder"):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)

        def on_connect(client, userdata, flags, reason_code, properties):
            client.subscribe(topic, qos=1)

        def on_subscribe(client, userdata, mid, reason_codes, properties):
            self.subscribed.set()

        def on_message(client, userdata, message):
            with self._lock:
                self.messages.append((message.topic, message.payload, bool(message.retain)))

        self.client.on_connect, self.client.on_subscribe, self.client.on_message = on_connect, on_subscribe, on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert self.subscribed.wait(WAIT_S), "the recorder did not subscribe"

    def payloads(self, suffix: str) -> list:
        import json

        with self._lock:
            return [json.loads(p) if p[:1] == b"{" else p.decode() for t, p, _ in self.messages if t.endswith(suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
