"""The frame every source yields and every later stage consumes."""

from dataclasses import dataclass, field

import numpy as np


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
