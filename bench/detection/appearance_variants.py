"""The appearance term alone, per level or across levels: which Gaussian per position sees most.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.detection.appearance_variants --model MODEL_DIR --data DATA \
        [--variants NAME,...] [--out FILE.jsonl]

Same backbone, input size, training images (the model's `train_files`), shrinkage, smoothing and
image score rule as the HLGFA model given; only the vectors a Gaussian per position is fitted on
vary. A variant is `LEVELS@GRID/PROJECTION`:

- LEVELS: the backbone strides whose HR features are used, e.g. `8+16`; `per-level` fits one
  Gaussian per level and averages the levels' scale-free maps (the model's appearance term today);
- GRID: the stride of the grid the Gaussians live on; deeper levels are upsampled to it (bilinear),
  finer ones averaged down;
- PROJECTION: `full` (every channel), `sub100` (a seeded random subset of 100 channels, PaDiM's
  choice), `rp100` (a seeded random orthonormal projection to 100), `pca100` (the 100 leading
  principal directions of the training vectors pooled over positions).
"""

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from bench.detection.peers import masks_at
from calibrate.model.backbones import build_backbone
from calibrate.dataset import evaluation_samples, list_images, read_image, training_folder
from calibrate.evaluate import compute_metrics
from calibrate.model.gaussian import PositionMoments, whitened_distance
from calibrate.model.io import load_model
from edge.imaging.preprocess import preprocess

BATCH = 8
DEFAULT_VARIANTS = ("per-level:8+16", "8+16@8/full", "8+16@8/rp100", "8+16@8/pca100", "4+8+16@8/rp100",
                    "4+8+16@4/sub100")


@torch.no_grad()
def hr_features(backbone, paths, spec) -> dict[int, torch.Tensor]:
    """Per stride: N×C×h×w float16 for all `paths`."""
    parts: dict[int, list[torch.Tensor]] = {s: [] for s in backbone.strides}
    for start in range(0, len(paths), BATCH):
        batch = torch.from_numpy(preprocess([read_image(p) for p in paths[start:start + BATCH]], spec))
        for stride, level in zip(backbone.strides, backbone(batch)):
            parts[stride].append(level.half())
    return {stride: torch.cat(levels) for stride, levels in parts.items()}


class Variant:
    def __init__(self, name: str, train: dict[int, torch.Tensor], seed: int = 0):
        self.name = name
        # "+lowN": a second Gaussian per cell of N×N grid positions, on the pooled vectors.
        name, _, low = name.partition("+low")
        self.pool = int(low) if low else 0
        if name.startswith("per-level:"):
            self.levels = [int(s) for s in name.split(":")[1].split("+")]
            self.grid, self.projection = None, "full"
        else:
            levels, rest = name.split("@")
            grid, self.projection = rest.split("/")
            self.levels, self.grid = [int(s) for s in levels.split("+")], int(grid)
        self.matrix = None
        if self.grid is not None and self.projection != "full":
            channels = sum(train[s].shape[1] for s in self.levels)
            width = int(self.projection.lstrip("subrpca"))
            generator = torch.Generator().manual_seed(seed)
            if self.projection.startswith("sub"):
                index = torch.randperm(channels, generator=generator)[:width]
                self.matrix = torch.eye(channels)[index]
            elif self.projection.startswith("rp"):
                gaussian = torch.randn(channels, width, generator=generator, dtype=torch.float64)
                self.matrix = torch.linalg.qr(gaussian)[0].T.float()
            elif self.projection.startswith("pca"):
                pooled = torch.cat([self.stacked(train, i).permute(0, 2, 3, 1).reshape(-1, channels)
                                    for i in range(0, len(train[self.levels[0]]), BATCH)]).double()
                pooled = pooled - pooled.mean(dim=0)
                _, vectors = torch.linalg.eigh(pooled.T @ pooled)
                self.matrix = vectors[:, -width:].T.float()
            else:
                raise ValueError(f"projection {self.projection!r}")

    def stacked(self, features, start: int) -> torch.Tensor:
        """Concatenated levels on the grid for images start..start+BATCH."""
        reference = features[self.grid]
        size = reference.shape[-2:]
        parts = []
        for stride in self.levels:
            level = features[stride][start:start + BATCH].float()
            if stride > self.grid:
                level = F.interpolate(level, size=size, mode="bilinear", align_corners=False)
            elif stride < self.grid:
                level = F.adaptive_avg_pool2d(level, size)
            parts.append(level)
        return torch.cat(parts, dim=1)

    def vectors(self, features, start: int) -> list[torch.Tensor]:
        if self.grid is None:
            return [features[s][start:start + BATCH].float() for s in self.levels]
        joint = self.stacked(features, start)
        if self.matrix is not None:
            joint = torch.einsum("dc,nchw->ndhw", self.matrix, joint)
        if self.pool:
            return [joint, F.avg_pool2d(joint, self.pool)]
        return [joint]


@torch.no_grad()
def evaluate_variant(variant: Variant, train, test, smooth, size, order) -> tuple[np.ndarray, np.ndarray, dict]:
    count = len(train[variant.levels[0]])
    moments = PositionMoments(variant.name)
    for start in range(0, count, BATCH):
        moments.add(variant.vectors(train, start))
    gaussians = moments.gaussians()
    scales = []
    subset = {s: f[order] for s, f in train.items()}
    for level, (mean, precision) in enumerate(gaussians):
        scales.append(float(torch.cat([whitened_distance(variant.vectors(subset, i)[level], mean, precision)
                                       for i in range(0, len(order), BATCH)]).mean()))
    maps, scores = [], []
    for start in range(0, len(test[variant.levels[0]]), BATCH):
        levels = [F.interpolate((whitened_distance(v, m, p) / scale).unsqueeze(1), size=size, mode="bilinear",
                                align_corners=False)
                  for v, (m, p), scale in zip(variant.vectors(test, start), gaussians, scales)]
        anomaly = smooth(torch.stack(levels).sum(dim=0) if variant.pool else torch.stack(levels).mean(dim=0)).squeeze(1)
        maps.append(anomaly.numpy())
        scores.append(anomaly.flatten(1).amax(dim=1).numpy())
    megabytes = sum(m.numel() + p.numel() for m, p in gaussians) * 4 / 1e6
    return np.concatenate(maps), np.concatenate(scores), {"statistics_mb": round(megabytes, 1)}


@torch.no_grad()
def synthetic_test(backbone, samples, spec, kind: str, seed: int):
    """Good test images, then one synthetic anomaly of `kind` on each: (samples, features, masks)."""
    from calibrate import synth
    from calibrate.dataset import Sample
    from edge.imaging.preprocess import normalize, resize_rgb8

    good = [s for s in samples if s.label == 0]
    rng = np.random.default_rng(seed + 104729)
    images = [resize_rgb8(read_image(s.path), spec.input_size) for s in good]
    made = [synth.synthesize(image, kind, rng) for image in images]
    frames = images + [image for image, _ in made]
    masks = [np.zeros(spec.input_size, bool)] * len(good) + [mask for _, mask in made]
    parts: dict[int, list[torch.Tensor]] = {s: [] for s in backbone.strides}
    for start in range(0, len(frames), BATCH):
        batch = torch.from_numpy(np.stack([normalize(f, spec) for f in frames[start:start + BATCH]]))
        for stride, level in zip(backbone.strides, backbone(batch)):
            parts[stride].append(level.half())
    fakes = [Sample(s.path, 1, kind) for s in good]
    return good + fakes, {s: torch.cat(v) for s, v in parts.items()}, masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an HLGFA model directory (input size, training files)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="append one JSON line per variant here")
    parser.add_argument("--synthetic", metavar="KIND", help="test on the good test images and a copy of each "
                        "carrying a synthetic anomaly of KIND (calibrate/synth.py) instead of the real defects")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, info = load_model(args.model)
    spec = info.preprocess
    training = info.description["training"]
    names = set(training["train_files"])
    train_paths = [p for p in list_images(training_folder(training["data"])) if p.name in names]
    samples = evaluation_samples(args.data)
    masks = masks_at(samples, spec.input_size)
    backbone = build_backbone(info.description["backbone"]["name"], (4, 8, 16))
    began = time.perf_counter()
    train = hr_features(backbone, train_paths, spec)
    if args.synthetic:
        samples, test, masks = synthetic_test(backbone, samples, spec, args.synthetic, args.seed)
    else:
        test = hr_features(backbone, [s.path for s in samples], spec)
    print(json.dumps({"features_seconds": round(time.perf_counter() - began, 1), "n_train": len(train_paths),
                      "n_test": len(samples)}), flush=True)
    # Level weighting as the model's: each level divided by its mean on a seeded 64 of the normals.
    order = torch.from_numpy(np.random.default_rng(training["seed"]).permutation(len(train_paths))[:64])
    for name in args.variants.split(","):
        began = time.perf_counter()
        variant = Variant(name, train, args.seed)
        maps, scores, extra = evaluate_variant(variant, train, test, model.smooth, spec.input_size, order)
        metrics = compute_metrics(samples, maps, scores, masks)
        row = {"variant": name, "data": args.data, "seed": args.seed,
               **{k: None if metrics[k] is None else round(metrics[k], 4) for k in ("image_auroc", "pixel_auroc", "pro")},
               "per_class_image_auroc": {c: round(v["image_auroc"], 4) for c, v in metrics["per_class"].items()},
               **extra, "seconds": round(time.perf_counter() - began, 1)}
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as stream:
                stream.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
