"""Score and map → verdict. A pure function, the same on every backend."""

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge.artifacts.thresholds import Thresholds
from edge.transport.wire import VERDICTS

OK, REJECT, FAULT = VERDICTS


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str
    largest_region_px: int = 0


def largest_region_area(anomaly_map: np.ndarray, pixel_threshold: float) -> int:
    mask = (anomaly_map > pixel_threshold).astype(np.uint8)
    if not mask.any():
        return 0
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return int(stats[1:count, cv2.CC_STAT_AREA].max())


def decide(score: float, anomaly_map: np.ndarray | None, thresholds: Thresholds) -> Verdict:
    """Reject on the image score, or on a large enough anomalous region when a region rule exists.

    A non-finite score or map is a fault: a broken number must never read as a pass.
    """
    if not math.isfinite(score):
        return Verdict(FAULT, f"non-finite score {score}")
    region_px = 0
    if thresholds.region is not None and anomaly_map is not None:
        if not np.isfinite(anomaly_map).all():
            return Verdict(FAULT, "non-finite values in the anomaly map")
        region_px = largest_region_area(anomaly_map, thresholds.region.pixel_threshold)
    if score > thresholds.image_threshold:
        return Verdict(REJECT, f"score {score:.4g} > threshold {thresholds.image_threshold:.4g}", region_px)
    if thresholds.region is not None and region_px >= thresholds.region.min_area_px:
        return Verdict(REJECT, f"region of {region_px} px ≥ {thresholds.region.min_area_px} px above "
                               f"{thresholds.region.pixel_threshold:.4g}", region_px)
    return Verdict(OK, "", region_px)
