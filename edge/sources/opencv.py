"""Frames from cv2.VideoCapture: a webcam index, an RTSP/HTTP stream, or a video file.

A file ends (`SourceExhausted`, or rewinds with `loop`); a live device or stream that stops
delivering is reopened inside `read()` with capped exponential backoff, as the protocol asks.

`open`, `read` and `close` hold one lock: a capture released while another thread reads from it
crashes the process in native code (seen in the test for it). A close therefore waits for a read
in progress, which on a stalled stream lasts as long as the backend's own read timeout.
"""

import logging
import time
from pathlib import Path

from edge.core.errors import ConfigError
from edge.core.frame import Frame
from edge.sources.base import CloseFirstLock, ReconnectSchedule, SourceExhausted, SourceUnavailable

log = logging.getLogger(__name__)


def _target_kind(target: int | str) -> str:
    if isinstance(target, int):
        return "device"
    return "stream" if "://" in target else "file"


class OpenCVSource:
    def __init__(
        self,
        target: int | str,
        loop: bool = False,
        source_id: str | None = None,
        reconnect_backoff_initial_s: float = 0.1,
        reconnect_backoff_max_s: float = 5.0,
    ):
        if isinstance(target, str) and target.isdigit():
            target = int(target)
        self.target = target
        self.kind = _target_kind(target)
        self.loop = loop
        self.source_id = source_id or f"opencv:{target}"
        self._schedule = ReconnectSchedule(reconnect_backoff_initial_s, reconnect_backoff_max_s)
        self._capture = None
        self._last_frame_id = -1
        self._stats = self._new_stats()
        self._lock = CloseFirstLock()

    @staticmethod
    def _new_stats() -> dict:
        return {"frames": 0, "dropped": 0, "timeouts": 0, "incomplete": 0, "reconnects": 0, "read_failures": 0}

    def _open_capture(self):
        import cv2

        capture = cv2.VideoCapture(self.target)
        if not capture.isOpened():
            capture.release()
            hint = {
                "device": "is the camera plugged in and readable by this user (/dev/video*)?",
                "stream": "is the URL right and the stream reachable?",
                "file": "is it a video format this OpenCV build can decode?",
            }[self.kind]
            raise SourceUnavailable(f"opencv source: cv2.VideoCapture could not open {self.kind} {self.target!r}; {hint}")
        return capture

    def open(self) -> None:
        if self.kind == "file" and not Path(self.target).is_file():
            raise ConfigError(f"opencv source: video file {self.target} does not exist")
        with self._lock.opening():
            self._release()
            self._stats = self._new_stats()
            self._capture = self._open_capture()
            self._schedule.reset()

    def _reconnect(self, timeout_s: float) -> None:
        self._capture = self._schedule.attempt(self._open_capture, timeout_s, f"opencv source {self.target!r} is down")
        self._stats["reconnects"] += 1

    def read(self, timeout_s: float) -> Frame:
        with self._lock.reading(self._not_open):
            return self._read(timeout_s)

    def _not_open(self) -> SourceExhausted | SourceUnavailable:
        # A closed device or stream is not reopened by a late read: only open() reconnects after close().
        error = SourceExhausted if self.kind == "file" else SourceUnavailable
        return error(f"opencv source {self.target!r} is not open")

    def _read(self, timeout_s: float) -> Frame:
        import cv2

        if self._capture is None:
            if self.kind == "file":
                raise self._not_open()
            self._reconnect(timeout_s)
        ok, image = self._capture.read()
        if not ok and self.kind == "file" and self.loop:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._capture.read()
        if not ok:
            if self.kind == "file":
                raise SourceExhausted(f"opencv source: end of video file {self.target}")
            self._stats["read_failures"] += 1
            self._capture.release()
            self._capture = None
            self._schedule.lost()
            raise SourceUnavailable(f"opencv source {self.target!r}: read failed; reconnecting")
        position_ms = self._capture.get(cv2.CAP_PROP_POS_MSEC) if self.kind == "file" else 0.0
        if image.ndim == 2:
            pixel_format = "Mono8"
        else:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            pixel_format = "RGB8"
        self._last_frame_id += 1
        self._stats["frames"] += 1
        return Frame(
            frame_id=self._last_frame_id,
            source_id=self.source_id,
            pixel_format=pixel_format,
            image=image,
            receive_ns=time.monotonic_ns(),
            # For a file this is the media time, the only clock it has.
            device_timestamp_ns=int(position_ms * 1e6),
        )

    def stats(self) -> dict:
        return dict(self._stats)

    def close(self) -> None:
        with self._lock.closing():
            self._release()

    def _release(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
