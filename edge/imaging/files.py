"""Image files → the arrays every stage takes: Mono8 (H×W) or RGB8 (H×W×3) uint8.

One decoder for the folder source, the dataset reader and calibration, so a replayed
recording, a training image and a calibration image are read exactly alike.
"""

import struct
from pathlib import Path

import numpy as np

from edge.core.errors import InputDataError

# Largest frame decoded: 2**27 px (134 MP, e.g. 16384×8192), 2× the largest sensor of the camera
# families in README.md. A file claiming more is refused from its header, before a decoder
# allocates gigabytes for it: a PNG header claiming 60000×60000 px (10 GB as RGB) is 33 bytes.
MAX_IMAGE_PIXELS = 1 << 27
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as a PNG, JPEG or BMP header states it, read without decoding; None for
    other formats (cv2's own limit then applies) or a header too short to say."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)  # a negative height is a top-down bitmap
    if data[:2] == b"\xff\xd8":
        # Walk the markers to the first start-of-frame (SOF0..SOF15 except DHT/JPG/DAC).
        position = 2
        while position + 9 <= len(data):
            if data[position] != 0xFF:
                return None
            marker = data[position + 1]
            if marker == 0xFF:  # fill byte
                position += 1
                continue
            length = struct.unpack(">H", data[position + 2:position + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[position + 5:position + 9])
                return width, height
            position += 2 + length
    return None


def decode_image(data: bytes, name: str) -> tuple[np.ndarray, str]:
    """Encoded image bytes → (Mono8 H×W or RGB8 H×W×3 uint8, "Mono8" | "RGB8").

    Grayscale stays Mono8 rather than being tripled: the model's preprocessing decides how to
    expand channels, and a Mono8 camera replayed from disk must look like that camera.
    """
    import cv2

    if not data:
        raise InputDataError(f"{name}: empty file (0 bytes), expected an encoded image")
    size = header_size(data)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise InputDataError(f"{name}: header claims {size[0]}×{size[1]} px, more than the "
                             f"{MAX_IMAGE_PIXELS} px a frame may have; not decoded")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as error:
        # cv2 raises instead of returning None for some damage (a size over its own limit, a
        # truncated stream in some codecs): the same verdict, this file is not a usable image.
        raise InputDataError(f"{name}: not a readable image (cv2.imdecode: {str(error).strip()[:200]})") from None
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


def image_files(directory: Path) -> list[Path]:
    """The image files directly in `directory` (by suffix, any case; hidden files left out), in name order."""
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
