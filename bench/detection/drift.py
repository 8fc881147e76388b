"""Drift watch on real cells: how soon it alarms when the light dims or the focus goes, and how often it
alarms on an unshifted line.

A small HLGFA model is trained on good ELPV cells, the calibration normals' quantiles and a 5 % FRR
threshold are fitted on other good cells (as `hlgfa calibrate` does), and the remaining good cells
are replayed three ways through `edge.inspection.drift.DriftWatch` exactly as the pipeline feeds it (passed
parts only), the state read every 10 frames (a heartbeat a second at 10 parts/s):

    unshifted  the cells as they are, in 20 random orders: false alarms per state reading
    dimming    brightness gain falling linearly from 1.0 to 0.5 over the replay
    blurring   a Gaussian blur growing linearly from σ 0 to 3 px over the replay

The frame-quality gate is not applied here (it would fault the darkest and blurriest frames on
its own); this measures the score drift watch alone.

    .venv/bin/python -m bench.detection.drift [--out runs/bench_drift] [--train 200] [--normals 200]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

READ_EVERY = 10


def score_arrays(backend, spec, images, batch=8) -> np.ndarray:
    from edge.imaging.preprocess import preprocess

    scores = []
    for first in range(0, len(images), batch):
        scores.extend(float(s) for s in backend.infer(preprocess(images[first:first + batch], spec))[1])
    return np.asarray(scores)


def run_stream(thresholds, scores) -> list[tuple[int, str]]:
    from edge.inspection.drift import DriftWatch

    watch = DriftWatch()
    readings = []
    for index, score in enumerate(scores, start=1):
        watch.observe("ok" if score <= thresholds.image_threshold else "reject", float(score), thresholds)
        if index % READ_EVERY == 0:
            readings.append((index, watch.status()["state"]))
    return readings


def first(readings, states) -> int | None:
    return next((index for index, state in readings if state in states), None)


def main() -> None:
    import cv2

    from calibrate.demo.run import elpv_cells
    from calibrate.thresholds_fit import fit_image_threshold
    from calibrate.train import train
    from edge.backends.base import open_backend
    from edge.inspection.drift import QUANTILE_POINTS
    from edge.artifacts.model_dir import load_model_info
    from edge.artifacts.thresholds import Thresholds

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_drift"))
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--normals", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    good, _ = elpv_cells()
    rng = np.random.default_rng(0)
    good = [good[i] for i in rng.permutation(len(good))]
    train_set, normal_set, replay_set = good[:args.train], good[args.train:args.train + args.normals], \
        good[args.train + args.normals:]
    model = args.out / "model"
    started = time.monotonic()
    if not (model / "model.json").is_file():
        folder = args.out / "train"
        folder.mkdir(parents=True, exist_ok=True)
        for path in train_set:
            (folder / path.name).write_bytes(path.read_bytes())
        train(folder, model, epochs=args.epochs, image_size=args.image_size, seed=0, progress=False)
    trained_s = time.monotonic() - started
    info = load_model_info(model)
    backend = open_backend("torch", model, max_batch=8)
    read = lambda paths: [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in paths]  # noqa: E731
    normal_scores = score_arrays(backend, info.preprocess, read(normal_set))
    fit = fit_image_threshold(normal_scores, 0.05)
    thresholds = Thresholds(info.model_hash, float(fit.threshold), "bench", details={
        "n_normals": len(normal_scores),
        "normal_scores": {"quantiles": np.quantile(normal_scores, np.linspace(0, 1, QUANTILE_POINTS)).tolist()}})

    replay = read(replay_set)
    n = len(replay)
    base = score_arrays(backend, info.preprocess, replay)
    false_readings, total_readings, orders_alarmed = 0, 0, 0
    for order in range(20):
        readings = run_stream(thresholds, base[np.random.default_rng(order).permutation(n)])
        judged = [state for _, state in readings if state != "unknown"]
        alarms = sum(state in ("drifting", "drifted") for state in judged)
        false_readings += alarms
        total_readings += len(judged)
        orders_alarmed += alarms > 0
    ramp = np.linspace(0.0, 1.0, n)
    dimmed = [np.clip(image.astype(np.float32) * (1.0 - 0.5 * r), 0, 255).astype(image.dtype)
              for image, r in zip(replay, ramp)]
    blurred = [cv2.GaussianBlur(image, (0, 0), 3.0 * r) if r > 0.01 else image for image, r in zip(replay, ramp)]
    result = {"train_cells": len(train_set), "normals": len(normal_scores), "replay": n,
              "threshold": thresholds.image_threshold, "train_s": round(trained_s, 1),
              "unshifted": {"readings": total_readings, "false_alarm_readings": false_readings,
                            "false_alarm_rate": false_readings / max(total_readings, 1),
                            "orders_with_any_alarm": f"{orders_alarmed}/20",
                            "passes_rejected": float(np.mean(base > thresholds.image_threshold))}}
    for name, images, what in (("dimming", dimmed, lambda r: f"gain {1 - 0.5 * r:.3f}"),
                               ("blurring", blurred, lambda r: f"sigma {3.0 * r:.2f} px")):
        scores = score_arrays(backend, info.preprocess, images)
        readings = run_stream(thresholds, scores)
        entry = {}
        for label, states in (("drifting", ("drifting", "drifted")), ("drifted", ("drifted",))):
            frame = first(readings, states)
            entry[label] = None if frame is None else {
                "frame": frame, "at": what(ramp[frame - 1]),
                "rejected_so_far": float(np.mean(scores[:frame] > thresholds.image_threshold))}
        result[name] = entry
    backend.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
