"""Image → network input. The one preprocessing used by training, evaluation and the line."""

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np

from edge.core.errors import InputDataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    """What a model expects: RGB input of `input_size` (height, width), normalised per channel.
    Frames of another aspect ratio are resized to it (squashed), as in training."""

    input_size: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", input_size(self.input_size))

    def to_dict(self) -> dict:
        return {"input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
                "color": "RGB", "resize": "area-down (whole-factor blocks first from 2×)/linear-up"}

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        return cls(input_size(data["input_size"]), tuple(data["mean"]), tuple(data["std"]))

    @property
    def pixels(self) -> int:
        return self.input_size[0] * self.input_size[1]


def input_size(value) -> tuple[int, int]:
    """A side S (square) or [height, width] → (height, width)."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    height, width = value
    return int(height), int(width)


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Mono8 (H×W or H×W×1) or RGB8 (H×W×3) as H×W or H×W×3; anything else is refused by name."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        dtype = getattr(image, "dtype", type(image).__name__)
        raise InputDataError(f"{name}: expected a uint8 array (Mono8 or RGB8), got dtype {dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3):
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    raise InputDataError(f"{name}: expected H×W (Mono8) or H×W×3 (RGB8), got shape {image.shape}")


def resize_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to `size` (height, width) whatever the aspect ratio, keeping the channels: area
    averaging when shrinking (antialiased), bilinear when enlarging. Channels are resized independently, so resizing Mono8 and then
    replicating equals replicating and then resizing, at a third of the work.

    A frame at least twice the size in both directions, unless both are whole multiples of it, is
    first averaged over k×k blocks (k the whole factor both allow; the last rows and columns padded
    by repeating the edge, so no pixel is dropped), then area-resized from there. OpenCV's area
    resize is several times faster per pixel at whole factors (the resulting costs: BENCHMARKS.md,
    preprocessing by frame size). Against one area resize the result differs by 0.1–0.8 grey
    levels on average on real images (at most 14), 1.2–1.8 on pixel-level noise; training,
    calibration and the line all resize through here, so they agree."""
    height, width = image.shape[:2]
    target_height, target_width = size
    if height == 0 or width == 0:
        raise InputDataError(f"image: empty image of shape {image.shape}")
    if height * width < target_height * target_width:
        return cv2.resize(image, (target_width, target_height), interpolation=cv2.INTER_LINEAR)
    block = min(height // target_height, width // target_width)
    if block >= 2 and (height % target_height or width % target_width):
        pad_rows, pad_columns = -height % block, -width % block
        if pad_rows or pad_columns:
            image = cv2.copyMakeBorder(image, 0, pad_rows, 0, pad_columns, cv2.BORDER_REPLICATE)
        image = cv2.resize(image, ((width + pad_columns) // block, (height + pad_rows) // block),
                           interpolation=cv2.INTER_AREA)
    return cv2.resize(image, (target_width, target_height), interpolation=cv2.INTER_AREA)


def resize_rgb8(image: np.ndarray, size: tuple[int, int], name: str = "image") -> np.ndarray:
    """Mono8/RGB8 of any size → height×width×3 RGB8 (what training caches and overlays show)."""
    resized = resize_to(check_image(image, name), size)
    return np.repeat(resized[:, :, None], 3, axis=2) if resized.ndim == 2 else resized


@lru_cache(maxsize=8)
def _lookup_table(spec: PreprocessSpec) -> np.ndarray:
    """3×256 float32: (level/255 − mean)/std for every uint8 level and channel, evaluated in float32
    step by step, as torchvision-style per-pixel arithmetic would (the training path's numbers)."""
    levels = np.arange(256, dtype=np.float32)[None, :] * np.float32(1.0 / 255.0)
    levels = levels - np.asarray(spec.mean, dtype=np.float32)[:, None]
    levels /= np.asarray(spec.std, dtype=np.float32)[:, None]
    return levels


def normalize_into(resized: np.ndarray, spec: PreprocessSpec, out: np.ndarray) -> None:
    """H×W (Mono8) or H×W×3 (RGB8) → `out` (3×H×W float32), ImageNet-normalised.
    A table lookup per channel (cv2.LUT, which releases the GIL): on the line this runs for every
    frame, beside inference."""
    table = _lookup_table(spec)
    planes = [resized] * 3 if resized.ndim == 2 else cv2.split(resized)
    for channel, plane in enumerate(planes):
        out[channel] = cv2.LUT(plane, table[channel])


def normalize(rgb8: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """H×W×3 uint8 → 3×H×W float32, ImageNet-normalised."""
    out = np.empty((3,) + rgb8.shape[:2], dtype=np.float32)
    normalize_into(rgb8, spec, out)
    return out


def preprocess(images: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """A batch of Mono8/RGB8 images of any size → N×3×H×W float32."""
    batch = np.empty((len(images), 3) + spec.input_size, dtype=np.float32)
    for index, image in enumerate(images):
        normalize_into(resize_to(check_image(image, f"image {index}"), spec.input_size), spec, batch[index])
    return batch
