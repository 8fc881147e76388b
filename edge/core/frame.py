"""The frame every source yields and every later stage consumes."""

from dataclasses import dataclass, field

import numpy as np

# A camera's frame counter is unsigned 64-bit (GenICam's BlockID); the wire and the bridge carry it so.
FRAME_ID_LIMIT = 1 << 64


def is_frame_id(value: object) -> bool:
    """An integer 0 ≤ value < 2**64: a frame id every later stage can carry."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < FRAME_ID_LIMIT


@dataclass
class Frame:
    """One image from a source, already converted to RGB8 (H×W×3) or Mono8 (H×W).

    `receive_ns` is host `time.monotonic_ns()` at arrival: latency is measured from it.
    `device_timestamp_ns` is the camera's own clock (0 when the source has none).
    """

    frame_id: int
    source_id: str
    pixel_format: str
    image: np.ndarray
    receive_ns: int
    device_timestamp_ns: int = 0
    meta: dict = field(default_factory=dict)
