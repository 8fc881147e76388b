"""bench/perf/cuda_rt.py as far as a machine without a GPU runs it: the call it times, the checks that
would catch a stream-ordering error, and its report, against the simulated device of tests/gpu_fakes.py
with a numpy kernel queued on the stream in the stand-in kernel's place. The GPU figures themselves
need a GPU (BENCHMARKS.md)."""

import numpy as np
import pytest

from bench.perf import cuda_rt as bench_cuda_rt
from tests.gpu_fakes import FakeCuda

SIZE = (16, 12)


class QueuedKernel:
    """What the torch kernel does, queued on the simulated stream as the real one is on the GPU's."""

    def __init__(self, cuda: FakeCuda, eager: bool = False):
        self.cuda, self.eager = cuda, eager

    def __call__(self, inputs, maps, scores, count, size, stream):
        def run():
            images = inputs.words[:count * 3 * size[0] * size[1]].reshape(count, 3, *size)
            anomaly = images.mean(axis=1)
            maps.words[:anomaly.size] = anomaly.ravel()
            scores.words[:count] = anomaly.reshape(count, -1).max(axis=1)
        if self.eager:  # a kernel that does not wait for the stream: reads the input before its copy ran
            run()
        else:
            self.cuda.device.enqueue(stream.handle, "execute", run)


def test_a_call_queues_copy_kernel_copies_and_synchronises_and_matches_numpy():
    cuda = FakeCuda()
    cycle = bench_cuda_rt.Cycle(cuda, QueuedKernel(cuda), SIZE, 32)
    checks = bench_cuda_rt.check_results(cycle)
    assert checks["event_passed"] and all(error <= 1e-6 for error in checks["max_abs_error"].values())
    assert cuda.device.calls[-6:] == ["copy_to_device", "execute", "copy_to_host", "copy_to_host", "record_event",
                                      "synchronize"]
    cycle.close()
    assert cuda.device.live == set()


def test_a_kernel_out_of_stream_order_fails_the_check():
    cuda = FakeCuda()
    cycle = bench_cuda_rt.Cycle(cuda, QueuedKernel(cuda, eager=True), SIZE, 32)
    with pytest.raises(AssertionError, match="did not run in stream order"):
        bench_cuda_rt.check_results(cycle)
    cycle.close()


def test_measure_reports_every_batch_size_and_a_markdown_row_each():
    cuda = FakeCuda()
    result = bench_cuda_rt.measure(cuda, QueuedKernel(cuda), SIZE, latency_calls=30)
    assert list(result["per_call"]) == list(bench_cuda_rt.BATCHES)
    for count, row in result["per_call"].items():
        assert row["with_kernel"]["calls"] >= 30 and row["copies_only"]["p50_ms"] > 0
        assert row["copy_gpu_time"]["h2d_bytes"] == count * 3 * SIZE[0] * SIZE[1] * 4
    assert result["bandwidth"]["h2d_gb_s"] > 0 and cuda.device.live == set()
    table = bench_cuda_rt.markdown(result).splitlines()
    assert table[0].startswith("GPU: Orin (compute capability 8.7, 8 SMs at 765 MHz")
    assert [line.split("|")[1].strip() for line in table[4:]] == ["1", "8", "32"]


def test_percentiles():
    assert bench_cuda_rt.percentiles(np.arange(1, 101)) == {"p50_ms": 50.5, "p99_ms": 99.01, "calls": 100}


def test_without_pycuda_it_names_the_sdist_step(tmp_path):
    try:
        import pycuda.driver  # noqa: F401
        pytest.skip("pycuda is installed here")
    except ImportError:
        pass
    with pytest.raises(SystemExit, match="pip download pycuda==.* --no-binary pycuda --no-deps -d DIR"):
        bench_cuda_rt.import_pycuda(None, tmp_path / "site")
    with pytest.raises(SystemExit, match=f"no pycuda-\\*.tar.gz in {tmp_path}"):
        bench_cuda_rt.import_pycuda(tmp_path, tmp_path / "site")
