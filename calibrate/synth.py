"""Synthetic anomalies on good images: how `hlgfa train` chooses without defect labels.

A user has good parts only, so every choice training makes (score rule, smoothing, how the terms
are fused) is judged on held-out good images and on copies of them carrying synthetic anomalies,
each with its exact mask. The kinds are deliberately unlike the nuisance augmentation
(`calibrate.augment`: isolated specks, long smooth lines that both views see and the module learns
to accept): short jagged cracks, low-frequency uneven patches, foreign texture and scars.
"""

import cv2
import numpy as np

KINDS = ("crack", "uneven", "texture", "scar")
# A soft-edged blob's mask: where at least a quarter of the change is applied.
MASK_LEVEL = 0.25


def _region_mask(shape: tuple[int, int], rng: np.random.Generator, area_range=(0.002, 0.03)) -> np.ndarray:
    """A soft-edged random blob (float32 0..1): an ellipse warped by low-frequency noise."""
    height, width = shape
    area = rng.uniform(*area_range) * height * width
    ratio = rng.uniform(0.4, 1.0)
    major = np.sqrt(area / (np.pi * ratio))
    centre = (rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height)
    mask = np.zeros(shape, np.float32)
    cv2.ellipse(mask, (int(centre[0]), int(centre[1])), (max(1, int(major)), max(1, int(major * ratio))),
                rng.uniform(0, 180), 0, 360, 1.0, -1)
    noise = cv2.resize(rng.random((4, 4)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    mask *= (noise > 0.3).astype(np.float32)
    return cv2.GaussianBlur(mask, (0, 0), max(1.0, major / 6))


def _contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """A change of a few local standard deviations: visible, not trivially saturated."""
    inside = image[mask > 0.5] if (mask > 0.5).any() else image.reshape(-1)
    return float(max(12.0, 2.5 * inside.std()))


def crack(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A short jagged line 1–3 px wide, darker or brighter than its surroundings."""
    height, width = image.shape[:2]
    steps = int(rng.integers(6, 14))
    step = rng.uniform(0.02, 0.05) * max(height, width)
    point = np.array([rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height])
    heading = rng.uniform(0, 2 * np.pi)
    points = [point.copy()]
    for _ in range(steps):
        heading += rng.normal(0, 0.6)
        point = point + step * np.array([np.cos(heading), np.sin(heading)])
        points.append(point.copy())
    mask = np.zeros((height, width), np.uint8)
    cv2.polylines(mask, [np.round(points).astype(np.int32)], False, 1, int(rng.integers(1, 4)), cv2.LINE_8)
    sign = -1.0 if rng.random() < 0.7 else 1.0
    change = sign * _contrast(image, cv2.dilate(mask, np.ones((9, 9), np.uint8)).astype(np.float32))
    return _apply(image, mask.astype(np.float32) * change), mask > 0


def uneven(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A large soft patch of changed brightness and contrast: survives downsampling."""
    mask = _region_mask(image.shape[:2], rng, (0.02, 0.08))
    change = (-1.0 if rng.random() < 0.5 else 1.0) * 0.8 * _contrast(image, mask)
    local = image.astype(np.float32)
    mean = cv2.GaussianBlur(local, (0, 0), 8)
    flattened = mean + (local - mean) * rng.uniform(0.2, 0.6)
    mixed = local + (flattened - local + change) * (mask[..., None] if image.ndim == 3 else mask)
    return np.clip(mixed, 0, 255).astype(np.uint8), mask > MASK_LEVEL


def texture(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A blob of foreign texture: the image's own pixels, rotated, rescaled and contrast-stretched."""
    height, width = image.shape[:2]
    mask = _region_mask((height, width), rng)
    angle, scale = rng.uniform(30, 150), rng.uniform(1.5, 3.0)
    rotation = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    foreign = cv2.warpAffine(image, rotation, (width, height), borderMode=cv2.BORDER_REFLECT).astype(np.float32)
    foreign = (foreign - foreign.mean()) * rng.uniform(1.5, 2.5) + foreign.mean()
    weight = mask[..., None] if image.ndim == 3 else mask
    mixed = image.astype(np.float32) * (1 - weight) + foreign * weight
    return np.clip(mixed, 0, 255).astype(np.uint8), mask > MASK_LEVEL


def scar(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste scar: a thin rotated strip of the image pasted elsewhere, brightness shifted."""
    height, width = image.shape[:2]
    strip_h = int(max(2, rng.uniform(0.01, 0.03) * height))
    strip_w = int(max(8, rng.uniform(0.08, 0.25) * width))
    top, left = int(rng.integers(0, height - strip_h)), int(rng.integers(0, width - strip_w))
    strip = image[top:top + strip_h, left:left + strip_w].astype(np.float32)
    strip = strip + (-1.0 if rng.random() < 0.5 else 1.0) * 0.6 * _contrast(image, np.ones((height, width)))
    canvas = np.zeros_like(image, dtype=np.float32)
    patch_mask = np.zeros((height, width), np.float32)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    y0, x0 = max(0, cy - strip_h // 2), max(0, cx - strip_w // 2)
    y1, x1 = min(height, y0 + strip_h), min(width, x0 + strip_w)
    canvas[y0:y1, x0:x1] = strip[:y1 - y0, :x1 - x0]
    patch_mask[y0:y1, x0:x1] = 1.0
    rotation = cv2.getRotationMatrix2D((cx, cy), rng.uniform(0, 180), 1.0)
    canvas = cv2.warpAffine(canvas, rotation, (width, height), flags=cv2.INTER_NEAREST)
    patch_mask = cv2.warpAffine(patch_mask, rotation, (width, height), flags=cv2.INTER_NEAREST)
    weight = patch_mask[..., None] if image.ndim == 3 else patch_mask
    mixed = image.astype(np.float32) * (1 - weight) + canvas * weight
    return np.clip(mixed, 0, 255).astype(np.uint8), patch_mask > 0.5


def _apply(image: np.ndarray, change: np.ndarray) -> np.ndarray:
    change = change[..., None] if image.ndim == 3 else change
    return np.clip(image.astype(np.float32) + change, 0, 255).astype(np.uint8)


SYNTHESIZERS = {"crack": crack, "uneven": uneven, "texture": texture, "scar": scar}


def synthesize(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image with one anomaly of `kind`, its boolean mask), same size and channels as `image`."""
    for _ in range(8):
        anomalous, mask = SYNTHESIZERS[kind](image, rng)
        # A blob warped away entirely, or a change clipped to nothing on a saturated part, is no anomaly.
        if mask.sum() >= 4 and np.abs(anomalous.astype(np.int16) - image).max() >= 8:
            return anomalous, mask
    return anomalous, mask
