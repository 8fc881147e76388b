"""Frame-quality ranges from good parts: one [low, high] per statistic of edge/imaging/quality.py.

The rule, per statistic, on the calibration normals' values x(1) ≤ … ≤ x(n) (on a log scale for
`contrast` and `sharpness`, whose good values spread multiplicatively and whose failures — a
blurred or flat frame — divide them; see LOG_OFFSETS):

    low  = x(1) − max(TAIL_FACTOR · (q10 − x(1)), floor)
    high = x(n) + max(TAIL_FACTOR · (x(n) − q90), floor)

Why this rule. It starts distribution-free: for exchangeable frames, a new good frame falls outside
[x(1), x(n)] with probability exactly 2/(n+1), whatever the distribution. That is 1 % per statistic
at n = 200 — too much for the ≤ 0.5 % false-fault target over eight statistics — so each end is
pushed out by 1.5× how far the normals' own last decile reached on that side. The margin follows
the tail, not the body: a statistic with a long tail on one side (the saturated fraction: zero on
most parts, a few per cent on bright ones) gets a wide margin on that side only, where a margin
from the central spread would be zero there and fault every bright part. At n = 121, a Gaussian
statistic's end lies ~4.3 σ out (~10⁻⁵ of good frames beyond it), an exponential tail's ~10 scale
lengths (~5·10⁻⁵). The measured false-fault rates on good test images are in BENCHMARKS.md
("Frame-quality gate"), including where they miss the target.
The floors stop a statistic that is constant on the normals (no saturated pixels, one frame size)
from faulting the smallest change: one grey level of `mean`, 5 % of the pixels for the saturated and
black fractions, 5 % on the log scales. Frame width and height have no floor: a fixed camera's frames
all have one size, and a frame of another size comes from another setting or another camera.

What it does not do: it cannot tell how far a broken frame lies — the catch rates on synthetic
blank, dark, saturated, blurred and foreign frames are measured, not promised (BENCHMARKS.md).
"""

from __future__ import annotations

import math

import numpy as np

from edge.core.errors import InputDataError
from edge.imaging.quality import IMAGE_STATISTICS, STATISTICS

TAIL_FACTOR = 1.5
# Statistics fitted on log(value + offset): the offset keeps log finite at 0 (a flat frame) and
# sits well below the good parts' values (grey levels for contrast, a ratio near 0.1 for sharpness).
LOG_OFFSETS = {"contrast": 1.0, "sharpness": 1e-4}
LOG_STATISTICS = tuple(LOG_OFFSETS)
FLOORS = {"mean": 1.0, "contrast": 0.05, "sharpness": 0.05, "saturated_fraction": 0.05, "black_fraction": 0.05,
          "width": 0.0, "height": 0.0, "map_mean": 0.0}
MIN_NORMALS = 20
# Fewer normals than this fit ranges that fault good parts (BENCHMARKS.md, "Frame-quality gate: how many
# normals"; bench/detection/quality_floor.py): `hlgfa calibrate` fits below it, and says so.
GATE_FLOOR_NORMALS = 100
# (normals, median share of held-out good elpv cells at 256 px the gate faulted), measured over 200 draws.
MEASURED_FALSE_FAULTS = ((20, 0.075), (30, 0.035), (40, 0.0125), (50, 0.005), (100, 0.0))


def floor_note(count: int) -> str | None:
    """The warning `hlgfa calibrate` gives for a gate fitted on `count` normals; None from the floor on."""
    if count >= GATE_FLOOR_NORMALS:
        return None
    measured = max(((n, rate) for n, rate in MEASURED_FALSE_FAULTS if n <= count), default=MEASURED_FALSE_FAULTS[0])
    return (f"the frame-quality gate's ranges were fitted on {count} normals, fewer than {GATE_FLOOR_NORMALS}: with "
            f"{measured[0]}, ranges faulted a median {measured[1]:.2%} of good parts (BENCHMARKS.md, \"Frame-quality "
            f"gate: how many normals\"); calibrate on at least {GATE_FLOOR_NORMALS} good parts")


def _forward(name: str, values: np.ndarray) -> np.ndarray:
    return np.log(values + LOG_OFFSETS[name]) if name in LOG_OFFSETS else values


def _backward(name: str, value: float) -> float:
    return float(np.exp(value) - LOG_OFFSETS[name]) if name in LOG_OFFSETS else float(value)


def fit_range(name: str, values) -> tuple[tuple[float, float], dict]:
    """The range of one statistic and how it was reached (for the thresholds file's details)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size < MIN_NORMALS:
        raise InputDataError(f"frame-quality statistic {name}: {values.size} normals, need at least {MIN_NORMALS}")
    if not np.isfinite(values).all():
        raise InputDataError(f"frame-quality statistic {name}: {int((~np.isfinite(values)).sum())} of {values.size} "
                             f"normals have non-finite values; the model output is broken")
    scaled = _forward(name, values)
    q10, q90 = (float(q) for q in np.quantile(scaled, [0.1, 0.9]))
    smallest, largest = float(scaled.min()), float(scaled.max())
    margins = (max(TAIL_FACTOR * (q10 - smallest), FLOORS[name]), max(TAIL_FACTOR * (largest - q90), FLOORS[name]))
    low, high = smallest - margins[0], largest + margins[1]
    bounds = (_backward(name, low), _backward(name, high))
    if name in IMAGE_STATISTICS:  # never negative: a lower bound below 0 reads better as 0 (no lower bound)
        bounds = (max(bounds[0], 0.0), bounds[1])
    detail = {"low": bounds[0], "high": bounds[1], "min": float(values.min()), "max": float(values.max()),
              "median": float(np.median(values)),
              "scale": f"log(x + {LOG_OFFSETS[name]:g})" if name in LOG_OFFSETS else "linear",
              "margins": list(margins), "n": int(values.size)}
    return bounds, detail


def fit_quality_ranges(stats: list[dict]) -> tuple[dict[str, tuple[float, float]], dict]:
    """Ranges for every statistic present in all of `stats` (one dict per normal frame), and the
    details: the rule, per statistic its range, extremes and median."""
    ranges, per_statistic = {}, {}
    for name in STATISTICS:
        if stats and all(name in s for s in stats):
            ranges[name], per_statistic[name] = fit_range(name, [s[name] for s in stats])
    details = {"rule": f"[min − max({TAIL_FACTOR} × (q10 − min), floor), max + max({TAIL_FACTOR} × (max − q90), "
                       f"floor)] of the normals; on log(x + offset) for {', '.join(LOG_STATISTICS)}",
               "tail_factor": TAIL_FACTOR, "floors": dict(FLOORS), "statistics": per_statistic,
               "calibration_faults": count_faults(stats, ranges)}
    return ranges, details


def count_faults(stats: list[dict], ranges: dict) -> int:
    """How many of these frames the gate faults (a map above its range is a reject, not a fault)."""
    from edge.imaging.quality import unjudgeable

    return sum(unjudgeable(s, ranges) is not None for s in stats)


def gate_summary(stats: list[dict], ranges: dict) -> dict:
    """Frames faulted, and per statistic how many fell outside its range (a frame may count under
    several)."""
    from edge.imaging.quality import out_of_range

    by_statistic = {name: sum(1 for s in stats if out_of_range({name: s[name]}, ranges) is not None)
                    for name in STATISTICS if name in ranges and all(name in s for s in stats)}
    faulted = count_faults(stats, ranges)
    return {"n": len(stats), "faulted": faulted, "rate": faulted / len(stats) if stats else math.nan,
            "by_statistic": {k: v for k, v in by_statistic.items() if v}}
