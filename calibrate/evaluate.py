"""Evaluation on MVTec AD layout through any backend: the same numbers whatever runs the model.

Pixel metrics are computed at the model's resolution (masks resized with nearest neighbour),
as anomalib does; image metrics use the backend's image score.
"""

import csv
import logging
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from calibrate.dataset import read_image, read_mask, evaluation_samples
from calibrate.metrics import image_auroc, pixel_auroc, pro_score
from edge.imaging import quality
from edge.backends.base import open_backend
from edge.artifacts.model_dir import load_model_info
from edge.imaging.preprocess import preprocess, resize_rgb8

log = logging.getLogger(__name__)


def score_samples(backend, samples, spec, batch_size: int, progress: bool = True, stats: list | None = None):
    """Maps (N×H×W float32), scores, masks at H×W (None where a class has no ground truth), images.
    With `stats`, also appends each image's frame-quality statistics (edge/imaging/quality.py)."""
    height, width = spec.input_size
    maps = np.empty((len(samples), height, width), dtype=np.float32)
    scores = np.empty(len(samples), dtype=np.float32)
    masks: list[np.ndarray | None] = []
    thumbnails = []
    infer_seconds = 0.0
    for start in tqdm(range(0, len(samples), batch_size), desc="eval", unit="batch", disable=not progress):
        chunk = samples[start:start + batch_size]
        images = [read_image(s.path) for s in chunk]
        for sample, image in zip(chunk, images):
            if sample.mask_path is not None:
                mask = read_mask(sample.mask_path, image.shape)
                masks.append(cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0)
            else:
                masks.append(np.zeros((height, width), bool) if sample.label == 0 else None)
        batch = preprocess(images, spec)
        thumbnails.extend(resize_rgb8(image, spec.input_size) for image in images)
        began = time.perf_counter()
        batch_maps, batch_scores = backend.infer(batch)
        infer_seconds += time.perf_counter() - began
        maps[start:start + len(chunk)] = batch_maps
        scores[start:start + len(chunk)] = batch_scores
        if stats is not None:
            stats.extend({**quality.image_stats(image, spec.input_size, str(sample.path)), **quality.map_stats(anomaly_map)}
                         for image, sample, anomaly_map in zip(images, chunk, np.asarray(batch_maps)))
    return maps, scores, masks, thumbnails, infer_seconds


def compute_metrics(samples, maps, scores, masks) -> dict:
    labels = np.array([s.label for s in samples])
    with_truth = [i for i, m in enumerate(masks) if m is not None]
    result = {
        "image_auroc": image_auroc(labels, scores),
        "pixel_auroc": pixel_auroc(np.stack([masks[i] for i in with_truth]), maps[with_truth]) if with_truth else None,
        "pro": pro_score(np.stack([masks[i] for i in with_truth]), maps[with_truth]) if with_truth else None,
        "n_images": len(samples), "n_good": int((labels == 0).sum()), "n_defect": int((labels == 1).sum()),
        "per_class": {},
    }
    good = [i for i, s in enumerate(samples) if s.label == 0]
    for defect_class in sorted({s.defect_class for s in samples if s.label == 1}):
        members = [i for i, s in enumerate(samples) if s.defect_class == defect_class]
        subset = good + members
        truth = [i for i in subset if masks[i] is not None]
        has_masks = all(masks[i] is not None for i in members)
        result["per_class"][defect_class] = {
            "n": len(members),
            "image_auroc": image_auroc(labels[subset], scores[subset]),
            "pixel_auroc": pixel_auroc(np.stack([masks[i] for i in truth]), maps[truth]) if has_masks else None,
            "pro": pro_score(np.stack([masks[i] for i in members]), maps[members]) if has_masks else None,
        }
    return result


def save_overlays(directory: Path, samples, thumbnails, maps, masks, scores) -> None:
    """image | heat map over image | ground truth, one PNG per test image, on one colour scale."""
    directory.mkdir(parents=True, exist_ok=True)
    top = float(np.quantile(maps, 0.999)) or 1.0
    bottom = float(np.quantile(maps, 0.01))
    for sample, image, anomaly, mask, score in zip(samples, thumbnails, maps, masks, scores):
        rgb = image
        scaled = np.clip((anomaly - bottom) / max(top - bottom, 1e-12), 0, 1)
        heat = cv2.cvtColor(cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        blended = cv2.addWeighted(rgb, 0.5, heat, 0.5, 0)
        truth = rgb.copy()
        if mask is not None and mask.any():
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(truth, contours, -1, (255, 0, 0), 1)
        panel = np.concatenate([rgb, blended, truth], axis=1)
        cv2.putText(panel, f"{sample.defect_class} score {score:.4f}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 0), 1, cv2.LINE_AA)
        cv2.imwrite(str(directory / f"{sample.defect_class}_{sample.path.stem}.png"), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))


def quality_gate_result(samples, stats: list[dict], thresholds) -> dict:
    """The frame-quality gate of `thresholds` on the evaluation images, as the daemon applies it:
    its false-fault rate on good images (with a 95 % Clopper–Pearson interval) and the defect
    images it faulted (those never reach the score on the line: they are faults, not rejects)."""
    from calibrate.quality_fit import gate_summary
    from calibrate.thresholds_fit import clopper_pearson

    if not thresholds.quality:
        return {"off": "the thresholds file has no frame-quality ranges"}
    good = [s for s, sample in zip(stats, samples) if sample.label == 0]
    defect = [s for s, sample in zip(stats, samples) if sample.label == 1]
    result = {"ranges": {name: list(bounds) for name, bounds in thresholds.quality.items()},
              "good": gate_summary(good, thresholds.quality), "defect": gate_summary(defect, thresholds.quality)}
    if good:
        result["good"]["false_fault_rate_ci95"] = list(clopper_pearson(result["good"]["faulted"], len(good), 0.95))
    return result


def evaluate(model_dir, data, *, backend: str = "auto", batch_size: int = 8, scores_csv=None, save_maps=None,
             progress: bool = True, thresholds=None, **backend_options) -> dict:
    """`thresholds`: a thresholds file of this model; its frame-quality gate is then measured too."""
    from edge.artifacts.thresholds import load_thresholds

    info = load_model_info(model_dir)
    fitted = None if thresholds is None else load_thresholds(thresholds, info.model_hash)
    samples = evaluation_samples(data)
    stats: list[dict] = []
    engine = open_backend(backend, model_dir, max_batch=batch_size, **backend_options)
    try:
        engine.warmup()
        maps, scores, masks, thumbnails, seconds = score_samples(engine, samples, info.preprocess, batch_size, progress,
                                                                 stats if fitted is not None else None)
    finally:
        engine.close()
    result = compute_metrics(samples, maps, scores, masks)
    result.update({"backend": engine.kind, "batch_size": batch_size, "model_hash": info.model_hash,
                   "mean_ms_per_image": 1000 * seconds / len(samples), "data": str(Path(data))})
    if fitted is not None:
        result["quality_gate"] = quality_gate_result(samples, stats, fitted)
    if scores_csv:
        with open(scores_csv, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["path", "class", "label", "score"])
            for sample, score in zip(samples, scores):
                writer.writerow([str(sample.path), sample.defect_class, sample.label, f"{score:.6g}"])
    if save_maps:
        save_overlays(Path(save_maps), samples, thumbnails, maps, masks, scores)
    return result
