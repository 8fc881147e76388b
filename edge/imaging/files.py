"""Image files → the arrays every stage takes: Mono8 (H×W) or RGB8 (H×W×3) uint8.

One decoder for the folder source, the dataset reader and calibration, so a replayed
recording, a training image and a calibration image are read exactly alike.
"""

import logging
import os
import stat
import struct
import time
from pathlib import Path

import numpy as np

from edge.core.errors import InputDataError

log = logging.getLogger(__name__)

# Largest frame decoded: 2**27 px (134 MP, e.g. 16384×8192), 2× the largest sensor of the camera
# families in README.md. A file claiming more is refused from its header, before a decoder
# allocates gigabytes for it: a PNG header claiming 60000×60000 px (10 GB as RGB) is 33 bytes.
MAX_IMAGE_PIXELS = 1 << 27
# Largest image file read: the largest frame uncompressed at 16 bits per channel in RGB, plus 1 MiB of
# headers. A file growing past it while read (or /dev/zero behind a name) is refused there.
MAX_IMAGE_FILE_BYTES = MAX_IMAGE_PIXELS * 6 + (1 << 20)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DECODED_FORMATS = "PNG, JPEG, BMP or TIFF"


def read_image_bytes(path: Path, name: str, timeout_s: float | None = None) -> bytes:
    """The content of image file `path`: a regular file only (a FIFO would block the read for ever,
    a device or /proc file never end), at most MAX_IMAGE_FILE_BYTES, read within `timeout_s` (None: no
    limit). InputDataError naming `name` otherwise; OSError when it cannot be opened or read."""
    started = time.monotonic()
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # O_NONBLOCK: a FIFO opens at once
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            kind = ("a FIFO" if stat.S_ISFIFO(status.st_mode) else "a directory" if stat.S_ISDIR(status.st_mode)
                    else "a device" if stat.S_ISCHR(status.st_mode) or stat.S_ISBLK(status.st_mode) else "a socket")
            raise InputDataError(f"{name}: {kind}, not a regular file; expected an image file")
        if status.st_size > MAX_IMAGE_FILE_BYTES:
            raise InputDataError(f"{name}: {status.st_size} bytes, more than the {MAX_IMAGE_FILE_BYTES} an image "
                                 f"file may have; not read")
        chunks, total = [], 0
        while chunk := os.read(descriptor, min(1 << 22, MAX_IMAGE_FILE_BYTES + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_IMAGE_FILE_BYTES:
                raise InputDataError(f"{name}: grew past {MAX_IMAGE_FILE_BYTES} bytes while read; not read")
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise InputDataError(f"{name}: not read within {timeout_s:g} s ({total} bytes so far)")
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first image directory of a TIFF or BigTIFF file."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 16:
        return None
    version = struct.unpack(order + "H", data[2:4])[0]
    if version == 42:
        offset, count_format, entry_size, value_at = struct.unpack(order + "I", data[4:8])[0], "H", 12, 8
    elif version == 43:
        offset, count_format, entry_size, value_at = struct.unpack(order + "Q", data[8:16])[0], "Q", 20, 12
    else:
        return None
    count_size = struct.calcsize(count_format)
    if offset + count_size > len(data):
        return None
    count = struct.unpack(order + count_format, data[offset:offset + count_size])[0]
    found = {}
    for index in range(min(count, 4096)):
        start = offset + count_size + index * entry_size
        if start + entry_size > len(data):
            return None
        tag, kind = struct.unpack(order + "HH", data[start:start + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT, LONG or LONG8, held in the entry itself
            value_format = {3: "H", 4: "I", 16: "Q"}.get(kind)
            if value_format is None:
                return None
            found[tag] = struct.unpack(order + value_format,
                                       data[start + value_at:start + value_at + struct.calcsize(value_format)])[0]
    return (found[256], found[257]) if len(found) == 2 else None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as a PNG, JPEG, BMP or TIFF header states it, read without decoding; None for
    other formats or a header too short or too damaged to say."""
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _tiff_size(data)
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
    if size is None:
        # Only formats whose size is read before decoding are decoded: cv2 would allocate whatever
        # size another format's header claims.
        raise InputDataError(f"{name}: not a {DECODED_FORMATS} image whose header states its size "
                             f"(it starts with {data[:8]!r}); not decoded")
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
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
        data = read_image_bytes(path, f"image {path}")
    except OSError as error:
        raise InputDataError(f"image {path}: cannot be read ({error})") from error
    return decode_image(data, f"image {path}")[0]


def image_files(directory: Path) -> list[Path]:
    """The image files directly in `directory` (by suffix, any case; hidden files left out), in name
    order. What else is there (another format, a folder or FIFO named like an image) is left out with
    one WARNING naming it, so a frame that is not replayed is never a silent absence."""
    chosen, skipped = [], []
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            chosen.append(path)
        else:
            skipped.append(path.name + ("" if path.suffix.lower() not in IMAGE_SUFFIXES else " (not a regular file)"))
    if skipped:
        log.warning("%s: left out %d entries that are not %s image files (%s): %s%s", directory, len(skipped),
                    DECODED_FORMATS, ", ".join(IMAGE_SUFFIXES), ", ".join(skipped[:10]),
                    ", ..." if len(skipped) > 10 else "")
    return chosen
