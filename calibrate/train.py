"""HLGFA training from good images only. CPU is enough: the backbone is frozen, so the clean
views' features are computed once and cached; only noise-augmented images pass through it again."""

import logging
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from calibrate.augment import noise_augment
from calibrate.backbones import build_backbone
from calibrate.dataset import list_images, read_image, training_folder
from calibrate.model import HLGFA, FittedConstants, HLGFAConfig, local_instability
from calibrate.model_io import save_model
from edge.errors import ConfigError, InputDataError
from edge.model_dir import ModelInfo
from edge.preprocess import PreprocessSpec, normalize, resize_rgb8

log = logging.getLogger(__name__)

RELIABILITY_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
# Exponent on the learned expectation: 1 divides by it, 0 ignores it.
LEARNED_RELIABILITY_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def split_holdout(paths: list[Path], holdout_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """A seeded split of the good images into training and a holdout kept for calibration."""
    if not 0 <= holdout_fraction < 1:
        raise ConfigError(f"--holdout {holdout_fraction}: expected a fraction in [0, 1)")
    order = np.random.default_rng(seed).permutation(len(paths))
    count = int(round(holdout_fraction * len(paths)))
    held = sorted(paths[i] for i in order[:count])
    kept = sorted(paths[i] for i in order[count:])
    return kept, held


def load_resized(paths: list[Path], size: int) -> np.ndarray:
    return np.stack([resize_rgb8(read_image(p), size, str(p)) for p in paths])


def to_batch(images: np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    return torch.from_numpy(np.stack([normalize(image, spec) for image in images]))


@torch.no_grad()
def cache_features(model: HLGFA, images: np.ndarray, spec: PreprocessSpec, batch_size: int, progress: bool):
    """Clean-view features, float16 to halve memory; returned per level as N×C×h×w tensors."""
    hr_levels, lr_levels = None, None
    chunks = range(0, len(images), batch_size)
    for start in tqdm(chunks, desc="features", unit="batch", disable=not progress):
        hr, lr = model.features(to_batch(images[start:start + batch_size], spec))
        if hr_levels is None:
            hr_levels, lr_levels = [[] for _ in hr], [[] for _ in lr]
        for level, (h, l) in enumerate(zip(hr, lr)):
            hr_levels[level].append(h.half())
            lr_levels[level].append(l.half())
    return [torch.cat(x) for x in hr_levels], [torch.cat(x) for x in lr_levels]


@torch.no_grad()
def fit_feature_statistics(model: HLGFA, images: np.ndarray, spec: PreprocessSpec, batch_size: int) -> None:
    """Per-channel mean/std of each level's HR features over normal images."""
    sums, squares, count = None, None, 0
    for start in range(0, len(images), batch_size):
        features = model.backbone(to_batch(images[start:start + batch_size], spec))
        batch_sums = [f.double().sum(dim=(0, 2, 3)) for f in features]
        batch_squares = [(f.double() ** 2).sum(dim=(0, 2, 3)) for f in features]
        count_add = [f.shape[0] * f.shape[2] * f.shape[3] for f in features]
        sums = batch_sums if sums is None else [a + b for a, b in zip(sums, batch_sums)]
        squares = batch_squares if squares is None else [a + b for a, b in zip(squares, batch_squares)]
        count = count_add if not count else [a + b for a, b in zip(count, count_add)]
    means = [s / n for s, n in zip(sums, count)]
    stds = [torch.sqrt(torch.clamp(q / n - m ** 2, min=0)) for q, n, m in zip(squares, count, means)]
    # A floor relative to the level's typical spread: a nearly dead channel must not have its
    # rare small activations blown up into the largest differences.
    stds = [torch.clamp(s, min=0.1 * float(s.mean()) + 1e-6) for s in stds]
    model.fitted.feature_mean = [[round(float(v), 7) for v in m] for m in means]
    model.fitted.feature_std = [[round(float(v), 7) for v in s] for s in stds]


# Covariance shrinkage towards its mean variance: a position's covariance is estimated from as
# many vectors as there are normal images, fewer than it has entries at the deeper level.
ERROR_SHRINKAGE = 0.01


def position_moments(batches, what: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per level and position, the mean and covariance of vectors given as batches of per-level
    N×C×h×w tensors: [(mean C×h×w, covariance (h·w)×C×C)], float64, unshrunk."""
    sums, outer, count = None, None, 0
    for levels in batches:
        levels = [level.double() for level in levels]
        batch_sums = [level.sum(dim=0) for level in levels]
        batch_outer = [torch.einsum("nchw,ndhw->hwcd", level, level) for level in levels]
        sums = batch_sums if sums is None else [a + b for a, b in zip(sums, batch_sums)]
        outer = batch_outer if outer is None else [a + b for a, b in zip(outer, batch_outer)]
        count += len(levels[0])
    if count < 2:
        raise InputDataError(f"fitting the {what} statistics: {count} normal images, need at least 2")
    moments = []
    for total, products in zip(sums, outer):
        channels, height, width = total.shape
        mean = total / count
        per_position = mean.permute(1, 2, 0)  # h × w × C
        covariance = (products - count * per_position[..., :, None] * per_position[..., None, :]) / (count - 1)
        moments.append((mean, covariance.reshape(height * width, channels, channels)))
    return moments


def shrunk_inverse(covariance: torch.Tensor) -> torch.Tensor:
    """Inverse of …×C×C covariances, each shrunk towards its mean variance by ERROR_SHRINKAGE."""
    mean_variance = torch.diagonal(covariance, dim1=-2, dim2=-1).mean(dim=-1)
    identity = torch.eye(covariance.shape[-1], dtype=covariance.dtype)
    return torch.linalg.inv(covariance + (ERROR_SHRINKAGE * mean_variance + 1e-12)[..., None, None] * identity)


def position_gaussians(batches, what: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per level and position, the mean and shrunk inverse covariance of vectors given as
    batches of per-level N×C×h×w tensors: [(mean C×h×w, precision (h·w)×C×C)], float32."""
    return [(mean.float(), shrunk_inverse(covariance).float()) for mean, covariance in position_moments(batches, what)]


@torch.no_grad()
def fit_error_statistics(model: HLGFA, images: np.ndarray, spec: PreprocessSpec, batch_size: int) -> None:
    """Per level and position: mean and (shrunk) inverse covariance of the alignment error
    HR − refined LR over normal images — what the whitened discrepancy measures against."""
    if model.config.discrepancy != "whitened":
        return

    def errors():
        for start in range(0, len(images), batch_size):
            hr, lr = model.features(to_batch(images[start:start + batch_size], spec))
            refined, _ = model.align(hr, lr)
            yield [h - r for h, r in zip(hr, refined)]

    for aligner, (mean, precision) in zip(model.aligners, position_gaussians(errors(), "alignment error")):
        aligner.error_mean.copy_(mean)
        aligner.error_precision.copy_(precision)


@torch.no_grad()
def fit_constants(model: HLGFA, images: np.ndarray, spec: PreprocessSpec, batch_size: int,
                  level_weighting: bool = True) -> FittedConstants:
    """Fitted from normal images only, after training (the alignment error statistics first, on
    every training image, by `fit_error_statistics`):

    1. per-level mean discrepancy (levels are combined scale-free);
    2. per-level mean structure instability (the reliability weight is scale-free);
    3. the reliability strength that best flattens normal maps. Objective: the mean image score
       (max of the map) relative to the mean map level. Spurious peaks on good parts raise it; a
       uniform rescaling does not change it.
    """
    model.fitted = FittedConstants(feature_mean=model.fitted.feature_mean, feature_std=model.fitted.feature_std)
    batches = [to_batch(images[start:start + batch_size], spec) for start in range(0, len(images), batch_size)]
    level_sums, instability_sums = None, None
    for batch in batches:
        hr, lr = model.features(batch)
        refined, structures = model.align(hr, lr)
        levels = [float(model.discrepancy(aligner, r, h).mean()) * len(batch)
                  for aligner, r, h in zip(model.aligners, refined, hr)]
        level_sums = levels if level_sums is None else [a + b for a, b in zip(level_sums, levels)]
        if model.config.use_structure:
            sums = [float(local_instability(s).mean()) * len(batch) for s in structures]
            instability_sums = sums if instability_sums is None else [a + b for a, b in zip(instability_sums, sums)]
    if level_weighting:
        model.fitted.level_scale = [t / len(images) + 1e-12 for t in level_sums]
    if not (model.config.use_structure and model.config.use_reliability):
        return model.fitted
    if not model.learned_reliability:
        model.fitted.instability_scale = [t / len(images) + 1e-12 for t in instability_sums]
    raw = [model.raw_maps(batch) for batch in batches]
    best = None
    for strength in (LEARNED_RELIABILITY_GRID if model.learned_reliability else RELIABILITY_GRID):
        maxima, means = [], []
        for discrepancies, instability in raw:
            anomaly, score = model.finish(discrepancies, instability, strength)
            maxima.append(score)
            means.append(anomaly.flatten(1).mean(dim=1))
        objective = float(torch.cat(maxima).mean() / torch.cat(means).mean())
        log.info("reliability strength %.2f: normal max/mean %.4f", strength, objective)
        if best is None or objective < best[0] - 1e-6:
            best = (objective, strength)
    model.fitted.reliability_strength = best[1]
    return model.fitted


def train(data: str | Path, out: str | Path, *, epochs: int = 3, image_size: int = 256,
          backbone: str = "efficientnet-lite0", backbone_weights: str | None = None, seed: int = 0,
          batch_size: int = 8, learning_rate: float = 1e-3, augment_fraction: float = 0.5,
          holdout: float = 0.0, max_images: int | None = None, progress: bool = True,
          config_overrides: dict | None = None, level_weighting: bool = True) -> ModelInfo:
    """Train on the good images under `data` and write the model directory `out`."""
    started = time.perf_counter()
    rng = seed_everything(seed)
    config = replace(HLGFAConfig(image_size=image_size), **(config_overrides or {}))
    if image_size % (16 * config.lr_factor) != 0:
        raise ConfigError(f"--image-size {image_size}: must be a multiple of {16 * config.lr_factor} "
                          f"(stride 16 at the low-resolution view)")
    if epochs < 0:
        raise ConfigError(f"--epochs {epochs}: expected ≥ 0 (0 keeps the module at its identity start: "
                          f"the plain HR/LR feature distance, a baseline)")
    folder = training_folder(data)
    all_paths = list_images(folder)
    paths, held_out = split_holdout(all_paths, holdout, seed)
    if max_images is not None:
        paths = paths[:max_images]
    if len(paths) < 2:
        raise InputDataError(f"training folder {folder}: {len(paths)} usable images, need at least 2")
    spec = PreprocessSpec(image_size)
    model = HLGFA(build_backbone(backbone, config.strides, backbone_weights), config)
    log.info("training on %d good images from %s (%d held out)", len(paths), folder, len(held_out))
    images = load_resized(paths, image_size)
    if config.standardize_features:
        fit_feature_statistics(model, images[np.random.default_rng(seed).permutation(len(images))[:64]], spec, batch_size)
    hr_cache, lr_cache = cache_features(model, images, spec, batch_size, progress) if epochs else ([], [])

    optimizer = torch.optim.Adam(model.learned_parameters(), lr=learning_rate)
    steps_per_epoch = (len(images) + batch_size - 1) // batch_size
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps_per_epoch))
    model.aligners.train()
    history = []
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        total = 0.0
        bar = tqdm(range(0, len(order), batch_size), desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                   disable=not progress)
        for start in bar:
            index = order[start:start + batch_size]
            hr = [level[index].float() for level in hr_cache]
            lr = [level[index].float() for level in lr_cache]
            augmented = [i for i, _ in enumerate(index) if rng.random() < augment_fraction]
            if augmented:
                noisy = np.stack([noise_augment(images[index[i]], rng) for i in augmented])
                noisy_hr, noisy_lr = model.features(to_batch(noisy, spec))
                for level in range(len(hr)):
                    hr[level][augmented] = noisy_hr[level]
                    lr[level][augmented] = noisy_lr[level]
            refined, structures = model.align(hr, lr)
            loss = model.alignment_loss(refined, hr)
            if model.learned_reliability:
                loss = loss + model.reliability_loss(refined, hr, structures)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step_loss = float(loss.detach())
            total += step_loss * len(index)
            bar.set_postfix(loss=f"{step_loss:.4f}")
        history.append(total / len(images))
        log.info("epoch %d/%d: alignment loss %.5f", epoch + 1, epochs, history[-1])
    model.eval()
    # From fresh FP32 features, not the FP16 training cache: the statistics must describe the
    # errors the model computes at inference.
    fit_error_statistics(model, images, spec, batch_size)
    fit_images = images[np.random.default_rng(seed).permutation(len(images))[:min(len(images), 64)]]
    fitted = fit_constants(model, fit_images, spec, batch_size, level_weighting)
    training = {
        "data": str(Path(data).resolve()), "train_files": [p.name for p in paths],
        "held_out_files": [p.name for p in held_out], "epochs": epochs, "seed": seed,
        "batch_size": batch_size, "learning_rate": learning_rate, "augment_fraction": augment_fraction,
        "loss_history": [round(v, 6) for v in history], "seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
    }
    log.info("fitted reliability strength %.2f", fitted.reliability_strength)
    return save_model(model, out, backbone_weights, training)


def refit(model_dir: str | Path, out: str | Path, *, config_overrides: dict | None = None,
          level_weighting: bool = True, reliability_strength: float | None = None, batch_size: int = 8) -> ModelInfo:
    """The same trained module with its inference-time options changed and constants refitted
    on the same normal images: ablations of inference-only parts without retraining."""
    from calibrate.model_io import load_model

    model, info = load_model(model_dir)
    config = replace(model.config, **(config_overrides or {}))
    if config.discrepancy != model.config.discrepancy:
        # The whitened discrepancy carries its statistics as buffers: rebuild, keep the trained weights.
        rebuilt = HLGFA(model.backbone, config, model.fitted)
        missing, unexpected = rebuilt.aligners.load_state_dict(model.aligners.state_dict(), strict=False)
        if any(not key.rsplit(".", 1)[-1].startswith("error_") for key in missing + unexpected):
            raise ConfigError(f"refit of {model_dir}: weights do not match the architecture ({missing + unexpected})")
        model = rebuilt.eval()
    model.config = config
    training = dict(info.description["training"])
    folder = training_folder(training["data"])
    names = set(training["train_files"])
    paths = [p for p in list_images(folder) if p.name in names]
    images = load_resized(paths, model.config.image_size)
    spec = PreprocessSpec(model.config.image_size)
    fit_error_statistics(model, images, spec, batch_size)
    fit_images = images[np.random.default_rng(training["seed"]).permutation(len(images))[:min(len(images), 64)]]
    fit_constants(model, fit_images, spec, batch_size, level_weighting)
    if reliability_strength is not None:
        model.fitted.reliability_strength = reliability_strength
    training["refit_from"] = info.model_hash
    return save_model(model, out, info.description["backbone"].get("weights_file"), training)
