"""Source configs (embedded in the daemon's TOML) and `build_source` for them or a CLI short form.

The `kind` of a config is the module name of its source (`folder`, `opencv`, `genicam`). Each
module is imported only when a source of that kind is built, so a config validates on a box
without harvesters or cv2.
"""

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, model_validator

from edge.core.errors import ConfigError
from edge.core.settings import Section
from edge.sources.base import Source

# The longest one read() may wait for a frame: a read must come back within the pipeline's stall timeout.
MAX_READ_TIMEOUT_S = 60.0
# A device's place in the list of cameras (an int `target`/`device`).
MAX_DEVICE_INDEX = 1023
DeviceIndex = Annotated[int, Field(ge=0, le=MAX_DEVICE_INDEX)]


class _Config(Section):
    source_id: str | None = None


class _Reconnecting(_Config):
    """A camera that may be lost: how soon it is tried again (capped exponential backoff)."""

    reconnect_backoff_initial_s: float = Field(default=0.1, gt=0, le=3600)
    reconnect_backoff_max_s: float = Field(default=5.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _backoff_order(self):
        if self.reconnect_backoff_initial_s > self.reconnect_backoff_max_s:
            raise ValueError(f"reconnect_backoff_initial_s {self.reconnect_backoff_initial_s:g} is over "
                             f"reconnect_backoff_max_s {self.reconnect_backoff_max_s:g}: expected initial ≤ max")
        return self


class FolderSourceConfig(_Config):
    kind: Literal["folder"] = "folder"
    path: Path
    fps: float | None = Field(default=None, gt=0, le=100_000)
    loop: bool = False
    # How long the pipeline waits in one read() (every source config has its own; see genicam's); also
    # the longest one image file may take to read.
    timeout_s: float = Field(default=0.5, gt=0, le=MAX_READ_TIMEOUT_S)


class OpenCVSourceConfig(_Reconnecting):
    kind: Literal["opencv"] = "opencv"
    # A device index, an RTSP/HTTP URL, or a video file path.
    target: DeviceIndex | str
    loop: bool = False
    timeout_s: float = Field(default=0.5, gt=0, le=MAX_READ_TIMEOUT_S)


class GenicamSourceConfig(_Reconnecting):
    kind: Literal["genicam"] = "genicam"
    cti: Path | None = None
    # Serial number, user-defined name or device id (str); list index (int); None = first device.
    device: str | DeviceIndex | None = None
    # Any GenICam feature → value, applied in order at start-up and after every reconnect.
    settings: dict[str, bool | int | float | str] = Field(default_factory=dict)
    # "hardware": no frame within timeout_s is an idle line, not a fault, while the device answers
    # (docs/CONFIG.md, "Idle line or lost camera"); "free"/"software": a frame was due, so a fault.
    trigger: Literal["free", "software", "hardware"] = "free"
    trigger_source: str = "Line0"
    buffers: int = Field(default=4, ge=1, le=1000)
    # How long the pipeline waits in read() for one frame (the source itself takes it per call).
    timeout_s: float = Field(default=1.0, gt=0, le=MAX_READ_TIMEOUT_S)
    reconnect_after_timeouts: int = Field(default=3, ge=1, le=1000)  # free/software trigger only


SourceConfig = Annotated[
    Union[FolderSourceConfig, OpenCVSourceConfig, GenicamSourceConfig], Field(discriminator="kind")
]
_ADAPTER = TypeAdapter(SourceConfig)


def parse_spec(spec: str) -> dict:
    """CLI short form → config dict: `folder:DIR`, `opencv:0|URL|FILE`, `genicam[:SERIAL]`."""
    kind, _, rest = spec.partition(":")
    if kind == "folder" and rest:
        return {"kind": "folder", "path": rest}
    if kind == "opencv" and rest:
        return {"kind": "opencv", "target": int(rest) if rest.isdigit() else rest}
    if kind == "genicam":
        return {"kind": "genicam", "device": rest or None}
    raise ConfigError(
        f"source {spec!r}: expected folder:DIR, opencv:INDEX|URL|FILE, genicam or genicam:SERIAL"
    )


def source_config(spec: str | dict | BaseModel) -> FolderSourceConfig | OpenCVSourceConfig | GenicamSourceConfig:
    if isinstance(spec, (FolderSourceConfig, OpenCVSourceConfig, GenicamSourceConfig)):
        return spec
    if isinstance(spec, str):
        spec = parse_spec(spec)
    try:
        return _ADAPTER.validate_python(spec)
    except ValidationError as error:
        raise ConfigError(f"source config: {error}") from error


def build_source(spec: str | dict | BaseModel) -> Source:
    """A source for `spec`, not yet opened."""
    config = source_config(spec)
    common = {"source_id": config.source_id}
    if isinstance(config, FolderSourceConfig):
        from edge.sources.folder import FolderSource

        return FolderSource(config.path, fps=config.fps, loop=config.loop, **common)
    if isinstance(config, OpenCVSourceConfig):
        from edge.sources.opencv import OpenCVSource

        return OpenCVSource(
            config.target,
            loop=config.loop,
            reconnect_backoff_initial_s=config.reconnect_backoff_initial_s,
            reconnect_backoff_max_s=config.reconnect_backoff_max_s,
            **common,
        )
    from edge.sources.genicam import GenicamSource

    return GenicamSource(
        device=config.device,
        cti=config.cti,
        settings=config.settings,
        trigger=config.trigger,
        trigger_source=config.trigger_source,
        buffers=config.buffers,
        reconnect_after_timeouts=config.reconnect_after_timeouts,
        reconnect_backoff_initial_s=config.reconnect_backoff_initial_s,
        reconnect_backoff_max_s=config.reconnect_backoff_max_s,
        **common,
    )

