"""Statistics of the thresholds fit, on seeded synthetic scores from known distributions."""

import warnings

import numpy as np
import pytest
from scipy.stats import gumbel_r, norm

from calibrate.thresholds_fit import (SmallSampleWarning, choose_threshold, fit_image_threshold, fit_region_rule,
                                      normals_needed, parse_policy, sweep)
from edge.inspection.decide import decide
from edge.core.errors import ConfigError, InputDataError
from edge.artifacts.thresholds import RegionRule, Thresholds


@pytest.mark.parametrize("target, n", [(0.01, 1500), (0.05, 400)])
def test_frr_bound_holds_in_95_percent_of_repetitions(target, n):
    repetitions, upper_ok, inside = 300, 0, 0
    for seed in range(repetitions):
        rng = np.random.default_rng(seed)
        fit = fit_image_threshold(rng.standard_normal(n), target, 0.95)
        assert fit.method == "order-statistic"
        assert fit.frr_upper <= target
        # A large fresh sample of normals from the same line.
        measured = float(np.mean(rng.standard_normal(50_000) > fit.threshold))
        upper_ok += measured <= fit.frr_upper
        inside += fit.frr_ci[0] <= measured <= fit.frr_ci[1]
    # Exact coverage is 0.95; 300 repetitions put ±0.013 of noise on it.
    assert upper_ok / repetitions >= 0.92
    assert inside / repetitions >= 0.92


def test_order_statistic_is_the_lowest_that_keeps_the_bound():
    scores = np.random.default_rng(1).standard_normal(2000)
    fit = fit_image_threshold(scores, 0.01, 0.95)
    m = fit.extra["order_statistic_m"]
    assert fit.calibration_rejects == m
    # One more exceedance would break the bound: the next lower order statistic is not allowed.
    from calibrate.thresholds_fit import order_statistic_frr
    assert order_statistic_frr(m + 1, 2000, 0.95)[2] > 0.01
    assert fit.frr_ci[0] < fit.frr_point < fit.frr_upper < fit.frr_ci[1]


def test_small_sample_falls_back_to_gpd_and_warns():
    scores = gumbel_r.rvs(size=100, random_state=np.random.default_rng(3))
    with pytest.warns(SmallSampleWarning, match="needs at least 1000 normals"):
        fit = fit_image_threshold(scores, 0.01, 0.95, seed=7)
    assert fit.method == "gpd-tail"
    assert fit.normals_needed == 1000
    assert "1000" in fit.warnings[0] and "900 more" in fit.warnings[0]
    assert fit.extra["gpd"]["tail_size_k"] >= 10
    assert fit.extra["distribution_free_alternative"] is None  # 100 < 299: no order statistic qualifies
    assert fit.frr_ci[0] <= fit.frr_point <= fit.frr_ci[1]
    # The tail-fit threshold is near the true 99 % quantile, not somewhere absurd.
    assert 0.001 < gumbel_r.sf(fit.threshold) < 0.03
    # Deterministic for a seed.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        assert fit_image_threshold(scores, 0.01, 0.95, seed=7).threshold == fit.threshold


def test_gpd_fallback_mostly_keeps_the_target():
    # Approximate confidence: measured 80-90 % for a nominal 95 % (BENCHMARKS.md); assert a floor.
    kept = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        for seed in range(40):
            rng = np.random.default_rng(seed)
            fit = fit_image_threshold(norm.rvs(size=120, random_state=rng), 0.02, 0.95, seed=seed, bootstrap=100)
            kept += norm.sf(fit.threshold) <= 0.02
    assert kept / 40 >= 0.7


def test_normals_needed():
    assert normals_needed(0.01, 0.95) == 1000
    assert normals_needed(0.05, 0.95, min_expected_exceedances=1) == 59  # log(0.05)/log(0.95)


@pytest.mark.parametrize("target", [0.0, 0.5, -0.1, 0.7])
def test_target_out_of_range_is_a_config_error(target):
    with pytest.raises(ConfigError, match=r"target FRR .*\(0, 0.5\)"):
        fit_image_threshold(np.arange(100.0), target)


def test_too_few_normals_and_broken_scores():
    with pytest.raises(InputDataError, match="19 scores, need at least 20"):
        fit_image_threshold(np.arange(19.0), 0.05)
    with pytest.raises(InputDataError, match="not finite"):
        fit_image_threshold(np.r_[np.arange(30.0), np.nan], 0.05)
    with pytest.raises(ConfigError, match="confidence"):
        fit_image_threshold(np.arange(100.0), 0.05, confidence=1.0)


def test_f1_policy_separates_separable_data():
    rng = np.random.default_rng(0)
    normal, defect = rng.uniform(0, 1, 1000), rng.uniform(2, 3, 80)
    fit = fit_image_threshold(normal, 0.01)
    choice = choose_threshold("f1", fit, normal, defect)
    assert 1 < choice.threshold < 2
    assert choice.f1 == 1.0 and choice.escape_rate == 0.0 and choice.frr == 0.0
    table = sweep(normal, defect)
    assert table["f1"].max() == 1.0
    assert np.all(np.diff(table["frr"]) <= 0) and np.all(np.diff(table["escape"]) >= 0)


def test_cost_policy_trades_escapes_for_false_rejects():
    rng = np.random.default_rng(1)
    normal, defect = rng.normal(0, 1, 1000), rng.normal(2, 1, 300)
    fit = fit_image_threshold(normal, 0.05)
    cheap_escape = choose_threshold("cost:0.2", fit, normal, defect)
    dear_escape = choose_threshold("cost:20", fit, normal, defect)
    assert dear_escape.threshold < cheap_escape.threshold
    assert dear_escape.escape_rate < cheap_escape.escape_rate
    assert dear_escape.frr > cheap_escape.frr
    assert dear_escape.warnings and "may exceed the target" in dear_escape.warnings[0]
    frr = choose_threshold("frr", fit, normal, defect)
    assert frr.threshold == fit.threshold and frr.escape_rate is not None


def test_policy_errors():
    for bad in ("cost:", "cost:-1", "cost:abc", "precision"):
        with pytest.raises(ConfigError, match="policy"):
            parse_policy(bad)
    assert parse_policy("cost:5") == ("cost", 5.0)
    normal = np.random.default_rng(0).normal(size=300)
    with pytest.raises(ConfigError, match="needs defect images"):
        choose_threshold("f1", fit_image_threshold(normal, 0.05), normal, None)


def smooth_maps(rng, count, size=32):
    import cv2

    noise = rng.normal(size=(count, size, size)).astype(np.float32)
    return np.stack([cv2.GaussianBlur(m, (0, 0), 2.0) for m in noise])


def test_region_rule_keeps_normals_and_catches_a_large_blob():
    rng = np.random.default_rng(0)
    maps = smooth_maps(rng, 200)
    fit = fit_region_rule(maps, target_frr=0.05)
    assert fit.calibration_rejects <= int(0.005 * 200)
    assert np.quantile(maps, 0.999) == pytest.approx(fit.pixel_threshold)
    rule = Thresholds("h", image_threshold=1e9, version="v", region=RegionRule(fit.pixel_threshold, fit.min_area_px))
    fresh = smooth_maps(np.random.default_rng(99), 200)
    rejected = sum(decide(0.0, m, rule).verdict == "reject" for m in fresh)
    assert rejected <= 10  # ≈ the 0.5 % budget on fresh normals, with generous noise allowance
    defect = fresh[0].copy()
    side = int(np.ceil(np.sqrt(fit.min_area_px))) + 1
    defect[4:4 + side, 4:4 + side] = fit.pixel_threshold + 1.0
    assert decide(0.0, defect, rule).verdict == "reject"


def test_region_rule_errors():
    with pytest.raises(InputDataError, match="N×S×S"):
        fit_region_rule(np.zeros((5, 8, 8)), 0.05)
    maps = np.zeros((30, 8, 8))
    maps[0, 0, 0] = np.inf
    with pytest.raises(InputDataError, match="non-finite"):
        fit_region_rule(maps, 0.05)
