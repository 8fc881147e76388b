import numpy as np

from calibrate.metrics import image_auroc, pixel_auroc, pro_score


def test_image_auroc_perfect_and_undefined():
    assert image_auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert image_auroc(np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.75
    assert image_auroc(np.array([0, 0]), np.array([0.1, 0.2])) is None


def test_pro_is_one_when_every_region_is_found_before_any_false_positive():
    masks = np.zeros((2, 20, 20), bool)
    masks[0, 2:5, 2:5] = True
    masks[1, 10:15, 10:12] = True
    maps = masks.astype(np.float32) + np.random.default_rng(0).uniform(0, 0.5, masks.shape).astype(np.float32)
    assert pro_score(masks, maps) > 0.99
    assert pixel_auroc(masks, maps) == 1.0


def test_pro_weights_regions_equally_not_by_area():
    # A large region found and a small region missed: pixel AUROC stays high, PRO drops to about one half.
    masks = np.zeros((1, 40, 40), bool)
    masks[0, 0:20, 0:20] = True  # 400 px, found
    masks[0, 30:32, 30:32] = True  # 4 px, scored like background
    maps = np.zeros((1, 40, 40), np.float32)
    maps[0, 0:20, 0:20] = 1.0
    pro = pro_score(masks, maps)
    assert 0.45 < pro < 0.6
    assert pixel_auroc(masks, maps) > 0.98


def test_pro_of_random_maps_is_low():
    rng = np.random.default_rng(1)
    masks = np.zeros((4, 32, 32), bool)
    masks[:, 8:16, 8:16] = True
    maps = rng.uniform(size=masks.shape).astype(np.float32)
    # Random scores: overlap ≈ FPR, so the normalised area up to 0.3 is about 0.15.
    assert 0.1 < pro_score(masks, maps) < 0.2
