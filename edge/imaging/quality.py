"""The frame-quality gate: is this frame one the model can judge at all?

An anomaly model scores what it was trained on. A frame unlike every good part — a failed light
(black), a lens cap, an overexposed or uniform grey frame, a defocused lens, a camera that moved or
another product — is outside what it learned, and its score means nothing: a blank frame scores
*below* the median good tile on a magnetic-tile model. Such a frame must be a fault
(`frame_quality`), never `ok`, never `reject`.

Statistics, per frame (`STATISTICS`, the one list of names used by the thresholds file, the config,
calibration, evaluation and the daemon):

- `mean` grey level, `contrast` (standard deviation of the grey levels), `sharpness` (variance of
  the 4-neighbour Laplacian divided by the variance of the grey levels; 0 for a uniform frame),
  `saturated_fraction` (grey ≥ 250) and `black_fraction` (grey ≤ 5):
  computed on the grey image *after* the model's own resize to its input size (`resize_to`).
  Why there and not on the raw frame: (1) the Laplacian then works at a fixed size — the model's
  input size — so sharpness does not depend on the camera's resolution; (2) it is what the model
  sees, so calibration, evaluation and the line measure the same thing through the same code; (3)
  it costs microseconds at 256², where a 5 MP frame would cost milliseconds on the latency path.
  Why sharpness is divided by the grey-level variance: the Laplacian's variance grows with the
  square of the contrast, so on its own it mostly repeats `contrast` (60 good EL cells at 128 px
  spread over a factor 7 in it); the ratio is the share of the image's variation at the finest
  scale, which a defocused lens removes and exposure does not change (the same cells: a factor 3.5;
  a cell blurred with σ = 4 px lies at 40 % of the lowest good one, where the plain variance stayed
  in range).
- `width`, `height`: of the raw frame (a 1×1 frame, a changed region of interest).
- `map_mean`: the mean of the anomaly map the model returns. An out-of-distribution statistic that
  needs no change to the model graph and works with whatever map it returns. Checked after
  inference; the image statistics before, so an unusable frame does not cost an inference. Its two
  ends mean different things. Below the range the map is *less* anomalous than every good part's:
  nothing a defect does, so the frame is not one the model can judge (a fault). Above the range the
  map is anomalous everywhere; but a frame whose image statistics are in range *is* judgeable, and a
  part anomalous everywhere (an unseen fray across the whole tile, a stained cell) is a `reject`
  with that reason (`anomalous_everywhere`), never a fault: a fault says "this frame could not be
  judged", and a real defect must not read as a camera problem.

Ranges are fitted on calibration normals (`calibrate/quality_fit.py`), stored in the thresholds
file (key `quality`, bound to the model like the thresholds), and each can be overridden in the
daemon config (`[quality]`). A thresholds file without a range for every statistic is refused
(edge/artifacts/thresholds.py): recalibrate.
Pure numpy (and the shared resize): no torch, no model.
"""

from __future__ import annotations

import logging
import math
from typing import Mapping

import numpy as np
from pydantic import model_validator

from edge.core.settings import Section
from edge.imaging.preprocess import check_image, input_size, resize_to

log = logging.getLogger(__name__)

IMAGE_STATISTICS = ("mean", "contrast", "sharpness", "saturated_fraction", "black_fraction", "width", "height")
MAP_STATISTICS = ("map_mean",)
STATISTICS = IMAGE_STATISTICS + MAP_STATISTICS
# What each statistic can be: a range given in the config lies within it. Sharpness, the Laplacian's
# variance over the grey levels', is at most 64 on the interior (the 4-neighbour Laplacian's norm is 8);
# 100 leaves room for the border. The map mean has no natural end: ±1e9 is far beyond any model's maps.
STATISTIC_DOMAINS = {"mean": (0.0, 255.0), "contrast": (0.0, 128.0), "sharpness": (0.0, 100.0),
                     "saturated_fraction": (0.0, 1.0), "black_fraction": (0.0, 1.0),
                     "width": (0.0, float(1 << 27)), "height": (0.0, float(1 << 27)), "map_mean": (-1e9, 1e9)}
SATURATED_LEVEL = 250  # grey levels within 5 of either end count as saturated / black
BLACK_LEVEL = 5
# ITU-R BT.601 luma, as cv2's RGB2GRAY; the weights matter little, only that they never change.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def grey(resized: np.ndarray) -> np.ndarray:
    """H×W (Mono8) or H×W×3 (RGB8) → H×W float32 grey levels 0..255."""
    if resized.ndim == 2:
        return resized.astype(np.float32)
    return resized.astype(np.float32) @ _LUMA


def laplacian_variance(levels: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian over the interior pixels (no border assumptions)."""
    centre = levels[1:-1, 1:-1]
    if centre.size == 0:
        return 0.0
    laplacian = (levels[:-2, 1:-1] + levels[2:, 1:-1] + levels[1:-1, :-2] + levels[1:-1, 2:]) - 4.0 * centre
    return float(laplacian.var(dtype=np.float64))


def sharpness(levels: np.ndarray) -> float:
    """Laplacian variance over grey-level variance (0 for a uniform frame, which has neither)."""
    variance = float(levels.var(dtype=np.float64))
    return laplacian_variance(levels) / variance if variance > 0 else 0.0


def resized_stats(resized: np.ndarray, frame_shape: tuple) -> dict[str, float]:
    """The image statistics of a frame of `frame_shape`, from its resized uint8 image (the
    model's input before normalisation)."""
    levels = grey(resized)
    count = levels.size
    return {
        "mean": float(levels.mean(dtype=np.float64)),
        "contrast": float(levels.std(dtype=np.float64)),
        "sharpness": sharpness(levels),
        "saturated_fraction": float(np.count_nonzero(levels >= SATURATED_LEVEL) / count),
        "black_fraction": float(np.count_nonzero(levels <= BLACK_LEVEL) / count),
        "width": float(frame_shape[1]),
        "height": float(frame_shape[0]),
    }


def image_stats(image: np.ndarray, size: int | tuple[int, int], name: str = "image") -> dict[str, float]:
    """The image statistics of a raw Mono8/RGB8 frame of any size, through the model's resize."""
    image = check_image(image, name)
    return resized_stats(resize_to(image, input_size(size)), image.shape)


def map_stats(anomaly_map: np.ndarray) -> dict[str, float]:
    return {"map_mean": float(np.mean(anomaly_map, dtype=np.float64))}  # accumulates in float64, no copy


def format_range(low: float, high: float) -> str:
    return f"[{low:.6g}, {high:.6g}]"


def out_of_range(stats: Mapping[str, float], ranges: Mapping[str, tuple[float, float]]) -> str | None:
    """None when every statistic that has a range lies inside it; otherwise the message of the
    first that does not, naming the statistic, its value and the range. A non-finite value is
    outside every range (fail closed)."""
    for name in STATISTICS:
        if name not in ranges or name not in stats:
            continue
        low, high = ranges[name]
        value = stats[name]
        if not (math.isfinite(value) and low <= value <= high):
            return f"{name} {value:.6g} outside the calibrated range {format_range(low, high)}"
    return None


def unjudgeable(stats: Mapping[str, float], ranges: Mapping[str, tuple[float, float]]) -> str | None:
    """None when the gate lets the frame be judged; otherwise the message of the first statistic that
    says it cannot be: an image statistic outside its range, or a map statistic *below* its range (a map
    above its range is `anomalous_everywhere`, a judgeable part)."""
    for name in STATISTICS:
        if name not in ranges or name not in stats:
            continue
        low, high = ranges[name]
        value = stats[name]
        if name in MAP_STATISTICS and math.isfinite(value) and value > high:
            continue
        if (message := out_of_range({name: value}, {name: (low, high)})) is not None:
            return message
    return None


def anomalous_everywhere(stats: Mapping[str, float], ranges: Mapping[str, tuple[float, float]]) -> str | None:
    """The message when a map statistic lies above its range (the part is anomalous everywhere: a
    reject, whatever its score), else None."""
    for name in MAP_STATISTICS:
        if name in ranges and name in stats and math.isfinite(stats[name]) and stats[name] > ranges[name][1]:
            return f"{name} {stats[name]:.6g} above the calibrated range {format_range(*ranges[name])}: anomalous everywhere"
    return None


def effective_ranges(calibrated: Mapping[str, tuple[float, float]] | None,
                     overrides: Mapping[str, tuple[float, float]] | None, where: str) -> dict[str, tuple[float, float]]:
    """The ranges the daemon applies: the thresholds file's, each key replaced by the config's
    override. Without calibrated ranges the gate is off except for overridden keys, and that is
    logged at WARNING: blank, dark or foreign frames are then judged by the score alone."""
    ranges = dict(calibrated or {})
    if not ranges:
        log.warning("%s: no frame-quality ranges (thresholds made in memory without them); blank, dark, "
                    "blurred or foreign frames are judged by the score alone%s. Recalibrate with `hlgfa calibrate` to "
                    "turn the gate on.", where,
                    f" (only the config's overrides apply: {', '.join(sorted(overrides))})" if overrides else "")
    for name, bounds in (overrides or {}).items():
        ranges[name] = (float(bounds[0]), float(bounds[1]))
    return ranges


def split(ranges: Mapping[str, tuple[float, float]]) -> tuple[dict, dict]:
    """(image ranges, map ranges): the first are checked before inference, the second after."""
    return ({k: v for k, v in ranges.items() if k in IMAGE_STATISTICS},
            {k: v for k, v in ranges.items() if k in MAP_STATISTICS})


def parse_ranges(data: object, source: str) -> dict[str, tuple[float, float]]:
    """The `quality` object of a thresholds file (or a config section): statistic → [low, high],
    finite numbers with low ≤ high. An unknown statistic is refused, not ignored: a gate this
    daemon cannot apply must not look applied."""
    from edge.core.errors import ConfigError

    if not isinstance(data, dict):
        raise ConfigError(f"{source}: key 'quality' must be an object of statistic → [low, high], got "
                          f"{type(data).__name__}")
    ranges = {}
    for name, bounds in data.items():
        if name not in STATISTICS:
            raise ConfigError(f"{source}: quality statistic {name!r} is not one of {', '.join(STATISTICS)}")
        if (not isinstance(bounds, (list, tuple)) or len(bounds) != 2
                or any(isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) for b in bounds)
                or bounds[0] > bounds[1]):
            raise ConfigError(f"{source}: quality range {name!r} must be [low, high], finite numbers with "
                              f"low ≤ high, got {bounds!r}")
        ranges[name] = (float(bounds[0]), float(bounds[1]))
    return ranges


class QualityConfig(Section):
    """Per-statistic overrides of the frame-quality ranges fitted by `hlgfa calibrate` (edge/imaging/quality.py):
    `mean = [30, 220]` replaces the thresholds file's range for `mean`; the other statistics keep theirs."""

    mean: tuple[float, float] | None = None
    contrast: tuple[float, float] | None = None
    sharpness: tuple[float, float] | None = None
    saturated_fraction: tuple[float, float] | None = None
    black_fraction: tuple[float, float] | None = None
    width: tuple[float, float] | None = None
    height: tuple[float, float] | None = None
    map_mean: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _ranges(self):
        for name, bounds in self.overrides().items():
            low, high = bounds
            floor, ceiling = STATISTIC_DOMAINS[name]
            if not (math.isfinite(low) and math.isfinite(high) and floor <= low <= high <= ceiling):
                raise ValueError(f"{name} = {list(bounds)}: expected [low, high], finite numbers with "
                                 f"{floor:g} ≤ low ≤ high ≤ {ceiling:g}")
        return self

    def overrides(self) -> dict[str, tuple[float, float]]:
        return {name: value for name, value in self.model_dump().items() if value is not None}
