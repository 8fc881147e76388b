"""Noise-aware augmentation: nuisance patterns a good part may carry (dust, hairs, streaks).

Applied to the uint8 image before both views are made, so HR and LR see the same nuisance and
the module learns to align it: a good part with a hair on it is still a good part.
"""

import cv2
import numpy as np


def _nuisance_value(image: np.ndarray, rng: np.random.Generator) -> int:
    """Dark or bright relative to the image, so the speck is visible on any part."""
    mean = float(image.mean())
    return int(rng.uniform(0, max(mean - 40, 1))) if rng.random() < 0.5 else int(rng.uniform(min(mean + 40, 254), 255))


def add_point_noise(image: np.ndarray, rng: np.random.Generator, count_range=(10, 60)) -> np.ndarray:
    """Sparse isolated specks of radius 0–1 px (dust-like)."""
    noisy = image.copy()
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(*count_range))):
        value = _nuisance_value(image, rng)
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(noisy, center, int(rng.integers(0, 2)), (value,) * (3 if noisy.ndim == 3 else 1), -1)
    return noisy


def add_stripe_noise(image: np.ndarray, rng: np.random.Generator, count_range=(1, 4)) -> np.ndarray:
    """Thin straight or gently curved lines and faint bands (hair, fixture scratches, streaks)."""
    noisy = image.copy()
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(*count_range))):
        value = _nuisance_value(image, rng)
        colour = (value,) * (3 if noisy.ndim == 3 else 1)
        start = np.array([rng.uniform(0, width), rng.uniform(0, height)])
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.2, 0.8) * max(height, width)
        bend = rng.uniform(-0.2, 0.2) * length
        points = []
        for t in np.linspace(0, 1, 12):
            along = start + t * length * np.array([np.cos(angle), np.sin(angle)])
            across = bend * 4 * t * (1 - t) * np.array([-np.sin(angle), np.cos(angle)])
            points.append(along + across)
        thickness = int(rng.integers(1, 3))
        layer = noisy.copy()
        cv2.polylines(layer, [np.round(points).astype(np.int32)], False, colour, thickness, cv2.LINE_AA)
        opacity = rng.uniform(0.4, 1.0)
        noisy = cv2.addWeighted(layer, opacity, noisy, 1 - opacity, 0)
    return noisy


def noise_augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Points, stripes or both, chosen at random."""
    choice = rng.integers(0, 3)
    if choice in (0, 2):
        image = add_point_noise(image, rng)
    if choice in (1, 2):
        image = add_stripe_noise(image, rng)
    return image
