"""ELPV (PyPI `elpv-dataset`) as an MVTec AD layout of symbolic links, for `hlgfa train/eval`.

    .venv/bin/python -m bench.detection.elpv_layout --out runs/elpv [--seed 0] [--limit N]

The split of the shared datasets README: cells with defect probability 0 are good, 1 defective;
60 % of the good cells (seeded) train, the other good cells and every defective cell test. Image
labels only (no masks), so only image AUROC is measured on it. --limit keeps the first N (after the
seeded shuffle) of each folder: a small set for benches that compare backends, not models.
"""

import argparse
from pathlib import Path

import numpy as np

from calibrate.demo.run import elpv_cells

TRAIN_FRACTION = 0.6


def make_layout(out: Path, seed: int, limit: int | None = None) -> dict:
    good, defective = elpv_cells()
    order = np.random.default_rng(seed).permutation(len(good))
    count = int(round(TRAIN_FRACTION * len(good)))
    folders = {"train/good": [good[i] for i in order[:count]], "test/good": [good[i] for i in order[count:]],
               "test/defective": [defective[i] for i in np.random.default_rng(seed).permutation(len(defective))]}
    folders = {folder: paths[:limit] for folder, paths in folders.items()}
    for folder, paths in folders.items():
        target = out / folder
        target.mkdir(parents=True, exist_ok=True)
        for path in paths:
            link = target / path.name
            if not link.exists():
                link.symlink_to(path.resolve())
    return {folder: len(paths) for folder, paths in folders.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="at most this many images per folder")
    args = parser.parse_args()
    print(make_layout(args.out, args.seed, args.limit))


if __name__ == "__main__":
    main()
