"""Log lines of one camera, and the log levels of the daemon's `[logging]` section."""

import logging
from typing import Literal

from pydantic import Field

from edge.core.settings import Section


class CameraLog(logging.LoggerAdapter):
    """Starts every message with "camera NAME: " (one camera's lines grep together, also in a journal
    that several daemons share) and sets `record.camera` for handlers that want it as a field."""

    def process(self, msg, kwargs):
        kwargs["extra"] = self.extra
        return f"camera {self.extra['camera']}: {msg}", kwargs


def camera_log(module: str, camera: str) -> CameraLog:
    return CameraLog(logging.getLogger(module), {"camera": camera})


def apply_levels(level: str, levels: dict[str, str]) -> None:
    """The root logger at `level`, each named logger (`edge.transport.publisher`, `asyncua`, ...) at its own."""
    logging.getLogger().setLevel(level.upper())
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value.upper())


LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class LoggingConfig(Section):
    # Every logger not named in `levels`; the --log-level flag, when given, replaces it.
    level: LogLevel = "info"
    # Per logger: a module ("edge.transport.publisher", "edge.inspection.pipeline") or a library ("asyncua").
    levels: dict[str, LogLevel] = Field(default_factory=dict)
