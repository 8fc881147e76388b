"""The daemon's configuration: one TOML file per camera, every key also settable by a flag.

    camera = "line1"
    model = "/var/lib/hlgfa-edge/models/cells-v3"
    thresholds = "/var/lib/hlgfa-edge/models/cells-v3/thresholds.json"   # default: MODEL/thresholds.json
    [source]    kind = "genicam" | "folder" | "opencv", and that kind's keys   (edge/sources/factory.py)
    [backend]   kind = "tensorrt" | "onnxruntime" | "torch" | "auto", and that kind's keys
                                                     (edge/backends/: one module per kind, its settings beside it)
    [pipeline]  queue sizes, deadline_ms, max_batch_wait_ms, overload, ...    (edge/inspection/pipeline.py)
    [publish]   endpoint, reliable_endpoint, maps, map_size, heartbeat_period_s, CURVE keys, ...
                                                                             (edge/transport/publisher.py)
    [health]    metrics_port, metrics_address                                (here: the service is above us)
    [quality]   per-statistic overrides of the calibrated frame-quality ranges (edge/imaging/quality.py)
    [parts]     part ids from the PLC: timeout_s, acquire                   (edge/inspection/parts.py)
    [logging]   level, and levels per logger, e.g. levels = {"edge.transport.publisher" = "debug"}
                                                                             (edge/core/logs.py)

Each section's model lives with the code that uses it, which receives that section and nothing else;
this module only joins them.

docs/CONFIG.md is the reference. Every section is a pydantic model with extra="forbid", so a typo is an
error naming the key (and its line in the file) instead of a silently ignored setting. Relative paths
in a file are taken relative to the file's directory, so a config and its model can move together;
paths given as flags are taken relative to the working directory, as a shell user expects.

`hlgfa engine ensure --config FILE` reads the same file through `load_config`, so it builds the engine
`hlgfa run` will load, from the graph and at the precision `[backend]` names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from edge.backends.base import AutoConfig
from edge.backends.onnxruntime import OnnxRuntimeConfig
from edge.backends.tensorrt import TensorRTConfig
from edge.backends.torch import TorchConfig
from edge.core.logs import LoggingConfig
from edge.core.settings import Section, load, resolve_paths
from edge.imaging.quality import QualityConfig
from edge.inspection.parts import PartsConfig
from edge.inspection.pipeline import PipelineConfig
from edge.sources.factory import FolderSourceConfig, SourceConfig
from edge.transport import wire
from edge.transport.endpoints import same_endpoint
from edge.transport.publisher import PublishConfig

DEFAULT_THRESHOLDS_NAME = "thresholds.json"


class HealthConfig(Section):
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_address: str = "127.0.0.1"

    @field_validator("metrics_address")
    @classmethod
    def _address(cls, value: str) -> str:
        """An address of this machine the metrics server can listen on (IPv4 or IPv6; 0.0.0.0 for all),
        proved by binding port 0 there, as `hlgfa run` binds it."""
        import socket

        try:
            family, kind, _, _, address = socket.getaddrinfo(value, 0, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
            with socket.socket(family, kind) as probe:
                probe.bind(address)
        except (OSError, UnicodeError) as error:
            raise ValueError(f"{value!r} cannot be listened on here ({getattr(error, 'strerror', None) or error}); "
                             "expected an IP address or name of this machine, or 0.0.0.0 for all") from None
        return value


def _backend_kind(value) -> str:
    return value.get("kind", "auto") if isinstance(value, dict) else getattr(value, "kind", "auto")


BackendConfig = Annotated[
    Union[Annotated[AutoConfig, Tag("auto")], Annotated[TensorRTConfig, Tag("tensorrt")],
          Annotated[OnnxRuntimeConfig, Tag("onnxruntime")], Annotated[TorchConfig, Tag("torch")]],
    Discriminator(_backend_kind),
]
# Kind names pydantic inserts into an error's location ("backend", "tensorrt", "threads"): left out of messages.
_KIND_TAGS = ("auto", "tensorrt", "onnxruntime", "torch", "folder", "opencv", "genicam")


class DaemonConfig(Section):
    camera: str = "cam0"
    model: Path
    thresholds: Path | None = None
    source: SourceConfig
    backend: BackendConfig = Field(default_factory=AutoConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    parts: PartsConfig = Field(default_factory=PartsConfig)

    @field_validator("camera")
    @classmethod
    def _camera(cls, value: str) -> str:
        try:
            return wire.check_camera(value)
        except wire.WireError as error:
            raise ValueError(str(error)) from None

    @model_validator(mode="after")
    def _across_sections(self):
        """Rules between keys of two sections: what `hlgfa run` would otherwise find out only when
        binding a socket or reading a frame."""
        if self.source.timeout_s >= self.pipeline.stall_timeout_s:
            raise ValueError(f"source.timeout_s {self.source.timeout_s:g} is not less than pipeline.stall_timeout_s "
                             f"{self.pipeline.stall_timeout_s:g}: a read waiting for its frame would read as a stall")
        port = self.health.metrics_port
        if port:
            for key, endpoint in (("endpoint", self.publish.endpoint), ("reliable_endpoint", self.publish.reliable_endpoint)):
                if endpoint is not None and same_endpoint(f"tcp://{self.health.metrics_address}:{port}", endpoint):
                    raise ValueError(f"health.metrics_port {port} is the port of publish.{key} {endpoint!r}: "
                                     "expected a port of its own")
        return self

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
        if isinstance(self.backend, TensorRTConfig):
            data["backend"]["onnx"] = str(self.backend.source_graph(self.model))
        return data


# Paths in a file are relative to its directory: (section, key) of each path-valued key.
_PATH_KEYS = ((None, "model"), (None, "thresholds"), ("backend", "onnx"), ("backend", "engine"),
              ("publish", "curve_secret_key"), ("publish", "curve_allowed_clients"), ("source", "path"),
              ("source", "cti"))


def _resolve(data: dict, folder: Path) -> None:
    resolve_paths(data, folder, _PATH_KEYS)


def build_config(file: str | Path | None = None, overrides: list[tuple[list[str], object]] = ()) -> DaemonConfig:
    """The file (if any) with `overrides` applied on top, validated. Raises ConfigError naming the key."""
    return load(DaemonConfig, file, resolve=_resolve, overrides=overrides, tags=_KIND_TAGS)


def load_config(file: str | Path) -> DaemonConfig:
    return build_config(file)
