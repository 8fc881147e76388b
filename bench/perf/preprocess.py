"""What preprocessing costs per frame, by the camera's frame size.

    .venv/bin/python -m bench.perf.preprocess [--image FILE] [--size 256] [--repeats 50]

Preprocessing (`edge.imaging.preprocess.preprocess`: area resize to the working size, then normalisation)
runs on the CPU for every frame and is part of the pipeline's added latency. Its cost grows with
the frame, not with the model: this prints the median and p99 per call, and the resize alone, for
Mono8 frames of common sensor sizes. The frames are one real image (default: the first good
magnetic-tile test image, else an elpv cell) scaled up to each size, so the content is an
industrial surface, not noise. One thread, as in the daemon's preprocess stage.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from bench.harness import ROOT, load_average, machine
from edge.imaging.preprocess import PreprocessSpec, preprocess, resize_to

# (height, width): VGA, the 1.3 MP and 2.3 MP sensors common on lines, 5 MP, 12 MP.
SENSOR_SIZES = ((480, 640), (1024, 1280), (1200, 1920), (2048, 2448), (3000, 4000))


def default_image() -> Path:
    shared = ROOT.parent / "shared" / "datasets" / "magnetic_tile" / "test" / "good"
    if shared.is_dir():
        return sorted(shared.iterdir())[0]
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import elpv_labels

    return sorted(path for path, probability in elpv_labels() if probability == 0.0)[0]


def timed(function, repeats: int) -> tuple[float, float]:
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        durations.append(time.perf_counter() - start)
    return float(np.median(durations)) * 1000, float(np.percentile(durations, 99)) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, help="a Mono8 or RGB8 image file (default: see above)")
    parser.add_argument("--size", type=int, default=256, help="the model's working size")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    path = args.image or default_image()
    source = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if source is None:
        raise SystemExit(f"{path}: not a readable image")
    spec = PreprocessSpec((args.size, args.size))
    rows = []
    for height, width in SENSOR_SIZES:
        frame = cv2.resize(source, (width, height), interpolation=cv2.INTER_CUBIC)
        preprocess([frame], spec)  # first call builds the lookup table
        p50, p99 = timed(lambda: preprocess([frame], spec), args.repeats)
        resize_p50, _ = timed(lambda: resize_to(frame, spec.input_size), args.repeats)
        rows.append({"frame": f"{height}x{width}", "megapixels": round(height * width / 1e6, 2),
                     "preprocess_ms_p50": round(p50, 3), "preprocess_ms_p99": round(p99, 3),
                     "resize_ms_p50": round(resize_p50, 3)})
    print(json.dumps({"machine": f"{machine(python=True)}, "
                                 f"OpenCV {cv2.__version__}",
                      "load_average": load_average(), "image": str(path), "working_size": args.size,
                      "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
