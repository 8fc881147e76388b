"""Pictures for the page: a heat map on one fixed colour scale, a frame with the reject region's
contour and the heat above the threshold laid over it, and small thumbnails.

**One scale for every frame** (as threshold-anchored heat maps do): a map value is read in model
units (the uint8 map and its recorded value range), then divided by the decision's image threshold.
Below 1 (under the threshold) it is neutral grey, darker for lower; from 1 to `SCALE_TOP` it runs
through the `SCALE` colours; above `SCALE_TOP` it stays at the last. A given colour therefore means
the same score on every frame and every camera with the same thresholds, and the region outlined on
the frame is exactly where the map is above the threshold. The page draws its legend from `scale()`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.core.errors import InputDataError

OVERLAY_ALPHA = 0.55
SCALE_TOP = 2.0  # × the threshold: the top of the graded range
SCALE = ("#ffe45c", "#ffa02e", "#ff5a1f", "#e3171f", "#a3004f", "#6a00a8")  # from the threshold up
NEUTRAL_LOW, NEUTRAL_HIGH = 24, 120  # grey levels of value 0 and of the threshold
CONTOUR_BGR = (255, 255, 255)
THUMB_PX = 200


def _bgr(colour: str) -> tuple[int, int, int]:
    return int(colour[5:7], 16), int(colour[3:5], 16), int(colour[1:3], 16)


def _lut() -> np.ndarray:
    """256 BGR colours over [1, SCALE_TOP] × threshold, interpolated between the SCALE stops."""
    stops = np.array([_bgr(c) for c in SCALE], np.float32)
    at = np.linspace(0.0, 1.0, len(stops))
    steps = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(steps, at, stops[:, k]) for k in range(3)], axis=1).astype(np.uint8)


_LUT = _lut()


def scale() -> dict:
    """What the page's legend shows: the graded colours from the threshold to SCALE_TOP × it."""
    return {"colours": list(SCALE), "top": SCALE_TOP,
            "neutral": [f"#{v:02x}{v:02x}{v:02x}" for v in (NEUTRAL_LOW, NEUTRAL_HIGH)]}


def _png(image: np.ndarray) -> bytes:
    import cv2

    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise InputDataError(f"image of shape {image.shape}: PNG encoding failed")
    return encoded.tobytes()


def relative(map_u8: np.ndarray, lo: float | None, hi: float | None, threshold: float | None) -> np.ndarray | None:
    """The map in units of the threshold (1.0 = the threshold); None when there is no positive threshold
    to anchor to (a fault before scoring)."""
    if threshold is None or not threshold > 0:
        return None
    lo = 0.0 if lo is None else lo
    hi = 255.0 if hi is None else hi
    values = lo + map_u8.astype(np.float32) * np.float32((hi - lo) / 255.0)
    return values / np.float32(threshold)


def colour(rel: np.ndarray | None, map_u8: np.ndarray) -> np.ndarray:
    """BGR: grey below the threshold, the SCALE above it; a map without a threshold in plain grey."""
    if rel is None:
        grey = np.ascontiguousarray(map_u8, dtype=np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    below = (NEUTRAL_LOW + np.clip(rel, 0, 1) * (NEUTRAL_HIGH - NEUTRAL_LOW)).astype(np.uint8)
    out = np.repeat(below[:, :, None], 3, axis=2)
    above = rel >= 1.0
    if above.any():
        index = np.clip((rel[above] - 1.0) / (SCALE_TOP - 1.0) * 255.0, 0, 255).astype(np.uint8)
        out[above] = _LUT[index]
    return out


def map_png(rel: np.ndarray | None, map_u8: np.ndarray) -> bytes:
    return _png(colour(rel, map_u8))


def read_map(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputDataError(f"map image {path}: missing or unreadable")
    return image


def _read_frame(frame_path: Path) -> np.ndarray:
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
    return frame


def overlay(frame: np.ndarray, rel: np.ndarray | None) -> np.ndarray:
    """The frame with the heat above the threshold blended over it and the region's contour drawn."""
    import cv2

    if rel is None:
        return frame
    rel = cv2.resize(rel, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_LINEAR)
    above = rel >= 1.0
    if not above.any():
        return frame
    out = frame.copy()
    heat = colour(rel, np.zeros(rel.shape, np.uint8))
    out[above] = (frame[above] * (1 - OVERLAY_ALPHA) + heat[above] * OVERLAY_ALPHA).astype(np.uint8)
    contours, _ = cv2.findContours(above.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(max(frame.shape[:2]) / 150))
    cv2.drawContours(out, contours, -1, (0, 0, 0), thickness + 2)
    cv2.drawContours(out, contours, -1, CONTOUR_BGR, thickness)
    return out


def frame_png(frame_path: Path, rel: np.ndarray | None, with_overlay: bool) -> bytes:
    """The frame as the camera saw it, or with the map's heat and the region's contour over it."""
    frame = _read_frame(frame_path)
    return _png(overlay(frame, rel) if with_overlay else frame)


def thumb_png(frame_path: Path | None, rel: np.ndarray | None, map_u8: np.ndarray | None) -> bytes:
    """A small picture of the part: the frame with its contour when the frame is there, else the map."""
    import cv2

    if frame_path is not None:
        image = overlay(_read_frame(frame_path), rel)
    elif map_u8 is not None:
        image = colour(rel, map_u8)
    else:
        raise InputDataError("no frame and no map to make a thumbnail of")
    factor = THUMB_PX / max(image.shape[:2])
    if factor < 1:
        image = cv2.resize(image, (round(image.shape[1] * factor), round(image.shape[0] * factor)),
                           interpolation=cv2.INTER_AREA)
    return _png(image)
