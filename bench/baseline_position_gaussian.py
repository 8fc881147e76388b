"""Baseline for the whitened discrepancy: a Gaussian per position on the HR features alone.

    OMP_NUM_THREADS=1 .venv/bin/python bench/baseline_position_gaussian.py --model MODEL_DIR \
        --data ../shared/datasets/magnetic_tile

Same backbone, levels, image size, training images (the model's `train_files`), shrinkage, level
weighting, smoothing and max score as the HLGFA model given; only the vectors differ: the HR
features themselves instead of HLGFA's alignment error (HR − refined LR). No LR view and no
learned module — PaDiM's idea at HLGFA's levels. It answers what the learned alignment adds once
the discrepancy is whitened per position.
"""

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from calibrate.dataset import evaluation_samples, list_images, read_image, training_folder
from calibrate.evaluate import compute_metrics, score_samples
from calibrate.model import whitened_distance
from calibrate.model_io import load_model
from calibrate.train import position_gaussians
from edge.preprocess import preprocess


@torch.no_grad()
def hr_features(model, paths, spec, batch_size=8):
    for start in range(0, len(paths), batch_size):
        batch = preprocess([read_image(p) for p in paths[start:start + batch_size]], spec)
        yield model.backbone(torch.from_numpy(batch))


class PositionGaussian:
    """The baseline as a backend (`infer`: batch → maps, scores), so `calibrate.evaluate` scores it."""

    def __init__(self, model, statistics, scales=None):
        self.model, self.statistics = model, statistics
        self.scales = scales or [1.0] * len(statistics)

    @torch.no_grad()
    def levels(self, batch):
        features = self.model.backbone(torch.from_numpy(batch))
        return [whitened_distance(f, mean, precision) / scale
                for f, (mean, precision), scale in zip(features, self.statistics, self.scales)]

    @torch.no_grad()
    def infer(self, batch):
        size = batch.shape[-1]
        combined = torch.stack([F.interpolate(level.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)
                                for level in self.levels(batch)]).mean(dim=0)
        maps = self.model.smooth(combined).squeeze(1)
        return maps.numpy(), maps.flatten(1).amax(dim=1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an HLGFA model directory (its backbone, levels, training files)")
    parser.add_argument("--data", required=True)
    args = parser.parse_args()
    model, info = load_model(args.model)
    spec = info.preprocess
    training = info.description["training"]
    names = set(training["train_files"])
    train_paths = [p for p in list_images(training_folder(training["data"])) if p.name in names]
    baseline = PositionGaussian(model, position_gaussians(hr_features(model, train_paths, spec), "HR feature"))
    # Level weighting as the model's: each level divided by its mean on a seeded 64 of the normals.
    order = np.random.default_rng(training["seed"]).permutation(len(train_paths))[:64]
    sums = None
    for start in range(0, len(order), 8):
        batch = preprocess([read_image(train_paths[i]) for i in order[start:start + 8]], spec)
        means = [float(level.sum(dim=0).mean()) for level in baseline.levels(batch)]
        sums = means if sums is None else [a + b for a, b in zip(sums, means)]
    baseline.scales = [total / len(order) for total in sums]
    samples = evaluation_samples(args.data)
    maps, scores, masks, _, _ = score_samples(baseline, samples, spec, batch_size=8, progress=False)
    metrics = compute_metrics(samples, maps, scores, masks)
    print(json.dumps({k: metrics[k] for k in ("image_auroc", "pixel_auroc", "pro")}
                     | {"per_class_image_auroc": {c: v["image_auroc"] for c, v in metrics["per_class"].items()}}, indent=2))


if __name__ == "__main__":
    main()
