"""The daemon's configuration: one TOML file per camera, every key also settable by a flag.

    camera = "line1"
    model = "/var/lib/hlgfa-edge/models/cells-v3"
    thresholds = "/var/lib/hlgfa-edge/models/cells-v3/thresholds.json"   # default: MODEL/thresholds.json
    [source]    kind = "genicam" ...         (edge.sources.factory.SourceConfig)
    [backend]   kind, onnx, engine, max_batch, threads, restart_after_failures, max_restarts, ...
    [pipeline]  queue sizes, deadline_ms, max_batch_wait_ms, overload, ...
    [publish]   endpoint, reliable_endpoint, maps, map_format, map_size, heartbeat_period_s, CURVE keys, ...
    [health]    metrics_port, metrics_address
    [quality]   per-statistic overrides of the calibrated frame-quality ranges, e.g. mean = [30, 220]
    [logging]   level, and levels per logger, e.g. levels = {"edge.publisher" = "debug"}

docs/CONFIG.md is the reference. Every section is a pydantic model with extra="forbid", so a typo is an
error naming the key (and its line in the file) instead of a silently ignored setting. Relative paths
in a file are taken relative to the file's directory, so a config and its model can move together;
paths given as flags are taken relative to the working directory, as a shell user expects.

`hlgfa engine ensure --config FILE` reads `model`, `backend.onnx`, `backend.engine` and
`backend.max_batch` through `load_config` as well: keep those names.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge.errors import ConfigError
from edge.sources.factory import FolderSourceConfig, SourceConfig

DEFAULT_THRESHOLDS_NAME = "thresholds.json"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackendConfig(_Section):
    kind: Literal["auto", "tensorrt", "onnxruntime", "torch"] = "auto"
    # ONNX file for onnxruntime (default: MODEL/model.onnx) and TensorRT engine file.
    onnx: Path | None = None
    engine: Path | None = None
    max_batch: int = Field(default=1, ge=1, le=256)
    threads: int | None = Field(default=None, ge=1)
    # Consecutive failed batches before the backend is closed and opened again.
    restart_after_failures: int = Field(default=3, ge=1)
    # Restarts allowed within restart_window_s; one more ends the daemon (exit 70) for systemd to restart.
    max_restarts: int = Field(default=3, ge=0)
    restart_window_s: float = Field(default=600.0, gt=0)


class PipelineConfig(_Section):
    # Frames waiting between acquisition and preprocessing, and between preprocessing and inference.
    acquire_queue: int = Field(default=8, ge=1)
    infer_queue: int = Field(default=8, ge=1)
    # Results waiting to be decided and published; large, since a fault must always find room.
    output_queue: int = Field(default=1024, ge=16)
    # A frame without a verdict this long after it arrived is a fault ("deadline"), even if a score
    # comes later: the part has moved on and a late verdict would be acted on for the wrong part.
    deadline_ms: float = Field(default=500.0, gt=0)
    # After the first frame of a batch, wait at most this long for more (only with max_batch > 1).
    max_batch_wait_ms: float = Field(default=2.0, ge=0)
    # What a full queue does to a new frame: "fault" publishes it as a fault ("overload") at once;
    # "block" makes acquisition wait (the camera's own buffers then overrun, counted by the source).
    # Unset: "block" for a folder replay (no camera to overrun), "fault" for cameras.
    overload: Literal["fault", "block"] | None = None
    # A stage busy with one item for longer than this is stalled: a fault, then exit 70.
    stall_timeout_s: float = Field(default=30.0, gt=0)
    # How long SIGTERM waits for frames in flight before publishing them as faults ("shutdown").
    drain_timeout_s: float = Field(default=10.0, gt=0)
    # While the camera stays unavailable, repeat the fault event this often.
    source_fault_repeat_s: float = Field(default=10.0, gt=0)
    # Stop after this many frames (replays, tests, benchmarks); unset runs until the source ends.
    max_frames: int | None = Field(default=None, ge=1)


def _check_local_address(host: str, endpoint: str) -> None:
    """`host` of a tcp endpoint the daemon binds: `*`, a network interface's name, or a name or IPv4
    address of this machine. Proved by binding a plain socket to it on port 0 (any free port), so
    the check never collides with a daemon already running on the endpoint's own port."""
    import socket

    if host == "*" or host in {name for _, name in socket.if_nameindex()}:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)}
    except socket.gaierror as error:
        raise ValueError(f"{endpoint!r}: address {host!r} does not resolve to an IPv4 address ({error.strerror}); "
                         f"expected *, an interface name or an address of this machine") from None
    for address in sorted(addresses):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((address, 0))
                return
            except OSError as error:
                reason = error.strerror
    raise ValueError(f"{endpoint!r}: address {host!r} ({', '.join(sorted(addresses))}) cannot be bound here "
                     f"({reason}): not an address of this machine")


def check_bind_endpoint(endpoint: str) -> str:
    """An endpoint the daemon binds, checked as strictly as the bind itself would be, so `config check`
    refuses what `run` would: ZeroMQ binds tcp://H:99999 to another port without a word, and a
    subscriber could never find it."""
    scheme, _, rest = endpoint.partition("://")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host:
            raise ValueError(f"{endpoint!r}: expected tcp://ADDRESS:PORT, e.g. tcp://127.0.0.1:5555")
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{endpoint!r}: port {port!r} must be a number from 1 to 65535 (subscribers connect "
                             f"to it, so it cannot be left to chance)")
        _check_local_address(host, endpoint)
    elif scheme == "ipc":
        folder = Path(rest).parent
        if not rest or not folder.is_dir():
            raise ValueError(f"{endpoint!r}: the folder {folder} for the socket file does not exist")
    return endpoint


class PublishConfig(_Section):
    endpoint: str = "tcp://127.0.0.1:5555"
    reliable_endpoint: str | None = None
    maps: bool = True
    map_format: Literal["uint8", "float16"] = "uint8"
    # [height, width] of published maps, or "model" for the model's own resolution (its aspect
    # ratio: a non-square model's map is not squashed).
    map_size: tuple[int, int] | Literal["model"] = "model"
    # uint8 scale [lo, hi]; unset scales each map to its own min..max.
    map_value_range: tuple[float, float] | None = None
    heartbeat_period_s: float = Field(default=1.0, gt=0)
    # Per-subscriber queue on the PUB socket, in messages: 1000 ≈ 10 s of decision+map traffic at
    # 50 fps, ≈ 64 MiB worst case with 256×256 uint8 maps per stalled subscriber; past it ZeroMQ
    # drops for that subscriber only, which sees the gap from sequence numbers.
    sndhwm: int = Field(default=1000, ge=1)
    # How long closing lets queued messages (the "stopping" heartbeat, the last decision) leave;
    # bounded so a systemd stop never hangs on an absent subscriber.
    linger_ms: int = Field(default=500, ge=0)
    # Unacknowledged decisions kept for the bridge; beyond it the oldest is evicted and a fault is
    # published for it (never silent).
    reliable_capacity: int = Field(default=1000, ge=1)
    ack_timeout_s: float = Field(default=0.25, gt=0)
    # Messages ZeroMQ queues towards the bridge before a send is refused (and retried in seq order).
    reliable_hwm: int = Field(default=1000, ge=1)
    # CURVE: the publisher's NAME.key_secret file and the directory of allowed subscriber public keys.
    curve_secret_key: Path | None = None
    curve_allowed_clients: Path | None = None

    @field_validator("endpoint", "reliable_endpoint")
    @classmethod
    def _endpoint(cls, value):
        if value is not None and not re.match(r"^(tcp|ipc|inproc)://.+", value):
            raise ValueError(f"{value!r} is not a ZeroMQ endpoint, expected e.g. tcp://127.0.0.1:5555")
        return value if value is None else check_bind_endpoint(value)

    @field_validator("map_size")
    @classmethod
    def _map_size(cls, value):
        if value != "model" and min(value) < 1:
            raise ValueError(f"{list(value)}: expected [height, width] ≥ 1 or \"model\"")
        return value

    @model_validator(mode="after")
    def _curve_pair(self):
        if (self.curve_secret_key is None) != (self.curve_allowed_clients is None):
            raise ValueError("curve_secret_key and curve_allowed_clients go together: set both or neither")
        return self


class HealthConfig(_Section):
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_address: str = "127.0.0.1"


class QualityConfig(_Section):
    """Per-statistic overrides of the frame-quality ranges fitted by `hlgfa calibrate` (edge/quality.py):
    `mean = [30, 220]` replaces the thresholds file's range for `mean`; the other statistics keep theirs."""

    mean: tuple[float, float] | None = None
    contrast: tuple[float, float] | None = None
    sharpness: tuple[float, float] | None = None
    saturated_fraction: tuple[float, float] | None = None
    black_fraction: tuple[float, float] | None = None
    width: tuple[float, float] | None = None
    height: tuple[float, float] | None = None
    map_mean: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _ranges(self):
        for name, bounds in self.overrides().items():
            low, high = bounds
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(f"{name} = {list(bounds)}: expected [low, high], finite numbers with low ≤ high")
        return self

    def overrides(self) -> dict[str, tuple[float, float]]:
        return {name: value for name, value in self.model_dump().items() if value is not None}


LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class LoggingConfig(_Section):
    # Every logger not named in `levels`; the --log-level flag, when given, replaces it.
    level: LogLevel = "info"
    # Per logger: a module ("edge.publisher", "edge.pipeline") or a library ("asyncua").
    levels: dict[str, LogLevel] = Field(default_factory=dict)


class DaemonConfig(_Section):
    camera: str = "cam0"
    model: Path
    thresholds: Path | None = None
    source: SourceConfig
    backend: BackendConfig = Field(default_factory=BackendConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @field_validator("camera")
    @classmethod
    def _camera(cls, value: str) -> str:
        from edge import wire

        try:
            return wire.check_camera(value)
        except wire.WireError as error:
            raise ValueError(str(error)) from None

    @property
    def thresholds_path(self) -> Path:
        return self.thresholds if self.thresholds is not None else self.model / DEFAULT_THRESHOLDS_NAME

    @property
    def overload_policy(self) -> str:
        if self.pipeline.overload is not None:
            return self.pipeline.overload
        return "block" if isinstance(self.source, FolderSourceConfig) else "fault"

    def resolved(self) -> dict:
        """Every key with its effective value, as `hlgfa config check` prints it."""
        data = json.loads(self.model_dump_json())
        data["thresholds"] = str(self.thresholds_path)
        data["pipeline"]["overload"] = self.overload_policy
        return data


# Paths in a file are relative to its directory: (section, key) of each path-valued key.
_PATH_KEYS = ((None, "model"), (None, "thresholds"), ("backend", "onnx"), ("backend", "engine"),
              ("publish", "curve_secret_key"), ("publish", "curve_allowed_clients"), ("source", "path"),
              ("source", "cti"))


def _resolve_paths(data: dict, base: Path) -> None:
    for section, key in _PATH_KEYS:
        table = data if section is None else data.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str):
            path = Path(table[key]).expanduser()
            table[key] = str(path if path.is_absolute() else base / path)


def parse_override(text: str) -> tuple[list[str], object]:
    """`pipeline.deadline_ms=200` → (["pipeline", "deadline_ms"], 200). The value is a TOML value;
    one that is not valid TOML (e.g. a bare path) is taken as a string."""
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key or not all(re.match(r"^[A-Za-z0-9_-]+$", part) for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. pipeline.deadline_ms=200")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_override(data: dict, path: list[str], value: object) -> None:
    table = data
    for part in path[:-1]:
        child = table.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"key {'.'.join(path)}: {part!r} is a value, not a table")
        table = child
    table[path[-1]] = value


def _key_line(text: str, loc: tuple) -> int | None:
    """Best-effort line of key `loc` (e.g. ("pipeline", "deadline_ms")) in TOML `text`."""
    table: tuple = ()
    names = [str(part) for part in loc if not isinstance(part, int)]
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[\s*([A-Za-z0-9_.\-\s\"]+?)\s*\]", stripped)
        if header:
            table = tuple(part.strip().strip('"') for part in header.group(1).split("."))
            if list(table) == names:
                return number
            continue
        match = re.match(r"^([A-Za-z0-9_.\-\"\s]+?)\s*=", stripped)
        if match:
            key = tuple(part.strip().strip('"') for part in match.group(1).split("."))
            full = list(table + key)
            if full == names[:len(full)] and full:
                return number
    return None


def _describe(error: ValidationError, text: str | None, origin: str) -> str:
    lines = []
    for item in error.errors():
        # Drop the discriminator tag pydantic inserts ("source", "folder", "path" → "source.path").
        loc = tuple(part for part in item["loc"] if not (isinstance(part, str) and part in ("folder", "opencv", "genicam")
                                                        and item["loc"][:1] == ("source",)))
        key = ".".join(str(part) for part in loc) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (not one of the documented keys; see docs/CONFIG.md)"
        elif item["type"] == "missing":
            message = "required key is missing"
        where = ""
        if text is not None:
            line = _key_line(text, loc)
            if line is not None:
                where = f" (line {line})"
        value = item.get("input")
        shown = "" if item["type"] in ("missing", "extra_forbidden") or isinstance(value, dict) else f", got {value!r}"
        lines.append(f"key {key}{where}: {message}{shown}")
    return f"{origin}: " + "; ".join(lines)


def build_config(file: str | Path | None = None, overrides: list[tuple[list[str], object]] = ()) -> DaemonConfig:
    """The file (if any) with `overrides` applied on top, validated. Raises ConfigError naming the key."""
    data: dict = {}
    text = None
    origin = "command line"
    if file is not None:
        file = Path(file)
        origin = f"config {file}"
        try:
            text = file.read_text()
        except FileNotFoundError:
            raise ConfigError(f"config {file}: does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"config {file}: cannot be read ({error})") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config {file}: not valid TOML ({error})") from None
        _resolve_paths(data, file.resolve().parent)
    for path, value in overrides:
        apply_override(data, path, value)
    try:
        return DaemonConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error, text, origin)) from None


def load_config(file: str | Path) -> DaemonConfig:
    return build_config(file)
