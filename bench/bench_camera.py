"""Sustained frame rate and CPU cost of the genicam source against viky.cti.

    .venv/bin/python bench/bench_camera.py [--seconds 5] [--rates 50 200] [--formats RGBa8 Mono8]

For each (pixel format, AcquisitionFrameRate): frames/s delivered through `GenicamSource.read`
(fetch + copy + conversion to RGB8/Mono8) against the rate set, and process CPU time per frame.
"""

import argparse
import json
import platform
import time

from edge.sources.genicam import GenicamSource


def measure(pixel_format: str, rate: float, seconds: float, cti: str | None) -> dict:
    source = GenicamSource(cti=cti, device=0, settings={"PixelFormat": pixel_format, "AcquisitionFrameRate": rate})
    source.open()
    try:
        for _ in range(5):  # first frames include acquisition start-up
            source.read(2.0)
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        frames = 0
        while time.perf_counter() - start_wall < seconds:
            source.read(2.0)
            frames += 1
        wall = time.perf_counter() - start_wall
        cpu = time.process_time() - start_cpu
        stats = source.stats()
    finally:
        source.close()
    fps = frames / wall
    return {
        "pixel_format": pixel_format,
        "rate_set": rate,
        "fps": round(fps, 1),
        "ratio": round(fps / rate, 3),
        "cpu_ms_per_frame": round(1000 * cpu / frames, 3),
        "dropped": stats["dropped"],
        "frames": frames,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rates", type=float, nargs="+", default=[50.0, 200.0])
    parser.add_argument("--formats", nargs="+", default=["RGBa8", "Mono8"])
    parser.add_argument("--cti", default=None, help="default: viky.cti from the genicam package")
    args = parser.parse_args()
    print(f"# {platform.machine()} {platform.processor() or ''} python {platform.python_version()}")
    for pixel_format in args.formats:
        for rate in args.rates:
            print(json.dumps(measure(pixel_format, rate, args.seconds, args.cti)), flush=True)


if __name__ == "__main__":
    main()
