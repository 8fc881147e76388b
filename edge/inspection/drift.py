"""Drift watch: do the passed parts still score like the good parts the thresholds were calibrated on?

A lamp ageing, a camera knocked a few millimetres, a new material lot: the scores of good parts creep
up long before they cross the threshold, and the false-reject rate the calibration promised no longer
holds. The thresholds file keeps the calibration normals' score quantiles; this module compares the
last `window` passed parts' scores with that distribution and reports

    stable    the window is consistent with the calibration
    drifting  a Kolmogorov–Smirnov distance the calibration would show by chance less than 1 % of the time
    drifted   less than 0.1 % of the time: recalibrate (or fix the light, the camera, the lot)
    unknown   too few passed parts yet, or a thresholds file without quantiles (recalibrate to add them)

Only passed parts count (rejects are defects or the known false rejects), so the reference is the
calibration's distribution below the image threshold. The figures (KS distance, its critical values,
the fractions above the calibration's 95th and 99th percentiles) go into the heartbeat and the
metrics. The pipeline calls `observe` once per decision; nothing here can change a verdict.
"""

from __future__ import annotations

import collections
import math
import threading

import numpy as np

# Two-sample Kolmogorov–Smirnov: c(α) · sqrt((n + m) / (n·m)) for α = 0.01 and 0.001.
_C_DRIFTING, _C_DRIFTED = 1.628, 1.949
QUANTILE_POINTS = 101  # the calibration's 0th, 1st, ..., 100th percentile


def reference_of(thresholds) -> tuple[np.ndarray, int] | None:
    """The calibration normals' score quantiles and their count, from a thresholds file's details."""
    normal = (thresholds.details or {}).get("normal_scores")
    if not isinstance(normal, dict):
        return None
    quantiles = normal.get("quantiles")
    count = thresholds.details.get("n_normals")
    if not isinstance(quantiles, list) or len(quantiles) < 3 or not isinstance(count, int) or count < 2:
        return None
    values = np.asarray(quantiles, dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(np.diff(values) < 0):
        return None
    return values, count


class DriftWatch:
    def __init__(self, window: int = 500, min_samples: int = 100):
        if not 1 <= min_samples <= window:
            raise ValueError(f"drift window {window} and min_samples {min_samples}: expected 1 ≤ min_samples ≤ window")
        self.window = window
        self.min_samples = min_samples
        self._lock = threading.Lock()
        self._scores: collections.deque = collections.deque(maxlen=window)
        self._version: str | None = None
        self._reference: tuple[np.ndarray, int] | None = None
        self._threshold = math.inf

    def observe(self, verdict: str, score: float | None, thresholds) -> None:
        """One decision. New thresholds (a SIGHUP reload) start a new window against their own normals."""
        if thresholds.version != self._version:
            with self._lock:
                self._version = thresholds.version
                self._reference = reference_of(thresholds)
                self._threshold = float(thresholds.image_threshold)
                self._scores.clear()
        if verdict == "ok" and score is not None and math.isfinite(score):
            self._scores.append(float(score))  # deque.append is atomic

    def status(self) -> dict:
        with self._lock:
            reference, threshold = self._reference, self._threshold
            window = np.sort(np.fromiter(self._scores, dtype=np.float64))
        n = int(window.size)
        status = {"state": "unknown", "n": n, "ks": None, "ks_drifting": None, "ks_drifted": None,
                  "above_p95": None, "above_p99": None}
        if reference is None:
            status["reason"] = "the thresholds file has no calibration quantiles; recalibrate to watch drift"
            return status
        quantiles, m = reference
        levels = np.linspace(0.0, 1.0, quantiles.size)
        below = float(np.interp(threshold, quantiles, levels))  # share of normals a pass can come from
        if n:
            status["above_p95"] = float(np.mean(window > np.interp(0.95, levels, quantiles)))
            status["above_p99"] = float(np.mean(window > np.interp(0.99, levels, quantiles)))
        if below <= 0:
            status["reason"] = "the image threshold lies below every calibration normal: no reference for passed parts"
            return status
        if n < self.min_samples:
            status["reason"] = f"{n} passed parts since the thresholds were loaded; {self.min_samples} needed"
            return status
        expected = np.minimum(np.interp(window, quantiles, levels), below) / below
        steps = np.arange(1, n + 1) / n
        ks = float(max(np.max(steps - expected), np.max(expected - (steps - 1.0 / n))))
        scale = math.sqrt((n + m) / (n * m))
        status.update(ks=ks, ks_drifting=_C_DRIFTING * scale, ks_drifted=_C_DRIFTED * scale)
        status["state"] = "drifted" if ks > status["ks_drifted"] else "drifting" if ks > status["ks_drifting"] else "stable"
        return status
