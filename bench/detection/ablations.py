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

import numpy as np

from calibrate.dataset import list_images, training_folder
from calibrate.evaluate import evaluate
from calibrate.model.hlgfa import HLGFA
from calibrate.model.io import save_model
from calibrate.train import fit_choices, fit_constants, fit_position_statistics, load_resized, train
from edge.core.errors import ConfigError
from edge.artifacts.model_dir import ModelInfo
from edge.imaging.preprocess import PreprocessSpec

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


def refit(model_dir: str | Path, out: str | Path, *, config_overrides: dict | None = None,
          level_weighting: bool = True, reliability_strength: float | None = None, batch_size: int = 8) -> ModelInfo:
    """The same trained module with its inference-time options changed and constants refitted
    on the same normal images: ablations of inference-only parts without retraining."""
    from dataclasses import replace

    from calibrate.model.io import load_model

    model, info = load_model(model_dir)
    config = replace(model.config, **(config_overrides or {}))
    buffers_of = ("discrepancy", "appearance", "appearance_levels", "appearance_channels", "lowfreq_pool")
    if any(getattr(config, key) != getattr(model.config, key) for key in buffers_of):
        # The per-position statistics are buffers: rebuild, keep the trained weights.
        rebuilt = HLGFA(model.backbone, config, model.fitted)
        statistics = ("error_", "appearance_", "lowfreq_")  # refitted below, whatever their shape was
        weights = {k: v for k, v in model.aligners.state_dict().items() if not k.rsplit(".", 1)[-1].startswith(statistics)}
        missing, unexpected = rebuilt.aligners.load_state_dict(weights, strict=False)
        if any(not key.rsplit(".", 1)[-1].startswith(statistics) for key in missing + unexpected):
            raise ConfigError(f"refit of {model_dir}: weights do not match the architecture ({missing + unexpected})")
        model = rebuilt.eval()
    model.config = config
    training = dict(info.description["training"])
    folder = training_folder(training["data"])
    names = set(training["train_files"])
    paths = [p for p in list_images(folder) if p.name in names]
    images = load_resized(paths, model.config.input_size)
    spec = PreprocessSpec(model.config.input_size)
    fit_position_statistics(model, images, spec, batch_size)
    fit_images = images[np.random.default_rng(training["seed"]).permutation(len(images))[:min(len(images), 64)]]
    fit_constants(model, fit_images, spec, batch_size, level_weighting)
    if reliability_strength is not None:
        model.fitted.reliability_strength = reliability_strength
    validation_names = set(training.get("validation_files", []))
    validation_paths = [p for p in list_images(folder) if p.name in validation_names]
    training["validation"] = fit_choices(model, fit_images, validation_paths, spec, batch_size, training["seed"],
                                         tuple(training.get("training_kinds", ())))
    training["refit_from"] = info.model_hash
    return save_model(model, out, info.description["backbone"].get("weights_file"), training)

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
