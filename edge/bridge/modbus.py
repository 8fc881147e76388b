"""Modbus TCP, with pymodbus: a server the PLC polls, and a client that writes into the PLC.

Both show the register map of edge/bridge/registers.py, one 64-register block per camera.

Server (`ModbusServer`): the PLC reads holding registers (FC3) or input registers (FC4) — the same
words — and the same words bit by bit with FC1/FC2: bit address 16 × r + b is bit b (0 = least
significant) of register r, whatever the request's start address (camera i's status word is register
64 i, its bits 1024 i + 0..15). Our image is kept here, under a lock, and copied into pymodbus's store
inside the request (the device's `action` hook), so a read of a whole block is one consistent
snapshot, never half of one decision and half of the next. The PLC may write (FC6/FC16) only its
commands, offsets 40-45 of a camera's block: a part id and its trigger counter (a new trigger value
hands the part id to the daemon; the daemon's answer shows in TRIGGER_ACK or TRIGGER_ERROR) and the
seq of the last result it consumed. Any other write is answered with exception 02 (illegal data
address), a bit write (FC5/FC15) with exception 01 (illegal function); both are logged and change
nothing.

Client (`ModbusClient`): every decision is written with one FC16 (write multiple registers) into the
PLC's holding registers at `base_address + i × 64` (the 40 status words; the command words are the
PLC's own), then, for a reject or a fault, the camera's reject coil is set (FC5) and cleared
`pulse_ms` later; a reject during a pulse extends it. The decision counts as accepted once both
writes returned without a Modbus exception. Health changes are written the same way; a PLC that
cannot be reached is retried at the next change or decision. With `read_commands_ms` set, the client
also reads the PLC's command words (offsets 40-45) that often and acts on them as the server does.
"""

import asyncio
import logging
import threading
import time

from pydantic import field_validator

from edge.transport import wire
from edge.bridge import registers
from edge.bridge.core import DeliveryError
from edge.bridge.handshake import NOT_ANSWERED
from edge.bridge.health import CameraState
from edge.bridge.serving import serve_in_thread
from edge.core.errors import ConfigError
from edge.core.settings import Section
from edge.core.logs import camera_log

log = logging.getLogger(__name__)

SHOW_BACKOFF_S = 2.0  # after a failed request, health updates skip the PLC this long (decisions do not)


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:1502")
    return host.strip("[]"), int(port)


class ModbusServerConfig(Section):
    """`[modbus_server]`: where the PLC connects. Port 502 needs root or CAP_NET_BIND_SERVICE."""

    listen: str = "127.0.0.1:502"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_host_port(value, "listen")
        return value


class ModbusClientConfig(Section):
    """`[modbus_client]`: the PLC the bridge writes into."""

    plc: str
    device_id: int = 1
    base_address: int = 0
    reject_coil: int | None = 0  # camera i's coil is reject_coil + i; None: no coil
    pulse_ms: float = 200.0
    timeout_s: float = 1.0
    # Set: read the PLC's command words (offsets 40-45 of each camera's block: part id, trigger, result
    # ack) this often, as the server lets the PLC write them. Unset: the PLC hands over no part ids here.
    read_commands_ms: float | None = None

    @field_validator("plc")
    @classmethod
    def _plc(cls, value: str) -> str:
        parse_host_port(value, "plc")
        return value

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: int) -> int:
        if not 0 <= value <= 255:
            raise ValueError("expected a Modbus unit id 0-255")
        return value

    @field_validator("base_address", "reject_coil")
    @classmethod
    def _address(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= 65535:
            raise ValueError("expected a Modbus address 0-65535")
        return value

    @field_validator("pulse_ms", "timeout_s", "read_commands_ms")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:
            raise ValueError("expected a positive number")
        return value


def _import_pymodbus():
    try:
        import pymodbus  # noqa: F401
    except ImportError:
        raise ConfigError("Modbus needs pymodbus: pip install -c constraints.txt 'hlgfa-edge[bridge]'") from None


class _Image:
    """Per camera: the last decision this protocol delivered and its result toggle, the PLC's commands,
    the daemon's answer to the last trigger, and the block they make."""

    def __init__(self, cameras: list[str]):
        self.index = {camera: i for i, camera in enumerate(cameras)}
        self.last: dict[str, wire.Decision | None] = {camera: None for camera in cameras}
        self.toggle = {camera: False for camera in cameras}
        self.state = {camera: CameraState(camera=camera) for camera in cameras}
        self.commands = {camera: [0] * registers.COMMAND_WORDS for camera in cameras}
        self.trigger_ack = {camera: 0 for camera in cameras}
        self.trigger_error = {camera: "" for camera in cameras}
        self.words = [0] * (registers.BLOCK * len(cameras))
        for camera in cameras:
            self.set(self.state[camera])

    def set(self, state: CameraState, decision: wire.Decision | None = None) -> list[int]:
        camera = state.camera
        self.state[camera] = state
        if decision is not None:
            self.last[camera] = decision
            self.toggle[camera] = not self.toggle[camera]
        return self.render(camera)

    def render(self, camera: str) -> list[int]:
        block = registers.block(self.state[camera], self.last[camera], self.toggle[camera], self.commands[camera],
                                self.trigger_ack[camera], self.trigger_error[camera])
        start = self.index[camera] * registers.BLOCK
        self.words[start:start + registers.BLOCK] = block
        return block


class _Commands:
    """The PLC's command words of each camera (part id, trigger, result ack), however they reached us (a
    write to the server, a read from the PLC by the client): a new trigger value hands the part id to the
    daemon and its answer shows in the image; `shown(camera)` is called after that (the client then writes
    it into the PLC)."""

    _TRIGGER = registers.CMD_TRIGGER - registers.COMMAND
    _PART = registers.CMD_PART_ID - registers.COMMAND
    _ACK = registers.CMD_RESULT_ACK - registers.COMMAND

    def __init__(self, image: _Image, lock: threading.Lock, controls, shown=lambda camera: None):
        self.image, self.lock, self.controls, self.shown = image, lock, controls, shown

    def apply(self, camera: str, start: int, values: list[int], acknowledged: bool) -> None:
        """Words `values` at command offset `start` (0 = CMD_PART_ID); `acknowledged`: the PLC wrote the
        result ack (a write of the same seq again still acknowledges)."""
        with self.lock:
            commands = self.image.commands[camera]
            before = list(commands)
            commands[start:start + len(values)] = [int(v) & 0xFFFF for v in values]
            self.image.render(camera)
        if commands[self._TRIGGER] != before[self._TRIGGER]:
            self._trigger(camera, commands[self._TRIGGER], registers.read_number(commands, self._PART, 2))
        if acknowledged and self.controls is not None:
            self.controls.acknowledge_result(camera, registers.read_number(commands, self._ACK, 2))

    def _trigger(self, camera: str, trigger: int, part_number: int) -> None:
        if part_number == 0 or self.controls is None:
            self._answered(camera, trigger, "bad_part_id")
            camera_log(__name__, camera).warning("Modbus trigger %d with part id 0: expected a part id 1-4294967294 "
                                                 "in the two registers before the trigger", trigger)
            return

        def answered(future) -> None:
            reply = future.result()
            self._answered(camera, trigger, "" if reply.accepted else
                           "no_answer" if reply.job == NOT_ANSWERED else "refused")
            if not reply.accepted:
                camera_log(__name__, camera).warning("Modbus trigger %d, part %d: %s", trigger, part_number,
                                                     reply.error)

        self.controls.request_part(camera, str(part_number)).add_done_callback(answered)

    def _answered(self, camera: str, trigger: int, error: str) -> None:
        with self.lock:
            if not error:
                self.image.trigger_ack[camera] = trigger
            self.image.trigger_error[camera] = error
            self.image.render(camera)
        self.shown(camera)


_READ_BITS, _READ_WORDS, _WRITE_BITS = (1, 2), (3, 4), (5, 15)
_WRITABLE = (registers.CMD_PART_ID, registers.CMD_RESULT_ACK + 2)  # [first, end) offsets the PLC may write


class ModbusServer:
    name = "modbus-server"

    def __init__(self, config: ModbusServerConfig):
        _import_pymodbus()
        self.host, self.port = parse_host_port(config.listen, "modbus_server.listen")
        self._lock = threading.Lock()
        self._image: _Image | None = None
        self._commands: _Commands | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self.refused_writes = 0

    def start(self, cameras: list[str], controls=None) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        self._image = _Image(cameras)
        self._commands = _Commands(self._image, self._lock, controls)
        device = SimDevice(id=0, simdata=[SimData(0, count=len(self._image.words), datatype=DataType.REGISTERS)],
                           use_bit_addressing=True, action=self._access)
        async def setup() -> None:
            self._server = ModbusTcpServer(device, address=(self.host, self.port))
            await self._server.serve_forever(background=True)

        async def serve() -> None:
            await self._server.serving

        where = f"modbus_server.listen {self.host}:{self.port}"
        try:
            self._loop, self._thread = serve_in_thread(self.name, setup, serve, timeout_s=30)
        except TimeoutError:
            raise ConfigError(f"{where}: the server did not start within 30 s") from None
        except Exception as error:  # noqa: BLE001 - whatever the library raised, named in the message
            raise ConfigError(f"{where}: cannot listen ({error}); expected a local address and a free port") from None
        log.info("Modbus server listening on %s:%d (%d cameras, %d registers each)", self.host, self.port,
                 len(cameras), registers.BLOCK)

    async def _access(self, function_code, start_address, address, count, current, values):
        """pymodbus's hook, inside each request: `address` is a bit address for FC1/2/5/15 and `count`
        then the number of registers those bits lie in."""
        from pymodbus.constants import ExcCodes

        if function_code in _WRITE_BITS:
            self.refused_writes += 1
            log.warning("Modbus server: refused a bit write (function %d, address %d): the bits are a read-only "
                        "view of the registers", function_code, address)
            return ExcCodes.ILLEGAL_FUNCTION
        first = address // 16 if function_code in _READ_BITS else address
        if values is not None:
            return self._command(first, values, ExcCodes.ILLEGAL_ADDRESS)
        offset = first - start_address
        with self._lock:
            current[offset:offset + count] = self._image.words[first:first + count]
        return None

    def _command(self, address: int, values: list, refused):
        """A PLC's write: only into one camera's command words."""
        camera_index, offset = divmod(address, registers.BLOCK)
        if not (_WRITABLE[0] <= offset and offset + len(values) <= _WRITABLE[1]) or camera_index >= len(self._image.index):
            self.refused_writes += 1
            log.warning("Modbus server: refused a write of %d register(s) at %d: only offsets %d-%d of a camera's "
                        "block (its commands) are writable", len(values), address, _WRITABLE[0], _WRITABLE[1] - 1)
            return refused
        camera = list(self._image.index)[camera_index]
        self._commands.apply(camera, offset - registers.COMMAND, values,
                             acknowledged=offset + len(values) > registers.CMD_RESULT_ACK)
        return None

    def deliver(self, decision: wire.Decision, state: CameraState) -> None:
        with self._lock:
            self._image.set(state, decision)

    def show(self, state: CameraState) -> None:
        with self._lock:
            self._image.set(state)

    def close(self) -> None:
        if self._loop is not None and self._server is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(10)
            self._thread.join(10)


class ModbusClient:
    name = "modbus-client"

    def __init__(self, config: ModbusClientConfig):
        _import_pymodbus()
        self.config = config
        self.host, self.port = parse_host_port(config.plc, "modbus_client.plc")
        self._lock = threading.Lock()
        self._image: _Image | None = None
        self._client = None
        self._coil_off_at: dict[str, float] = {}
        self._wake = threading.Condition(self._lock)
        self._closing = False
        self._pulser: threading.Thread | None = None
        self._unreachable_logged_at = -float("inf")
        self._failed_at = -float("inf")
        self._commands: _Commands | None = None
        self._reader: threading.Thread | None = None
        self._stopped = threading.Event()

    def start(self, cameras: list[str], controls=None) -> None:
        from pymodbus.client import ModbusTcpClient

        self._image = _Image(cameras)
        self._commands = _Commands(self._image, self._lock, controls, shown=self._show_answer)
        # retries=0: a refused write is the core's to retry, in order, with the newest state
        self._client = ModbusTcpClient(self.host, port=self.port, timeout=self.config.timeout_s, retries=0)
        self._pulser = threading.Thread(target=self._pulse_loop, name="modbus-reject-coil", daemon=True)
        self._pulser.start()
        if self.config.read_commands_ms is not None:
            self._reader = threading.Thread(target=self._read_commands, name="modbus-commands", daemon=True)
            self._reader.start()

    def _read_commands(self) -> None:
        """Poll each camera's command words in the PLC; the first read of each is its baseline (a trigger
        value already there when the bridge starts hands nothing over)."""
        seen: dict[str, list[int]] = {}
        period = self.config.read_commands_ms / 1000
        while not self._stopped.wait(period):
            for camera, index in self._image.index.items():
                address = self.config.base_address + index * registers.BLOCK + registers.COMMAND
                try:
                    with self._lock:
                        if not self._client.connected and time.monotonic() - self._failed_at < SHOW_BACKOFF_S:
                            continue
                        words = self._call(f"reading the commands at {address}", "read_holding_registers", address,
                                           count=_WRITABLE[1] - _WRITABLE[0]).registers
                except DeliveryError as error:
                    log.debug("%s", error)
                    continue
                if camera not in seen:
                    seen[camera] = list(words)
                    with self._lock:
                        self._image.commands[camera][:len(words)] = words
                    continue
                if words != seen[camera]:
                    acknowledged = words[4:6] != seen[camera][4:6]
                    seen[camera] = list(words)
                    self._commands.apply(camera, 0, words, acknowledged)

    def _show_answer(self, camera: str) -> None:
        """The daemon's answer to a trigger, into the PLC with the rest of the status words."""
        with self._lock:
            try:
                self._write_block(camera, self._image.render(camera))
            except DeliveryError as error:
                camera_log(__name__, camera).warning("%s (the trigger's answer is written with the next state)", error)

    def _call(self, what: str, method: str, *args, **kwargs):
        """One request; raises DeliveryError naming the PLC and what failed. Call under `_lock`."""
        from pymodbus.exceptions import ModbusException

        try:
            if not self._client.connected and not self._client.connect():
                self._failed_at = time.monotonic()
                raise DeliveryError(f"Modbus PLC {self.host}:{self.port} unreachable")
            response = getattr(self._client, method)(*args, device_id=self.config.device_id, **kwargs)
        except (ModbusException, OSError) as error:
            self._client.close()
            self._failed_at = time.monotonic()
            raise DeliveryError(f"Modbus PLC {self.host}:{self.port}: {what} failed: {error}") from None
        if response.isError():
            raise DeliveryError(f"Modbus PLC {self.host}:{self.port}: {what} answered with exception "
                                f"{getattr(response, 'exception_code', '?')}")
        return response

    def _write_block(self, camera: str, block: list[int]) -> None:
        address = self.config.base_address + self._image.index[camera] * registers.BLOCK
        # the status words only: the command words are the PLC's own
        self._call(f"writing registers {address}..{address + registers.STATUS_WORDS - 1}", "write_registers", address,
                   block[:registers.STATUS_WORDS])

    def deliver(self, decision: wire.Decision, state: CameraState) -> None:
        with self._lock:
            previous = (self._image.last[state.camera], self._image.toggle[state.camera])
            block = self._image.set(state, decision)
            try:
                self._write_block(state.camera, block)
                if decision.verdict in ("reject", "fault") and self.config.reject_coil is not None:
                    coil = self.config.reject_coil + self._image.index[state.camera]
                    self._call(f"setting reject coil {coil}", "write_coil", coil, True)
                    self._coil_off_at[state.camera] = time.monotonic() + self.config.pulse_ms / 1000
                    self._wake.notify()
            except DeliveryError:
                # not delivered: the retry must flip the toggle once, not twice
                self._image.last[state.camera], self._image.toggle[state.camera] = previous
                raise

    def show(self, state: CameraState) -> None:
        with self._lock:
            block = self._image.set(state)
            if not self._client.connected and time.monotonic() - self._failed_at < SHOW_BACKOFF_S:
                return  # an unreachable PLC (up to timeout_s per try) must not slow the camera's thread
            try:
                self._write_block(state.camera, block)
            except DeliveryError as error:
                now = time.monotonic()
                if now - self._unreachable_logged_at >= 10:
                    camera_log(__name__, state.camera).warning("%s (health not shown; retried on the next change)", error)
                    self._unreachable_logged_at = now

    def _pulse_loop(self) -> None:
        with self._lock:
            while not self._closing:
                now = time.monotonic()
                due = [camera for camera, at in self._coil_off_at.items() if at <= now]
                for camera in due:
                    coil = self.config.reject_coil + self._image.index[camera]
                    try:
                        self._call(f"clearing reject coil {coil}", "write_coil", coil, False)
                        del self._coil_off_at[camera]
                    except DeliveryError as error:
                        log.error("%s; retrying in 0.1 s", error)
                        self._coil_off_at[camera] = now + 0.1
                pending = self._coil_off_at.values()
                self._wake.wait(None if not pending else max(0.0, min(pending) - time.monotonic()))
            for camera in list(self._coil_off_at):  # closing: leave no reject coil set behind
                try:
                    self._call("clearing a reject coil", "write_coil", self.config.reject_coil + self._image.index[camera],
                               False)
                except DeliveryError as error:
                    log.error("%s while closing", error)

    def close(self) -> None:
        self._stopped.set()
        if self._reader is not None:
            self._reader.join(5)
        with self._lock:
            self._closing = True
            self._wake.notify()
        if self._pulser is not None:
            self._pulser.join(5)
        if self._client is not None:
            self._client.close()
