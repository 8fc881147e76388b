"""edge/backends/cuda_rt.py: the one module that calls CUDA, checked against pycuda's documented API.

pycuda cannot load without an NVIDIA driver, so `pycuda.driver` here is a stand-in with the calls and
argument orders its documentation gives (memcpy_htod_async(dest, src, stream), memcpy_dtoh_async(dest,
src, stream), Context.pop a static method, page-locked arrays whose `base` frees them, `Error` the base
of its exceptions) that records what it is asked. tests/hw runs the real one on a GPU.
"""

import ast
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from edge.backends import cuda_rt
from edge.core.errors import BackendError

ROOT = Path(__file__).resolve().parents[4]


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_every_cuda_call_of_the_runtime_and_the_engine_build_is_in_cuda_rt():
    importers = sorted(str(path.relative_to(ROOT)) for folder in ("edge", "engines") for path in (ROOT / folder).rglob("*.py")
                       if any(name.split(".")[0] in ("pycuda", "cuda") for name in imports_of(path)))
    assert importers == ["edge/backends/cuda_rt.py"]


class HostAllocation(bytearray):
    def __init__(self, size, calls):
        super().__init__(size)
        self.calls = calls

    def free(self):
        self.calls.append(("free_host",))


def fake_driver(calls: list, devices: int = 1, fail: str | None = None) -> types.ModuleType:
    driver = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    class MemoryError_(Error):
        pass

    def maybe_fail(name):
        calls.append((name,))
        if name == fail:
            raise MemoryError_("cuMemAlloc failed: out of memory")

    class Context:
        def push(self):
            maybe_fail("push")

        @staticmethod
        def pop():
            maybe_fail("pop")

        def detach(self):
            maybe_fail("detach")

    class Device:
        def __init__(self, ordinal):
            self.ordinal = ordinal

        @staticmethod
        def count():
            return devices

        def name(self):
            return "NVIDIA H200"

        def compute_capability(self):
            return (9, 0)

        def total_memory(self):
            return 150 * 2**30

        def get_attribute(self, attribute):
            return {"MULTIPROCESSOR_COUNT": 132, "CLOCK_RATE": 1_980_000}[attribute]

        def retain_primary_context(self):
            maybe_fail("retain_primary_context")
            return Context()

    class Allocation:
        def __init__(self, nbytes):
            maybe_fail("mem_alloc")
            self.nbytes = nbytes

        def __int__(self):
            return 0xD000

        def free(self):
            calls.append(("free_device",))

    class Stream:
        handle = 0x5000

        def synchronize(self):
            maybe_fail("synchronize")

    class Event:
        def record(self, stream=None):
            calls.append(("record", stream))
            return self

        def synchronize(self):
            return self

        def query(self):
            return True

        def time_since(self, other):
            return 2.5

    def pagelocked_empty(shape, dtype):
        maybe_fail("pagelocked_empty")
        return np.ndarray(shape, dtype, buffer=HostAllocation(int(np.prod(shape)) * np.dtype(dtype).itemsize, calls))

    driver.Error, driver.Device, driver.Context, driver.Stream, driver.Event = Error, Device, Context, Stream, Event
    driver.init = lambda: calls.append(("init",))
    driver.device_attribute = types.SimpleNamespace(MULTIPROCESSOR_COUNT="MULTIPROCESSOR_COUNT", CLOCK_RATE="CLOCK_RATE")
    driver.mem_alloc = Allocation
    driver.pagelocked_empty = pagelocked_empty
    driver.memcpy_htod_async = lambda dest, src, stream: calls.append(("htod", dest, src.nbytes, stream))
    driver.memcpy_dtoh_async = lambda dest, src, stream: calls.append(("dtoh", dest.nbytes, src, stream))
    return driver


@pytest.fixture
def calls(monkeypatch):
    recorded: list = []
    monkeypatch.setitem(sys.modules, "pycuda", types.ModuleType("pycuda"))
    monkeypatch.setitem(sys.modules, "pycuda.driver", fake_driver(recorded))
    sys.modules["pycuda"].driver = sys.modules["pycuda.driver"]
    return recorded


def test_device_properties_are_what_the_sidecar_identity_is_made_of(calls):
    assert cuda_rt.device_properties(0) == cuda_rt.DeviceProperties("NVIDIA H200", (9, 0), 132, 150 * 2**30, 1_980_000)


def test_a_backend_call_maps_onto_pycuda_in_order_with_its_documented_arguments(calls):
    context = cuda_rt.Context(0)
    with context.current():
        stream = cuda_rt.Stream()
        host = cuda_rt.PinnedBuffer((2, 3), np.float32)
        device = cuda_rt.DeviceBuffer(host.array.nbytes)
        cuda_rt.copy_to_device(device, host.array, stream)
        cuda_rt.copy_to_host(host.array[:1], device, stream)
        event = cuda_rt.Event()
        event.record(stream)
        stream.synchronize()
        assert event.done() and event.milliseconds_since(event) == 2.5
        device.free()
        host.free()
        host.free()  # twice: once freed, nothing more
    context.close()
    context.close()
    names = [call[0] for call in calls]
    assert names == ["init", "retain_primary_context", "push", "pagelocked_empty", "mem_alloc", "htod", "dtoh",
                     "record", "synchronize", "free_device", "free_host", "pop", "detach"]
    htod, dtoh = calls[names.index("htod")], calls[names.index("dtoh")]
    assert htod[1:3] == (0xD000, 24) and dtoh[1:3] == (12, 0xD000)  # (dest, src): device first, then host first
    assert htod[3] is dtoh[3] is stream._stream and stream.handle == 0x5000


def test_a_copy_larger_than_its_buffer_or_not_contiguous_is_refused_before_the_driver(calls):
    with cuda_rt.Context(0).current():
        device, stream = cuda_rt.DeviceBuffer(8), cuda_rt.Stream()
        with pytest.raises(cuda_rt.CudaError, match="copy of 24 bytes"):
            cuda_rt.copy_to_device(device, np.zeros(6, np.float32), stream)
        with pytest.raises(cuda_rt.CudaError, match="contiguous: False"):
            cuda_rt.copy_to_host(np.zeros((2, 2), np.float32)[:, :1], device, stream)
    assert "htod" not in [call[0] for call in calls]


def test_driver_errors_are_backend_errors_naming_the_call(monkeypatch):
    recorded: list = []
    monkeypatch.setitem(sys.modules, "pycuda", types.ModuleType("pycuda"))
    monkeypatch.setitem(sys.modules, "pycuda.driver", fake_driver(recorded, fail="mem_alloc"))
    sys.modules["pycuda"].driver = sys.modules["pycuda.driver"]
    with pytest.raises(BackendError, match="CUDA: allocating 4096 bytes of device memory failed .*out of memory") as error:
        with cuda_rt.Context(0).current():
            cuda_rt.DeviceBuffer(4096)
    assert error.value.exit_code == 70
    assert [call[0] for call in recorded][-1] == "pop"  # popped although the block failed


def test_no_device_and_no_pycuda_are_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycuda", types.ModuleType("pycuda"))
    monkeypatch.setitem(sys.modules, "pycuda.driver", fake_driver([], devices=0))
    sys.modules["pycuda"].driver = sys.modules["pycuda.driver"]
    with pytest.raises(cuda_rt.CudaError, match="no device 0 \\(0 visible\\)"):
        cuda_rt.device_properties(0)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)  # import fails as where pycuda is not installed
    with pytest.raises(cuda_rt.CudaError, match="pycuda is not installed.*DEPLOYMENT.md"):
        cuda_rt.device_properties(0)
