"""HLGFA training from good images only. CPU is enough: the backbone is frozen, so the clean
views' features are computed once and cached; only noise-augmented images pass through it again."""

import logging
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from calibrate import synth
from calibrate.augment import noise_augment
from calibrate.model.backbones import build_backbone
from calibrate.dataset import list_images, read_image, training_folder
from calibrate.model.gaussian import PositionMoments, shrunk_inverse
from calibrate.model.hlgfa import HLGFA, FittedConstants, HLGFAConfig, local_instability
from calibrate.model.io import load_model, save_model
from edge.core.errors import ConfigError, InputDataError
from edge.artifacts.model_dir import ModelInfo
from edge.imaging.preprocess import PreprocessSpec, normalize, resize_rgb8

log = logging.getLogger(__name__)

RELIABILITY_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


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


def load_resized(paths: list[Path], size: tuple[int, int]) -> np.ndarray:
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
def fit_position_statistics(model: HLGFA, images: np.ndarray, spec: PreprocessSpec, batch_size: int) -> None:
    """Per level and position, over normal images: the mean and (shrunk) inverse covariance of the
    alignment error HR − refined LR (the whitened discrepancy) and of the HR features themselves
    (the appearance term), from one pass of the model."""
    kinds = [kind for kind, wanted in (("error", model.config.discrepancy == "whitened"),
                                       ("appearance", model.config.appearance)) if wanted]
    if not kinds:
        return
    accumulators = {kind: PositionMoments("alignment error" if kind == "error" else "HR feature") for kind in kinds}
    for start in range(0, len(images), batch_size):
        hr, lr = model.features(to_batch(images[start:start + batch_size], spec))
        if "error" in accumulators:
            refined, _ = model.align(hr, lr)
            accumulators["error"].add([h - r for h, r in zip(hr, refined)])
        if "appearance" in accumulators:
            vectors = model.appearance_vectors(hr)
            accumulators["appearance"].add(vectors)
            if model.config.lowfreq_pool:
                accumulators.setdefault("lowfreq", PositionMoments("pooled HR feature")).add(
                    [F.avg_pool2d(vectors[0], model.config.lowfreq_pool)])
    if "error" in accumulators:
        for aligner, (mean, precision) in zip(model.aligners, accumulators["error"].gaussians()):
            aligner.error_mean.copy_(mean)
            aligner.error_precision.copy_(precision)
    if "appearance" in accumulators:
        holders = [a for a in model.aligners if hasattr(a, "appearance_mean")]
        for holder, (mean, covariance) in zip(holders, accumulators["appearance"].moments()):
            if hasattr(holder, "appearance_projection"):
                projection = principal_directions(mean, covariance, holder.appearance_projection.shape[0])
                holder.appearance_projection.copy_(projection)
                mean = torch.einsum("dc,chw->dhw", projection.double(), mean)
                covariance = projection.double() @ covariance @ projection.double().T
            holder.appearance_mean.copy_(mean.float())
            holder.appearance_precision.copy_(shrunk_inverse(covariance).float())
    if "lowfreq" in accumulators:
        # In the joint term's projection, fitted above: pooling and projecting commute.
        holder = model.aligners[0]
        projection = holder.appearance_projection.double()
        ((mean, covariance),) = accumulators["lowfreq"].moments()
        holder.lowfreq_mean.copy_(torch.einsum("dc,chw->dhw", projection, mean).float())
        holder.lowfreq_precision.copy_(shrunk_inverse(projection @ covariance @ projection.T).float())


def principal_directions(mean: torch.Tensor, covariance: torch.Tensor, width: int) -> torch.Tensor:
    """The `width` leading principal directions (width × C, float32) of vectors whose per-position
    mean (C×h×w) and covariance ((h·w)×C×C) are given, pooled over positions: the covariance within
    positions plus that of the position means. Fitted on the same moments as the Gaussians, so
    projecting them equals fitting on projected vectors."""
    channels = mean.shape[0]
    position_means = mean.reshape(channels, -1).T  # (h·w) × C
    pooled = covariance.mean(dim=0) + torch.cov(position_means.T, correction=0)
    _, vectors = torch.linalg.eigh(pooled)  # ascending eigenvalues
    return vectors[:, -width:].flip(1).T.contiguous().float()


@torch.no_grad()
def fit_constants(model: HLGFA, images: np.ndarray, spec: PreprocessSpec, batch_size: int,
                  level_weighting: bool = True) -> FittedConstants:
    """Fitted from normal images only, after training (the per-position statistics first, on
    every training image, by `fit_position_statistics`):

    1. per-level mean alignment discrepancy and appearance distance (levels combined scale-free);
    2. per-level mean structure instability (the reliability weight is scale-free);
    3. the reliability strength that best flattens normal alignment maps. Objective: the mean
       image maximum relative to the mean map level. Spurious peaks on good parts raise it; a
       uniform rescaling does not change it.
    The fusion of the terms is fitted afterwards, on held-out images (`choose_on_validation`).
    """
    model.fitted = FittedConstants()
    batches = [to_batch(images[start:start + batch_size], spec) for start in range(0, len(images), batch_size)]
    level_sums, appearance_sums, lowfreq_sums, instability_sums = None, None, None, None

    def accumulate(total, values):
        return values if total is None else [a + b for a, b in zip(total, values)]

    for batch in batches:
        hr, lr = model.features(batch)
        refined, structures = model.align(hr, lr)
        level_sums = accumulate(level_sums, [float(model.discrepancy(aligner, r, h).mean()) * len(batch)
                                             for aligner, r, h in zip(model.aligners, refined, hr)])
        if model.config.appearance:
            appearance, lowfreq = model.appearance_distances(hr)
            appearance_sums = accumulate(appearance_sums, [float(d.mean()) * len(batch) for d in appearance])
            lowfreq_sums = accumulate(lowfreq_sums, [float(d.mean()) * len(batch) for d in lowfreq])
        if model.config.use_structure:
            instability_sums = accumulate(instability_sums,
                                          [float(local_instability(s).mean()) * len(batch) for s in structures])
    if level_weighting:
        model.fitted.level_scale = [t / len(images) + 1e-12 for t in level_sums]
        if appearance_sums is not None:
            model.fitted.appearance_scale = [t / len(images) + 1e-12 for t in appearance_sums]
            model.fitted.lowfreq_scale = [t / len(images) + 1e-12 for t in lowfreq_sums]
    if not (model.config.use_structure and model.config.use_reliability):
        return model.fitted
    model.fitted.instability_scale = [t / len(images) + 1e-12 for t in instability_sums]
    raw = [model.raw_maps(batch) for batch in batches]
    best = None
    for strength in RELIABILITY_GRID:
        maxima, means = [], []
        for maps in raw:
            alignment = model.smooth(model.term_maps(maps, strength)["alignment"]).flatten(1)
            maxima.append(alignment.amax(dim=1))
            means.append(alignment.mean(dim=1))
        objective = float(torch.cat(maxima).mean() / torch.cat(means).mean())
        log.info("reliability strength %.2f: normal max/mean %.4f", strength, objective)
        if best is None or objective < best[0] - 1e-6:
            best = (objective, strength)
    model.fitted.reliability_strength = best[1]
    return model.fitted


# What training chooses on held-out good images and synthetic anomalies, never on real defects.
SMOOTHING_CHOICES = (2.0, 4.0, 8.0)
SCORE_CHOICES = (("max", 0.0), ("topk", 0.001), ("topk", 0.01))
# Term weights tried (a term not named keeps weight 1); the first is the default. The alignment
# term at half or no weight, the low-frequency term without weight.
WEIGHT_CHOICES = ({}, {"alignment": 0.5}, {"alignment": 0.0}, {"lowfreq": 0.0})
FUSION_QUANTILES = (0.9, 0.995)
VALIDATION_FRACTION = 0.15
# At most this many held out: the validation keeps every term map of them and of their synthetic
# copies in memory (five images each) and its time grows with them, while the choices it makes
# are already as sure at a hundred or so (the paired interval narrows as 1/√n). Beyond
# it, the images go to the statistics instead.
MAX_VALIDATION_IMAGES = 128
# With fewer training images than this none are held out: the fusion is then fitted on the
# training images and the defaults are kept. Fitted on the images their own statistics came from,
# the distances are nearly constant (each image is its own neighbourhood), so the fusion's scale
# is poor: hold-out images, however few, are better.
MIN_IMAGES_FOR_VALIDATION = 10


def synthetic_validation(images: np.ndarray, kinds_used: tuple[str, ...],
                         seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Each held-out good image once per synthetic anomaly kind in `kinds_used`: (images, masks, kinds)."""
    rng = np.random.default_rng(seed + 7919)
    anomalous, masks, kinds = [], [], []
    for image in images:
        for kind in kinds_used:
            made, mask = synth.synthesize(image, kind, rng)
            anomalous.append(made)
            masks.append(mask)
            kinds.append(kind)
    return np.stack(anomalous), np.stack(masks), kinds


@torch.no_grad()
def fit_fusion(model: HLGFA, good_terms: list[dict[str, torch.Tensor]]) -> dict[str, list[float]]:
    """Per term, the FUSION_QUANTILES of its smoothed map over good images."""
    if len(good_terms[0]) < 2:
        return {}
    fusion = {}
    for name in good_terms[0]:
        values = torch.cat([model.smooth(terms[name].float()).flatten() for terms in good_terms])
        # torch.quantile refuses inputs above 2^24 elements; a strided sample keeps every image.
        step = max(1, values.numel() // 4_000_000)
        low, high = torch.quantile(values[::step].double(), torch.tensor(FUSION_QUANTILES, dtype=torch.float64))
        fusion[name] = [float(low), float(max(high, low + 1e-9))]
    return fusion


@torch.no_grad()
def choose_on_validation(model: HLGFA, good: np.ndarray, spec: PreprocessSpec, batch_size: int, seed: int,
                         kinds_used: tuple[str, ...]) -> dict:
    """Fits the fusion on held-out good images and chooses the smoothing and the image score rule
    and the terms' weights by image AUROC (ties: pixel AUROC) on synthetic anomalies made from
    those images. The configured default stays unless the best choice beats it on those images
    beyond the 95 % paired bootstrap interval of the difference: a choice that follows noise would
    differ from seed to seed. Returns what was measured, for model.json."""
    from calibrate.metrics import image_auroc, pixel_auroc

    anomalous, masks, kinds = synthetic_validation(good, kinds_used, seed)
    strength = model.fitted.reliability_strength

    def terms_of(images):
        # Half precision in memory (the maps of 5 × MAX_VALIDATION_IMAGES images); computed in FP32.
        return [{name: term.half() for name, term in
                 model.term_maps(model.raw_maps(to_batch(images[i:i + batch_size], spec)), strength).items()}
                for i in range(0, len(images), batch_size)]

    good_terms, anomalous_terms = terms_of(good), terms_of(anomalous)
    labels = np.r_[np.zeros(len(good)), np.ones(len(anomalous))]
    default = (HLGFAConfig.smoothing_sigma, HLGFAConfig.score, HLGFAConfig.topk_fraction)
    # Weights only between terms there are, and never every term at zero.
    weight_choices = [w for w in WEIGHT_CHOICES if set(w) <= set(good_terms[0]) and len(good_terms[0]) > 1
                      and any(w.get(name, 1.0) for name in good_terms[0])]
    trials, trial_scores = [], []
    for sigma in SMOOTHING_CHOICES:
        model.set_smoothing(sigma)
        model.fitted.fusion = fit_fusion(model, good_terms)
        for weights in weight_choices or [{}]:
            model.fitted.term_weights = dict(weights)
            good_maps = torch.cat([model.smooth(model.fuse(as_float(t))).squeeze(1) for t in good_terms])
            anomalous_maps = torch.cat([model.smooth(model.fuse(as_float(t))).squeeze(1) for t in anomalous_terms])
            pixel = pixel_auroc(masks, anomalous_maps.numpy())
            for rule, fraction in SCORE_CHOICES:
                model.config.score, model.config.topk_fraction = rule, fraction or default[2]
                scores = torch.cat([model.image_score(good_maps), model.image_score(anomalous_maps)]).numpy()
                per_kind = {kind: image_auroc(np.r_[np.zeros(len(good)), np.ones(kinds.count(kind))],
                                              np.r_[scores[:len(good)], scores[len(good):][np.array(kinds) == kind]])
                            for kind in kinds_used}
                trials.append({"smoothing_sigma": sigma, "score": rule, "topk_fraction": fraction,
                               "term_weights": dict(weights),
                               "image_auroc": round(image_auroc(labels, scores), 5), "pixel_auroc": round(pixel, 5),
                               "per_kind": {k: round(v, 4) for k, v in per_kind.items()}})
                trial_scores.append(scores)
    best_index = max(range(len(trials)), key=lambda i: (trials[i]["image_auroc"], trials[i]["pixel_auroc"]))
    baseline_index = next(i for i, t in enumerate(trials) if (t["smoothing_sigma"], t["score"]) == default[:2]
                          and t["topk_fraction"] in (0.0, default[2]) and not t["term_weights"])
    # Both scorings are of the same images: what decides is the interval of their paired difference
    # (a synthetic image resampled with the good image it was made from), far narrower than either
    # AUROC's own standard error.
    sources = np.r_[np.arange(len(good)), np.arange(len(anomalous)) // len(kinds_used)]
    interval = paired_auroc_interval(labels, sources, trial_scores[baseline_index], trial_scores[best_index], seed)
    best, baseline = trials[best_index], trials[baseline_index]
    if interval[0] <= 0:
        best = baseline
    model.set_smoothing(best["smoothing_sigma"])
    model.config.score = best["score"]
    model.config.topk_fraction = best["topk_fraction"] or default[2]
    model.fitted.fusion = fit_fusion(model, good_terms)
    model.fitted.term_weights = best["term_weights"]
    log.info("chosen on %d held-out good and %d synthetic images: sigma %.0f, score %s, term weights %s "
             "(image AUROC %.4f)", len(good), len(anomalous), best["smoothing_sigma"], best["score"],
             best["term_weights"] or "all 1", best["image_auroc"])
    return {"n_good": len(good), "n_synthetic": len(anomalous), "kinds": list(kinds_used),
            "default": {"smoothing_sigma": default[0], "score": default[1]},
            "best_minus_default_interval95": [round(v, 5) for v in interval],
            "chosen": {k: best[k] for k in ("smoothing_sigma", "score", "topk_fraction", "term_weights")},
            "trials": trials}


BOOTSTRAP_ROUNDS = 500


def paired_auroc_interval(labels: np.ndarray, sources: np.ndarray, first: np.ndarray, second: np.ndarray,
                          seed: int, rounds: int = BOOTSTRAP_ROUNDS) -> tuple[float, float]:
    """95 % interval of AUROC(second) − AUROC(first) on the same images, resampling the source
    images (each with every image made from it) with replacement."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed + 31337)
    members = [np.flatnonzero(sources == source) for source in range(sources.max() + 1)]
    differences = []
    for _ in range(rounds):
        sample = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        if labels[sample].min() == labels[sample].max():
            continue
        differences.append(roc_auc_score(labels[sample], second[sample]) - roc_auc_score(labels[sample], first[sample]))
    if not differences:
        return 0.0, 0.0
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(low), float(high)


def as_float(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: term.float() for name, term in terms.items()}


# A common frame shape: at least this fraction of the training frames within ASPECT_TOLERANCE of
# the median aspect ratio. Otherwise (crops of mixed shapes) the input stays square.
COMMON_SHAPE_FRACTION = 0.9
ASPECT_TOLERANCE = 0.1


def frame_sizes(paths: list[Path]) -> list[tuple[int, int]]:
    """(height, width) of each image, from its header where Pillow can read it."""
    sizes = []
    for path in paths:
        try:
            from PIL import Image

            with Image.open(path) as image:
                width, height = image.size
        except Exception:  # not installed, or a format only OpenCV reads: decode it
            height, width = read_image(path).shape[:2]
        sizes.append((height, width))
    return sizes


def choose_input_size(paths: list[Path], side: int, quantum: int) -> tuple[int, int]:
    """(height, width), both multiples of `quantum`, for the training frames: their common aspect
    ratio at about side² pixels, the cost of a side×side input. Squashing a 2.5:1 frame into a
    square thins every defect 2.5× in one direction; enlarging the short side instead would cost
    2.5× the compute. Aspect errors weigh twice pixel-count errors (both in log ratio)."""
    aspects = np.array([width / height for height, width in frame_sizes(paths)])
    median = float(np.median(aspects)) if len(aspects) else 1.0
    common = len(aspects) and np.mean(np.abs(aspects / median - 1) <= ASPECT_TOLERANCE) >= COMMON_SHAPE_FRACTION
    aspect = median if common else 1.0
    sides = range(quantum, 4 * side + 1, quantum)
    return min(((h, w) for h in sides for w in sides),
               key=lambda hw: (2 * abs(np.log(hw[1] / hw[0] / aspect)) + abs(np.log(hw[0] * hw[1] / side ** 2)),
                               abs(hw[0] - hw[1])))


# The denoising target's synthetic anomalies; the other kinds are kept for validation.
TRAINING_KINDS = ("texture", "scar")


@dataclass
class TrainingBatch:
    input_hr: list[torch.Tensor]
    input_lr: list[torch.Tensor]
    target_hr: list[torch.Tensor]
    target_lr: list[torch.Tensor]
    anomalous_rows: list[int]
    anomaly_masks: np.ndarray | None  # rows × H × W, where the input differs from the target


def training_batch(model: HLGFA, images: np.ndarray, index: np.ndarray, hr_cache, lr_cache, spec: PreprocessSpec,
                   rng: np.random.Generator, augment_fraction: float, denoise_fraction: float) -> TrainingBatch:
    """Inputs and targets for one step. Nuisance (specks, long streaks) goes into both: a good part
    with a hair on it is still a good part. A synthetic anomaly goes into the input only: the
    target stays the HR features of the part without it, so copying HR through costs loss exactly
    where anomalies sit (the denoising target)."""
    target_hr = [level[index].float() for level in hr_cache]
    target_lr = [level[index].float() for level in lr_cache]
    bases = {}
    noisy_rows = [row for row in range(len(index)) if rng.random() < augment_fraction]
    if noisy_rows:
        noisy = np.stack([noise_augment(images[index[row]], rng) for row in noisy_rows])
        bases.update(zip(noisy_rows, noisy))
        noisy_hr, noisy_lr = model.features(to_batch(noisy, spec))
        for level in range(len(target_hr)):
            target_hr[level][noisy_rows] = noisy_hr[level]
            target_lr[level][noisy_rows] = noisy_lr[level]
    input_hr, input_lr = [t.clone() for t in target_hr], [t.clone() for t in target_lr]
    # No draws when off: the default's training consumes the generator exactly as before the target existed.
    anomalous_rows = [row for row in range(len(index)) if rng.random() < denoise_fraction] if denoise_fraction else []
    masks = None
    if anomalous_rows:
        made = [synth.synthesize(bases.get(row, images[index[row]]), TRAINING_KINDS[rng.integers(len(TRAINING_KINDS))],
                                 rng) for row in anomalous_rows]
        masks = np.stack([mask for _, mask in made])
        anomalous_hr, anomalous_lr = model.features(to_batch(np.stack([image for image, _ in made]), spec))
        for level in range(len(input_hr)):
            input_hr[level][anomalous_rows] = anomalous_hr[level]
            input_lr[level][anomalous_rows] = anomalous_lr[level]
    return TrainingBatch(input_hr, input_lr, target_hr, target_lr, anomalous_rows, masks)


@torch.no_grad()
def copy_amounts(model: HLGFA, batch: TrainingBatch, refined: list[torch.Tensor]) -> tuple[float, float]:
    """Over the anomalies' positions: how far the refined features moved (‖R(x′) − R(x)‖) and how
    far the HR features moved (‖HR(x′) − HR(x)‖). Their ratio, the copy index, is 1 for a module
    that passes anomalies through and 0 for one that restores the clean part."""
    rows = batch.anomalous_rows
    clean, _ = model.align([t[rows] for t in batch.target_hr], [t[rows] for t in batch.target_lr])
    masks = torch.from_numpy(batch.anomaly_masks).float().unsqueeze(1)
    copied, changed = 0.0, 0.0
    for level, (r_clean, r_anomalous) in enumerate(zip(clean, refined)):
        inside = F.adaptive_avg_pool2d(masks, r_clean.shape[-2:]).squeeze(1) > 0.25
        copied += float((r_anomalous[rows] - r_clean).norm(dim=1)[inside].sum())
        changed += float((batch.input_hr[level][rows] - batch.target_hr[level][rows]).norm(dim=1)[inside].sum())
    return copied, changed


def split_validation(paths: list[Path], seed: int) -> tuple[list[Path], list[Path]]:
    """VALIDATION_FRACTION of the training images (at least 2), kept out of training and of the
    statistics, on which the fusion is fitted and the choices are made."""
    if len(paths) < MIN_IMAGES_FOR_VALIDATION:
        return paths, []
    count = min(MAX_VALIDATION_IMAGES, max(2, int(round(VALIDATION_FRACTION * len(paths)))))
    return split_holdout(paths, count / len(paths), seed + 1)


def fit_choices(model: HLGFA, fit_images: np.ndarray, validation_paths: list[Path], spec: PreprocessSpec,
                batch_size: int, seed: int, training_kinds: tuple[str, ...] = ()) -> dict:
    """The fusion and the label-free choices on held-out images; without enough of them, the
    fusion from training images and the configured defaults (said in model.json and the log)."""
    if validation_paths:
        # Judged on anomaly kinds the denoising target never showed the module.
        kinds = tuple(kind for kind in synth.KINDS if kind not in training_kinds)
        return choose_on_validation(model, load_resized(validation_paths, model.config.input_size), spec,
                                    batch_size, seed, kinds)
    log.warning("fewer than %d training images, none held out: fusion fitted on training images, defaults kept "
                "(smoothing %.0f px, score %s)", MIN_IMAGES_FOR_VALIDATION, model.config.smoothing_sigma,
                model.config.score)
    strength = model.fitted.reliability_strength
    model.fitted.fusion = fit_fusion(model, [
        model.term_maps(model.raw_maps(to_batch(fit_images[i:i + batch_size], spec)), strength)
        for i in range(0, len(fit_images), batch_size)])
    return {"n_good": 0, "chosen": None}


def _check_sizes(input_size: tuple[int, int] | None, image_size: int, epochs: int, quantum: int) -> None:
    if input_size is not None and any(side % quantum or side <= 0 for side in input_size):
        raise ConfigError(f"--input-size {input_size[0]}x{input_size[1]}: both sides must be positive multiples "
                          f"of {quantum} (stride 16 at the low-resolution view)")
    if input_size is None and (image_size % quantum or image_size <= 0):
        raise ConfigError(f"--image-size {image_size}: must be a positive multiple of {quantum} "
                          f"(stride 16 at the low-resolution view)")
    if epochs < 0:
        raise ConfigError(f"--epochs {epochs}: expected ≥ 0 (0 keeps the module at its identity start: "
                          f"the plain HR/LR feature distance, a baseline)")


def _train_aligners(model: HLGFA, images: np.ndarray, hr_cache: list, lr_cache: list, spec: PreprocessSpec,
                    rng: np.random.Generator, epochs: int, batch_size: int, learning_rate: float,
                    augment_fraction: float, denoise_fraction: float, progress: bool) -> tuple[list, list]:
    """The alignment module's epochs; per epoch, the mean loss and the copy index (None without
    synthetic anomalies to measure it on)."""
    optimizer = torch.optim.Adam(model.learned_parameters(), lr=learning_rate)
    steps_per_epoch = (len(images) + batch_size - 1) // batch_size
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps_per_epoch))
    model.aligners.train()
    history, copy_history = [], []
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        total, copied, changed = 0.0, 0.0, 0.0
        bar = tqdm(range(0, len(order), batch_size), desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                   disable=not progress)
        for start in bar:
            index = order[start:start + batch_size]
            batch = training_batch(model, images, index, hr_cache, lr_cache, spec, rng, augment_fraction,
                                   denoise_fraction)
            refined, _ = model.align(batch.input_hr, batch.input_lr)
            loss = model.alignment_loss(refined, batch.target_hr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step_loss = float(loss.detach())
            total += step_loss * len(index)
            if batch.anomaly_masks is not None:
                step_copied, step_changed = copy_amounts(model, batch, refined)
                copied, changed = copied + step_copied, changed + step_changed
            bar.set_postfix(loss=f"{step_loss:.4f}")
        history.append(total / len(images))
        copy_history.append(copied / changed if changed else None)
        log.info("epoch %d/%d: alignment loss %.5f%s", epoch + 1, epochs, history[-1],
                 f", copy index {copy_history[-1]:.3f}" if changed else "")
    return history, copy_history


def train(data: str | Path, out: str | Path, *, epochs: int = 3, image_size: int = 256,
          input_size: tuple[int, int] | None = None,
          backbone: str = "efficientnet-lite0", backbone_weights: str | None = None, seed: int = 0,
          batch_size: int = 8, learning_rate: float = 1e-3, augment_fraction: float = 0.5,
          denoise_fraction: float = 0.0,
          holdout: float = 0.0, max_images: int | None = None, progress: bool = True,
          config_overrides: dict | None = None) -> ModelInfo:
    """Train on the good images under `data` and write the model directory `out`."""
    started = time.perf_counter()
    rng = seed_everything(seed)
    quantum = 16 * (config_overrides or {}).get("lr_factor", HLGFAConfig.lr_factor)
    _check_sizes(input_size, image_size, epochs, quantum)
    folder = training_folder(data)
    all_paths = list_images(folder)
    config = replace(HLGFAConfig(input_size=input_size or choose_input_size(all_paths, image_size, quantum)),
                     **(config_overrides or {}))
    paths, held_out = split_holdout(all_paths, holdout, seed)
    if max_images is not None:
        paths = paths[:max_images]
    paths, validation_paths = split_validation(paths, seed)
    if len(paths) < 2:
        raise InputDataError(f"training folder {folder}: {len(paths)} usable images, need at least 2")
    spec = PreprocessSpec(config.input_size)
    model = HLGFA(build_backbone(backbone, config.strides, backbone_weights), config)
    log.info("training on %d good images from %s (%d held out for validation, %d for calibration)",
             len(paths), folder, len(validation_paths), len(held_out))
    images = load_resized(paths, config.input_size)
    hr_cache, lr_cache = cache_features(model, images, spec, batch_size, progress) if epochs else ([], [])

    history, copy_history = _train_aligners(model, images, hr_cache, lr_cache, spec, rng, epochs, batch_size,
                                            learning_rate, augment_fraction, denoise_fraction, progress)
    model.eval()
    # From fresh FP32 features, not the FP16 training cache: the statistics must describe the
    # errors the model computes at inference.
    fit_position_statistics(model, images, spec, batch_size)
    fit_images = images[np.random.default_rng(seed).permutation(len(images))[:min(len(images), 64)]]
    fitted = fit_constants(model, fit_images, spec, batch_size)
    validation = fit_choices(model, fit_images, validation_paths, spec, batch_size, seed,
                             TRAINING_KINDS if denoise_fraction else ())
    training = {
        "data": str(Path(data).resolve()), "train_files": [p.name for p in paths],
        "validation_files": [p.name for p in validation_paths], "validation": validation,
        "held_out_files": [p.name for p in held_out], "epochs": epochs, "seed": seed,
        "batch_size": batch_size, "learning_rate": learning_rate, "augment_fraction": augment_fraction,
        "denoise_fraction": denoise_fraction, "training_kinds": list(TRAINING_KINDS) if denoise_fraction else [],
        "loss_history": [round(v, 6) for v in history],
        "copy_index_history": [None if v is None else round(v, 4) for v in copy_history],
        "seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
    }
    log.info("fitted reliability strength %.2f", fitted.reliability_strength)
    return save_model(model, out, backbone_weights, training)


def refit(model_dir: str | Path, out: str | Path, *, config_overrides: dict | None = None,
          level_weighting: bool = True, reliability_strength: float | None = None, batch_size: int = 8) -> ModelInfo:
    """The model in `model_dir` with its inference-time options changed and its statistics and constants
    refitted on the same normal images, written to `out`: what an inference-only option is worth, without
    retraining the module."""
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
