"""The TensorRT backend's CUDA module (edge/backends/cuda_rt.py) on a real GPU, without TensorRT.

    python -m bench.perf.cuda_rt --out DIR [--pycuda-sdist SDIST_DIR] [--input-size 256]
                                  [--model MODEL_DIR --data DATA_ROOT]

Made for a GPU machine with torch (CUDA), nvcc and numpy but no TensorRT and no network:

1. pycuda: imported if installed; otherwise built from the source distribution in SDIST_DIR
   (`pycuda-*.tar.gz`, fetched beforehand where there is network with
   `pip download pycuda==2026.1 --no-binary pycuda --no-deps -d SDIST_DIR`; `--no-binary :all:`
   would also build pip's own build tools from source) into DIR/site, with the machine's nvcc,
   setuptools and numpy (`--no-build-isolation`: nothing is fetched). pycuda.driver needs only numpy,
   so its runtime dependencies (pytools, mako) are not installed.
2. The CUDA module for real, as the backend uses it: device identity (the sidecar's keys),
   the primary context, one stream, page-locked and device buffers for a batch of the model's
   input (N×3×S×S float32) and outputs (N×S×S, N), and each call as `TensorRTBackend.infer` makes
   it: write the page-locked input, queue H2D, run the engine, queue two D2H copies, synchronise.
   A torch kernel on the same stream (`torch.cuda.ExternalStream`) stands in for the engine: the
   map is the input's channel mean, the score its maximum. Checked: every output equals numpy's on
   the host (the kernel ran after the H2D copy, the D2H copies after the kernel), and an event
   recorded after the copies has been passed once the stream is synchronised. Measured at batch
   1, 8 and 32: host-to-host time per call, p50/p99, with the stand-in kernel and without it (the
   module's own cost: copies, synchronise, context push/pop); the copies' GPU time by events; and
   page-locked copy bandwidth on 64 MiB.
3. With --model and --data: bench/perf/cuda.py (the torch backend FP32/FP16 against ONNX Runtime
   FP32 on the CPU: parity and latency) in a subprocess, its JSON beside this one's.

Writes DIR/cuda_rt.json and prints a Markdown table for BENCHMARKS.md. Stops with a message naming
what is missing (pycuda and no sdist, no CUDA device, torch without CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.harness import ROOT, percentile

BATCHES = (1, 8, 32)
BANDWIDTH_BYTES = 64 << 20


def percentiles(milliseconds) -> dict:
    values = np.asarray(milliseconds, dtype=np.float64)
    return {"p50_ms": percentile(values, 50, 4), "p99_ms": percentile(values, 99, 4),
            "calls": int(values.size)}


def import_pycuda(sdist_dir: Path | None, site: Path) -> dict:
    """pycuda.driver importable, built from `sdist_dir` into `site` if it is not installed. Returns how."""
    try:
        import pycuda.driver  # noqa: F401

        return {"pycuda": "installed"}
    except ImportError:
        pass
    if site.is_dir():
        sys.path.insert(0, str(site))
    try:
        import pycuda.driver  # noqa: F401,F811

        return {"pycuda": f"built earlier into {site}"}
    except ImportError:
        pass
    if sdist_dir is None:
        sys.exit("bench_cuda_rt: pycuda is not installed; give --pycuda-sdist DIR holding pycuda-*.tar.gz "
                 "(pip download pycuda==2026.1 --no-binary pycuda --no-deps -d DIR)")
    archives = sorted(Path(sdist_dir).glob("pycuda-*.tar.gz"))
    if not archives:
        sys.exit(f"bench_cuda_rt: no pycuda-*.tar.gz in {sdist_dir}")
    if shutil.which("nvcc") is None:
        sys.exit("bench_cuda_rt: nvcc is not on PATH; pycuda's build finds the CUDA toolkit from it")
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
                             "--target", str(site), str(archives[-1])], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"bench_cuda_rt: building {archives[-1].name} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    sys.path.insert(0, str(site))
    import pycuda.driver  # noqa: F401,F811

    return {"pycuda": f"built from {archives[-1].name}", "pycuda_build_s": round(time.perf_counter() - began, 1)}


def environment() -> dict:
    def tool(*command: str) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"unavailable ({error})"

    found = {"python": platform.python_version(), "numpy": np.__version__, "cpu_count": os.cpu_count(),
             "nvcc": tool("nvcc", "--version").splitlines()[-1:],
             "driver": tool("nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader")}
    for name in ("torch", "onnxruntime", "pycuda"):
        try:
            found[name] = __import__(name).__version__ if name != "pycuda" else __import__("pycuda").VERSION_TEXT
        except ImportError:
            found[name] = None
    return found


class TorchKernel:
    """The engine's stand-in: a torch op queued on the backend's own stream, reading and writing the
    device buffers by address, as `execute_async_v3` does."""

    def __init__(self):
        import torch

        if not torch.cuda.is_available():
            sys.exit("bench_cuda_rt: torch sees no CUDA device")
        self.torch = torch

    def _tensor(self, buffer, shape):
        class Address:  # __cuda_array_interface__ v2: torch wraps the memory, no copy, no stream sync
            __cuda_array_interface__ = {"shape": tuple(shape), "typestr": "<f4", "data": (buffer.address, False),
                                        "strides": None, "version": 2}
        return self.torch.as_tensor(Address(), device="cuda")

    def __call__(self, inputs, maps, scores, count: int, size: tuple[int, int], stream) -> None:
        torch = self.torch
        with torch.cuda.stream(torch.cuda.ExternalStream(stream.handle)):
            images = self._tensor(inputs, (count, 3, *size))
            anomaly = self._tensor(maps, (count, *size))
            anomaly.copy_(images.mean(dim=1))
            self._tensor(scores, (count,)).copy_(anomaly.flatten(1).amax(dim=1))


class Cycle:
    """Buffers for `max_batch` and one call exactly as TensorRTBackend.infer makes it, with `kernel` for
    the engine. `cuda` is edge.backends.cuda_rt (or a stand-in with its names)."""

    def __init__(self, cuda, kernel, size: tuple[int, int], max_batch: int):
        self.cuda, self.kernel, self.size = cuda, kernel, tuple(size)
        self.context = cuda.Context(0)
        with self.context.current():
            self.stream = cuda.Stream()
            shapes = {"images": (max_batch, 3, *size), "maps": (max_batch, *size), "scores": (max_batch,)}
            self.host = {name: cuda.PinnedBuffer(shape, np.float32) for name, shape in shapes.items()}
            self.device = {name: cuda.DeviceBuffer(self.host[name].array.nbytes) for name in shapes}
            self.done = cuda.Event()

    def run(self, batch: np.ndarray | None, count: int, with_kernel: bool = True) -> tuple[np.ndarray, np.ndarray]:
        cuda, stream = self.cuda, self.stream
        images, maps, scores = (self.host[name].array[:count] for name in ("images", "maps", "scores"))
        with self.context.current():
            if batch is not None:
                images[...] = batch
            cuda.copy_to_device(self.device["images"], images, stream)
            if with_kernel:
                self.kernel(self.device["images"], self.device["maps"], self.device["scores"], count, self.size, stream)
            cuda.copy_to_host(maps, self.device["maps"], stream)
            cuda.copy_to_host(scores, self.device["scores"], stream)
            self.done.record(stream)
            stream.synchronize()
        return maps.copy(), scores.copy()

    def close(self) -> None:
        with self.context.current():
            for buffer in (*self.device.values(), *self.host.values()):
                buffer.free()
            self.stream = None
        self.context.close()


def check_results(cycle: Cycle, seed: int = 0) -> dict:
    """Every batch size's outputs against numpy's, and the event passed: what a stream-ordering error breaks."""
    rng = np.random.default_rng(seed)
    worst = {}
    for count in BATCHES:
        batch = rng.standard_normal((count, 3, *cycle.size)).astype(np.float32)
        maps, scores = cycle.run(batch, count)
        expected = batch.mean(axis=1)
        worst[count] = max(float(np.abs(maps - expected).max()),
                           float(np.abs(scores - expected.reshape(count, -1).max(axis=1)).max()))
        if not (np.isfinite(maps).all() and worst[count] <= 1e-5):
            raise AssertionError(f"batch {count}: outputs differ from numpy's by {worst[count]:.3g}: the copies and "
                                 f"the kernel did not run in stream order")
        with cycle.context.current():
            if not cycle.done.done():
                raise AssertionError(f"batch {count}: the event after the copies was not passed after synchronize()")
    return {"max_abs_error": worst, "event_passed": True}


def time_calls(call, iterations: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(iterations):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000)
    return times


def copy_milliseconds(cuda, cycle: Cycle, count: int, repeats: int = 50) -> dict:
    """GPU time of the H2D copy of `count` inputs and of the D2H copies of their outputs, by events."""
    begin, between, end = cuda.Event(), cuda.Event(), cuda.Event()
    images, maps, scores = (cycle.host[name].array[:count] for name in ("images", "maps", "scores"))
    h2d, d2h = [], []
    with cycle.context.current():
        for _ in range(repeats):
            begin.record(cycle.stream)
            cuda.copy_to_device(cycle.device["images"], images, cycle.stream)
            between.record(cycle.stream)
            cuda.copy_to_host(maps, cycle.device["maps"], cycle.stream)
            cuda.copy_to_host(scores, cycle.device["scores"], cycle.stream)
            end.record(cycle.stream)
            end.synchronize()
            h2d.append(between.milliseconds_since(begin))
            d2h.append(end.milliseconds_since(between))
    return {"h2d_ms": round(float(np.median(h2d)), 4), "d2h_ms": round(float(np.median(d2h)), 4),
            "h2d_bytes": int(images.nbytes), "d2h_bytes": int(maps.nbytes + scores.nbytes)}


def bandwidth(cuda, nbytes: int = BANDWIDTH_BYTES, repeats: int = 20) -> dict:
    """Page-locked host ↔ device copy bandwidth, GB/s (10^9 bytes), median of `repeats`."""
    context = cuda.Context(0)
    try:
        with context.current():
            stream, host = cuda.Stream(), cuda.PinnedBuffer((nbytes // 4,), np.float32)
            device, begin, end = cuda.DeviceBuffer(nbytes), cuda.Event(), cuda.Event()
            rates = {"h2d": [], "d2h": []}
            for _ in range(repeats):
                for direction, copy in (("h2d", lambda: cuda.copy_to_device(device, host.array, stream)),
                                        ("d2h", lambda: cuda.copy_to_host(host.array, device, stream))):
                    begin.record(stream)
                    copy()
                    end.record(stream)
                    end.synchronize()
                    rates[direction].append(nbytes / (end.milliseconds_since(begin) / 1000) / 1e9)
            device.free()
            host.free()
        return {f"{direction}_gb_s": round(float(np.median(values)), 2) for direction, values in rates.items()}
    finally:
        context.close()


def measure(cuda, kernel, size: tuple[int, int], latency_calls: int = 300) -> dict:
    """Section 2 of the module docstring; `cuda` and `kernel` are the real ones on a GPU."""
    # The properties the engine sidecar's GPU identity is made of (edge/artifacts/engine_sidecar.py), raw: this
    # script imports nothing beyond numpy, torch and cuda_rt, which is all a bare GPU machine has.
    result = {"device": cuda.device_properties(0)._asdict(), "input_size": list(size)}
    cycle = Cycle(cuda, kernel, size, max(BATCHES))
    try:
        result["checks"] = check_results(cycle)
        result["per_call"] = {}
        for count in BATCHES:
            batch = np.random.default_rng(count).standard_normal((count, 3, *size)).astype(np.float32)
            cycle.host["images"].array[:count] = batch
            calls = max(30, latency_calls // count)
            result["per_call"][count] = {
                "with_kernel": percentiles(time_calls(lambda: cycle.run(None, count), calls, warmup=10)),
                "copies_only": percentiles(time_calls(lambda: cycle.run(None, count, with_kernel=False), calls,
                                                      warmup=10)),
                "copy_gpu_time": copy_milliseconds(cuda, cycle, count)}
    finally:
        cycle.close()
    result["bandwidth"] = bandwidth(cuda)
    return result


def markdown(result: dict) -> str:
    device = result["device"]
    major, minor = device["compute_capability"]
    lines = [f"GPU: {device['name']} (compute capability {major}.{minor}, {device['sm_count']} SMs at "
             f"{device['sm_clock_khz'] // 1000} MHz, {device['total_memory_bytes'] / 2**30:.0f} GiB); input "
             f"{result['input_size'][0]}×{result['input_size'][1]}; page-locked bandwidth H2D "
             f"{result['bandwidth']['h2d_gb_s']} GB/s, D2H {result['bandwidth']['d2h_gb_s']} GB/s", "",
             "| batch | per call with stand-in kernel p50 / p99 (ms) | copies + synchronise only p50 / p99 (ms) | "
             "H2D GPU time (ms, bytes) | D2H GPU time (ms, bytes) |", "|---|---|---|---|---|"]
    for count, row in result["per_call"].items():
        kernel, copies, gpu = row["with_kernel"], row["copies_only"], row["copy_gpu_time"]
        lines.append(f"| {count} | {kernel['p50_ms']} / {kernel['p99_ms']} | {copies['p50_ms']} / {copies['p99_ms']} | "
                     f"{gpu['h2d_ms']} ({gpu['h2d_bytes']}) | {gpu['d2h_ms']} ({gpu['d2h_bytes']}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON results and pycuda's build")
    parser.add_argument("--pycuda-sdist", type=Path, help="folder holding pycuda-*.tar.gz (built when pycuda is missing)")
    parser.add_argument("--input-size", type=int, default=256, help="the model's input side S (default 256)")
    parser.add_argument("--latency-calls", type=int, default=300)
    parser.add_argument("--model", help="with --data: also run bench/perf/cuda.py on this model")
    parser.add_argument("--data")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    how = import_pycuda(args.pycuda_sdist, args.out / "site")
    from edge.backends import cuda_rt

    result = {"environment": environment(), **how,
              **measure(cuda_rt, TorchKernel(), (args.input_size, args.input_size), args.latency_calls)}
    (args.out / "cuda_rt.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(markdown(result))
    if args.model and args.data:
        subprocess.run([sys.executable, "-m", "bench.perf.cuda", "--model", args.model, "--data",
                        args.data, "--work", str(args.out / "bench_cuda"), "--json", str(args.out / "torch.json")],
                       check=False, cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
