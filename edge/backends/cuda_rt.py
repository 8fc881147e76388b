"""Every CUDA call of the TensorRT backend and the engine build, on pycuda.

The device's identity, its primary context, a stream, page-locked host buffers, device buffers,
asynchronous copies and events: nothing else in hlgfa calls CUDA. The backend gets this module as
an argument (`TensorRTBackend(..., cuda=...)`), so its tests hand it a stand-in with the same names
that records the order of calls and runs the queued copies only when the stream is synchronised,
as a GPU does; a backend that reads its output before the copy has run then fails a test.

pycuda is imported on first use, never at import: the CLI imports the modules that import this one
on machines without a GPU. Every pycuda error leaves this module as a `CudaError` (a BackendError,
exit 70) naming what was asked of the driver.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy as np

from edge.core.errors import BackendError


class CudaError(BackendError):
    """A CUDA driver call failed: no device, out of device or page-locked memory, a failed copy."""


class DeviceProperties(NamedTuple):
    name: str
    compute_capability: tuple[int, int]
    sm_count: int
    total_memory_bytes: int
    sm_clock_khz: int  # the SM clock the driver reports (CU_DEVICE_ATTRIBUTE_CLOCK_RATE)


def _driver():
    try:
        import pycuda.driver as driver
    except ImportError as error:
        raise CudaError(f"pycuda is not installed ({error}); install it as docs/DEPLOYMENT.md §1 says") from error
    return driver


@contextlib.contextmanager
def _calling(what: str):
    """pycuda's errors (pycuda.driver.Error and its subclasses) as a CudaError naming the call."""
    driver = _driver()
    try:
        yield driver
    except driver.Error as error:
        raise CudaError(f"CUDA: {what} failed ({error})") from error


def _initialised_device(driver, ordinal: int):
    driver.init()
    if driver.Device.count() <= ordinal:
        raise CudaError(f"CUDA: no device {ordinal} ({driver.Device.count()} visible)")
    return driver.Device(ordinal)


def device_properties(ordinal: int = 0) -> DeviceProperties:
    """What tells one GPU model from another (edge/artifacts/engine_sidecar.py device_identity)."""
    with _calling(f"querying device {ordinal}") as driver:
        device = _initialised_device(driver, ordinal)
        attribute = driver.device_attribute
        return DeviceProperties(device.name(), tuple(device.compute_capability()),
                                int(device.get_attribute(attribute.MULTIPROCESSOR_COUNT)), int(device.total_memory()),
                                int(device.get_attribute(attribute.CLOCK_RATE)))


class Context:
    """The primary context of a device, retained from open until `close()`.

    pycuda keeps a stack of current contexts per thread: `with context.current():` pushes it for the
    block, so the backend may be opened in one thread and used from another (the daemon's inference
    thread). Every buffer and stream below is made and released inside such a block.
    """

    def __init__(self, ordinal: int = 0):
        with _calling(f"retaining the primary context of device {ordinal}") as driver:
            self._context = _initialised_device(driver, ordinal).retain_primary_context()

    @contextlib.contextmanager
    def current(self):
        with _calling("pushing the context"):
            self._context.push()
        try:
            yield self
        finally:
            with _calling("popping the context") as driver:
                driver.Context.pop()

    def close(self) -> None:
        """Release the primary context (once every buffer made in it is freed)."""
        if self._context is not None:
            with _calling("releasing the primary context"):
                self._context.detach()
            self._context = None


class Stream:
    """A CUDA stream: copies and the engine's kernels queued on it run in order, after the host moves on."""

    def __init__(self):
        with _calling("creating a stream") as driver:
            self._stream = driver.Stream()

    @property
    def handle(self) -> int:
        """The address of the CUstream, what `IExecutionContext.execute_async_v3` takes."""
        return int(self._stream.handle)

    def synchronize(self) -> None:
        with _calling("waiting for the stream"):
            self._stream.synchronize()


class PinnedBuffer:
    """A page-locked host array: the only host memory an asynchronous copy may read or write."""

    def __init__(self, shape: tuple[int, ...], dtype=np.float32):
        with _calling(f"allocating {int(np.prod(shape)) * np.dtype(dtype).itemsize} bytes of page-locked memory") \
                as driver:
            self.array = driver.pagelocked_empty(shape, dtype)

    def free(self) -> None:
        if self.array is not None:
            with _calling("freeing page-locked memory"):
                self.array.base.free()
            self.array = None


class DeviceBuffer:
    """Device memory, bound to the engine by its address."""

    def __init__(self, nbytes: int):
        with _calling(f"allocating {nbytes} bytes of device memory") as driver:
            self._allocation = driver.mem_alloc(nbytes)
        self.nbytes = nbytes
        self.address = int(self._allocation)

    def free(self) -> None:
        if self._allocation is not None:
            with _calling("freeing device memory"):
                self._allocation.free()
            self._allocation = None


def copy_to_device(device: DeviceBuffer, host: np.ndarray, stream: Stream) -> None:
    """Queue host → device; `host` must be page-locked and C-contiguous, and stay unchanged until the stream
    has passed the copy."""
    if not host.flags.c_contiguous or host.nbytes > device.nbytes:
        raise CudaError(f"CUDA: copy of {host.nbytes} bytes (contiguous: {host.flags.c_contiguous}) into a "
                        f"{device.nbytes}-byte device buffer")
    with _calling(f"queueing a {host.nbytes}-byte copy to the device") as driver:
        driver.memcpy_htod_async(device.address, host, stream._stream)


def copy_to_host(host: np.ndarray, device: DeviceBuffer, stream: Stream) -> None:
    """Queue device → host; `host` holds the data only once the stream is synchronised."""
    if not host.flags.c_contiguous or host.nbytes > device.nbytes:
        raise CudaError(f"CUDA: copy of {host.nbytes} bytes (contiguous: {host.flags.c_contiguous}) out of a "
                        f"{device.nbytes}-byte device buffer")
    with _calling(f"queueing a {host.nbytes}-byte copy to the host") as driver:
        driver.memcpy_dtoh_async(host, device.address, stream._stream)


class Event:
    """A marker in a stream: `record` queues it, `synchronize` waits until the stream has passed it."""

    def __init__(self):
        with _calling("creating an event") as driver:
            self._event = driver.Event()

    def record(self, stream: Stream) -> None:
        with _calling("recording an event"):
            self._event.record(stream._stream)

    def synchronize(self) -> None:
        with _calling("waiting for an event"):
            self._event.synchronize()

    def done(self) -> bool:
        with _calling("querying an event"):
            return bool(self._event.query())

    def milliseconds_since(self, start: "Event") -> float:
        """GPU time from `start` to this event, both recorded and passed."""
        with _calling("timing between events"):
            return float(self._event.time_since(start._event))
