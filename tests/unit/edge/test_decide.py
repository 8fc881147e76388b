"""decide(): score and map → verdict, with every broken number a fault, never a pass."""

import math

import numpy as np
import pytest

from edge.inspection.decide import FAULT, OK, REJECT, decide
from edge.artifacts.thresholds import RegionRule, Thresholds

IMAGE_ONLY = Thresholds(model_hash="m" * 64, image_threshold=1.0, version="v1")
WITH_REGION = Thresholds(model_hash="m" * 64, image_threshold=1.0, version="v1",
                         region=RegionRule(pixel_threshold=0.5, min_area_px=4))


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("thresholds", [IMAGE_ONLY, WITH_REGION], ids=["image-only", "with-region"])
def test_a_non_finite_score_is_a_fault(score, thresholds):
    verdict = decide(score, np.zeros((8, 8), np.float32), thresholds)
    assert verdict.verdict == FAULT and "non-finite score" in verdict.reason


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_map_is_a_fault_where_the_region_rule_reads_it(bad):
    anomaly_map = np.zeros((8, 8), np.float32)
    anomaly_map[3, 3] = bad
    assert decide(0.1, anomaly_map, WITH_REGION).verdict == FAULT


def test_score_above_the_threshold_rejects_and_at_the_threshold_passes():
    assert decide(1.0 + 1e-6, None, IMAGE_ONLY).verdict == REJECT
    assert decide(1.0, None, IMAGE_ONLY).verdict == OK


def test_a_low_score_with_a_large_enough_region_rejects_and_a_smaller_one_passes():
    anomaly_map = np.zeros((8, 8), np.float32)
    anomaly_map[0:2, 0:2] = 0.9  # 4 connected pixels: the rule's minimum
    verdict = decide(0.1, anomaly_map, WITH_REGION)
    assert verdict.verdict == REJECT and verdict.largest_region_px == 4
    anomaly_map[0, 0] = 0.0
    assert decide(0.1, anomaly_map, WITH_REGION).verdict == OK
