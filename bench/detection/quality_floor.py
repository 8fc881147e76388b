"""How many calibration normals does each frame-quality statistic need before its fitted range shuts
out the frames no model can judge?

The ranges of calibrate/quality_fit.py are fitted on the normals' own extremes and tails, so with few
normals a range can come out wide (one odd normal pulls an end out by 1.5× its tail). This draws `n`
good cells at random, `--draws` times for each `n`, fits the ranges of the image statistics
(edge/imaging/quality.py) on them as `hlgfa calibrate` does, and puts through them the six unusable
frames of `hlgfa demo` (calibrate/demo/run.py: black, dark, grey128, overexposed, white, defocused σ = 4
px) made from `--sources` other cells, and held-out good cells. A kind is caught at `n` when every one
of its frames is out of range in every draw. Per statistic alone, and for the gate (any statistic).

The map statistic (`map_mean`) needs a model and is left out: the six kinds are image faults.

    .venv/bin/python -m bench.detection.quality_floor [--image-size 256] [--draws 200]
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from calibrate.demo.run import UNUSABLE, unusable_frame
from calibrate.quality_fit import MIN_NORMALS, fit_quality_ranges
from edge.imaging import quality
from edge.imaging.files import read_image

SIZES = (20, 30, 40, 50, 60, 75, 100, 150, 200, 300)


def good_cells() -> list[Path]:
    import elpv_dataset

    data = Path(elpv_dataset.__file__).parent / "data"
    rows = [line.split() for line in (data / "labels.csv").read_text().split("\n") if len(line.split()) >= 2]
    return sorted(data / row[0] for row in rows if float(row[1]) == 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--sources", type=int, default=100, help="cells the unusable frames are made from")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    cells = good_cells()
    order = rng.permutation(len(cells))
    sources, pool = [cells[i] for i in order[:args.sources]], [cells[i] for i in order[args.sources:]]
    size = args.image_size
    stats = [quality.image_stats(read_image(path), size) for path in pool]
    unusable = {kind: [quality.image_stats(unusable_frame(kind, read_image(path)), size) for path in sources]
                for kind in UNUSABLE}
    names = [name for name in quality.IMAGE_STATISTICS if name not in ("width", "height")]
    print(f"{len(pool)} good cells to draw normals from, {len(sources)} cells the unusable frames are made "
          f"from; {args.draws} draws per n; input {size} px\n")
    print("Per kind: the draws in which the gate caught every frame of the kind; the share of its frames caught, "
          "mean over the draws (the worst draw's).\n")
    print("| normals | " + " | ".join(f"{kind}" for kind in UNUSABLE)
          + " | good held-out cells faulted (median of draws) |")
    print("|---|" + "---|" * (len(UNUSABLE) + 1))
    tried, full = [], {}
    for n in SIZES:
        if n < MIN_NORMALS or n > len(pool) // 2:
            continue
        caught = {kind: 0 for kind in UNUSABLE}
        rates = {kind: [] for kind in UNUSABLE}  # the fraction of a kind's frames caught, per draw
        alone = {(name, kind): 0 for name in names for kind in UNUSABLE}
        false_faults = []
        for _ in range(args.draws):
            chosen = rng.permutation(len(pool))
            normals, held_out = [stats[i] for i in chosen[:n]], [stats[i] for i in chosen[n:n + 200]]
            ranges, _ = fit_quality_ranges(normals)
            for kind, frames in unusable.items():
                rate = np.mean([quality.out_of_range(frame, ranges) is not None for frame in frames])
                caught[kind] += rate == 1.0
                rates[kind].append(rate)
                for name in names:
                    alone[(name, kind)] += all(quality.out_of_range(frame, {name: ranges[name]}) is not None
                                               for frame in frames)
            false_faults.append(np.mean([quality.out_of_range(s, ranges) is not None for s in held_out]))
        print(f"| {n} | " + " | ".join(f"{caught[kind]}/{args.draws}; {np.mean(rates[kind]):.1%} (≥ {min(rates[kind]):.0%})"
                                       for kind in UNUSABLE)
              + f" | {np.median(false_faults):.2%} |", flush=True)
        tried.append(n)
        for key, count in [*alone.items(), *((("gate", kind), count) for kind, count in caught.items())]:
            full.setdefault(key, set())
            if count == args.draws:
                full[key].add(n)
    floors = {key: next((n for index, n in enumerate(tried) if set(tried[index:]) <= sizes), None)
              for key, sizes in full.items()}
    print("\nThe fewest normals from which on (at every n tried from there) a statistic alone, or the gate, "
          "caught every frame of a kind in every draw (— : not at the largest n tried):\n")
    print("| statistic | " + " | ".join(UNUSABLE) + " |")
    print("|---|" + "---|" * len(UNUSABLE))
    for name in (*names, "gate"):
        print(f"| {'the gate (any statistic)' if name == 'gate' else f'`{name}`'} | "
              + " | ".join(str(floors[(name, kind)] or "—") for kind in UNUSABLE) + " |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
