"""The TensorRT backend's batch and shape bookkeeping, run without a GPU.

TensorRT and pycuda cannot run on a machine without an NVIDIA GPU, so these tests drive the
backend's own code (ShapeBinding, buffer allocation, infer(), close()) against stand-ins for the
few calls it makes: an execution context with TensorRT 10's `set_input_shape`,
`get_tensor_shape`, `set_tensor_address` and `execute_async_v3` (booleans as TensorRT returns
them, shapes refused outside the optimisation profile), and pycuda's stream, page-locked and
device allocations and async copies, with device memory kept as numpy arrays. They check what
the backend asks of TensorRT and in which order, not TensorRT itself; tests/hw runs the real
thing on a GPU.
"""

import itertools

import numpy as np
import pytest

from edge.backends.tensorrt import ShapeBinding, TensorRTBackend, io_type_errors
from edge.core.errors import BackendError
from edge.artifacts.graph import INPUT_NAME, OUTPUT_NAMES

SIZE = (8, 6)


class FakeExecutionContext:
    """IExecutionContext's calls used by the backend. The "engine" maps an image to its channel mean
    (the anomaly map) and the map's maximum (the score), so a result shows which input it came from."""

    def __init__(self, memory: dict, max_batch: int, refuse_addresses: bool = False):
        self.memory = memory
        self.max_batch = max_batch
        self.refuse_addresses = refuse_addresses
        self.addresses: dict[str, int] = {}
        self.input_shape = None
        self.shape_calls: list[tuple] = []
        self.runs: list[int] = []

    def set_tensor_address(self, name, address):
        if self.refuse_addresses or name not in (INPUT_NAME, *OUTPUT_NAMES):
            return False
        self.addresses[name] = address
        return True

    def set_input_shape(self, name, shape):
        self.shape_calls.append(tuple(shape))
        if name != INPUT_NAME or tuple(shape[1:]) != (3, *SIZE) or not 1 <= shape[0] <= self.max_batch:
            return False
        self.input_shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        batch = self.input_shape[0] if self.input_shape else -1
        return {INPUT_NAME: (batch, 3, *SIZE), OUTPUT_NAMES[0]: (batch, *SIZE), OUTPUT_NAMES[1]: (batch,)}[name]

    def execute_async_v3(self, stream_handle):
        if self.input_shape is None or set(self.addresses) != {INPUT_NAME, *OUTPUT_NAMES}:
            return False
        count = self.input_shape[0]
        images = self.memory[self.addresses[INPUT_NAME]][:count * 3 * SIZE[0] * SIZE[1]].reshape(count, 3, *SIZE)
        maps = images.mean(axis=1)
        self.memory[self.addresses[OUTPUT_NAMES[0]]][:maps.size] = maps.ravel()
        self.memory[self.addresses[OUTPUT_NAMES[1]]][:count] = maps.reshape(count, -1).max(axis=1)
        self.runs.append(count)
        return True


class FakeCuda:
    """pycuda.driver's calls used by the backend; device memory is a dict of address → float32 array."""

    class Error(Exception):
        pass

    class Stream:
        handle = 1234

        def synchronize(self):
            pass

    class Allocation:
        def __init__(self, memory, address, nbytes):
            self.address = address
            memory[address] = np.full(nbytes // 4, np.nan, np.float32)
            self.freed = False

        def __int__(self):
            return self.address

        def free(self):
            self.freed = True

    def __init__(self):
        self.memory: dict[int, np.ndarray] = {}
        self._addresses = itertools.count(0x1000, 0x1000)

    def pagelocked_empty(self, shape, dtype):
        return np.empty(shape, dtype)

    def mem_alloc(self, nbytes):
        return self.Allocation(self.memory, next(self._addresses), nbytes)

    def memcpy_htod_async(self, device, host, stream):
        assert host.flags.c_contiguous
        self.memory[int(device)][:host.size] = host.ravel()

    def memcpy_dtoh_async(self, host, device, stream):
        assert host.flags.c_contiguous
        host[...] = self.memory[int(device)][:host.size].reshape(host.shape)


class FakeCudaContext:
    def __init__(self):
        self.depth = 0
        self.detached = False

    def push(self):
        self.depth += 1

    def pop(self):
        self.depth -= 1

    def detach(self):
        self.detached = True


def backend_on_fakes(max_batch=4, **context_options) -> TensorRTBackend:
    """The backend as open() leaves it after deserialising the engine, with stand-ins below it."""
    backend = object.__new__(TensorRTBackend)
    backend.input_size, backend.max_batch, backend.engine_path = SIZE, max_batch, "line1.plan"
    backend._cuda = FakeCuda()
    backend._context = FakeCudaContext()
    backend._exec = FakeExecutionContext(backend._cuda.memory, max_batch, **context_options)
    backend._allocate()
    return backend


def images(count, seed=0):
    return np.random.default_rng(seed).standard_normal((count, 3, *SIZE)).astype(np.float32)


def test_first_frame_sets_the_input_shape_and_gets_its_own_answer():
    backend = backend_on_fakes()
    batch = images(1)
    maps, scores = backend.infer(batch)
    assert backend._exec.shape_calls == [(1, 3, *SIZE)]
    np.testing.assert_allclose(maps, batch.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(scores, maps.reshape(1, -1).max(axis=1))
    assert backend._context.depth == 0  # every push popped


def test_shape_is_set_only_when_the_batch_size_changes_and_results_are_sliced_to_it():
    backend = backend_on_fakes()
    calls = backend._exec.shape_calls
    for count in (1, 1, 3, 3, 1, 4):
        batch = images(count, seed=count)
        maps, scores = backend.infer(batch)
        assert maps.shape == (count, *SIZE) and scores.shape == (count,)
        np.testing.assert_allclose(maps, batch.mean(axis=1), rtol=1e-6)
    assert [shape[0] for shape in calls] == [1, 3, 1, 4]
    assert backend._exec.runs == [1, 1, 3, 3, 1, 4]


def test_results_are_copies_that_the_next_batch_does_not_overwrite():
    backend = backend_on_fakes()
    first_maps, _ = backend.infer(images(2, seed=1))
    kept = first_maps.copy()
    backend.infer(images(2, seed=2))
    np.testing.assert_array_equal(first_maps, kept)


def test_refused_shape_names_the_tensor_and_the_next_call_sets_it_again():
    context = FakeExecutionContext({}, max_batch=2)
    binding = ShapeBinding(context, SIZE, "line1.plan")
    binding.prepare(2)
    with pytest.raises(BackendError, match=f"refused shape \\(3, 3, 8, 6\\) for tensor {INPUT_NAME}"):
        binding.prepare(3)
    assert binding.batch is None
    with pytest.raises(BackendError, match="before an input shape was set"):
        binding.execute(0)
    binding.prepare(2)  # the same size as before the refusal: set again, not assumed
    assert context.shape_calls == [(2, 3, *SIZE), (3, 3, *SIZE), (2, 3, *SIZE)]


def test_refused_tensor_address_names_the_tensor():
    with pytest.raises(BackendError, match=f"device address of tensor {INPUT_NAME}"):
        backend_on_fakes(refuse_addresses=True)


def test_output_shape_that_does_not_follow_the_batch_is_refused():
    context = FakeExecutionContext({}, max_batch=4)
    context.get_tensor_shape = lambda name: (1, *SIZE) if name == OUTPUT_NAMES[0] else (1,)
    binding = ShapeBinding(context, SIZE, "line1.plan")
    with pytest.raises(BackendError, match=f"tensor {OUTPUT_NAMES[0]} shape \\(1, 8, 6\\) for a batch of 2"):
        binding.prepare(2)


def test_failed_execution_is_a_backend_error():
    backend = backend_on_fakes()
    backend._exec.execute_async_v3 = lambda handle: False
    with pytest.raises(BackendError, match="execute_async_v3 failed on line1.plan"):
        backend.infer(images(1))
    assert backend._context.depth == 0


def test_batch_over_the_engine_maximum_and_wrong_dtype_are_refused_before_the_gpu():
    backend = backend_on_fakes(max_batch=2)
    with pytest.raises(BackendError, match="batch of 3"):
        backend.infer(images(3))
    with pytest.raises(BackendError, match="float32"):
        backend.infer(images(1).astype(np.float16))
    assert backend._exec.shape_calls == []


def test_close_frees_device_memory_and_later_infer_is_an_error():
    backend = backend_on_fakes()
    allocations = list(backend._device.values())
    backend.infer(images(1))
    backend.close()
    backend.close()
    assert all(allocation.freed for allocation in allocations) and backend._context is None
    with pytest.raises(BackendError, match="after close"):
        backend.infer(images(1))


def test_io_types_other_than_float32_are_named_without_numpy_conversion():
    # bf16 and fp8 have no numpy type: comparing TensorRT's own types cannot raise TypeError.
    assert io_type_errors({INPUT_NAME: "FLOAT", OUTPUT_NAMES[0]: "BF16", OUTPUT_NAMES[1]: "FP8"}, "FLOAT") == [
        f"tensor {OUTPUT_NAMES[0]} is BF16", f"tensor {OUTPUT_NAMES[1]} is FP8"]
