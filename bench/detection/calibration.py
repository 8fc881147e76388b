"""Does the calibrated threshold keep its promise on unseen good parts?

Calibrates on the train/good images the model was NOT trained on (model.json's
training.train_files lists those it was), then measures on test/good the false-reject rate
against the stated interval, and the escape rate per defect class, for targets 1 % and 5 %.

    python -m bench.detection.calibration --model MODEL_DIR --data ../shared/datasets/magnetic_tile \
        --train-split-seed 0 [--backend torch] [--confidence 0.95] [--out-md FILE]
"""

import argparse
import logging
import sys
import warnings
from pathlib import Path

import numpy as np

from calibrate.calibrate_cli import labelled_images, score_images
from calibrate.thresholds_fit import (SmallSampleWarning, clopper_pearson, fit_image_threshold, fit_region_rule)
from edge.backends.base import open_backend
from edge.inspection.decide import largest_region_area
from edge.artifacts.model_dir import load_model_info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="MVTec-layout category root")
    parser.add_argument("--train-split-seed", type=int, required=True,
                        help="seed the model was trained with (checked against model.json)")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--targets", default="0.01,0.05")
    parser.add_argument("--out-md", help="also write the table here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    info = load_model_info(args.model)
    training = info.description.get("training") or {}
    if "train_files" not in training:
        sys.exit(f"{args.model}/model.json: no training.train_files; cannot tell the calibration normals apart")
    if training.get("seed") not in (None, args.train_split_seed):
        sys.exit(f"--train-split-seed {args.train_split_seed} but the model was trained with seed {training['seed']}")
    used = set(training["train_files"])
    data = Path(args.data)
    good, _ = labelled_images(data / "train" / "good", "train/good")
    calibration = [p for p in good if p.name not in used]
    if len(calibration) < 20:
        sys.exit(f"only {len(calibration)} train/good images were not used for training; need ≥ 20 to calibrate")
    test_good, _ = labelled_images(data / "test" / "good", "test/good")
    classes = sorted(p.name for p in (data / "test").iterdir() if p.is_dir() and p.name != "good")

    backend = open_backend(args.backend, info.directory)
    try:
        spec = info.preprocess
        cal_scores, cal_maps = score_images(backend, spec, calibration, "calibration normal")
        good_scores, good_maps = score_images(backend, spec, test_good, "test/good")
        defects = {name: score_images(backend, spec, labelled_images(data / "test" / name, name)[0], name)
                   for name in classes}
    finally:
        backend.close()

    header = ("| target FRR | calibration normals | method | threshold | stated FRR [CI] | stated upper | "
              "measured FRR test/good [CP CI] | measured ≤ upper | inside CI | + region rule FRR | "
              + " | ".join(f"escape {name}" for name in classes) + " |")
    lines = [header, "|" + "---|" * (10 + len(classes))]
    for target in (float(t) for t in args.targets.split(",")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallSampleWarning)
            fit = fit_image_threshold(cal_scores, target, args.confidence, seed=args.train_split_seed)
        region = fit_region_rule(cal_maps, target)
        rejects = int((good_scores > fit.threshold).sum())
        measured = rejects / len(good_scores)
        low, high = clopper_pearson(rejects, len(good_scores), args.confidence)
        either = (good_scores > fit.threshold) | np.array(
            [largest_region_area(m, region.pixel_threshold) >= region.min_area_px for m in good_maps])
        escapes = []
        for name in classes:
            scores = defects[name][0]
            escapes.append(f"{int((scores <= fit.threshold).sum())}/{len(scores)} = "
                           f"{np.mean(scores <= fit.threshold):.1%}")
        lines.append(
            f"| {target:.0%} | {len(calibration)} | {fit.method} | {fit.threshold:.5g} | {fit.frr_point:.2%} "
            f"[{fit.frr_ci[0]:.2%}, {fit.frr_ci[1]:.2%}] | {fit.frr_upper:.2%} | {rejects}/{len(good_scores)} = "
            f"{measured:.2%} [{low:.2%}, {high:.2%}] | {'yes' if measured <= fit.frr_upper else 'NO'} | "
            f"{'yes' if fit.frr_ci[0] <= measured <= fit.frr_ci[1] else 'no'} | "
            f"{int(either.sum())}/{len(good_scores)} = {either.mean():.2%} | " + " | ".join(escapes) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out_md:
        Path(args.out_md).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
