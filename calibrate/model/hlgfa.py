"""HLGFA: high/low-resolution guided feature alignment (see shared HLGFA.md).

The whole inference path is one `nn.Module` (`HLGFA`) from the preprocessed HR batch to the
anomaly map and the image score, so the ONNX export and every backend compute exactly this.

Why the model lives in `calibrate/`: it is needed to train, to evaluate and to export, all of
which run off the line with torch installed. The line runtime (`edge/`) runs the exported graph
and never imports this module, except in the optional torch backend, which imports it lazily.
"""

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from calibrate.model.backbones import FrozenBackbone
from calibrate.model.gaussian import whitened_distance
from edge.core.errors import ConfigError, ModelFileError
from edge.imaging.preprocess import input_size

DISCREPANCIES = ("whitened", "cosine")
APPEARANCE_LEVELS = ("joint", "per-level")


def exact_fields(cls, data: dict, what: str) -> dict:
    """`data` checked to hold exactly the fields of dataclass `cls`: a model directory written by another
    version of this code is refused with the fix, never read with guessed defaults."""
    expected = {item.name for item in fields(cls)}
    missing, unknown = sorted(expected - set(data)), sorted(set(data) - expected)
    if missing or unknown:
        raise ModelFileError(f"model.json {what}: written by another version of hlgfa ("
                             + "; ".join(part for part in (missing and f"missing {', '.join(missing)}",
                                                           unknown and f"unknown {', '.join(unknown)}") if part)
                             + "); retrain with `hlgfa train`")
    return dict(data)


@dataclass
class HLGFAConfig:
    # (height, width) of the HR view, both multiples of 16 × lr_factor; frames of another aspect
    # ratio are resized to it. `hlgfa train` picks it from the data (calibrate.train.choose_input_size).
    input_size: tuple[int, int] = (256, 256)
    # r = 4 and strides 8/16 beat r = 2 and strides 4/8/16 on pixel AUROC and PRO on the magnetic
    # tile dev split, at lower cost (an ablation; its figures are not kept in BENCHMARKS.md).
    lr_factor: int = 4
    strides: tuple[int, ...] = (8, 16)
    # Dilated 3×3 depthwise convs (receptive fields 3, 5, 7): the same multi-scale layout as
    # 3/5/7 kernels, and an order of magnitude cheaper to train on a CPU (measured).
    structure_dilations: tuple[int, ...] = (1, 2, 3)
    use_structure: bool = True
    # The detail prior is a deliberate bottleneck: wide enough to carry local alignment cues,
    # too narrow to copy HR through (the identity trap). 0 disables it.
    detail_channels: int = 8
    # Blind-spot guidance: the detail prior at a position is made from its 8 neighbours' HR
    # features only (the centre tap of its 3×3 depthwise conv is held at zero, and no smoothing
    # mixes the centre back in), so it cannot carry a defect's own feature to the output.
    blind_spot: bool = False
    # Residual branch of the gated correction: hidden width as a fraction of the level's
    # channels, and how many depthwise 3×3 layers (each widens its receptive field by 2).
    residual_width: float = 1.0
    residual_depth: int = 2
    # How the refined LR features and the HR features are compared, per position:
    # "whitened": Mahalanobis distance of the alignment error (HR − refined LR) under its own mean
    #   and covariance at that position, fitted on normal images — which channels legitimately
    #   disagree, and by how much, differs across the part (edges, borders, texture direction);
    # "cosine": 1 − cosine similarity, the paper's discrepancy (kept for the ablation).
    discrepancy: str = "whitened"
    # The appearance term: the Mahalanobis norm of the HR features themselves under their mean and
    # covariance at that position on good parts. Cross-resolution consistency cannot see a defect
    # that survives downsampling (a large uneven or stained region: the aligner predicts it); how
    # unlikely the features are at that place does. Fused with the alignment term after both are
    # put on one scale (`FittedConstants.fusion`). Off: the alignment term alone, for parts that do
    # not sit in the same place in every frame (with discrepancy="cosine").
    appearance: bool = True
    # The appearance term's Gaussians. "joint": one per position of the finest level's grid over
    # every level's HR features at once (deeper levels upsampled to it), so that how the levels
    # vary together on good parts counts, as in PaDiM; projected onto the `appearance_channels`
    # leading principal directions of good parts' vectors (0: every channel) to bound the
    # statistics' size and cost. "per-level": one Gaussian per level, the levels' maps averaged.
    # Joint beat per-level on the magnetic tile's cracks (BENCHMARKS.md, the cross-level term).
    appearance_levels: str = "joint"
    appearance_channels: int = 100
    # The low-frequency term: a Gaussian per cell of lowfreq_pool × lowfreq_pool positions of the
    # joint appearance grid, on the cell's mean projected vector (0: off). A change spread thinly
    # over a large region (uneven, stained, discoloured) moves every position a little, less than
    # good parts vary at one position; averaged over a cell, that variation shrinks and the
    # change does not. Fused as a third term.
    lowfreq_pool: int = 0
    # The alignment term is divided where the structure prior's local gradient is high (edges,
    # texture: features that legitimately shift with resolution), by a strength fitted on normals.
    use_reliability: bool = True
    # Smoothing and score: `hlgfa train` chooses them on held-out images (train.choose_on_validation).
    smoothing_sigma: float = 4.0  # pixels at a 256×256 input, scaled with the input's side (geometric mean)
    score: str = "max"  # or "topk": mean of the top `topk_fraction` pixels
    topk_fraction: float = 0.01

    def __post_init__(self) -> None:
        self.input_size = input_size(self.input_size)
        if self.discrepancy not in DISCREPANCIES:
            raise ConfigError(f"discrepancy={self.discrepancy!r}: expected one of {', '.join(DISCREPANCIES)}")
        if self.appearance_levels not in APPEARANCE_LEVELS:
            raise ConfigError(f"appearance_levels={self.appearance_levels!r}: expected one of "
                              f"{', '.join(APPEARANCE_LEVELS)}")
        if self.appearance_channels < 0:
            raise ConfigError(f"appearance_channels={self.appearance_channels}: expected ≥ 0 (0: every channel)")
        if self.lowfreq_pool and not (self.appearance and self.appearance_levels == "joint"):
            raise ConfigError(f"lowfreq_pool={self.lowfreq_pool}: the low-frequency term pools the joint appearance "
                              f"term's vectors; needs appearance=true, appearance_levels='joint'")
        if self.lowfreq_pool < 0 or any((side // min(self.strides)) % max(self.lowfreq_pool, 1)
                                        for side in self.input_size):
            raise ConfigError(f"lowfreq_pool={self.lowfreq_pool}: expected 0 or a divisor of the appearance grid "
                              f"{self.input_size[0] // min(self.strides)}×{self.input_size[1] // min(self.strides)}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["strides"] = list(self.strides)
        data["structure_dilations"] = list(self.structure_dilations)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "HLGFAConfig":
        data = exact_fields(cls, data, "architecture")
        data["strides"] = tuple(data["strides"])
        data["structure_dilations"] = tuple(data["structure_dilations"])
        return cls(**data)


@dataclass
class FittedConstants:
    """Fitted on normal images after training; part of the model hash."""

    # Per-level mean discrepancy on normals: levels are combined after dividing by it, so a
    # level that aligns poorly everywhere cannot drown the others (empty: plain mean).
    level_scale: list[float] = field(default_factory=list)
    # Per-level mean structure instability on normals: makes the reliability weight scale-free.
    instability_scale: list[float] = field(default_factory=list)
    reliability_strength: float = 0.0
    # Per-level mean appearance distance on normals (levels combined scale-free, as above).
    appearance_scale: list[float] = field(default_factory=list)
    # Mean low-frequency distance on normals (empty: the term is off).
    lowfreq_scale: list[float] = field(default_factory=list)
    # Per term ("alignment", "appearance"): the 0.9 and 0.995 quantiles of its smoothed map over
    # held-out good images. Each term is mapped affinely so these land on 0 and 1, then the terms
    # are added (EfficientAD's rule): neither term's units can drown the other. Empty: one term,
    # unscaled.
    fusion: dict[str, list[float]] = field(default_factory=dict)
    # Per term, its weight in the sum once on that scale (absent: 1). Chosen on held-out images
    # and synthetic anomalies (train.choose_on_validation): on some lines a term adds more false
    # alarms on good parts than it finds anomalies.
    term_weights: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "FittedConstants":
        return cls(**exact_fields(cls, data, "fitted"))


class LevelAligner(nn.Module):
    """Refines LR features towards HR features at one level, guided by thin HR priors."""

    def __init__(self, channels: int, config: HLGFAConfig, grid: tuple[int, int],
                 appearance: tuple[int, int] | None = None):
        """`appearance`: (width, input channels) of the appearance statistics this level holds on
        its grid, None for none (the joint term's live with the finest level, on its grid)."""
        super().__init__()
        if config.discrepancy == "whitened":
            # Fitted on normal images after training (train.fit_error_statistics); saved with the
            # weights, so the model hash covers them. Identity until fitted.
            self.register_buffer("error_mean", torch.zeros(channels, *grid))
            self.register_buffer("error_precision", torch.eye(channels).repeat(grid[0] * grid[1], 1, 1))
        if appearance is not None:
            # The HR features' mean and inverse covariance per position (train.fit_position_statistics),
            # after the joint term's projection (width × input channels; none per level).
            width, inputs = appearance
            if config.appearance_levels == "joint":
                self.register_buffer("appearance_projection", torch.eye(width, inputs))
            self.register_buffer("appearance_mean", torch.zeros(width, *grid))
            self.register_buffer("appearance_precision", torch.eye(width).repeat(grid[0] * grid[1], 1, 1))
        self.use_structure = config.use_structure
        self.detail_channels = config.detail_channels
        if self.use_structure:
            self.structure_convs = nn.ModuleList(
                nn.Conv2d(channels, channels, 3, padding=d, dilation=d, groups=channels, bias=False)
                for d in config.structure_dilations)
            self.structure_proj = nn.Conv2d(channels, channels, 1)
            self.film = nn.Conv2d(channels, 2 * channels, 1)
            # FiLM starts as the identity so training begins from the plain LR features.
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        self.blind_spot = config.blind_spot
        if self.detail_channels > 0:
            self.detail_align = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
            self.detail_proj = nn.Conv2d(channels, self.detail_channels, 1)
            if self.blind_spot:
                with torch.no_grad():
                    self.detail_align.weight[:, :, 1, 1] = 0
                # Zero gradient at the centre: the tap stays exactly zero through training.
                self.detail_align.weight.register_hook(blind_spot_gradient)
        fused = channels + max(self.detail_channels, 0)
        self.gate = nn.Conv2d(fused, channels, 1)
        hidden = max(int(channels * config.residual_width), 16)
        layers = [nn.Conv2d(fused, hidden, 1), nn.ReLU(inplace=True)]
        for _ in range(config.residual_depth):
            layers += [nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.ReLU(inplace=True)]
        self.residual = nn.Sequential(*layers, nn.Conv2d(hidden, channels, 1))
        nn.init.zeros_(self.residual[-1].weight)
        nn.init.zeros_(self.residual[-1].bias)

    def structure_prior(self, hr: torch.Tensor) -> torch.Tensor | None:
        if not self.use_structure:
            return None
        # Smoothed first: the structure prior is the scene's layout, not its fine detail.
        smooth = F.avg_pool2d(hr, 3, stride=1, padding=1, count_include_pad=False)
        return self.structure_proj(sum(conv(smooth) for conv in self.structure_convs))

    def forward(self, lr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        structure = self.structure_prior(hr)
        if structure is not None:
            gamma, beta = self.film(structure).chunk(2, dim=1)
            modulated = lr * (1 + gamma) + beta
        else:
            modulated = lr
        if self.detail_channels > 0:
            if self.blind_spot:
                detail = self.detail_proj(self.detail_align(hr))
            else:
                smooth = F.avg_pool2d(hr, 3, stride=1, padding=1, count_include_pad=False)
                detail = self.detail_proj(self.detail_align(smooth))
            fused = torch.cat([modulated, detail], dim=1)
        else:
            fused = modulated
        refined = modulated + torch.sigmoid(self.gate(fused)) * self.residual(fused)
        return refined, structure


def blind_spot_gradient(gradient: torch.Tensor) -> torch.Tensor:
    gradient = gradient.clone()
    gradient[:, :, 1, 1] = 0
    return gradient


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    positions = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (positions / sigma) ** 2)
    return kernel / kernel.sum()


def local_instability(structure: torch.Tensor) -> torch.Tensor:
    """Mean absolute spatial gradient of the structure prior (N×1×h×w): high on edges and
    textures whose features legitimately shift with resolution."""
    grad_x = F.pad(structure[..., :, 1:] - structure[..., :, :-1], (0, 1, 0, 0))
    grad_y = F.pad(structure[..., 1:, :] - structure[..., :-1, :], (0, 0, 0, 1))
    return (grad_x.abs() + grad_y.abs()).mean(dim=1, keepdim=True)


@dataclass
class RawMaps:
    """Per-level maps upsampled to the input size (N×1×S×S each), before levels are combined."""

    alignment: list[torch.Tensor]
    instability: torch.Tensor | None
    appearance: list[torch.Tensor]  # per Gaussian grid (one when joint); empty when the term is off
    lowfreq: list[torch.Tensor] = field(default_factory=list)  # one map, or empty when the term is off


class HLGFA(nn.Module):
    """HR batch (N×3×H×W, ImageNet-normalised) → (anomaly map N×H×W, image score N)."""

    def __init__(self, backbone: FrozenBackbone, config: HLGFAConfig, fitted: FittedConstants | None = None):
        super().__init__()
        if tuple(backbone.strides) != tuple(config.strides):
            raise ValueError(f"backbone taps strides {backbone.strides}, the config asks for {config.strides}")
        self.backbone = backbone
        self.config = config
        height, width = config.input_size
        if list(config.strides) != sorted(config.strides):
            raise ConfigError(f"strides {config.strides}: expected finest first")
        self.aligners = nn.ModuleList(
            LevelAligner(backbone.channels[s], config, (height // s, width // s), self.appearance_shape(backbone, level))
            for level, s in enumerate(config.strides))
        if config.lowfreq_pool:
            # With the joint term's statistics, on the finest level (its grid, coarsened).
            holder, pool = self.aligners[0], config.lowfreq_pool
            channels = holder.appearance_mean.shape[0]
            cells = (height // config.strides[0] // pool, width // config.strides[0] // pool)
            holder.register_buffer("lowfreq_mean", torch.zeros(channels, *cells))
            holder.register_buffer("lowfreq_precision", torch.eye(channels).repeat(cells[0] * cells[1], 1, 1))
        self.register_buffer("smoothing_kernel", gaussian_kernel1d(self.smoothing_pixels(config.smoothing_sigma)),
                             persistent=False)
        self.fitted = fitted or FittedConstants()

    def appearance_shape(self, backbone: FrozenBackbone, level: int) -> tuple[int, int] | None:
        """(width, input channels) of the appearance statistics level `level` holds, or None."""
        if not self.config.appearance:
            return None
        channels = [backbone.channels[s] for s in self.config.strides]
        if self.config.appearance_levels == "per-level":
            return channels[level], channels[level]
        if level:
            return None
        total = sum(channels)
        return min(self.config.appearance_channels or total, total), total

    def appearance_vectors(self, hr: list[torch.Tensor]) -> list[torch.Tensor]:
        """What the appearance term's Gaussians are fitted on, before any projection: the HR
        features per level, or (joint) every level's on the finest grid, concatenated."""
        if self.config.appearance_levels == "per-level":
            return hr
        size = hr[0].shape[-2:]
        return [torch.cat([hr[0]] + [F.interpolate(h, size=size, mode="bilinear", align_corners=False)
                                      for h in hr[1:]], dim=1)]

    def appearance_distances(self, hr: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The appearance term's Mahalanobis norms, N×h×w, one per Gaussian grid; and the
        low-frequency term's, per cell (empty when off)."""
        vectors = self.appearance_vectors(hr)
        holders = [a for a in self.aligners if hasattr(a, "appearance_mean")]
        if self.config.appearance_levels == "joint":
            # A 1×1 convolution: the projection exports as one Conv.
            projection = holders[0].appearance_projection
            vectors = [F.conv2d(vectors[0], projection[:, :, None, None])]
        appearance = [whitened_distance(v, a.appearance_mean, a.appearance_precision) for v, a in zip(vectors, holders)]
        lowfreq = []
        if self.config.lowfreq_pool:
            cells = F.avg_pool2d(vectors[0], self.config.lowfreq_pool)
            lowfreq = [whitened_distance(cells, holders[0].lowfreq_mean, holders[0].lowfreq_precision)]
        return appearance, lowfreq

    def features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Backbone features of the HR view and of the LR view resized to the HR grid."""
        with torch.no_grad():
            hr = self.backbone(images)
            factor = self.config.lr_factor
            # Box-filter downsampling is antialiased and exports as one AveragePool op.
            lr_view = F.avg_pool2d(images, factor, stride=factor)
            lr = [F.interpolate(f, size=h.shape[-2:], mode="bilinear", align_corners=False)
                  for f, h in zip(self.backbone(lr_view), hr)]
        return hr, lr

    def align(self, hr: list[torch.Tensor], lr: list[torch.Tensor]):
        """Refined LR features and structure priors per level."""
        outputs = [aligner(l, h) for aligner, l, h in zip(self.aligners, lr, hr)]
        return [o[0] for o in outputs], [o[1] for o in outputs]

    @staticmethod
    def alignment_loss(refined: list[torch.Tensor], hr: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([(1 - F.cosine_similarity(r, h, dim=1)).mean() for r, h in zip(refined, hr)]).mean()

    def raw_maps(self, images: torch.Tensor) -> RawMaps:
        hr, lr = self.features(images)
        refined, structures = self.align(hr, lr)
        size = images.shape[-2:]

        def upsampled(level_maps, scales):
            return [F.interpolate(m.unsqueeze(1) / scale, size=size, mode="bilinear", align_corners=False)
                    for m, scale in zip(level_maps, scales)]

        alignment = upsampled([self.discrepancy(a, r, h) for a, r, h in zip(self.aligners, refined, hr)],
                              self.fitted.level_scale or [1.0] * len(hr))
        appearance, lowfreq = [], []
        if self.config.appearance:
            distances, lowfreq_distances = self.appearance_distances(hr)
            appearance = upsampled(distances, self.fitted.appearance_scale or [1.0] * len(distances))
            lowfreq = upsampled(lowfreq_distances, self.fitted.lowfreq_scale or [1.0] * len(lowfreq_distances))
        instability = None
        if self.config.use_structure and self.fitted.instability_scale:
            instability = torch.stack([
                F.interpolate(local_instability(s), size=size, mode="bilinear", align_corners=False) / scale
                for s, scale in zip(structures, self.fitted.instability_scale)]).mean(dim=0)
        return RawMaps(alignment, instability, appearance, lowfreq)

    def discrepancy(self, aligner: LevelAligner, refined: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """N×h×w: how far the refined LR features are from the HR features at each position."""
        if self.config.discrepancy == "cosine":
            return 1 - F.cosine_similarity(refined, hr, dim=1)
        return whitened_distance(hr - refined, aligner.error_mean, aligner.error_precision)

    def smooth(self, maps: torch.Tensor) -> torch.Tensor:
        kernel = self.smoothing_kernel
        radius = kernel.numel() // 2
        maps = F.pad(maps, (radius, radius, radius, radius), mode="reflect")
        maps = F.conv2d(maps, kernel.view(1, 1, 1, -1))
        return F.conv2d(maps, kernel.view(1, 1, -1, 1))

    def term_maps(self, raw: RawMaps, reliability_strength: float) -> dict[str, torch.Tensor]:
        """Per term, its levels combined (N×1×S×S), unsmoothed; reliability weighs the alignment
        term only: it says where the two views legitimately disagree, not where parts vary."""
        alignment = torch.stack(raw.alignment).mean(dim=0)
        if self.config.use_reliability and raw.instability is not None and reliability_strength > 0:
            alignment = alignment / (1 + reliability_strength * raw.instability)
        terms = {"alignment": alignment}
        if raw.appearance:
            terms["appearance"] = torch.stack(raw.appearance).mean(dim=0)
        if raw.lowfreq:
            terms["lowfreq"] = raw.lowfreq[0]
        return terms

    def fuse(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """One map from the terms, each mapped by its fitted quantiles (0.9 → 0, 0.995 → 1)."""
        fusion, weights = self.fitted.fusion, self.fitted.term_weights
        return sum(weights.get(name, 1.0) * (t - fusion[name][0]) / (fusion[name][1] - fusion[name][0])
                   if name in fusion else t for name, t in terms.items() if weights.get(name, 1.0))

    def image_score(self, anomaly: torch.Tensor) -> torch.Tensor:
        flat = anomaly.flatten(1)
        if self.config.score == "topk":
            # From the config, not the tensor's shape: a traced shape is not a Python int.
            height, width = self.config.input_size
            count = max(1, round(self.config.topk_fraction * height * width))
            return flat.topk(count, dim=1).values.mean(dim=1)
        return flat.amax(dim=1)

    def finish(self, raw: RawMaps, reliability_strength: float) -> tuple[torch.Tensor, torch.Tensor]:
        # Smoothing is linear and the fusion affine, so fusing before smoothing equals smoothing
        # each term first (the fitted quantiles are of smoothed maps), at half the cost.
        anomaly = self.smooth(self.fuse(self.term_maps(raw, reliability_strength))).squeeze(1)
        return anomaly, self.image_score(anomaly)

    def smoothing_pixels(self, sigma: float) -> float:
        """σ given at a 256×256 input → σ at this input, scaled with its side (geometric mean)."""
        height, width = self.config.input_size
        return sigma * math.sqrt(height * width) / 256

    def set_smoothing(self, sigma: float) -> None:
        self.config.smoothing_sigma = sigma
        self.smoothing_kernel = gaussian_kernel1d(self.smoothing_pixels(sigma))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.finish(self.raw_maps(images), self.fitted.reliability_strength)

    def learned_parameters(self):
        return self.aligners.parameters()
