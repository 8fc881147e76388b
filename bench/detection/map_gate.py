"""Where the frame-quality gate's map statistic puts real parts: fault (the frame cannot be judged) or
reject (a judgeable part anomalous everywhere), against a gate that faults both ends of the map's range,
and the fault rate of the gate on the dev sets (the data behind the fault-rate defaults).

    .venv/bin/python -m bench.detection.map_gate --model MODEL --data ROOT [--normals DIR] [--backend torch]

The ranges are fitted as `hlgfa calibrate` fits them (calibrate/quality_fit.py) on good images kept out
of the model's statistics: `--normals DIR`, or else the model's own validation images (the 15 % `hlgfa
train` keeps aside from the statistics). Every test image of ROOT (MVTec layout) is then put through the gate
as the daemon applies it (edge/imaging/quality.py): image statistics first, then the map's. Printed: per
test class, the images faulted by the image statistics, the images whose image statistics are in range
but whose map mean is above its range (a reject; a fault for a gate faulting both ends) or below it (a
fault), and the fault rates of both gates.
"""

import argparse
import contextlib
import json
import sys
from pathlib import Path

from calibrate.dataset import Sample, evaluation_samples
from calibrate.evaluate import score_samples
from calibrate.quality_fit import fit_quality_ranges
from edge.artifacts.model_dir import load_model_info
from edge.backends.base import open_backend
from edge.imaging import quality


def _stats(backend, samples: list, spec) -> list[dict]:
    stats: list[dict] = []
    score_samples(backend, samples, spec, batch_size=4, progress=False, stats=stats)
    return stats


def _normals(model: Path, folder: Path | None, data: Path) -> list[Sample]:
    if folder is not None:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif"))
    else:
        names = json.loads((model / "model.json").read_text())["training"]["validation_files"]
        paths = [next(iter((data / "train").rglob(name))) for name in names]
    return [Sample(path, 0, "good") for path in paths]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--normals", type=Path, help="good images never trained on (default: the model's validation images)")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    info = load_model_info(args.model)
    with contextlib.redirect_stdout(sys.stderr):  # the backbone's package prints as it loads
        backend = open_backend(args.backend, args.model, threads=args.threads, max_batch=4)
    try:
        normals = _normals(args.model, args.normals, args.data)
        ranges, _ = fit_quality_ranges(_stats(backend, normals, info.preprocess))
        samples = evaluation_samples(args.data)
        stats = _stats(backend, samples, info.preprocess)
    finally:
        backend.close()
    image_ranges, map_ranges = quality.split(ranges)
    rows: dict[str, dict] = {}
    both_ends, rule = [], []
    for sample, stat in zip(samples, stats):
        row = rows.setdefault(sample.defect_class, {"n": 0, "image_fault": 0, "map_above": 0, "map_below": 0,
                                                    "image_fault_by": {}})
        row["n"] += 1
        message = quality.out_of_range(stat, image_ranges)
        image_fault = message is not None
        if image_fault:
            statistic = message.split()[0]
            row["image_fault_by"][statistic] = row["image_fault_by"].get(statistic, 0) + 1
        above = not image_fault and quality.anomalous_everywhere(stat, map_ranges) is not None
        below = not image_fault and not above and quality.out_of_range(stat, map_ranges) is not None
        row["image_fault"] += image_fault
        row["map_above"] += above
        row["map_below"] += below
        both_ends.append(image_fault or above or below)
        rule.append(quality.unjudgeable(stat, ranges) is not None)
    name = args.data.name
    for defect_class, row in rows.items():
        print(json.dumps({"set": name, "class": defect_class, "images": row["n"],
                          "faulted by image statistics": row["image_fault"],
                          "by statistic": ", ".join(f"{k} {v}" for k, v in sorted(row["image_fault_by"].items())) or "-",
                          "map above its range: a reject (a fault if both ends faulted)": row["map_above"],
                          "map below its range: a fault": row["map_below"]}))
    print(json.dumps({"set": name, "normals": len(normals), "map_mean range": "[{:.3g}, {:.3g}]".format(
                          *map_ranges["map_mean"]), "images": len(samples),
                      "faults if both ends faulted": sum(both_ends), "faults (the gate's rule)": sum(rule),
                      "fault rate if both ends faulted": round(sum(both_ends) / len(samples), 4),
                      "fault rate (the gate's rule)": round(sum(rule) / len(samples), 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
