"""The detection figures of `hlgfa eval --out` files as one Markdown table, a row per file.

    .venv/bin/python -m bench.detection.detection_table runs/bench/detection/*.metrics.json
"""

import argparse
import json
from pathlib import Path


def _figure(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", nargs="+", type=Path)
    args = parser.parse_args()
    print("| dev set | image AUROC | pixel AUROC | PRO | per class: image / pixel AUROC / PRO |")
    print("|---|---|---|---|---|")
    for path in args.metrics:
        metrics = json.loads(path.read_text())
        classes = "; ".join(f"{name} {_figure(m['image_auroc'])} / {_figure(m['pixel_auroc'])} / {_figure(m['pro'])}"
                            for name, m in metrics.get("per_class", {}).items())
        print(f"| {path.name.removesuffix('.metrics.json')} | {_figure(metrics['image_auroc'])} | "
              f"{_figure(metrics['pixel_auroc'])} | {_figure(metrics['pro'])} | {classes or '–'} |")


if __name__ == "__main__":
    main()
