"""Replay images from a folder, or a recording made by `hlgfa camera grab`.

A plain folder yields its images sorted by file name, with frame ids 0, 1, 2, ... A folder that
holds `frames.jsonl` is a recording: its lines give the order, the files, and the frame ids and
device timestamps the camera reported, so a replay reproduces the original ids (and their gaps).
"""

import json
import logging
import time
from pathlib import Path


from edge.core.errors import ConfigError, InputDataError
from edge.core.frame import FRAME_ID_LIMIT, Frame, is_frame_id
from edge.imaging.files import IMAGE_SUFFIXES, decode_image, image_files, read_image_bytes
from edge.sources.base import FrameError, SourceExhausted

log = logging.getLogger(__name__)

RECORDING_INDEX = "frames.jsonl"


def _read_recording(index_path: Path) -> list[dict]:
    entries = []
    try:
        text = index_path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InputDataError(f"recording index {index_path}: cannot be read as UTF-8 text ({error}); "
                             f"expected the frames.jsonl `hlgfa camera grab` writes") from None
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            entries.append(
                {
                    "file": index_path.parent / str(record["file"]),
                    "frame_id": record["frame_id"],
                    "device_timestamp_ns": int(record.get("device_timestamp_ns", 0)),
                }
            )
        except (ValueError, KeyError, TypeError) as error:
            raise InputDataError(
                f"{index_path}:{line_number}: expected a JSON object with 'file' and 'frame_id' ({error})"
            ) from error
        if not is_frame_id(entries[-1]["frame_id"]):
            raise InputDataError(f"{index_path}:{line_number}: frame_id {entries[-1]['frame_id']!r}, expected an "
                                 f"integer from 0 to 2**64 - 1 (a camera's frame counter)")
    return entries


class FolderSource:
    def __init__(self, path: str | Path, fps: float | None = None, loop: bool = False, source_id: str | None = None):
        if fps is not None and fps <= 0:
            raise ConfigError(f"folder source fps must be > 0, got {fps}")
        self.path = Path(path)
        self.fps = fps
        # Unpaced, the replay waits for the pipeline instead of being read ahead (edge.inspection.pipeline,
        # _wait_for_room): a replay must not invent deadline faults from the daemon's own queueing.
        self.backpressure = fps is None
        self.loop = loop
        self.source_id = source_id or f"folder:{self.path}"
        self._entries: list[dict] = []
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._position = 0
        self._passes = 0
        self._shift = 0  # added to the recording's ids: a looped pass's ids keep increasing
        self._id_span = 0
        self._last_frame_id: int | None = None
        self._next_due: float | None = None
        self._stats = {"frames": 0, "dropped": 0, "timeouts": 0, "incomplete": 0, "reconnects": 0,
                       "frame_errors": 0, "passes": 0}

    def open(self) -> None:
        if not self.path.is_dir():
            raise ConfigError(f"folder source {self.path}: not a directory")
        index_path = self.path / RECORDING_INDEX
        if index_path.is_file():
            entries = _read_recording(index_path)
            self.recording = True
        else:
            files = image_files(self.path)
            entries = [{"file": p, "frame_id": i, "device_timestamp_ns": 0} for i, p in enumerate(files)]
            self.recording = False
        if not entries:
            raise InputDataError(
                f"folder source {self.path}: no images ({', '.join(IMAGE_SUFFIXES)}) and no {RECORDING_INDEX}"
            )
        self._reset_counters()
        self._entries = entries
        # Looped passes shift ids by the span of one pass so ids keep increasing.
        self._id_span = max(e["frame_id"] for e in entries) + 1
        log.info("folder source %s: %d frames%s", self.path, len(entries), " (recording)" if self.recording else "")

    def _pace(self) -> None:
        if self.fps is None:
            return
        period = 1.0 / self.fps
        now = time.monotonic()
        if self._next_due is None or now - self._next_due > period:
            # Fell behind by more than a period (or first frame): restart the schedule rather
            # than bursting frames to catch up.
            self._next_due = now
        elif self._next_due > now:
            time.sleep(self._next_due - now)
        self._next_due += period

    def read(self, timeout_s: float) -> Frame:
        if not self._entries:
            raise SourceExhausted(f"folder source {self.path} is not open")
        if self._position >= len(self._entries):
            if not self.loop:
                raise SourceExhausted(f"folder source {self.path}: all {len(self._entries)} frames read")
            self._position = 0
            self._passes += 1
            self._stats["passes"] = self._passes
            if self._shift + 2 * self._id_span > FRAME_ID_LIMIT:
                # This pass's ids would pass 2**64 - 1: start again from the recording's own ids, as a
                # camera's counter wraps (subscribers see the ids go back, as after a camera restart).
                self._shift, self._last_frame_id = 0, None
            else:
                self._shift += self._id_span
        entry = self._entries[self._position]
        self._position += 1
        frame_id = entry["frame_id"] + self._shift
        self._pace()
        if self._last_frame_id is not None and frame_id > self._last_frame_id + 1:
            self._stats["dropped"] += frame_id - self._last_frame_id - 1
        self._last_frame_id = frame_id
        try:
            data = read_image_bytes(entry["file"], str(entry["file"]), timeout_s)
            image, pixel_format = decode_image(data, str(entry["file"]))
        except (OSError, InputDataError) as error:
            self._stats["frame_errors"] += 1
            raise FrameError(f"folder source: {error}", frame_id=frame_id) from error
        self._stats["frames"] += 1
        return Frame(
            frame_id=frame_id,
            source_id=self.source_id,
            pixel_format=pixel_format,
            image=image,
            receive_ns=time.monotonic_ns(),
            device_timestamp_ns=entry["device_timestamp_ns"],
            meta={"file": str(entry["file"])},
        )

    def stats(self) -> dict:
        return dict(self._stats)

    def frame_files(self) -> dict[int, Path]:
        """Frame id → image file of one pass, after open(): how the records view finds the frame of a
        decision, which the wire does not carry."""
        return {entry["frame_id"]: entry["file"] for entry in self._entries}

    def close(self) -> None:
        self._entries = []
