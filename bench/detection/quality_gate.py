"""Does the frame-quality gate catch the frames no model can judge?

Takes a model, its thresholds file (with the gate's ranges, from `hlgfa calibrate`) and the good
test images of its dataset, and makes from each good image the frames a line camera can deliver
but the model cannot judge:

    blank        a uniform frame of the image's size, grey level 0, 32, …, 224, 255 (one per image, cycling)
    dark         the image × 0.15 (a failed light)
    saturated    the image × 3, clipped (exposure far too long)
    blurred σ=2  Gaussian blur of σ = 2 px at the model's input scale (σ scaled to the frame's size)
    blurred σ=4  the same with σ = 4 px
    one pixel    a 1×1 frame of the image's mean grey
plus every good test image of another dataset (`--wrong-product`) as another product.

Each frame goes through the gate as the daemon applies it (edge/imaging/quality.py; image statistics
first, and only frames that pass them are inferred for the map statistic) and the table gives,
per kind, how many were faulted and by which statistic (the first out of range, as the daemon
names it), and what the score made of the frames the gate let through (`reject` or `ok`).

    python -m bench.detection.quality_gate --model MODEL_DIR --thresholds THRESHOLDS \
        --data ../shared/datasets/magnetic_tile --wrong-product ../shared/datasets/bsdata [--backend torch]
"""

import argparse
import collections
import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np

from calibrate.calibrate_cli import labelled_images
from edge.imaging import quality
from edge.backends.base import open_backend
from edge.inspection.decide import decide
from edge.imaging.files import read_image
from edge.artifacts.model_dir import load_model_info
from edge.imaging.preprocess import preprocess
from edge.artifacts.thresholds import load_thresholds

BLANK_LEVELS = (0, 32, 64, 96, 128, 160, 192, 224, 255)


def synthetic(kind: str, image: np.ndarray, index: int, input_size: tuple[int, int]) -> np.ndarray:
    levels = image.astype(np.float32)
    if kind == "blank":
        return np.full(image.shape, BLANK_LEVELS[index % len(BLANK_LEVELS)], np.uint8)
    if kind == "dark":
        return np.clip(levels * 0.15, 0, 255).astype(np.uint8)
    if kind == "saturated":
        return np.clip(levels * 3.0, 0, 255).astype(np.uint8)
    if kind.startswith("blurred"):
        sigma = float(kind.split("=")[1]) * max(image.shape[:2]) / max(input_size)
        return cv2.GaussianBlur(image, (0, 0), sigma)
    if kind == "one pixel":
        return np.full((1, 1), int(round(float(levels.mean()))), np.uint8)
    raise ValueError(kind)


def gate(backend, spec, frames: list[np.ndarray], thresholds) -> list[str]:
    """The daemon's verdict on each frame: "frame_quality <statistic>" when the gate faults it
    (image statistics first, the map statistic after inference), else the score's "ok"/"reject"."""
    image_ranges, map_ranges = quality.split(thresholds.quality)
    verdicts = []
    for frame in frames:
        message = quality.out_of_range(quality.image_stats(frame, spec.input_size), image_ranges)
        if message is None:
            maps, scores = backend.infer(preprocess([frame], spec))
            anomaly_map, score = np.asarray(maps)[0], float(np.asarray(scores).reshape(-1)[0])
            map_stats = quality.map_stats(anomaly_map)
            message = quality.unjudgeable(map_stats, map_ranges)
            if message is None:
                verdict = decide(score, anomaly_map, thresholds).verdict
                everywhere = verdict == "ok" and quality.anomalous_everywhere(map_stats, map_ranges) is not None
                verdicts.append("reject" if everywhere else verdict)
                continue
        verdicts.append(f"frame_quality {message.split()[0]}")
    return verdicts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--thresholds", required=True)
    parser.add_argument("--data", required=True, help="MVTec-layout root: test/good is used")
    parser.add_argument("--wrong-product", help="MVTec-layout root of another product: its test/good is used")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    info = load_model_info(args.model)
    thresholds = load_thresholds(args.thresholds, info.model_hash)
    if not thresholds.quality:
        sys.exit(f"{args.thresholds}: no frame-quality ranges; fit them with `hlgfa calibrate`")
    spec = info.preprocess
    good_paths, _ = labelled_images(Path(args.data) / "test" / "good", "test/good")
    goods = [read_image(path) for path in good_paths]
    kinds = ("blank", "dark", "saturated", "blurred σ=2", "blurred σ=4", "one pixel")
    frames = {kind: [synthetic(kind, image, index, spec.input_size) for index, image in enumerate(goods)]
              for kind in kinds}
    if args.wrong_product:
        other, _ = labelled_images(Path(args.wrong_product) / "test" / "good", "wrong product test/good")
        frames[f"wrong product ({Path(args.wrong_product).name})"] = [read_image(path) for path in other]
    backend = open_backend(args.backend, info.directory)
    results = {}
    try:
        for kind, batch in frames.items():
            verdicts = gate(backend, spec, batch, thresholds)
            by_statistic = collections.Counter(v.split()[1] for v in verdicts if v.startswith("frame_quality"))
            results[kind] = {"n": len(batch), "faulted": sum(by_statistic.values()),
                             "by_statistic": dict(by_statistic.most_common()),
                             "reject": verdicts.count("reject"), "ok": verdicts.count("ok")}
    finally:
        backend.close()
    print(f"model {info.model_hash[:12]}, thresholds {thresholds.version}, frames from {args.data}/test/good")
    print("| frames | n | faulted (frame_quality) | caught by (first statistic out of range) | not faulted: reject / ok |")
    print("|---|---|---|---|---|")
    for kind, row in results.items():
        print(f"| {kind} | {row['n']} | {row['faulted']} ({row['faulted'] / row['n']:.1%}) | "
              f"{', '.join(f'{k} {v}' for k, v in row['by_statistic'].items()) or '-'} | {row['reject']} / {row['ok']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
