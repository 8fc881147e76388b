"""Image files → the arrays every stage takes: Mono8 (H×W) or RGB8 (H×W×3) uint8.

One decoder for the folder source, the dataset reader and calibration, so a replayed
recording, a training image and a calibration image are read exactly alike.
"""

from pathlib import Path

import numpy as np

from edge.errors import InputDataError


def decode_image(data: bytes, name: str) -> tuple[np.ndarray, str]:
    """Encoded image bytes → (Mono8 H×W or RGB8 H×W×3 uint8, "Mono8" | "RGB8").

    Grayscale stays Mono8 rather than being tripled: the model's preprocessing decides how to
    expand channels, and a Mono8 camera replayed from disk must look like that camera.
    """
    import cv2

    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputDataError(f"{name}: not a readable image (cv2.imdecode failed on {len(data)} bytes)")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InputDataError(f"{name}: pixel type {image.dtype} is not supported, expected 8 or 16 bit")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.ascontiguousarray(image), "Mono8"
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), "RGB8"
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB), "RGB8"
    raise InputDataError(f"{name}: image shape {image.shape} is neither grayscale nor colour")


def read_image(path: str | Path) -> np.ndarray:
    """An image file → Mono8 or RGB8; 16-bit images are scaled to 8 bit."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputDataError(f"image {path}: cannot be read ({error})") from error
    if not data:
        raise InputDataError(f"image {path}: empty file")
    return decode_image(data, f"image {path}")[0]
