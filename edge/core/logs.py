"""Log lines of one camera, and the log levels of the daemon's `[logging]` section."""

import collections
import logging
import time
from typing import Callable, Hashable, Literal

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


class RepeatLimiter:
    """Lets a log line of one key (a peer and a cause) through at most once per `interval_s`; the next
    one let through says how many were held back meanwhile. A thousand reconnects or junk messages
    from one peer are then a few lines with counts, not a thousand. At most `max_keys` keys are
    remembered (the least recently seen forgotten first), so a flood of peers cannot grow it."""

    def __init__(self, interval_s: float = 60.0, max_keys: int = 256, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self._max_keys = max_keys
        self._clock = clock
        self._keys: collections.OrderedDict[Hashable, list] = collections.OrderedDict()  # key → [last shown, held]

    def log(self, logger, level: int, key: Hashable, message: str, *args) -> bool:
        """Log `message % args` at `level` unless `key` was logged less than `interval_s` ago; True if logged."""
        now = self._clock()
        entry = self._keys.get(key)
        if entry is not None:
            self._keys.move_to_end(key)
            if now - entry[0] < self.interval_s:
                entry[1] += 1
                return False
        held = entry[1] if entry is not None else 0
        if held:
            message += " (%d more like this in the last %.0f s)"
            args = (*args, held, now - entry[0])
        self._keys[key] = [now, 0]
        while len(self._keys) > self._max_keys:
            self._keys.popitem(last=False)
        logger.log(level, message, *args)
        return True


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
