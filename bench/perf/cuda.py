"""The torch backend on a CUDA GPU, FP32 and FP16, against ONNX Runtime FP32 on the CPU.

    python -m bench.perf.cuda --model MODEL_DIR --data DATA_ROOT [--onnx FP32.onnx] [--json OUT]

Parity: maps and scores of every backend on DATA_ROOT's test images (MVTec layout), against ONNX
Runtime FP32, with image and pixel AUROC beside. Speed: latency p50/p99 of one `infer()` at batch 1
and throughput at batch 8 and 32. `infer()` is what the daemon calls: a host batch in, host maps
out, both copies included.

FP16 is the FP16 export's precision split (backbone and aligners in half; the fitted statistics and
the Mahalanobis tail in FP32: bench/detection/parity_backends.py's TorchHalfSplit), the split a TensorRT FP16
engine built from that export runs. Without `--onnx`, the FP32 graph is exported first.
"""

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.harness import percentile


def timed_calls(backend, batch: np.ndarray, iterations: int, warmup: int) -> np.ndarray:
    """Seconds of each of `iterations` infer() calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        backend.infer(batch)
    seconds = np.empty(iterations)
    for index in range(iterations):
        began = time.perf_counter()
        backend.infer(batch)  # returns host arrays, so the GPU work has finished when it returns
        seconds[index] = time.perf_counter() - began
    return seconds


def speed(backend, images: np.ndarray, latency_iterations: int) -> dict:
    latency = 1000 * timed_calls(backend, images[:1], latency_iterations, warmup=20)
    row = {"latency_ms_p50": percentile(latency, 50), "latency_ms_p99": percentile(latency, 99)}
    for batch_size in (8, 32):
        batch = np.concatenate([images] * (batch_size // len(images) + 1))[:batch_size]
        seconds = timed_calls(backend, batch, iterations=30, warmup=3)
        row[f"images_per_s_batch{batch_size}"] = round(batch_size / float(np.median(seconds)), 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--onnx", help="FP32 ONNX file (default: exported from MODEL_DIR into --work)")
    parser.add_argument("--work", type=Path, default=Path("bench_cuda_work"))
    parser.add_argument("--ort-threads", type=int, default=8)
    parser.add_argument("--latency-iterations", type=int, default=300)
    parser.add_argument("--device", default="cuda", help="torch device (cpu: a dry run of this script)")
    parser.add_argument("--json")
    args = parser.parse_args()

    import onnxruntime
    import torch
    from scipy.stats import spearmanr

    from bench.detection.parity_backends import TorchHalfSplit
    from calibrate.dataset import evaluation_samples, read_image
    from calibrate.evaluate import compute_metrics, score_samples
    from edge.backends.base import open_backend
    from edge.artifacts.model_dir import load_model_info
    from edge.imaging.preprocess import preprocess

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench_cuda: torch sees no CUDA device")
    info = load_model_info(args.model)
    samples = evaluation_samples(args.data)
    onnx_file = args.onnx
    if onnx_file is None:
        args.work.mkdir(parents=True, exist_ok=True)
        onnx_file = str(args.work / "fp32.onnx")
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edge.cli", "export", "--model", args.model, "--out", onnx_file,
                        "--max-batch", "32"], check=True)
        print(f"export: {time.perf_counter() - began:.1f} s", flush=True)

    openers = {
        "onnxruntime-cpu-fp32": lambda: open_backend("onnxruntime", args.model, onnx=onnx_file, max_batch=32,
                                                     threads=args.ort_threads),
        f"torch-{args.device}-fp32": lambda: open_backend("torch", args.model, max_batch=32, device=args.device),
        f"torch-{args.device}-fp16": lambda: TorchHalfSplit(args.model, 32, threads=1, device=args.device),
    }
    speed_images = preprocess([read_image(s.path) for s in samples[:32]], info.preprocess)
    outputs, results = {}, {}
    for name, opener in openers.items():
        backend = opener()
        backend.warmup()
        maps, scores, masks, _, _ = score_samples(backend, samples, info.preprocess, 8, False)
        metrics = compute_metrics(samples, maps, scores, masks)
        row = {"image_auroc": round(metrics["image_auroc"], 4), "pixel_auroc": round(metrics["pixel_auroc"], 4)}
        if outputs:
            ref_maps, ref_scores = outputs["onnxruntime-cpu-fp32"]
            difference = np.abs(maps - ref_maps)
            row.update({"max_abs_map_diff": float(difference.max()), "mean_abs_map_diff": float(difference.mean()),
                        "reference_map_range": float(ref_maps.max() - ref_maps.min()),
                        "max_abs_score_diff": float(np.abs(scores - ref_scores).max()),
                        "max_rel_score_diff": float(np.max(np.abs(scores - ref_scores) / np.abs(ref_scores))),
                        "score_spearman": float(spearmanr(scores, ref_scores).statistic)})
        outputs[name] = (maps, scores)
        row.update(speed(backend, speed_images, args.latency_iterations))
        backend.close()
        results[name] = row
        print(name, json.dumps(row), flush=True)

    summary = {"model": str(args.model), "model_hash": info.model_hash, "input_size": list(info.preprocess.input_size),
               "data": args.data, "n_images": len(samples), "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor(),
               "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
               "python": platform.python_version(), "cpu_count": __import__("os").cpu_count(),
               "ort_threads": args.ort_threads,
               "cuda_peak_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
               if torch.cuda.is_available() else None, "results": results}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
