"""CPU latency per frame, torch vs ONNX Runtime (FP32, optionally the FP16 graph), side by side in one run.

    OMP_NUM_THREADS=2 .venv/bin/python -m bench.perf.backends --model MODEL_DIR --onnx FILE.onnx \
        [--onnx-fp16 FILE.onnx] [--other MODEL_DIR] [--threads 2] [--batch 1] [--iters 40]

The backends run interleaved (one call each per round, in rotating order), so a shared,
loaded machine slows them alike and the ratio stays meaningful even when the absolute
numbers do not. Input: real images from --images (default the model's training folder is not
known, so the magnetic tile test set when present, else random normal input).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from bench.harness import load_average, machine


def load_batch(images: Path | None, size: tuple[int, int], batch: int) -> np.ndarray:
    from edge.artifacts.model_dir import load_model_info  # noqa: F401 - keeps the import order of the runtime
    from edge.imaging.preprocess import PreprocessSpec, preprocess

    if images is not None and images.is_dir():
        from calibrate.dataset import list_images, read_image

        paths = list_images(images)[:batch]
        if len(paths) == batch:
            return preprocess([read_image(p) for p in paths], PreprocessSpec(size))
    return np.random.default_rng(0).standard_normal((batch, 3) + size).astype(np.float32)


def with_spinning_threads(backend, threads: int):
    """The onnxruntime backend's graph in a session that leaves ONNX Runtime's default on: idle
    intra-op threads spin (the backend turns that off; this row measures why)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    backend.session = onnxruntime.InferenceSession(str(backend.onnx_path), options, providers=backend.providers)
    return backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--onnx-fp16")
    parser.add_argument("--other", metavar="MODEL_DIR", help="a second model of the same input size, run through "
                        "ONNX Runtime in the same rounds (its MODEL_DIR/model.onnx): the cost of what differs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--images", type=Path, default=Path("../shared/datasets/magnetic_tile/test/good"))
    parser.add_argument("--backends", default="torch,onnxruntime",
                        help="comma list of torch, onnxruntime, onnxruntime-spin (ORT with spinning threads)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import torch

    from edge.backends.base import open_backend
    from edge.artifacts.model_dir import load_model_info

    torch.set_num_threads(args.threads)
    info = load_model_info(args.model)
    size = info.preprocess.input_size
    batch = load_batch(args.images, size, args.batch)
    openers = {
        "torch": lambda: open_backend("torch", args.model, max_batch=args.batch, threads=args.threads),
        "onnxruntime": lambda: open_backend("onnxruntime", args.model, onnx=args.onnx, max_batch=args.batch,
                                            threads=args.threads),
        "onnxruntime-spin": lambda: with_spinning_threads(open_backend(
            "onnxruntime", args.model, onnx=args.onnx, max_batch=args.batch, threads=args.threads), args.threads),
    }
    backends = {name: openers[name]() for name in args.backends.split(",")}
    if args.onnx_fp16:
        backends["onnxruntime-fp16graph"] = open_backend("onnxruntime", args.model, onnx=args.onnx_fp16,
                                                         max_batch=args.batch, threads=args.threads)
    if args.other:
        backends["onnxruntime-other"] = open_backend("onnxruntime", args.other, max_batch=args.batch,
                                                     threads=args.threads)
    names = list(backends)
    for name in names:
        for _ in range(args.warmup):
            backends[name].infer(batch)
    times = {name: [] for name in names}
    for round_index in range(args.iters):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            began = time.perf_counter()
            backends[name].infer(batch)
            times[name].append((time.perf_counter() - began) * 1000 / args.batch)
    for backend in backends.values():
        backend.close()

    def summary(values):
        ordered = sorted(values)
        return {"median_ms": round(statistics.median(ordered), 2),
                "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
                "min_ms": round(ordered[0], 2)}

    results = {name: summary(values) for name, values in times.items()}
    for name in names:
        if "torch" in results:
            results[name]["ratio_to_torch"] = round(results[name]["median_ms"] / results["torch"]["median_ms"], 3)
    meta = {"input_size": list(size), "batch": args.batch, "threads": args.threads, "iters": args.iters,
            "machine": machine(), "load_average": load_average(),
            "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__}
    print(f"per frame at {size[0]}×{size[1]}, batch {args.batch}, {args.threads} threads, {args.iters} interleaved rounds\n")
    print("| backend | median ms | p90 ms | min ms | ÷ torch |\n|---|---|---|---|---|")
    for name in names:
        r = results[name]
        print(f"| {name} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['min_ms']:.2f} | "
              f"{r.get('ratio_to_torch', float('nan')):.3f} |")
    print(json.dumps(meta))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "meta": meta}, indent=2) + "\n")


if __name__ == "__main__":
    main()
