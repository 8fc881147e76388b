"""Training time and peak memory of `hlgfa train` for a given number of good images.

    .venv/bin/python -m bench.perf.training_cost --images 600 2000 --work runs/cost [--threads 1] [--epochs 3]

The images are ELPV's good cells (PyPI `elpv-dataset`, 1,508 of them), then their mirror images
as many as needed: written once under WORK/N/ as PNG. Each size is trained in its own process
(`hlgfa train --holdout 0`), one after the other; its wall time, peak resident memory (the
child's ru_maxrss) and what training wrote about its validation are printed as a Markdown row.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np


def good_cells(count: int, folder: Path) -> Path:
    from calibrate.dataset import read_image
    from calibrate.demo.run import elpv_cells

    folder.mkdir(parents=True, exist_ok=True)
    good, _ = elpv_cells()
    good = [good[i] for i in np.random.default_rng(0).permutation(len(good))]
    for index in range(count):
        target = folder / f"{index:05d}.png"
        if not target.exists():
            image = read_image(good[index % len(good)])
            cv2.imwrite(str(target), image if index < len(good) else image[:, ::-1])
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[600, 2000])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    print("| good images | trained on / validation (+ synthetic) | wall time | peak RSS |\n|---|---|---|---|")
    for count in args.images:
        folder = good_cells(count, args.work / str(count) / "good")
        out = args.work / str(count) / "model"
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edge.cli", "train", "--data", str(folder), "--out", str(out),
                        "--holdout", "0", "--threads", str(args.threads), "--epochs", str(args.epochs),
                        "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - began
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        training = json.loads((out / "model.json").read_text())["training"]
        validation = training["validation"]
        note = "" if peak > before else " (≤ an earlier size's: ru_maxrss is the largest child's)"
        print(f"| {count} | {len(training['train_files'])} / {validation['n_good']} (+{validation.get('n_synthetic', 0)}) "
              f"| {seconds:.0f} s | {peak / 1024 ** 2:.2f} GB{note} |", flush=True)


if __name__ == "__main__":
    main()
