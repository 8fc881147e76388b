"""The drift watch against samples of one score distribution: a window of the same distribution stays
stable, a shifted one is flagged, and the figures travel in the heartbeat and the metrics."""

import numpy as np
import pytest

from edge.transport import wire
from edge.inspection.drift import QUANTILE_POINTS, DriftWatch
from edge.service.health import Health
from edge.artifacts.thresholds import Thresholds


def thresholds(normals: np.ndarray, version: str = "v1", quantiles: bool = True) -> Thresholds:
    details = {"n_normals": int(normals.size),
               "normal_scores": {"min": float(normals.min()), "median": float(np.median(normals)),
                                 "max": float(normals.max())}}
    if quantiles:
        details["normal_scores"]["quantiles"] = np.quantile(normals, np.linspace(0, 1, QUANTILE_POINTS)).tolist()
    return Thresholds("ab" * 32, float(np.quantile(normals, 0.99)), version, details=details)


def feed(watch, t, scores):
    for score in scores:
        watch.observe("ok" if score <= t.image_threshold else "reject", float(score), t)


@pytest.fixture
def normals(rng):
    return rng.gamma(4.0, 0.5, 1000)  # right-skewed, like anomaly scores


def test_passed_parts_like_the_calibration_stay_stable(rng, normals):
    t = thresholds(normals)
    watch = DriftWatch(window=500, min_samples=100)
    feed(watch, t, rng.gamma(4.0, 0.5, 50))
    assert watch.status()["state"] == "unknown"  # too few yet
    feed(watch, t, rng.gamma(4.0, 0.5, 600))
    status = watch.status()
    assert status["state"] == "stable", status
    assert status["n"] == 500 and status["ks"] < status["ks_drifting"]
    assert status["above_p99"] < 0.02


def test_scores_shifted_up_are_flagged_and_new_thresholds_start_over(rng, normals):
    t = thresholds(normals)
    watch = DriftWatch(window=500, min_samples=100)
    feed(watch, t, rng.gamma(4.0, 0.5, 500) * 1.25)  # e.g. the light dimmed: every part scores higher
    status = watch.status()
    assert status["state"] == "drifted", status
    assert status["above_p95"] > 0.1
    watch.observe("ok", 1.0, thresholds(normals, version="v2"))  # SIGHUP with a recalibrated file
    assert watch.status()["n"] == 1 and watch.status()["state"] == "unknown"


def test_without_quantiles_the_state_is_unknown_and_says_why(rng, normals):
    watch = DriftWatch(window=200, min_samples=10)
    feed(watch, thresholds(normals, quantiles=False), rng.gamma(4.0, 0.5, 300))
    status = watch.status()
    assert status["state"] == "unknown" and "recalibrate" in status["reason"]


def test_a_threshold_below_every_normal_is_unknown_and_says_so_not_too_few_parts(rng, normals):
    t = Thresholds("ab" * 32, float(normals.min()) - 1.0, "v1", details=thresholds(normals).details)
    watch = DriftWatch(window=200, min_samples=10)
    for score in rng.gamma(4.0, 0.5, 300):
        watch.observe("ok", float(score), t)
    status = watch.status()
    assert status["state"] == "unknown" and "below every calibration normal" in status["reason"]


def test_drift_travels_in_the_heartbeat_and_the_metrics(rng, normals):
    t = thresholds(normals)
    watch = DriftWatch(window=200, min_samples=10)
    feed(watch, t, rng.gamma(4.0, 0.5, 300))
    status = watch.status()
    beat = wire.Heartbeat("cam1", 1.0, 2.0, wire.Counters(), seqs={}, session="0123456789abcdef", seq=1, wall_ns=1,
                          drift=status)
    assert wire.decode(wire.encode(beat)).drift == status
    with pytest.raises(wire.WireError, match="drift state"):
        wire.encode(wire.Heartbeat("cam1", 1.0, 2.0, wire.Counters(), drift={"state": "fine"}))
    health = Health("cam1")
    health.drift(status)
    from prometheus_client import generate_latest

    text = generate_latest(health.registry).decode()
    assert f'hlgfa_drift_state{{state="{status["state"]}"}} 1.0' in text
    assert 'hlgfa_drift{figure="ks"}' in text
    health.close()
