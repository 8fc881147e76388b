"""edge/backends/cuda_rt.py on a real GPU, without TensorRT: what the backend's call does around the
engine (page-locked input → device → page-locked output on one stream), checked for content and
order. Skipped with a reason where pycuda or a CUDA device is missing; bench/perf/cuda_rt.py adds a
kernel on the same stream and the timings."""

import numpy as np
import pytest

from edge.backends import cuda_rt

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu():
    pytest.importorskip("pycuda.driver", reason="pycuda is not installed (GPU boxes only)")
    try:
        return cuda_rt.device_properties(0)
    except cuda_rt.CudaError as error:
        pytest.skip(f"no usable CUDA device ({error})")


@pytest.mark.parametrize("count", [1, 8, 32])
def test_a_round_trip_through_the_device_on_one_stream_returns_the_batch(gpu, count):
    shape = (count, 3, 256, 256)
    batch = np.random.default_rng(count).standard_normal(shape).astype(np.float32)
    context = cuda_rt.Context(0)
    try:
        with context.current():
            stream, done = cuda_rt.Stream(), cuda_rt.Event()
            sent, back = cuda_rt.PinnedBuffer(shape), cuda_rt.PinnedBuffer(shape)
            device = cuda_rt.DeviceBuffer(sent.array.nbytes)
            sent.array[...] = batch
            back.array[...] = np.nan
            cuda_rt.copy_to_device(device, sent.array, stream)
            cuda_rt.copy_to_host(back.array, device, stream)
            done.record(stream)
            stream.synchronize()
            assert done.done()
            np.testing.assert_array_equal(back.array, batch)
            for buffer in (device, sent, back):
                buffer.free()
    finally:
        context.close()
    assert gpu.sm_count > 0 and gpu.sm_clock_khz > 0
