"""Image → network input. The one preprocessing used by training, evaluation and the line."""

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from edge.errors import InputDataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    """What a model expects: square RGB input of `image_size`, normalised per channel."""

    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "color": "RGB", "resize": "area-down/linear-up"}

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        return cls(int(data["image_size"]), tuple(data["mean"]), tuple(data["std"]))


def as_rgb8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Mono8 → replicated RGB8; RGB8 passes through. Anything else is refused by name."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        dtype = getattr(image, "dtype", type(image).__name__)
        raise InputDataError(f"{name}: expected a uint8 array (Mono8 or RGB8), got dtype {dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    raise InputDataError(f"{name}: expected H×W (Mono8) or H×W×3 (RGB8), got shape {image.shape}")


def resize_rgb8(image: np.ndarray, size: int) -> np.ndarray:
    """Squash to size×size: area averaging when shrinking (antialiased), bilinear when enlarging."""
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise InputDataError(f"image: empty image of shape {image.shape}")
    shrinking = height * width >= size * size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def normalize(rgb8: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """size×size×3 uint8 → 3×size×size float32, ImageNet-normalised."""
    scaled = rgb8.astype(np.float32) * (1.0 / 255.0)
    scaled -= np.asarray(spec.mean, dtype=np.float32)
    scaled /= np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(scaled.transpose(2, 0, 1))


def preprocess(images: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """A batch of Mono8/RGB8 images of any size → N×3×S×S float32."""
    batch = np.empty((len(images), 3, spec.image_size, spec.image_size), dtype=np.float32)
    for index, image in enumerate(images):
        batch[index] = normalize(resize_rgb8(as_rgb8(image, f"image {index}"), spec.image_size), spec)
    return batch
