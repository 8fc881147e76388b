"""Image AUROC, pixel AUROC (scikit-learn) and PRO.

PRO (per-region overlap, Bergmann et al., MVTec AD): for each threshold, the mean over every
ground-truth connected component of the fraction of its pixels above the threshold, plotted
against the false-positive rate on normal pixels; the area up to FPR 0.3, divided by 0.3.
Implemented here (no maintained library computes it without pulling a training framework):
components from OpenCV (8-connectivity), thresholds at quantiles of the normal-pixel scores.
"""

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, scores))


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float | None:
    truth = np.asarray(masks, dtype=bool).ravel()
    if truth.all() or not truth.any():
        return None
    return float(roc_auc_score(truth, np.asarray(maps, dtype=np.float32).ravel()))


def pro_score(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3, steps: int = 400) -> float | None:
    """Normalised area under the PRO curve up to `fpr_limit`."""
    masks = np.asarray(masks, dtype=bool)
    maps = np.asarray(maps, dtype=np.float32)
    regions = []
    for mask, anomaly in zip(masks, maps):
        if not mask.any():
            continue
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        for region in range(1, count):
            regions.append(np.sort(anomaly[labels == region]))
    negatives = np.sort(maps[~masks])
    if not regions or negatives.size == 0:
        return None
    # Thresholds from the normal-pixel quantiles that give FPR from fpr_limit down to 0.
    fprs_wanted = np.linspace(fpr_limit, 0, steps)
    thresholds = np.quantile(negatives, 1 - fprs_wanted)
    fpr = 1 - np.searchsorted(negatives, thresholds, side="right") / negatives.size
    overlap = np.mean([1 - np.searchsorted(r, thresholds, side="right") / r.size for r in regions], axis=0)
    # Anchor the curve at FPR = fpr_limit exactly by linear interpolation, then integrate.
    order = np.argsort(fpr)
    fpr, overlap = fpr[order], overlap[order]
    keep = fpr <= fpr_limit
    fpr, overlap = fpr[keep], overlap[keep]
    if fpr[-1] < fpr_limit:
        fpr = np.append(fpr, fpr_limit)
        overlap = np.append(overlap, overlap[-1])
    return float(np.trapezoid(overlap, fpr) / fpr_limit)
