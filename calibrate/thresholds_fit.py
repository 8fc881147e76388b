"""Thresholds from good parts: pure statistics over score arrays and anomaly maps.

Image threshold at a target false-reject rate (FRR) with a stated confidence
----------------------------------------------------------------------------
With n normal scores sorted ascending s(1) ≤ … ≤ s(n) and the rule "reject when score > t", the
true FRR of t = s(n-m) (m normals above it) is distributed Beta(m+1, n-m) whatever the score
distribution (continuous scores; ties only make it smaller). So the one-sided Clopper–Pearson
bound of m rejections in n, `beta.ppf(c, m+1, n-m)`, is an exact, distribution-free upper
confidence bound on the FRR of that order statistic. We take the lowest threshold (largest m)
whose bound is ≤ the target: with confidence c the line's FRR is at most the target, and no
other order statistic is more sensitive to defects while keeping that promise.

That needs enough normals: none satisfies the bound below n = log(1-c)/log(1-target) (299 for
1 % at 95 %), and with fewer than ~10 expected exceedances the threshold sits on one of the
few largest scores and jumps between them. Then we fall back to a generalised-Pareto (GPD)
fit of the exceedances over a high quantile (peaks over threshold), take the upper c
parametric-bootstrap bound of the (1-target) quantile, and warn — in the result and as a
`SmallSampleWarning` (stderr) — saying how many normals the distribution-free bound needs.

Policies with defect scores: `frr` (the above), `f1` (F1-optimal, defects positive) or
`cost:R` (minimise R·escape_rate + FRR; R is the cost of an escape relative to a false reject
times the defect-to-good ratio on the line, e.g. 500× the cost and 1 defect in 100 → R ≈ 5).

Region rule: see `fit_region_rule`.
"""

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from edge.inspection.decide import largest_region_area
from edge.core.errors import ConfigError, InputDataError

MIN_NORMALS = 20
MIN_EXPECTED_EXCEEDANCES = 10
DEFAULT_CONFIDENCE = 0.95
DEFAULT_BOOTSTRAP = 200


class SmallSampleWarning(UserWarning):
    """The calibration set is too small for the asked FRR; the threshold rests on a tail model."""


@dataclass(frozen=True)
class ImageThresholdFit:
    threshold: float
    method: str  # "order-statistic" or "gpd-tail"
    reason: str
    target_frr: float
    confidence: float
    n_normals: int
    frr_point: float  # expected FRR at the threshold
    frr_ci: tuple[float, float]  # two-sided interval at `confidence`
    frr_upper: float  # one-sided upper bound at `confidence`
    calibration_rejects: int  # calibration normals above the threshold
    normals_needed: int  # for the distribution-free bound
    warnings: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    def to_details(self) -> dict:
        return {"method": self.method, "reason": self.reason, "target_frr": self.target_frr,
                "confidence": self.confidence, "n_normals": self.n_normals, "threshold": self.threshold,
                "frr_point": self.frr_point, "frr_ci": list(self.frr_ci), "frr_upper": self.frr_upper,
                "calibration_rejects": self.calibration_rejects, "normals_needed": self.normals_needed,
                "warnings": list(self.warnings), **self.extra}


@dataclass(frozen=True)
class PolicyChoice:
    policy: str
    threshold: float
    frr: float  # on the calibration normals
    frr_ci: tuple[float, float]
    escape_rate: float | None  # on the defects; None without defects
    escape_ci: tuple[float, float] | None
    f1: float | None
    warnings: tuple[str, ...] = ()

    def to_details(self) -> dict:
        return {"policy": self.policy, "threshold": self.threshold, "frr": self.frr, "frr_ci": list(self.frr_ci),
                "escape_rate": self.escape_rate, "escape_ci": None if self.escape_ci is None else list(self.escape_ci),
                "f1": self.f1, "warnings": list(self.warnings)}


@dataclass(frozen=True)
class RegionFit:
    pixel_threshold: float
    min_area_px: int
    pixel_quantile: float
    budget: float  # fraction of normals the region rule alone may reject
    calibration_rejects: int  # normals the region rule alone rejects
    n_normals: int
    max_normal_region_px: int

    def to_details(self) -> dict:
        return {"pixel_threshold": self.pixel_threshold, "min_area_px": self.min_area_px,
                "pixel_quantile": self.pixel_quantile, "budget": self.budget,
                "calibration_rejects": self.calibration_rejects, "n_normals": self.n_normals,
                "max_normal_region_px": self.max_normal_region_px}


# ---------------------------------------------------------------- checks and intervals

def check_target(target_frr: float, confidence: float) -> None:
    if not (isinstance(target_frr, (int, float)) and 0.0 < target_frr < 0.5):
        raise ConfigError(f"target FRR {target_frr!r}: expected a fraction in (0, 0.5), e.g. 0.01 for 1 %")
    if not (isinstance(confidence, (int, float)) and 0.5 <= confidence < 1.0):
        raise ConfigError(f"confidence {confidence!r}: expected a fraction in [0.5, 1), e.g. 0.95")


def check_scores(scores, what: str, minimum: int) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size < minimum:
        raise InputDataError(
            f"{what}: {scores.size} scores, need at least {minimum} to calibrate (collect more good parts)")
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        raise InputDataError(f"{what}: {bad} of {scores.size} scores are not finite; the model output is broken")
    return scores


def normals_needed(target_frr: float, confidence: float,
                   min_expected_exceedances: int = MIN_EXPECTED_EXCEEDANCES) -> int:
    """Normals the distribution-free bound needs: some order statistic must satisfy it, and
    n·target ≥ `min_expected_exceedances` so the threshold does not rest on the top few scores."""
    any_order_statistic = math.ceil(math.log(1.0 - confidence) / math.log(1.0 - target_frr))
    return max(any_order_statistic, math.ceil(min_expected_exceedances / target_frr - 1e-9))


def clopper_pearson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Exact two-sided interval for a binomial rate of k in n."""
    from scipy.stats import beta

    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def order_statistic_frr(m: int, n: int, confidence: float) -> tuple[float, tuple[float, float], float]:
    """Point, two-sided interval and one-sided upper bound of the true FRR of s(n-m)."""
    from scipy.stats import beta

    a, b = m + 1, n - m
    interval = (float(beta.ppf((1 - confidence) / 2, a, b)), float(beta.ppf((1 + confidence) / 2, a, b)))
    return a / (a + b), interval, float(beta.ppf(confidence, a, b))


# ---------------------------------------------------------------- image threshold

def fit_image_threshold(normal_scores, target_frr: float, confidence: float = DEFAULT_CONFIDENCE, seed: int = 0,
                        min_expected_exceedances: int = MIN_EXPECTED_EXCEEDANCES,
                        bootstrap: int = DEFAULT_BOOTSTRAP) -> ImageThresholdFit:
    """The image threshold that keeps the FRR ≤ `target_frr` with confidence `confidence`."""
    from scipy.stats import beta

    check_target(target_frr, confidence)
    scores = np.sort(check_scores(normal_scores, "normal scores", MIN_NORMALS))
    n = scores.size
    needed = normals_needed(target_frr, confidence, min_expected_exceedances)
    m_all = np.arange(n)
    upper = beta.ppf(confidence, m_all + 1, n - m_all)
    valid = np.flatnonzero(upper <= target_frr)
    alternative = None
    if valid.size:
        m = int(valid.max())
        threshold = float(scores[n - m - 1])
        point, interval, bound = order_statistic_frr(m, n, confidence)
        alternative = {"threshold": threshold, "exceedances": m, "frr_upper": bound}
        if n * target_frr >= min_expected_exceedances:
            return ImageThresholdFit(
                threshold=threshold, method="order-statistic",
                reason=(f"{n} normals give {n * target_frr:.1f} expected exceedances at {target_frr:.2%} "
                        f"(≥ {min_expected_exceedances}): the distribution-free Clopper–Pearson bound applies; "
                        f"chose s(n-m) with m={m}, the lowest threshold whose {confidence:.0%} upper bound on "
                        f"the FRR ({bound:.3%}) is ≤ the target"),
                target_frr=target_frr, confidence=confidence, n_normals=n, frr_point=point, frr_ci=interval,
                frr_upper=bound, calibration_rejects=int((scores > threshold).sum()), normals_needed=needed,
                extra={"order_statistic_m": m})
    why = (f"no order statistic of {n} satisfies the {confidence:.0%} bound (needs ≥ "
           f"{math.ceil(math.log(1 - confidence) / math.log(1 - target_frr))})" if alternative is None else
           f"{n}·{target_frr:g} = {n * target_frr:.1f} expected exceedances < {min_expected_exceedances}")
    message = (f"only {n} normals for a target FRR of {target_frr:.2%} at {confidence:.0%} confidence ({why}); "
               f"the distribution-free bound needs at least {needed} normals. Fell back to a generalised-Pareto "
               f"tail fit, an extrapolation that rests on the tail model and whose confidence is approximate (80-90 % "
               f"measured coverage for a nominal 95 %): collect {needed - n} more good parts.")
    warnings.warn(message, SmallSampleWarning, stacklevel=2)
    fit = _fit_gpd_tail(scores, target_frr, confidence, seed, bootstrap)
    extra = {"gpd": fit.pop("gpd"), "distribution_free_alternative": alternative}
    return ImageThresholdFit(method="gpd-tail", reason=why + "; fell back to a GPD tail fit",
                             target_frr=target_frr, confidence=confidence, n_normals=n, normals_needed=needed,
                             calibration_rejects=int((scores > fit["threshold"]).sum()),
                             warnings=(message,), extra=extra, **fit)


def _gpd_tail_size(n: int, target_frr: float) -> int:
    # Peaks over threshold: the top 20 % (at least 10) keeps the fit on the tail yet gives the
    # MLE something to work with; always more than target·n so the target lies inside the tail.
    return int(min(n - 1, max(MIN_EXPECTED_EXCEEDANCES, math.ceil(0.2 * n), math.ceil(2 * target_frr * n))))


def fit_gpd_zhang_stephens(excesses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GPD shape ξ and scale σ of each row of `excesses` (B×k, all ≥ 0), Zhang & Stephens (2009).

    Why not the MLE (scipy's genpareto.fit): on 10–30 exceedances it is unstable and an
    optimiser run per bootstrap sample is slow; this estimator is a closed-form weighted
    average of the profile likelihood over a fixed grid, better behaved in small samples and
    vectorised over all bootstrap samples at once. Their parametrisation: θ = -ξ/σ.
    """
    y = np.sort(np.atleast_2d(np.asarray(excesses, dtype=np.float64)), axis=1)
    k = y.shape[1]
    grid = 20 + int(math.sqrt(k))
    quartile = y[:, max(0, int(k / 4 + 0.5) - 1)]
    # Ties at the tail start give zero excesses; the grid needs a positive scale.
    positive_min = np.where(y > 0, y, np.inf).min(axis=1)
    quartile = np.where(quartile > 0, quartile, positive_min)
    j = np.arange(1, grid + 1)
    theta = 1.0 / y[:, -1:] + (1.0 - np.sqrt(grid / (j - 0.5)))[None, :] / (3.0 * quartile[:, None])
    shape_k = -np.log1p(-theta[:, :, None] * y[:, None, :]).mean(axis=2)
    profile = k * (np.log(theta / shape_k) + shape_k - 1.0)
    with np.errstate(over="ignore"):
        weights = 1.0 / np.exp(np.clip(profile[:, None, :] - profile[:, :, None], -700, 700)).sum(axis=2)
    theta_hat = (theta * weights).sum(axis=1) / weights.sum(axis=1)
    shape_hat = -np.log1p(-theta_hat[:, None] * y).mean(axis=1)
    return -shape_hat, shape_hat / theta_hat


def _gpd_sf(x, shape, scale):
    """Survival of the GPD (loc 0) at x ≥ 0, vectorised over parameter arrays."""
    x, shape, scale = np.broadcast_arrays(np.asarray(x, float), np.asarray(shape, float), np.asarray(scale, float))
    z = x / scale
    small = np.abs(shape) < 1e-9
    with np.errstate(divide="ignore", invalid="ignore"):
        base = np.maximum(1.0 + shape * z, 0.0)
        general = np.where(base > 0, base ** (-1.0 / np.where(small, 1.0, shape)), 0.0)
    return np.where(small, np.exp(-z), general)


def _gpd_isf(p, shape, scale):
    shape, scale = np.asarray(shape, float), np.asarray(scale, float)
    small = np.abs(shape) < 1e-9
    safe = np.where(small, 1.0, shape)
    return np.where(small, -scale * np.log(p), scale / safe * (p ** (-safe) - 1.0))


def _fit_gpd_tail(scores: np.ndarray, target_frr: float, confidence: float, seed: int, bootstrap: int) -> dict:
    """Peaks over threshold; threshold = upper `confidence` parametric-bootstrap bound of the
    (1-target) quantile. The coverage is approximate (see BENCHMARKS.md, Calibration)."""
    from scipy.stats import genpareto

    n = scores.size
    k = _gpd_tail_size(n, target_frr)
    u = float(scores[n - k - 1])
    excesses = scores[n - k:] - u
    if not np.ptp(excesses) > 0:
        raise InputDataError(f"normal scores: the top {k} of {n} are all equal; no tail to fit, the model output "
                             "looks constant")
    zeta = k / n
    shape, scale = (float(v[0]) for v in fit_gpd_zhang_stephens(excesses))
    rng = np.random.default_rng(seed)
    uniform = rng.random((bootstrap, k))
    samples = _gpd_isf(uniform, shape, scale)  # inverse-CDF draws from the fitted tail
    shapes, scales = fit_gpd_zhang_stephens(samples)
    keep = np.isfinite(shapes) & np.isfinite(scales) & (scales > 0)
    shapes, scales = shapes[keep], scales[keep]
    point_quantile = u + float(_gpd_isf(target_frr / zeta, shape, scale))
    quantiles = u + _gpd_isf(target_frr / zeta, shapes, scales)
    threshold = max(float(np.quantile(quantiles, confidence)), point_quantile)
    rates = zeta * _gpd_sf(threshold - u, shapes, scales)
    mle_shape, _, mle_scale = genpareto.fit(excesses, floc=0.0)  # for comparison in the details only
    return {"threshold": threshold, "frr_point": float(zeta * _gpd_sf(threshold - u, shape, scale)),
            "frr_ci": (float(np.quantile(rates, (1 - confidence) / 2)), float(np.quantile(rates, (1 + confidence) / 2))),
            "frr_upper": float(np.quantile(rates, confidence)),
            "gpd": {"estimator": "Zhang-Stephens 2009", "shape_xi": shape, "scale_sigma": scale,
                    "scipy_mle_shape_xi": float(mle_shape), "scipy_mle_scale_sigma": float(mle_scale),
                    "tail_start_u": u, "tail_size_k": k, "tail_fraction": zeta, "bootstrap": int(keep.sum()),
                    "seed": seed, "point_quantile": point_quantile,
                    "note": "parametric bootstrap conditional on the tail start; the confidence is approximate"}}


# ---------------------------------------------------------------- policies with defects

def parse_policy(text: str) -> tuple[str, float | None]:
    """'frr' | 'f1' | 'cost:R' (R > 0) → (name, R)."""
    if text in ("frr", "f1"):
        return text, None
    if text.startswith("cost:"):
        try:
            ratio = float(text[5:])
        except ValueError:
            ratio = float("nan")
        if math.isfinite(ratio) and ratio > 0:
            return "cost", ratio
    raise ConfigError(f"policy {text!r}: expected 'frr', 'f1' or 'cost:R' with R > 0 (e.g. cost:5)")


def sweep(normal_scores, defect_scores) -> dict[str, np.ndarray]:
    """FRR, escape rate and F1 (defects positive) for every distinct operating point.

    Candidates are midpoints between consecutive distinct scores (plus below the lowest and the
    highest itself), so each keeps a margin to the samples on both sides.
    """
    normal = np.sort(np.asarray(normal_scores, dtype=np.float64))
    defect = np.sort(np.asarray(defect_scores, dtype=np.float64))
    pooled = np.unique(np.concatenate([normal, defect]))
    candidates = np.concatenate([[np.nextafter(pooled[0], -np.inf)], (pooled[:-1] + pooled[1:]) / 2, [pooled[-1]]])
    false_rejects = normal.size - np.searchsorted(normal, candidates, side="right")
    caught = defect.size - np.searchsorted(defect, candidates, side="right")
    escapes = defect.size - caught
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(caught > 0, 2 * caught / (2 * caught + false_rejects + escapes), 0.0)
    return {"threshold": candidates, "frr": false_rejects / normal.size, "escape": escapes / defect.size,
            "f1": f1, "false_rejects": false_rejects, "escapes": escapes}


def choose_threshold(policy: str, image_fit: ImageThresholdFit, normal_scores, defect_scores=None) -> PolicyChoice:
    """Apply the policy; `frr` keeps the confidence-bounded threshold, the others trade it off."""
    name, ratio = parse_policy(policy)
    normal = check_scores(normal_scores, "normal scores", MIN_NORMALS)
    confidence = image_fit.confidence
    if defect_scores is None or len(defect_scores) == 0:
        if name != "frr":
            raise ConfigError(f"policy {policy!r} needs defect images (--defects DIR); only 'frr' works without")
        rejects = int((normal > image_fit.threshold).sum())
        return PolicyChoice("frr", image_fit.threshold, rejects / normal.size,
                            clopper_pearson(rejects, normal.size, confidence), None, None, None)
    defect = check_scores(defect_scores, "defect scores", 1)
    table = sweep(normal, defect)
    if name == "frr":
        threshold = image_fit.threshold
    elif name == "f1":
        # Highest F1; among ties the one with fewer false rejects (the higher threshold).
        best = np.flatnonzero(table["f1"] == table["f1"].max())
        threshold = float(table["threshold"][best[-1]])
    else:
        cost = ratio * table["escape"] + table["frr"]
        best = np.flatnonzero(np.isclose(cost, cost.min(), rtol=0, atol=1e-12))
        threshold = float(table["threshold"][best[-1]])
    rejects = int((normal > threshold).sum())
    escapes = int((defect <= threshold).sum())
    caught = defect.size - escapes
    f1 = 2 * caught / (2 * caught + rejects + escapes) if caught else 0.0
    frr_ci = clopper_pearson(rejects, normal.size, confidence)
    notes = []
    if name != "frr" and frr_ci[1] > image_fit.target_frr:
        notes.append(f"policy {policy} chose threshold {threshold:.6g} whose FRR ({rejects}/{normal.size} = "
                     f"{rejects / normal.size:.2%}, {confidence:.0%} upper bound {frr_ci[1]:.2%}) may exceed the "
                     f"target FRR {image_fit.target_frr:.2%}")
    return PolicyChoice(name if name != "cost" else f"cost:{ratio:g}", threshold, rejects / normal.size, frr_ci,
                        escapes / defect.size, clopper_pearson(escapes, defect.size, confidence), f1, tuple(notes))


# ---------------------------------------------------------------- region rule

def fit_region_rule(normal_maps, target_frr: float, pixel_quantile: float = 0.999,
                    budget_fraction: float = 0.1) -> RegionFit:
    """Pixel threshold and minimum defect area from normal anomaly maps (N×S×S).

    Pixel threshold: the `pixel_quantile` of all normal map pixels pooled. Pooled rather than the
    per-image maximum on purpose: the per-image maximum is (near) the image score, so a rule at
    that level would only repeat the image threshold; the region rule exists to catch defects
    that are moderately anomalous over a large area, so it needs a lower pixel level and lets
    the area carry the decision.

    Minimum area: the smallest area such that the region rule alone rejects at most
    `budget_fraction`·target of the calibration normals (at most ⌊budget·n⌋ of them; with few
    normals that means none), so it spends only a small part of the FRR budget. Report the
    combined rejection separately: its interval is not covered by the image-score bound.
    """
    maps = np.asarray(normal_maps)
    if maps.ndim != 3 or maps.shape[0] < MIN_NORMALS:
        raise InputDataError(f"normal maps: shape {maps.shape}, expected N×S×S with N ≥ {MIN_NORMALS}")
    if not np.isfinite(maps).all():
        raise InputDataError("normal maps: contain non-finite values; the model output is broken")
    if not 0.5 < pixel_quantile < 1.0:
        raise ConfigError(f"pixel quantile {pixel_quantile!r}: expected a fraction in (0.5, 1)")
    pixel_threshold = float(np.quantile(maps.astype(np.float32, copy=False).ravel(), pixel_quantile))
    areas = np.array([largest_region_area(m, pixel_threshold) for m in maps])
    n = areas.size
    budget = budget_fraction * target_frr
    allowed = int(math.floor(budget * n))
    descending = np.sort(areas)[::-1]
    min_area = int(descending[allowed]) + 1 if allowed < n else 1
    return RegionFit(pixel_threshold=pixel_threshold, min_area_px=max(1, min_area), pixel_quantile=pixel_quantile,
                     budget=budget, calibration_rejects=int((areas >= min_area).sum()), n_normals=n,
                     max_normal_region_px=int(descending[0]))
