import cv2
import numpy as np
import pytest

from calibrate.synth import KINDS, synthesize


@pytest.fixture(scope="module")
def cell(elpv_images):
    return cv2.imread(str(elpv_images["good"][0]), cv2.IMREAD_GRAYSCALE)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_changes_the_image_where_its_mask_says_and_almost_nowhere_else(cell, kind):
    rng = np.random.default_rng(1)
    for _ in range(5):
        anomalous, mask = synthesize(cell, kind, rng)
        assert anomalous.shape == cell.shape and anomalous.dtype == np.uint8
        assert mask.shape == cell.shape[:2] and mask.dtype == bool
        assert 0 < mask.mean() < 0.15
        changed = np.abs(anomalous.astype(np.int16) - cell) >= 8
        assert changed[mask].mean() > 0.2
        # Soft edges may spill a few pixels past the mask; the rest of the part is untouched.
        near = cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
        assert changed[~near].mean() < 0.002


def test_colour_images_keep_their_channels(cell):
    colour = np.repeat(cell[:, :, None], 3, axis=2)
    for kind in KINDS:
        anomalous, mask = synthesize(colour, kind, np.random.default_rng(2))
        assert anomalous.shape == colour.shape and mask.shape == colour.shape[:2]
