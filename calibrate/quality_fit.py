"""Frame-quality ranges from good parts: one [low, high] per statistic of edge/quality.py.

The rule, per statistic, on the calibration normals' values x(1) ≤ … ≤ x(n) (on a log scale for
`contrast` and `sharpness`, whose good values spread multiplicatively and whose failures — a
blurred or flat frame — divide them; see LOG_OFFSETS):

    low  = x(1) − margin,   high = x(n) + margin,
    margin = max(MARGIN_FACTOR · (q95 − q5), floor of that statistic)

Why this rule. It is distribution-free where it can be: for exchangeable frames, a new good frame
falls outside [x(1), x(n)] with probability exactly 2/(n+1), whatever the distribution. That is
1 % per statistic at n = 200 — too much for the ≤ 0.5 % false-fault target over eight statistics —
so the band is widened by half the normals' central 90 % range: for a Gaussian statistic that is
1.6 σ beyond the extremes (below 10⁻⁵ per side at n = 200), for a heavier tail less; the measured
false-fault rates on held-out good test images are in BENCHMARKS.md ("Frame-quality gate"). The
floors stop a statistic that is constant on the normals (frame size from a fixed camera, no
saturated pixels) from faulting the smallest change in its last digit: one grey level of `mean`,
1 % of the pixels for the saturated/black fractions, 5 % on the log scales. Frame width and height
have no floor: a fixed camera's frames all have one size, and a frame of another size comes from
another setting or another camera.

What it does not do: it cannot tell how far a broken frame lies — the catch rates on synthetic
blank, dark, saturated, blurred and foreign frames are measured, not promised (BENCHMARKS.md).
"""

from __future__ import annotations

import math

import numpy as np

from edge.errors import InputDataError
from edge.quality import IMAGE_STATISTICS, STATISTICS

MARGIN_FACTOR = 0.5
# Statistics fitted on log(value + offset): the offset keeps log finite at 0 (a flat frame) and
# sits well below the good parts' values (grey levels for contrast, a ratio near 0.1 for sharpness).
LOG_OFFSETS = {"contrast": 1.0, "sharpness": 1e-4}
LOG_STATISTICS = tuple(LOG_OFFSETS)
FLOORS = {"mean": 1.0, "contrast": 0.05, "sharpness": 0.05, "saturated_fraction": 0.01, "black_fraction": 0.01,
          "width": 0.0, "height": 0.0, "map_mean": 0.0}
MIN_NORMALS = 20


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
    low_q, high_q = np.quantile(scaled, [0.05, 0.95])
    margin = max(MARGIN_FACTOR * float(high_q - low_q), FLOORS[name])
    low, high = float(scaled.min()) - margin, float(scaled.max()) + margin
    bounds = (_backward(name, low), _backward(name, high))
    if name in IMAGE_STATISTICS:  # never negative: a lower bound below 0 reads better as 0 (no lower bound)
        bounds = (max(bounds[0], 0.0), bounds[1])
    detail = {"low": bounds[0], "high": bounds[1], "min": float(values.min()), "max": float(values.max()),
              "median": float(np.median(values)), "scale": f"log(x + {LOG_OFFSETS[name]:g})" if name in LOG_OFFSETS else "linear",
              "margin": margin, "n": int(values.size)}
    return bounds, detail


def fit_quality_ranges(stats: list[dict]) -> tuple[dict[str, tuple[float, float]], dict]:
    """Ranges for every statistic present in all of `stats` (one dict per normal frame), and the
    details: the rule, per statistic its range, extremes and median."""
    ranges, per_statistic = {}, {}
    for name in STATISTICS:
        if stats and all(name in s for s in stats):
            ranges[name], per_statistic[name] = fit_range(name, [s[name] for s in stats])
    details = {"rule": f"[min − m, max + m] of the normals, m = max({MARGIN_FACTOR} × (q95 − q5), floor); "
                       f"on log(x + offset) for {', '.join(LOG_STATISTICS)}",
               "margin_factor": MARGIN_FACTOR, "floors": dict(FLOORS), "statistics": per_statistic,
               "calibration_faults": count_faults(stats, ranges)}
    return ranges, details


def count_faults(stats: list[dict], ranges: dict) -> int:
    """How many of these frames the gate faults."""
    from edge.quality import out_of_range

    return sum(out_of_range(s, ranges) is not None for s in stats)


def gate_summary(stats: list[dict], ranges: dict) -> dict:
    """Frames faulted, and per statistic how many fell outside its range (a frame may count under
    several)."""
    from edge.quality import out_of_range

    by_statistic = {name: sum(1 for s in stats if out_of_range({name: s[name]}, ranges) is not None)
                    for name in STATISTICS if name in ranges and all(name in s for s in stats)}
    faulted = count_faults(stats, ranges)
    return {"n": len(stats), "faulted": faulted, "rate": faulted / len(stats) if stats else math.nan,
            "by_statistic": {k: v for k, v in by_statistic.items() if v}}
