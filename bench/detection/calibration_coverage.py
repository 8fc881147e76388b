"""Coverage of the false-reject bound `hlgfa calibrate` states, on scores from known distributions.

    .venv/bin/python -m bench.detection.calibration_coverage [--repetitions 200] [--confidence 0.95]

For each row: draw n normal scores, fit the image threshold (`calibrate/thresholds_fit.py` chooses
the method), take the true FRR at that threshold from the distribution's survival function, and
count how often it lies at or under the stated upper bound and inside the stated two-sided
interval. At nominal confidence c both should be near c; the order statistic is exact, the GPD tail
fit an extrapolation.
"""

import argparse
import warnings

import numpy as np
from scipy import stats

from calibrate.thresholds_fit import SmallSampleWarning, fit_image_threshold

DISTRIBUTIONS = {"N(0,1)": stats.norm(), "Gumbel": stats.gumbel_r(), "lognormal σ=0.8": stats.lognorm(0.8)}
# (distribution, target FRR, normals): enough normals for the exact bound, then the tail fallback.
ROWS = [("N(0,1)", 0.01, 1200), ("N(0,1)", 0.05, 300),
        ("Gumbel", 0.01, 100), ("Gumbel", 0.05, 60), ("Gumbel", 0.01, 300), ("Gumbel", 0.01, 30),
        ("N(0,1)", 0.01, 100), ("N(0,1)", 0.05, 60),
        ("lognormal σ=0.8", 0.01, 100), ("lognormal σ=0.8", 0.05, 60)]


def coverage(name: str, target: float, n: int, repetitions: int, confidence: float) -> dict:
    distribution = DISTRIBUTIONS[name]
    under = inside = 0
    methods = set()
    for seed in range(repetitions):
        scores = distribution.rvs(size=n, random_state=np.random.default_rng(seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallSampleWarning)
            fit = fit_image_threshold(scores, target, confidence, seed=seed)
        true_frr = float(distribution.sf(fit.threshold))
        methods.add(fit.method)
        under += true_frr <= fit.frr_upper
        inside += fit.frr_ci[0] <= true_frr <= fit.frr_ci[1]
    return {"method": "/".join(sorted(methods)), "scores": name, "target": f"{target:.0%}", "normals": n,
            "repetitions": repetitions, "true FRR ≤ stated upper": f"{under / repetitions:.1%}",
            "true FRR in stated CI": f"{inside / repetitions:.1%}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=200)
    parser.add_argument("--confidence", type=float, default=0.95)
    args = parser.parse_args()
    rows = [coverage(name, target, n, args.repetitions, args.confidence) for name, target, n in ROWS]
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(value) for value in row.values()) + " |")


if __name__ == "__main__":
    main()
