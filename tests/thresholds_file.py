"""Thresholds files for tests, with exactly the keys `hlgfa calibrate` writes (the schema of
edge/artifacts/thresholds.py): good parts' scores for the sanity bounds and a range for every
frame-quality statistic."""

from edge.artifacts.thresholds import Thresholds
from edge.imaging.quality import STATISTIC_DOMAINS


def calibrated_data(thresholds: Thresholds, normal_scores: dict | None = None, quality: dict | None = None) -> dict:
    """`thresholds` as a file. `normal_scores` (min, median, max) default to a spread ending at the
    threshold; `quality` ranges default to each statistic's whole domain (a gate that passes every frame)."""
    data = thresholds.to_dict()
    threshold = thresholds.image_threshold
    scores = normal_scores or {"min": threshold - abs(threshold) - 1.0, "median": threshold, "max": threshold}
    data["details"] = {**thresholds.details, "normal_scores": {**thresholds.details.get("normal_scores", {}), **scores}}
    ranges = quality or thresholds.quality or {}
    data["quality"] = {name: list(ranges.get(name, domain)) for name, domain in STATISTIC_DOMAINS.items()}
    return data
