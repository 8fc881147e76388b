"""HLGFA ablations on an MVTec-layout dataset: what each part of the method is worth.

    python -m bench.detection.ablations --data ../shared/datasets/magnetic_tile --work runs/ablations \
        [--default-model DIR] [--epochs 3] [--seed 0] [--only NAME ...]

Training variants retrain the module with one part removed; inference variants refit the
constants of the default model with one option changed (no retraining needed). Every variant
is evaluated through the same `evaluate` and written as a markdown table row.
"""

import argparse
import json
import logging
import time
from pathlib import Path

from calibrate.evaluate import evaluate
from calibrate.train import refit, train

TRAINING_VARIANTS = {
    "default": {},
    "+ denoising target (texture, scar)": {"denoise_fraction": 0.5},
    "+ denoising target + blind-spot guidance": {"denoise_fraction": 0.5, "config_overrides": {"blind_spot": True}},
    "no HR guidance (LR-only aligner)": {"config_overrides": {"use_structure": False, "detail_channels": 0}},
    "square input (256×256)": {"input_size": (256, 256)},
    "no detail prior": {"config_overrides": {"detail_channels": 0}},
    "no noise augmentation": {"augment_fraction": 0.0},
    "HR/LR feature distance, no learned module": {"epochs": 0},
}
INFERENCE_VARIANTS = {
    "alignment term alone (no appearance term)": {"config_overrides": {"appearance": False}},
    "cosine discrepancy (the paper's), not whitened": {"config_overrides": {"discrepancy": "cosine"}},
    "no reliability weighting": {"config_overrides": {"use_reliability": False}},
    "no level weighting (plain mean of levels)": {"level_weighting": False},
}


def row(name: str, metrics: dict, seconds: float) -> str:
    per_class = " / ".join(f"{v['image_auroc']:.3f}" for _, v in sorted(metrics["per_class"].items()))
    pixel = "–" if metrics["pixel_auroc"] is None else f"{metrics['pixel_auroc']:.3f}"
    pro = "–" if metrics["pro"] is None else f"{metrics['pro']:.3f}"
    return (f"| {name} | {metrics['image_auroc']:.3f} | {pixel} | {pro} | "
            f"{per_class} | {metrics['mean_ms_per_image']:.0f} | {seconds:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--default-model", help="default model for the inference variants (default: WORK/default)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results.jsonl"
    default = Path(args.default_model) if args.default_model else work / "default"
    jobs = [(n, ("train", o)) for n, o in TRAINING_VARIANTS.items()] + \
           [(n, ("refit", o)) for n, o in INFERENCE_VARIANTS.items()]
    for name, job in jobs:
        if args.only and name not in args.only:
            continue
        slug = "default" if name == "default" else "".join(c if c.isalnum() else "_" for c in name)[:40]
        began = time.perf_counter()
        if job[0] == "train":
            options = dict(job[1])
            model = train(args.data, work / slug, epochs=options.pop("epochs", args.epochs), holdout=args.holdout,
                          seed=args.seed, progress=False, **options).directory
        else:
            model = refit(default, work / slug, **job[1]).directory
        seconds = time.perf_counter() - began
        metrics = evaluate(model, args.data, progress=False)
        line = row(name, metrics, seconds)
        print(line, flush=True)
        with open(results, "a") as stream:
            stream.write(json.dumps({"name": name, "row": line, "metrics": metrics}) + "\n")


if __name__ == "__main__":
    main()
