"""Is one model's image AUROC really different from another's on the same test images?

    .venv/bin/python -m bench.detection.paired_bootstrap A.scores.csv B.scores.csv [--class crack] [--rounds 2000]

Takes two `hlgfa eval --scores` files of the same test set and resamples the images with
replacement (good and defective separately, so every round keeps both), scoring both models on
each resample: the 2.5 and 97.5 percentiles of AUROC(B) − AUROC(A) are the 95 % interval of
the difference. An interval that excludes 0 is a difference the test set supports.
"""

import argparse
import csv
import json

import numpy as np

from calibrate.metrics import image_auroc


def read_scores(path: str) -> dict[str, tuple[str, int, float]]:
    with open(path, newline="") as stream:
        return {row["path"]: (row["class"], int(row["label"]), float(row["score"])) for row in csv.DictReader(stream)}


def paired_interval(labels: np.ndarray, first: np.ndarray, second: np.ndarray, rounds: int,
                    seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    good, defective = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    differences = np.empty(rounds)
    for index in range(rounds):
        sample = np.r_[rng.choice(good, len(good)), rng.choice(defective, len(defective))]
        differences[index] = image_auroc(labels[sample], second[sample]) - image_auroc(labels[sample], first[sample])
    low, high = np.percentile(differences, [2.5, 97.5])
    return {"a": round(image_auroc(labels, first), 4), "b": round(image_auroc(labels, second), 4),
            "difference": round(image_auroc(labels, second) - image_auroc(labels, first), 4),
            "interval95": [round(float(low), 4), round(float(high), 4)], "n_good": len(good),
            "n_defective": len(defective)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--class", dest="defect_class", help="only this defect class (and every good image)")
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    first, second = read_scores(args.a), read_scores(args.b)
    if set(first) != set(second):
        raise SystemExit(f"{args.a} and {args.b} score different images ({len(set(first) ^ set(second))} differ)")
    paths = sorted(p for p in first if args.defect_class is None or first[p][1] == 0
                   or first[p][0] == args.defect_class)
    labels = np.array([first[p][1] for p in paths])
    result = paired_interval(labels, np.array([first[p][2] for p in paths]), np.array([second[p][2] for p in paths]),
                             args.rounds)
    print(json.dumps({"a": args.a, "b": args.b, "class": args.defect_class, **result}))


if __name__ == "__main__":
    main()
