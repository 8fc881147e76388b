"""Pictures for the page: a heat map in colour, and a frame with its map laid over it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.core.errors import InputDataError

OVERLAY_ALPHA = 0.45


def _png(image: np.ndarray) -> bytes:
    import cv2

    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise InputDataError(f"image of shape {image.shape}: PNG encoding failed")
    return encoded.tobytes()


def colour_map(map_u8: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.applyColorMap(np.ascontiguousarray(map_u8, dtype=np.uint8), cv2.COLORMAP_JET)


def map_png(map_u8: np.ndarray) -> bytes:
    return _png(colour_map(map_u8))


def read_map(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputDataError(f"map image {path}: missing or unreadable")
    return image


def frame_png(frame_path: Path, map_u8: np.ndarray | None, overlay: bool) -> bytes:
    """The frame as the camera saw it, with the map blended over it (resized to the frame) when asked."""
    import cv2

    frame = cv2.imread(str(frame_path), cv2.IMREAD_UNCHANGED)
    if frame is None:
        raise InputDataError(f"frame {frame_path}: missing or unreadable")
    if frame.dtype != np.uint8:
        frame = cv2.convertScaleAbs(frame, alpha=255.0 / max(float(frame.max()), 1.0))
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    elif frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if overlay and map_u8 is not None:
        heat = colour_map(cv2.resize(map_u8, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_LINEAR))
        frame = cv2.addWeighted(frame, 1.0 - OVERLAY_ALPHA, heat, OVERLAY_ALPHA, 0.0)
    return _png(frame)
