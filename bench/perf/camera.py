"""Sustained frame rate and CPU cost of the genicam source against viky.cti; memory over reconnects.

    .venv/bin/python -m bench.perf.camera [--seconds 5] [--rates 50 200] [--formats RGBa8 Mono8]
    .venv/bin/python -m bench.perf.camera --reconnects 300

For each (pixel format, AcquisitionFrameRate): frames/s delivered through `GenicamSource.read`
(fetch + copy + conversion to RGB8/Mono8) against the rate set, and process CPU time per frame.

With --reconnects N: the device stops streaming N times (`AcquisitionStop` through the acquirer,
as a camera that hangs); each time the source declares it lost after one fetch timeout and
reconnects. Reports the resident memory and the live Python objects (all, and acquirers and chunk
adapters) after 10 warm-up reconnects and after N more: what a daemon on a flaky cable keeps.
"""

import argparse
import gc
import json
import os
import platform
import time

from edge.sources.base import SourceUnavailable
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


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def live_objects() -> dict:
    from genicam.genapi import ChunkAdapter
    from harvesters.core import ImageAcquirer

    gc.collect()
    objects = gc.get_objects()
    return {"all": len(objects), "acquirers": sum(issubclass(type(o), ImageAcquirer) for o in objects),
            "chunk_adapters": sum(issubclass(type(o), ChunkAdapter) for o in objects)}


def reconnects(count: int, cti: str | None) -> dict:
    source = GenicamSource(cti=cti, device=2, settings={"AcquisitionFrameRate": 200}, reconnect_after_timeouts=1,
                           reconnect_backoff_initial_s=0.01)
    source.open()

    def lose_and_return(times: int) -> None:
        for done in range(times):
            source.acquirer.stop()
            for _ in range(100):  # a reconnect takes a few reads; 100 means it is not coming back
                try:
                    source.read(0.05)
                    break
                except SourceUnavailable:
                    continue
            else:
                raise SystemExit(f"the device did not come back after reconnect {done + 1}: {source.stats()}")

    try:
        source.read(2.0)
        lose_and_return(10)
        memory_before, objects_before = resident_mb(), live_objects()
        start = time.perf_counter()
        lose_and_return(count)
        seconds = time.perf_counter() - start
        memory_after, objects_after = resident_mb(), live_objects()
        stats = source.stats()
    finally:
        source.close()
    return {"reconnects": count, "seconds": round(seconds, 1), "rss_mb_before": round(memory_before, 1),
            "rss_mb_after": round(memory_after, 1),
            "rss_kb_per_reconnect": round((memory_after - memory_before) * 1024 / count, 1),
            "objects_before": objects_before, "objects_after": objects_after, "source_stats": stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rates", type=float, nargs="+", default=[50.0, 200.0])
    parser.add_argument("--formats", nargs="+", default=["RGBa8", "Mono8"])
    parser.add_argument("--cti", default=None, help="default: viky.cti from the genicam package")
    parser.add_argument("--reconnects", type=int, help="measure memory over this many reconnects instead")
    args = parser.parse_args()
    print(f"# {platform.machine()} {platform.processor() or ''} python {platform.python_version()}")
    if args.reconnects:
        print(json.dumps(reconnects(args.reconnects, args.cti)), flush=True)
        return
    for pixel_format in args.formats:
        for rate in args.rates:
            print(json.dumps(measure(pixel_format, rate, args.seconds, args.cti)), flush=True)


if __name__ == "__main__":
    main()
