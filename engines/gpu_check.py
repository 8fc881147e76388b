"""A TensorRT engine against ONNX Runtime FP32 on real images: parity, then latency and throughput.

    python -m engines.gpu_check --model MODEL_DIR --onnx MODEL_DIR/model.onnx --engine ENGINE --images DIR

Run by `engines/check_gpu.sh` after it builds the engine, and by tests/hw. Needs only what the
documented GPU install brings (TensorRT, pycuda, onnxruntime, numpy): no torch, no scipy.

Tolerances, for an FP16 engine against the FP32 graph, as fractions of the reference anomaly
map's range over the checked images:
- max |Δmap| ≤ 2 %. FP16 keeps 11 significant bits (one rounding step is 0.05 % of a value), and
  the errors of a few dozen FP16 layers add up: the FP16 split measured 0.6 % (ONNX Runtime, FP16
  graph on CPU) and 0.28 % (torch on CUDA) of the range at worst (BENCHMARKS.md). 2 % leaves
  room for TensorRT's own kernel choices and fusions, and stays far below a defect's signal.
- mean |Δmap| ≤ 0.2 %: the measured means are about 0.04 %; a wrong layer moves every pixel.
- max |Δscore| ≤ the map's 2 %: the score is the map's maximum or the mean of its top pixels,
  and neither moves more than the largest pixel does.
Every output of the engine is held to these, batch 1 and the largest batch alike: both run FP16
kernels, so comparing them with each other at a tighter bound would only test rounding luck.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

MAP_MAX_FRACTION = 0.02
MAP_MEAN_FRACTION = 0.002
MIN_IMAGES, MAX_IMAGES = 8, 16


def load_batch(model_dir, images_dir, count: int = MAX_IMAGES) -> tuple[np.ndarray, list[Path]]:
    """The first `count` images of `images_dir` in name order, preprocessed as the daemon does."""
    from calibrate.dataset import list_images
    from edge.core.errors import InputDataError
    from edge.imaging.files import read_image
    from edge.artifacts.model_dir import load_model_info
    from edge.imaging.preprocess import preprocess

    if not MIN_IMAGES <= count <= MAX_IMAGES:
        raise InputDataError(f"--count {count}: expected {MIN_IMAGES}..{MAX_IMAGES}")
    paths = list_images(images_dir)[:count]
    if len(paths) < MIN_IMAGES:
        raise InputDataError(f"image folder {images_dir}: {len(paths)} images, expected at least {MIN_IMAGES} "
                             f"(real parts from the line, good and defective)")
    spec = load_model_info(model_dir).preprocess
    return preprocess([read_image(path) for path in paths], spec), paths


def run_in_batches(backend, batch: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    maps, scores = zip(*(backend.infer(batch[start:start + size]) for start in range(0, len(batch), size)))
    return np.concatenate(maps), np.concatenate(scores)


def parity(reference: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray]) -> dict:
    """Differences of (maps, scores) from the reference's, absolute and as fractions of its map range."""
    (ref_maps, ref_scores), (maps, scores) = reference, candidate
    if maps.shape != ref_maps.shape or scores.shape != ref_scores.shape:
        raise ValueError(f"shapes differ: maps {maps.shape} vs {ref_maps.shape}, scores {scores.shape} vs "
                         f"{ref_scores.shape}")
    span = float(ref_maps.max() - ref_maps.min())
    if not span > 0:
        raise ValueError("the reference anomaly maps are constant; parity needs images that differ")
    map_diff = np.abs(maps.astype(np.float64) - ref_maps)
    score_diff = np.abs(scores.astype(np.float64) - ref_scores)
    return {"images": len(maps), "map_range": span, "max_map_diff": float(map_diff.max()),
            "mean_map_diff": float(map_diff.mean()), "max_score_diff": float(score_diff.max()),
            "max_map_fraction": float(map_diff.max()) / span, "mean_map_fraction": float(map_diff.mean()) / span,
            "max_score_fraction": float(score_diff.max()) / span, "finite": bool(np.isfinite(maps).all()
                                                                                 and np.isfinite(scores).all())}


def parity_failures(figures: dict) -> list[str]:
    """What exceeds the FP16 tolerances (module docstring); empty: the engine agrees."""
    failures = [] if figures["finite"] else ["non-finite values in the engine's output"]
    for key, limit in (("max_map_fraction", MAP_MAX_FRACTION), ("mean_map_fraction", MAP_MEAN_FRACTION),
                       ("max_score_fraction", MAP_MAX_FRACTION)):
        if not figures[key] <= limit:
            failures.append(f"{key} {figures[key]:.2%} > {limit:.1%} of the map range")
    return failures


def describe(figures: dict) -> str:
    return (f"{figures['images']} images, map range {figures['map_range']:.3g}: max |Δmap| "
            f"{figures['max_map_diff']:.3g} ({figures['max_map_fraction']:.2%}), mean "
            f"{figures['mean_map_diff']:.3g} ({figures['mean_map_fraction']:.3%}), max |Δscore| "
            f"{figures['max_score_diff']:.3g} ({figures['max_score_fraction']:.2%})")


def timings(backend, batch: np.ndarray, max_batch: int, calls: int = 500) -> dict:
    one = batch[:1].copy()
    for _ in range(20):
        backend.infer(one)
    latencies = []
    for _ in range(calls):
        began = time.perf_counter()
        backend.infer(one)
        latencies.append((time.perf_counter() - began) * 1000)
    full = np.resize(batch, (max_batch,) + batch.shape[1:])
    for _ in range(10):
        backend.infer(full)
    began = time.perf_counter()
    for _ in range(100):
        backend.infer(full)
    return {"p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
            "images_per_s": 100 * max_batch / (time.perf_counter() - began)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engines.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--onnx", required=True, help="the FP32 graph (reference, ONNX Runtime on the CPU)")
    parser.add_argument("--engine", required=True, help="the TensorRT engine to check")
    parser.add_argument("--images", required=True, help=f"folder of {MIN_IMAGES}..{MAX_IMAGES}+ real part images")
    parser.add_argument("--count", type=int, default=MAX_IMAGES, help="images to compare (default %(default)s)")
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch to run (default %(default)s)")
    args = parser.parse_args(argv)

    from edge.core.errors import HlgfaError

    try:
        return check(args)
    except HlgfaError as error:
        print(f"python -m engines.gpu_check: {error}", file=sys.stderr)
        return error.exit_code


def check(args) -> int:
    from edge.backends.base import open_backend

    batch, _ = load_batch(args.model, args.images, args.count)
    reference = open_backend("onnxruntime", args.model, onnx=args.onnx, max_batch=args.max_batch)
    try:
        engine = open_backend("tensorrt", args.model, engine=args.engine, max_batch=args.max_batch)
    except BaseException:
        reference.close()
        raise
    try:
        engine.warmup()
        expected = run_in_batches(reference, batch, args.max_batch)
        failures = []
        for size in sorted({1, args.max_batch}):
            figures = parity(expected, run_in_batches(engine, batch, size))
            print(f"parity vs ONNX Runtime FP32, batch {size}: {describe(figures)}")
            failures += [f"batch {size}: {failure}" for failure in parity_failures(figures)]
        if failures:
            print("FAILED: " + "; ".join(failures), file=sys.stderr)
            return 1
        speed = timings(engine, batch, args.max_batch)
        print(f"batch 1 latency (host to host): p50 {speed['p50_ms']:.2f} ms, p99 {speed['p99_ms']:.2f} ms")
        print(f"batch {args.max_batch} throughput: {speed['images_per_s']:.0f} images/s")
    finally:
        engine.close()
        reference.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
