"""The protocol every frame source implements, and how it reports trouble.

`read()` returns the next `Frame` or raises one of the four exceptions below; the pipeline
turns each into exactly one published outcome, so nothing a source meets goes unreported:

- `FrameError`: this one frame is broken (unreadable file, incomplete buffer, unsupported
  conversion). The pipeline publishes a `fault` decision for it and reads on.
- `SourceUnavailable`: the device is gone or timed out. The pipeline publishes a fault event
  and calls `read()` again; the source reconnects inside `read()` with capped exponential
  backoff, raising `SourceUnavailable` again until it is back.
- `SourceIdle`: no frame within the timeout, and none was due: the camera waits for a hardware
  trigger (no part on the line) and the device has just proved it is still there. Not a fault:
  the pipeline reads again and shows the idle time in its heartbeats. Only a source that can tell
  "no trigger" from "no camera" raises it; a timeout it cannot explain is `SourceUnavailable`.
- `SourceExhausted`: a replay reached its end (and does not loop). The pipeline drains and stops.
"""

import threading
import time
from contextlib import contextmanager
from typing import Protocol

from edge.core.errors import HlgfaError, SourceError
from edge.core.frame import Frame


class FrameError(HlgfaError):
    def __init__(self, message: str, frame_id: int | None = None):
        super().__init__(message)
        self.frame_id = frame_id


class SourceUnavailable(SourceError):
    pass


class SourceIdle(HlgfaError):
    pass


class SourceExhausted(HlgfaError):
    pass


class ReconnectSchedule:
    """When a lost device is tried again: capped exponential backoff, counted from the loss."""

    def __init__(self, initial_s: float, max_s: float):
        self.initial_s, self.max_s = initial_s, max_s
        self.reset()

    def reset(self) -> None:
        self.delay_s = self.initial_s
        self.next_attempt = 0.0

    def lost(self) -> None:
        self.next_attempt = time.monotonic() + self.delay_s

    def failed(self) -> None:
        self.delay_s = min(self.delay_s * 2, self.max_s)
        self.lost()

    def attempt(self, connect, timeout_s: float, down: str):
        """`connect()`'s result once an attempt is due. Not due within `timeout_s`: sleeps that long
        and raises SourceUnavailable (`down`, and when the next attempt is), so a read never blocks
        past its timeout. A failed connect lengthens the delay and re-raises."""
        wait = self.next_attempt - time.monotonic()
        if wait > timeout_s:
            time.sleep(max(timeout_s, 0.0))
            raise SourceUnavailable(f"{down}; next reconnect in {wait - timeout_s:.1f} s")
        if wait > 0:
            time.sleep(wait)
        try:
            result = connect()
        except Exception:
            self.failed()
            raise
        self.delay_s = self.initial_s
        return result


class CloseFirstLock:
    """Serialises a source's open, read and close, with close served ahead of further reads.

    The daemon's acquire thread calls `read()` in a loop while its main thread may call `close()`.
    `threading.Lock` is not fair: the reader releases it and takes it again at once, and the closer
    can wait for ever (seen on a 16-core machine: `close()` never returned). Once a close is asked
    for, reads that have not yet started raise `closed_error()` instead of queueing behind it.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._closing = threading.Event()

    @contextmanager
    def reading(self, closed_error):
        if self._closing.is_set():
            raise closed_error()
        with self._lock:
            if self._closing.is_set():
                raise closed_error()
            yield

    @contextmanager
    def opening(self):
        with self._lock:
            self._closing.clear()
            yield

    @contextmanager
    def closing(self):
        self._closing.set()
        with self._lock:
            yield


class Source(Protocol):
    source_id: str

    def open(self) -> None:
        """Connect and start acquisition; a bad setting raises `ConfigError` naming it."""

    def read(self, timeout_s: float) -> Frame:
        """The next frame, converted to RGB8/Mono8 and owned by the caller."""

    def stats(self) -> dict:
        """Counters since open: frames, dropped (id gaps), timeouts, incomplete, reconnects."""

    def close(self) -> None:
        """Stop acquisition and release the device; safe to call twice."""
