"""GenICam cameras through harvesters (GenTL producers: vendor .cti files, or the simulated viky.cti).

Each source owns one `Harvester`: reconnecting is destroy (`_destroy`) → `update()` → `create()`, and
`update()` invalidates every acquirer of that harvester, so sharing one would let a camera that
drops out take its neighbours down with it.

Trouble maps onto the protocol in `edge.sources.base`:
- fetch timeout in free-run/software trigger → `SourceUnavailable` (a frame was due);
  `reconnect_after_timeouts` timeouts in a row mean the device is treated as lost.
- fetch timeout in hardware trigger → `SourceIdle` when the device still answers a read of
  TriggerMode, bypassing GenApi's cache, and it still reads "On": an idle line is normal, and it
  may stay idle for hours. A device that does not answer, or that answers "Off" (it was power
  cycled and lost our settings), is lost: reconnect, settings re-applied. A fetch timeout alone
  cannot tell the two apart: many producers time out quietly on a pulled cable.
- incomplete buffer → `FrameError` (harvesters discards the buffer and fetches on; we count the
  discard through its INCOMPLETE_BUFFER callback and report it before the next good frame).
- any other failure while fetching (device removed, acquirer destroyed) → the device is lost:
  `SourceUnavailable` now, reconnection inside later `read()` calls with capped exponential
  backoff, settings re-applied, acquisition restarted.

The daemon reads in its acquire thread but opens and closes in its main thread, and closes after
a join that may time out. A close overlapping a read closed the GenTL producer under the fetch or
the reconnect in progress (seen with viky: the fetch fails with ClosedException, the reconnect
runs on a reset Harvester); so `open`, `read` and `close` hold one lock, and a closed source
never touches GenTL again.
"""

import difflib
import glob
import importlib.util
import logging
import os
import signal
import threading
import time
from collections import deque
from pathlib import Path

from edge.sources import pixel_formats
from edge.core.errors import ConfigError, InputDataError
from edge.core.frame import Frame
from edge.sources.base import CloseFirstLock, FrameError, ReconnectSchedule, SourceIdle, SourceUnavailable

log = logging.getLogger(__name__)

TRIGGER_MODES = ("free", "software", "hardware")
_WRITABLE = {"RW", "WO"}


def simulated_producer() -> Path | None:
    """The genicam wheel's simulated producer (viky.cti) when it and harvesters are installed."""
    if importlib.util.find_spec("harvesters") is None:
        return None
    spec = importlib.util.find_spec("genicam")
    if spec is None or not spec.origin:
        return None
    viky = Path(spec.origin).parent / "viky.cti"
    return viky if viky.is_file() else None


def default_cti_files() -> list[str]:
    """The GenTL producers to load when the config names none.

    `GENICAM_GENTL64_PATH` is the GenTL standard's search path (directories, `os.pathsep`
    separated) that vendor installers set; we honour it because a camera vendor's producer is
    found nowhere else. Without it, the genicam wheel's simulated viky.cti.
    """
    found: list[str] = []
    for directory in filter(None, os.environ.get("GENICAM_GENTL64_PATH", "").split(os.pathsep)):
        found.extend(sorted(glob.glob(os.path.join(directory, "*.cti"))))
    if found:
        return found
    viky = simulated_producer()
    return [str(viky)] if viky else []


def resolve_cti_files(cti: str | Path | None) -> list[str]:
    if cti is not None:
        if not Path(cti).is_file():
            raise ConfigError(f"genicam source: GenTL producer {cti} does not exist")
        return [str(cti)]
    files = default_cti_files()
    if not files:
        raise ConfigError(
            "genicam source: no GenTL producer (.cti): set `cti` in the config, or GENICAM_GENTL64_PATH, "
            "or install the genicam package (ships viky.cti)"
        )
    return files


# `_destroy` reaches into harvesters' and genicam's internals (an acquirer's `_chunk_adapter`, the
# adapter's `_finalizer`). Checked against these release series by the viky tests; constraints.txt
# caps both below the next series.
INTERNALS_CHECKED = {"harvesters": "1.4", "genicam": "1.6"}


def import_harvesters():
    try:
        from harvesters.core import Harvester
    except ImportError as error:
        raise ConfigError(
            f"genicam source needs harvesters and genicam (pip install 'hlgfa-edge[camera]'): {error}"
        ) from error
    _warn_unchecked_internals()
    return Harvester


def _warn_unchecked_internals() -> None:
    from importlib.metadata import version

    for package, series in INTERNALS_CHECKED.items():
        installed = version(package)
        if installed.split(".")[:2] != series.split("."):
            log.warning("genicam source: %s %s is installed; the reconnect cleanup was checked against %s.x only, "
                        "and a device that reconnects may leak memory (run tests/integration/test_genicam_viky.py)",
                        package, installed, series)


def device_summary(info) -> dict:
    """The identifying fields of a harvesters DeviceInfo, as plain values."""
    fields = ("vendor", "model", "serial_number", "user_defined_name", "id_", "display_name", "tl_type", "access_status")
    summary = {}
    for key in fields:
        try:
            value = getattr(info, key)
        except Exception:  # producers raise NotAvailable for fields they do not fill in
            value = None
        summary[key] = value
    return summary


def _describe_devices(infos) -> str:
    if not infos:
        return "no devices found"
    rows = [
        f"#{i} serial={d['serial_number']!r} user_name={d['user_defined_name']!r} model={d['model']!r}"
        for i, d in enumerate(device_summary(info) for info in infos)
    ]
    return "available: " + "; ".join(rows)


def select_device(infos: list, device: str | int | None):
    """Pick a DeviceInfo: None → the first; int → by index; str → serial number, then user name, then id."""
    if device is None:
        if not infos:
            raise SourceUnavailable("genicam source: no devices found")
        return infos[0]
    if isinstance(device, int):
        if not 0 <= device < len(infos):
            raise SourceUnavailable(f"genicam source: no device at index {device}; {_describe_devices(infos)}")
        return infos[device]
    summaries = [device_summary(info) for info in infos]
    for key in ("serial_number", "user_defined_name", "id_"):
        matches = [info for info, s in zip(infos, summaries) if s[key] is not None and str(s[key]) == device]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ConfigError(f"genicam source: {len(matches)} devices have {key} {device!r}; use another key")
    raise SourceUnavailable(f"genicam source: no device with serial number, user name or id {device!r}; "
                            f"{_describe_devices(infos)}")


def _access_name(node) -> str:
    from genicam.genapi import EAccessMode

    try:
        return EAccessMode(node.get_access_mode()).name
    except ValueError:
        return str(node.get_access_mode())


def _coerce_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "on", "yes"):
        return True
    if text in ("0", "false", "off", "no"):
        return False
    raise ConfigError(f"GenICam node {name}: {value!r} is not a boolean (true/false)")


def set_node(node_map, name: str, value) -> None:
    """Validate `value` against node `name` and write it; a `ConfigError` says what would be valid."""
    from genicam.genapi import IBoolean, ICommand, IEnumeration, IFloat, IInteger, IString

    if not node_map.has_node(name):
        names = [n.node.name for n in node_map.nodes]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"GenICam node {name!r} does not exist on this device{hint}")
    node = getattr(node_map, name)
    access = _access_name(node)
    if access not in _WRITABLE:
        raise ConfigError(f"GenICam node {name} is not writable (access mode {access})")
    try:
        if isinstance(node, IEnumeration):
            entries = tuple(node.symbolics)
            if str(value) not in entries:
                raise ConfigError(f"GenICam node {name}: {value!r} is not one of {', '.join(entries)}")
            node.value = str(value)
        elif isinstance(node, IInteger):
            try:
                number = int(str(value), 0) if isinstance(value, str) else int(value)
            except ValueError:
                raise ConfigError(f"GenICam node {name}: {value!r} is not an integer") from None
            if isinstance(value, bool) or (isinstance(value, float) and value != number):
                raise ConfigError(f"GenICam node {name}: {value!r} is not an integer")
            low, high, step = node.min, node.max, node.inc
            if not low <= number <= high or (step > 1 and (number - low) % step):
                raise ConfigError(f"GenICam node {name}: {number} is outside {low}..{high} (step {step})")
            node.value = number
        elif isinstance(node, IFloat):
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"GenICam node {name}: {value!r} is not a number") from None
            if isinstance(value, bool) or not node.min <= number <= node.max:
                raise ConfigError(f"GenICam node {name}: {value!r} is outside {node.min}..{node.max}")
            node.value = number
        elif isinstance(node, IBoolean):
            node.value = _coerce_bool(name, value)
        elif isinstance(node, IString):
            node.value = str(value)
        elif isinstance(node, ICommand):
            raise ConfigError(f"GenICam node {name} is a command, not a setting")
        else:
            raise ConfigError(f"GenICam node {name} has type {type(node).__name__}, which cannot be set from config")
    except ConfigError:
        raise
    except Exception as error:  # the device refused a value that passed our checks
        raise ConfigError(f"GenICam node {name}: the device rejected {value!r}: {error}") from error


class GenicamSource:
    def __init__(
        self,
        device: str | int | None = None,
        cti: str | Path | None = None,
        settings: dict | None = None,
        trigger: str = "free",
        trigger_source: str = "Line0",
        buffers: int = 4,
        reconnect_after_timeouts: int = 3,
        reconnect_backoff_initial_s: float = 0.1,
        reconnect_backoff_max_s: float = 5.0,
        source_id: str | None = None,
    ):
        if trigger not in TRIGGER_MODES:
            raise ConfigError(f"genicam source: trigger {trigger!r} is not one of {', '.join(TRIGGER_MODES)}")
        if buffers < 1:
            raise ConfigError(f"genicam source: buffers must be >= 1, got {buffers}")
        self.device = device
        self.cti = cti
        self.settings = dict(settings or {})
        self.trigger = trigger
        self.trigger_source = trigger_source
        self.buffers = buffers
        self.reconnect_after_timeouts = reconnect_after_timeouts
        self._schedule = ReconnectSchedule(reconnect_backoff_initial_s, reconnect_backoff_max_s)
        self.source_id = source_id or f"genicam:{device if device is not None else 0}"
        self._harvester = None
        self._ia = None
        self._opened = False
        self._gentl_lock = CloseFirstLock()
        self._last_frame_id = -1
        self._pending: deque[Frame] = deque()
        self._stats = self._new_stats()

    @staticmethod
    def _new_stats() -> dict:
        return {"frames": 0, "dropped": 0, "timeouts": 0, "incomplete": 0, "reconnects": 0, "lost": 0,
                "frame_errors": 0}

    @property
    def acquirer(self):
        """The live harvesters ImageAcquirer (None while reconnecting); for diagnostics and tests."""
        return self._ia

    # -- connection ---------------------------------------------------------------------------

    def _create_acquirer(self, info):
        # ImageAcquirer replaces the SIGINT handler with one that silently destroys it; put the
        # caller's back so Ctrl-C / systemd stop the daemon the normal way.
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGINT) if in_main else None
        try:
            return self._harvester.create(info)
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)

    def _connect(self) -> None:
        """update → create → buffers → settings → trigger → start. Raises ConfigError / SourceUnavailable."""
        from harvesters.core import ImageAcquirer

        self._harvester.update()
        info = select_device(self._harvester.device_info_list, self.device)
        try:
            ia = self._create_acquirer(info)
        except Exception as error:
            raise SourceUnavailable(f"genicam source: cannot open device {self.device!r}: {error}") from error
        try:
            try:
                ia.num_buffers = self.buffers
            except ValueError as error:
                raise ConfigError(f"genicam source: buffers={self.buffers}: {error}") from error
            node_map = ia.remote_device.node_map
            for name, value in self.settings.items():
                set_node(node_map, name, value)
            self._apply_trigger(node_map)
            pixel_format = str(node_map.PixelFormat.value) if node_map.has_node("PixelFormat") else None
            if pixel_format is not None:
                try:
                    pixel_formats.check_supported(pixel_format)
                except InputDataError as error:
                    raise ConfigError(f"genicam source: PixelFormat: {error}") from error
            ia.add_callback(ImageAcquirer.Events.INCOMPLETE_BUFFER, _incomplete_counter(self))
            ia.start()
        except BaseException:
            self._destroy(ia)
            raise
        self._ia = ia
        self._device_id_offset = None
        self._last_device_id = None
        self._consecutive_timeouts = 0
        self._incomplete_seen = self._stats["incomplete"]
        log.info("genicam source %s: acquiring from %s", self.source_id, device_summary(info))

    def _apply_trigger(self, node_map) -> None:
        if self.trigger == "free":
            if node_map.has_node("TriggerMode") and _access_name(node_map.TriggerMode) in _WRITABLE:
                set_node(node_map, "TriggerMode", "Off")
            return
        for required in ("TriggerMode", "TriggerSource") + (("TriggerSoftware",) if self.trigger == "software" else ()):
            if not node_map.has_node(required):
                raise ConfigError(f"genicam source: trigger={self.trigger} needs GenICam node {required}, "
                                  f"which this device does not have")
        if node_map.has_node("TriggerSelector") and "FrameStart" in tuple(node_map.TriggerSelector.symbolics):
            set_node(node_map, "TriggerSelector", "FrameStart")
        set_node(node_map, "TriggerSource", "Software" if self.trigger == "software" else self.trigger_source)
        set_node(node_map, "TriggerMode", "On")

    @staticmethod
    def _destroy(ia) -> None:
        """Destroy `ia` so that nothing of it outlives the call.

        harvesters 1.4 registers `weakref.finalize(ia, ia.destroy)` and genicam registers
        `weakref.finalize(adapter, adapter._destruct)` for the acquirer's chunk adapter; a finalizer
        holds its bound method, so each keeps its object (and the adapter the device's node map)
        alive until the process exits unless the finalizer itself runs. `destroy()` does not run
        them: 0.4 MB stayed behind per reconnect (viky, 300 reconnects; BENCHMARKS.md). So the
        acquirer is destroyed through its context-manager exit (runs its finalizer once; a no-op
        destroy on an acquirer already destroyed), then the adapter's finalizer runs, in the order
        harvesters' own exit-time cleanup uses."""
        if ia is None:
            return
        adapter = getattr(ia, "_chunk_adapter", None)  # destroy() drops it; take it first
        try:
            ia.__exit__(None, None, None)
        except Exception as error:  # a removed device fails its own teardown; we only need it gone
            log.debug("destroying image acquirer failed: %s", error)
        finalizer = getattr(adapter, "_finalizer", None)
        if finalizer is not None:
            try:
                finalizer()
            except Exception as error:
                log.debug("releasing the chunk adapter failed: %s", error)

    def open(self) -> None:
        with self._gentl_lock.opening():
            self._open()

    def _open(self) -> None:
        self._teardown()
        Harvester = import_harvesters()
        cti_files = resolve_cti_files(self.cti)
        self._harvester = Harvester()
        for path in cti_files:
            self._harvester.add_file(path)
        self._stats = self._new_stats()
        self._pending.clear()
        self._schedule.reset()
        try:
            self._connect()
        except BaseException:
            self._teardown()
            raise
        self._opened = True

    def _lose(self, reason: str) -> SourceUnavailable:
        self._stats["lost"] += 1
        self._destroy(self._ia)
        self._ia = None
        self._schedule.lost()
        log.warning("genicam source %s: device lost (%s); reconnecting", self.source_id, reason)
        return SourceUnavailable(f"genicam source {self.source_id}: {reason}; reconnecting")

    def _reconnect(self, timeout_s: float) -> None:
        def connect():
            try:
                self._connect()
            except Exception as error:
                raise SourceUnavailable(f"genicam source {self.source_id}: reconnect failed: {error}") from error

        self._schedule.attempt(connect, timeout_s, f"genicam source {self.source_id}: device lost")
        self._stats["reconnects"] += 1
        log.info("genicam source %s: reconnected", self.source_id)

    # -- acquisition --------------------------------------------------------------------------

    def read(self, timeout_s: float) -> Frame:
        with self._gentl_lock.reading(self._not_open):
            return self._read(timeout_s)

    def _not_open(self) -> SourceUnavailable:
        return SourceUnavailable(f"genicam source {self.source_id} is not open")

    def _read(self, timeout_s: float) -> Frame:
        from genicam.gentl import TimeoutException

        if not self._opened:
            raise self._not_open()
        if self._pending:
            return self._pending.popleft()
        if self._ia is None:
            self._reconnect(timeout_s)
        ia = self._ia
        if not ia.is_valid():
            raise self._lose("image acquirer was destroyed")
        try:
            if self.trigger == "software":
                ia.remote_device.node_map.TriggerSoftware.execute()
            buffer = ia.fetch(timeout=timeout_s)
        except TimeoutException:
            self._stats["timeouts"] += 1
            if self.trigger == "hardware":
                raise self._idle_or_lost(ia, timeout_s) from None
            self._consecutive_timeouts += 1
            if self._consecutive_timeouts >= self.reconnect_after_timeouts:
                raise self._lose(f"{self._consecutive_timeouts} fetch timeouts of {timeout_s} s in a row") from None
            raise SourceUnavailable(f"genicam source {self.source_id}: no frame within {timeout_s} s") from None
        except Exception as error:
            raise self._lose(f"fetch failed: {type(error).__name__}: {error}") from error
        self._consecutive_timeouts = 0
        if buffer is None:  # harvesters could not read the buffer's info and requeued it
            self._stats["frame_errors"] += 1
            raise FrameError(f"genicam source {self.source_id}: buffer without readable info discarded")
        try:
            frame = self._frame_from(buffer)
        finally:
            try:
                buffer.queue()
            except Exception as error:
                log.debug("requeueing buffer failed: %s", error)
        missed = self._stats["incomplete"] - self._incomplete_seen
        if missed > 0:
            # Incomplete buffers were discarded while fetching this good one: report them first,
            # hand the good frame on at the next read.
            self._incomplete_seen = self._stats["incomplete"]
            self._pending.append(frame)
            self._stats["frame_errors"] += 1
            raise FrameError(f"genicam source {self.source_id}: {missed} incomplete buffer(s) discarded")
        return frame

    def _idle_or_lost(self, ia, timeout_s: float) -> SourceIdle | SourceUnavailable:
        """No hardware trigger within the timeout: idle if the device is still there and still armed."""
        try:
            # verify=False, ignore_cache=True: a register read from the device, not GenApi's cached value
            mode = ia.remote_device.node_map.TriggerMode.to_string(False, True)
        except Exception as error:
            return self._lose(f"no frame within {timeout_s} s and the device does not answer "
                              f"({type(error).__name__}: {error})")
        if mode != "On":
            return self._lose(f"no frame within {timeout_s} s and TriggerMode reads {mode!r}, not 'On' "
                              "(the camera was reset?)")
        return SourceIdle(f"genicam source {self.source_id}: no hardware trigger within {timeout_s} s")

    def _frame_from(self, buffer) -> Frame:
        """Copy and convert inside the fetch: the pixels belong to the producer until requeued."""
        receive_ns = time.monotonic_ns()
        try:
            device_frame_id = int(buffer.module.frame_id)
        except Exception:
            device_frame_id = None
        try:
            device_timestamp_ns = int(buffer.module.timestamp_ns)
        except Exception:  # viky and some producers keep no timestamps
            device_timestamp_ns = 0
        if device_frame_id is None:
            frame_id = self._last_frame_id + 1
        else:
            if self._device_id_offset is None:
                # First frame of this acquisition: continue after the last id we handed on,
                # so ids increase across reconnects while device-side gaps stay visible.
                self._device_id_offset = self._last_frame_id + 1 - device_frame_id
            elif self._last_device_id is not None and device_frame_id > self._last_device_id + 1:
                self._stats["dropped"] += device_frame_id - self._last_device_id - 1
            self._last_device_id = device_frame_id
            frame_id = device_frame_id + self._device_id_offset
        try:
            component = buffer.payload.components[0]
            width, height, source_format = component.width, component.height, component.data_format
            try:
                padding_x = int(buffer.module.padding_x)
            except Exception:
                padding_x = 0
            image = pixel_formats.convert(component.data, width, height, source_format, padding_x=padding_x)
        except InputDataError as error:
            self._stats["frame_errors"] += 1
            self._last_frame_id = max(self._last_frame_id, frame_id)
            raise FrameError(f"genicam source {self.source_id}: frame {frame_id}: {error}", frame_id=frame_id) from error
        except Exception as error:
            self._stats["frame_errors"] += 1
            self._last_frame_id = max(self._last_frame_id, frame_id)
            raise FrameError(f"genicam source {self.source_id}: frame {frame_id} unreadable: {error}",
                             frame_id=frame_id) from error
        self._last_frame_id = frame_id
        self._stats["frames"] += 1
        return Frame(
            frame_id=frame_id,
            source_id=self.source_id,
            pixel_format=pixel_formats.output_format(source_format),
            image=image,
            receive_ns=receive_ns,
            device_timestamp_ns=device_timestamp_ns,
            meta={"device_frame_id": device_frame_id, "source_pixel_format": source_format},
        )

    def stats(self) -> dict:
        return dict(self._stats)

    def close(self) -> None:
        """Waits for a read in progress in another thread (at most its timeout plus one reconnect)."""
        with self._gentl_lock.closing():
            self._teardown()

    def _teardown(self) -> None:
        self._opened = False
        self._destroy(self._ia)
        self._ia = None
        if self._harvester is not None:
            try:
                self._harvester.reset()
            except Exception as error:
                log.debug("harvester reset failed: %s", error)
            self._harvester = None


def _incomplete_counter(source: GenicamSource):
    """A harvesters Callback for INCOMPLETE_BUFFER: counts the buffers harvesters silently discards."""
    from harvesters.core import Callback

    class IncompleteCounter(Callback):
        def emit(self, context=None) -> None:
            source._stats["incomplete"] += 1

    return IncompleteCounter()
