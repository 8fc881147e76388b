"""Baselines for the whitened discrepancy: which vectors, and how much covariance structure.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.detection.baseline_position_gaussian --model MODEL_DIR \
        --data ../shared/datasets/magnetic_tile [--vectors hr|error|both] [--structure NAME|all]

Same backbone, levels, image size, training images (the model's `train_files`), shrinkage, level
weighting, smoothing and image score rule as the HLGFA model given; what varies:

- `--vectors hr` (default): the HR features themselves — no LR view, no learned module, PaDiM's
  idea at HLGFA's levels. It answers what the learned alignment adds once the discrepancy is
  whitened. `error`: HLGFA's alignment error HR − refined LR (with `--structure full`, that is the
  model's own whitened discrepancy).
- `--structure`, from most to least per-position statistics (each a Mahalanobis norm):
  `full` (default): mean and covariance per position (HLGFA's whitened discrepancy);
  `shared-correlation`: mean and variance per position, one correlation matrix per level;
  `diagonal`: mean and variance per position, channels independent;
  `shared-covariance`: mean per position, one covariance per level;
  `global`: one mean and one covariance per level.
  The cheaper ones store C + C² instead of h·w·C² numbers per level and cost a 1×1 convolution.

The vectors of the training and test images are computed once, so `all` scores every structure
from one pass of the model.
"""

import argparse
import json

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from calibrate.dataset import evaluation_samples, list_images, read_image, read_mask, training_folder
from calibrate.evaluate import compute_metrics
from calibrate.model.gaussian import whitened_distance
from calibrate.model.io import load_model
from calibrate.model.gaussian import ERROR_SHRINKAGE, position_moments, shrunk_inverse
from edge.imaging.preprocess import preprocess

STRUCTURES = ("full", "shared-correlation", "diagonal", "shared-covariance", "global")
VECTORS = ("hr", "error")
BATCH = 8


@torch.no_grad()
def level_vectors(model, batch: np.ndarray) -> dict[str, list[torch.Tensor]]:
    hr, lr = model.features(torch.from_numpy(batch))
    refined, _ = model.align(hr, lr)
    return {"hr": hr, "error": [h - r for h, r in zip(hr, refined)]}


def vectors_of(model, paths, spec) -> dict[str, list[torch.Tensor]]:
    """Per kind, per level: N×C×h×w float32 for all `paths`."""
    parts: dict[str, list[list[torch.Tensor]]] = {kind: [] for kind in VECTORS}
    for start in range(0, len(paths), BATCH):
        batch = preprocess([read_image(p) for p in paths[start:start + BATCH]], spec)
        for kind, levels in level_vectors(model, batch).items():
            parts[kind].append(levels)
    return {kind: [torch.cat(level) for level in zip(*batches)] for kind, batches in parts.items()}


class Distance:
    """One level's Mahalanobis norm under a covariance structure, fitted from per-position moments."""

    def __init__(self, structure: str, mean: torch.Tensor, covariance: torch.Tensor):
        channels, height, width = mean.shape
        self.structure = structure
        self.mean, self.scale, self.precision = mean, None, None
        if structure == "full":
            self.precision = shrunk_inverse(covariance)
            return
        variance = torch.diagonal(covariance, dim1=1, dim2=2)  # (h·w)×C
        if structure == "diagonal":
            floor = ERROR_SHRINKAGE * variance.mean(dim=1, keepdim=True) + 1e-12
            self.scale = torch.sqrt(variance + floor).T.reshape(channels, height, width)
        elif structure == "shared-correlation":
            std = torch.sqrt(variance + 1e-12)
            self.scale = std.T.reshape(channels, height, width)
            self.precision = shrunk_inverse((covariance / (std[:, :, None] * std[:, None, :])).mean(dim=0))
        elif structure == "shared-covariance":
            self.precision = shrunk_inverse(covariance.mean(dim=0))
        elif structure == "global":
            position_means = mean.reshape(channels, -1).T  # (h·w)×C
            spread = torch.cov(position_means.T, correction=0)
            self.mean = position_means.mean(dim=0).reshape(channels, 1, 1)
            self.precision = shrunk_inverse(covariance.mean(dim=0) + spread)
        else:
            raise ValueError(f"structure {structure!r}: expected one of {', '.join(STRUCTURES)}")

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        if self.structure == "full":
            return whitened_distance(vectors, self.mean.float(), self.precision.float())
        centred = vectors.double() - self.mean
        if self.scale is not None:
            centred = centred / self.scale
        if self.precision is None:
            return torch.sqrt((centred ** 2).sum(dim=1)).float()
        return torch.sqrt(torch.einsum("nchw,cd,ndhw->nhw", centred, self.precision, centred).clamp(min=0)).float()


@torch.no_grad()
def anomaly_maps(model, distances, level_scales, vectors, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The model's own combination of levels, smoothing and image score, one term, no reliability."""
    maps, scores = [], []
    for start in range(0, len(vectors[0]), BATCH):
        levels = [F.interpolate((distance(level[start:start + BATCH]) / scale).unsqueeze(1), size=size,
                                mode="bilinear", align_corners=False)
                  for distance, scale, level in zip(distances, level_scales, vectors)]
        anomaly = model.smooth(torch.stack(levels).mean(dim=0)).squeeze(1)
        maps.append(anomaly.numpy())
        scores.append(model.image_score(anomaly).numpy())
    return np.concatenate(maps), np.concatenate(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an HLGFA model directory (its backbone, levels, training files)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--vectors", choices=VECTORS + ("both",), default="hr")
    parser.add_argument("--structure", choices=STRUCTURES + ("all",), default="full")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, info = load_model(args.model)
    spec = info.preprocess
    height, width = spec.input_size
    training = info.description["training"]
    names = set(training["train_files"])
    train_paths = [p for p in list_images(training_folder(training["data"])) if p.name in names]
    samples = evaluation_samples(args.data)
    masks = []
    for sample in samples:
        if sample.mask_path is None:
            masks.append(np.zeros((height, width), bool) if sample.label == 0 else None)
        else:
            mask = read_mask(sample.mask_path, read_image(sample.path).shape)
            masks.append(cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0)
    train = vectors_of(model, train_paths, spec)
    test = vectors_of(model, [s.path for s in samples], spec)
    # Level weighting as the model's: each level divided by its mean on a seeded 64 of the normals.
    order = torch.from_numpy(np.random.default_rng(training["seed"]).permutation(len(train_paths))[:64])
    rows = []
    for kind in VECTORS if args.vectors == "both" else (args.vectors,):
        moments = position_moments(([level[i:i + BATCH] for level in train[kind]]
                                    for i in range(0, len(train_paths), BATCH)), kind)
        for structure in STRUCTURES if args.structure == "all" else (args.structure,):
            distances = [Distance(structure, mean, covariance) for mean, covariance in moments]
            level_scales = [float(distance(level[order]).mean()) for distance, level in zip(distances, train[kind])]
            maps, scores = anomaly_maps(model, distances, level_scales, test[kind], spec.input_size)
            metrics = compute_metrics(samples, maps, scores, masks)
            rows.append({"vectors": kind, "structure": structure,
                         **{k: round(metrics[k], 4) for k in ("image_auroc", "pixel_auroc", "pro")},
                         "per_class_image_auroc": {c: round(v["image_auroc"], 4) for c, v in metrics["per_class"].items()}})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
