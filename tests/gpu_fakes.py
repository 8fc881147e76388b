"""Stand-ins for the GPU side of the TensorRT path, for tests on machines without an NVIDIA GPU.

`FakeCuda` has the names of `edge.backends.cuda_rt` (what the backend gets as `cuda=`, or finds as
`edge.backends.tensorrt.cuda_rt`) over a simulated device that behaves as a GPU does where the
backend could get it wrong:

- work queued on a stream (copies, the engine's execution) runs only when the stream is
  synchronised, in the order it was queued, and reads its source then: a result read before the
  synchronise is the buffer's old content (page-locked buffers start as NaN), an input written after
  its copy was queued is what the engine sees;
- every call needs the context current on the calling thread (pycuda keeps a context stack per
  thread), so a call outside `with context.current():` is a CudaError;
- every call is recorded (`device.calls`), and `device.live` holds the buffers not freed yet.

`fake_tensorrt(device)` is a module with the names of `tensorrt` the backend and the engine build
use, as TensorRT 10's and 11's Python API documents them: `ILogger` (with `Severity`), `Runtime`,
`deserialize_cuda_engine`, the engine's and execution context's tensor calls answering booleans,
`execute_async_v3` queueing on the stream whose handle it gets; and the builder: `Builder`,
`create_network(flags)`, `OnnxParser`, the builder config with its timing cache, optimisation
profiles. A "plan" is `PLAN_MAGIC` + JSON: its input size, largest batch and a gain; the engine maps
an image to `gain ×` its channel mean (the anomaly map) and the map's maximum (the score), so a
result shows which input and which engine it came from. A build writes a plan with a fresh build id,
as TensorRT's timed tactics make two builds of one graph differ byte for byte.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import json
import threading
import time
import types
import uuid
from pathlib import Path

import numpy as np

from edge.artifacts.graph import INPUT_NAME, OUTPUT_NAMES
from edge.backends.cuda_rt import CudaError, DeviceProperties

PLAN_MAGIC = b"FAKEPLAN"
GIB = 2**30
# Illustrative modules: Orin NX 8 GB and Orin Nano 8 GB have the same name, compute capability, SM count and
# memory (NVIDIA's module data sheets: 1024 CUDA cores, 8 GB); their GPUs clock differently.
ORIN_NX_8GB = DeviceProperties("Orin", (8, 7), 8, int(7.4 * GIB), 765_000)
ORIN_NANO_8GB = DeviceProperties("Orin", (8, 7), 8, int(7.4 * GIB), 625_000)


def plan_bytes(input_size: tuple[int, int], max_batch: int, gain: float = 1.0, build: str | None = None) -> bytes:
    return PLAN_MAGIC + json.dumps({"input_size": list(input_size), "max_batch": max_batch, "gain": gain,
                                    "build": build or uuid.uuid4().hex}).encode()


class SimulatedDevice:
    def __init__(self, properties: DeviceProperties = ORIN_NX_8GB):
        self.properties = properties
        self.memory: dict[int, np.ndarray] = {}  # address → float32 words
        self.queues: dict[int, list] = {}  # stream handle → queued work
        self.calls: list[str] = []
        self.live: set = set()  # buffers, streams and contexts not released
        self._addresses = itertools.count(0x10000, 0x10000)
        self._handles = itertools.count(0x7000)
        self._depth = threading.local()

    def depth(self) -> int:
        return getattr(self._depth, "value", 0)

    def require_context(self, what: str) -> None:
        if self.depth() == 0:
            raise CudaError(f"CUDA: {what} failed (invalid device context: none current on this thread)")

    def new_address(self) -> int:
        return next(self._addresses)

    def enqueue(self, handle: int, name: str, work) -> None:
        if handle not in self.queues:
            raise CudaError(f"CUDA: {name} on an unknown stream {handle:#x}")
        self.calls.append(name)
        self.queues[handle].append(work)


class FakeCuda:
    """`edge.backends.cuda_rt` over a SimulatedDevice (module docstring)."""

    CudaError = CudaError
    DeviceProperties = DeviceProperties

    def __init__(self, device: SimulatedDevice | None = None):
        self.device = device or SimulatedDevice()

    def device_properties(self, ordinal: int = 0) -> DeviceProperties:
        if ordinal != 0:
            raise CudaError(f"CUDA: no device {ordinal} (1 visible)")
        return self.device.properties

    def Context(self, ordinal: int = 0):  # noqa: N802 - the name of the class it stands in for
        return _Context(self.device)

    def Stream(self):  # noqa: N802
        return _Stream(self.device)

    def PinnedBuffer(self, shape, dtype=np.float32):  # noqa: N802
        return _PinnedBuffer(self.device, shape, dtype)

    def DeviceBuffer(self, nbytes: int):  # noqa: N802
        return _DeviceBuffer(self.device, nbytes)

    def Event(self):  # noqa: N802
        return _Event(self.device)

    def copy_to_device(self, device_buffer, host: np.ndarray, stream) -> None:
        sim = self.device
        sim.require_context("copy to the device")
        if not host.flags.c_contiguous or device_buffer.words is None or host.size > device_buffer.words.size:
            raise CudaError("CUDA: copy to the device: not contiguous, freed, or larger than the buffer")
        words = device_buffer.words

        def run():  # reads the host buffer when the stream gets there, as a DMA does
            words[:host.size] = host.ravel()
        sim.enqueue(stream.handle, "copy_to_device", run)

    def copy_to_host(self, host: np.ndarray, device_buffer, stream) -> None:
        sim = self.device
        sim.require_context("copy to the host")
        if not host.flags.c_contiguous or device_buffer.words is None or host.size > device_buffer.words.size:
            raise CudaError("CUDA: copy to the host: not contiguous, freed, or larger than the buffer")
        words = device_buffer.words

        def run():
            host[...] = words[:host.size].reshape(host.shape)
        sim.enqueue(stream.handle, "copy_to_host", run)


class _Context:
    def __init__(self, device: SimulatedDevice):
        self.device = device
        device.calls.append("retain_context")
        device.live.add(self)

    @contextlib.contextmanager
    def current(self):
        if self not in self.device.live:
            raise CudaError("CUDA: pushing the context failed (context released)")
        local = self.device._depth
        local.value = getattr(local, "value", 0) + 1
        try:
            yield self
        finally:
            local.value -= 1

    def close(self) -> None:
        self.device.calls.append("release_context")
        self.device.live.discard(self)


class _Stream:
    def __init__(self, device: SimulatedDevice):
        device.require_context("creating a stream")
        self.device = device
        self.handle = next(device._handles)
        device.queues[self.handle] = []

    def synchronize(self) -> None:
        self.device.require_context("waiting for the stream")
        self.device.calls.append("synchronize")
        queue = self.device.queues[self.handle]
        while queue:
            queue.pop(0)()


class _PinnedBuffer:
    def __init__(self, device: SimulatedDevice, shape, dtype):
        device.require_context("allocating page-locked memory")
        self.device = device
        self.array = np.full(shape, np.nan, dtype)
        device.live.add(self)

    def free(self) -> None:
        self.device.require_context("freeing page-locked memory")
        self.array = None
        self.device.live.discard(self)


class _DeviceBuffer:
    def __init__(self, device: SimulatedDevice, nbytes: int):
        device.require_context("allocating device memory")
        self.device = device
        self.nbytes = nbytes
        self.address = device.new_address()
        self.words = device.memory[self.address] = np.full(nbytes // 4, np.nan, np.float32)
        device.live.add(self)

    def free(self) -> None:
        self.device.require_context("freeing device memory")
        del self.device.memory[self.address]
        self.words = None
        self.device.live.discard(self)


class _Event:
    """Passed when the stream runs past it; its time is the host's clock then (the simulated device
    works at synchronize), which keeps intervals positive and in order."""

    def __init__(self, device: SimulatedDevice):
        self.device = device
        self.passed_at = None
        self.stream = None

    def record(self, stream) -> None:
        self.passed_at, self.stream = None, stream
        self.device.enqueue(stream.handle, "record_event", lambda: setattr(self, "passed_at", time.perf_counter()))

    def synchronize(self) -> None:
        if self.passed_at is None and self.stream is not None:
            self.stream.synchronize()
        if self.passed_at is None:
            raise CudaError("CUDA: waiting for an event that was never recorded")

    def done(self) -> bool:
        return self.passed_at is not None

    def milliseconds_since(self, start) -> float:
        if self.passed_at is None or start.passed_at is None:
            raise CudaError("CUDA: timing between events failed (invalid value: an event not passed yet)")
        return max((self.passed_at - start.passed_at) * 1000, 1e-6)


# ---- tensorrt -------------------------------------------------------------------------------------

class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = Severity

    def __init__(self):
        pass

    def log(self, severity, msg):
        raise NotImplementedError


class DataType(enum.Enum):
    FLOAT = "FLOAT"
    HALF = "HALF"


class _ExecutionContext:
    def __init__(self, device: SimulatedDevice, plan: dict):
        self.device, self.plan = device, plan
        self.addresses: dict[str, int] = {}
        self.input_shape = None
        self.shape_calls: list[tuple] = []

    def set_tensor_address(self, name, address):
        if name not in (INPUT_NAME, *OUTPUT_NAMES):
            return False
        self.addresses[name] = int(address)
        return True

    def set_input_shape(self, name, shape):
        self.shape_calls.append(tuple(shape))
        self.device.calls.append("set_input_shape")
        height, width = self.plan["input_size"]
        if name != INPUT_NAME or tuple(shape[1:]) != (3, height, width) or not 1 <= shape[0] <= self.plan["max_batch"]:
            return False
        self.input_shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        batch = self.input_shape[0] if self.input_shape else -1
        height, width = self.plan["input_size"]
        return {INPUT_NAME: (batch, 3, height, width), OUTPUT_NAMES[0]: (batch, height, width),
                OUTPUT_NAMES[1]: (batch,)}[name]

    def execute_async_v3(self, stream_handle):
        if self.input_shape is None or set(self.addresses) != {INPUT_NAME, *OUTPUT_NAMES}:
            return False
        count, _, height, width = self.input_shape
        memory, addresses, gain = self.device.memory, dict(self.addresses), self.plan["gain"]

        def run():
            images = memory[addresses[INPUT_NAME]][:count * 3 * height * width].reshape(count, 3, height, width)
            maps = gain * images.mean(axis=1)
            memory[addresses[OUTPUT_NAMES[0]]][:maps.size] = maps.ravel()
            memory[addresses[OUTPUT_NAMES[1]]][:count] = maps.reshape(count, -1).max(axis=1)
        self.device.enqueue(stream_handle, "execute", run)
        return True


class _Engine:
    def __init__(self, device: SimulatedDevice, plan: dict):
        self.device, self.plan = device, plan
        self.num_io_tensors = 3
        self.contexts: list[_ExecutionContext] = []

    def get_tensor_name(self, index):
        return (INPUT_NAME, *OUTPUT_NAMES)[index]

    def get_tensor_profile_shape(self, name, profile):
        height, width = self.plan["input_size"]
        return [(1, 3, height, width), (1, 3, height, width), (self.plan["max_batch"], 3, height, width)]

    def get_tensor_dtype(self, name):
        return DataType.FLOAT

    def create_execution_context(self):
        self.device.require_context("creating an execution context")
        context = _ExecutionContext(self.device, self.plan)
        self.contexts.append(context)
        return context


class _Runtime:
    def __init__(self, device: SimulatedDevice, logger):
        if not isinstance(logger, ILogger):
            raise TypeError("Runtime(logger): expected a tensorrt.ILogger")
        self.device, self.logger = device, logger

    def deserialize_cuda_engine(self, data):
        self.device.require_context("deserialising an engine")
        data = bytes(data)
        if not data.startswith(PLAN_MAGIC):
            self.logger.log(Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                                            "(Serialization assertion magicTagRead == kMAGIC_TAG failed.)")
            return None
        self.logger.log(Severity.INFO, f"Loaded engine size: {len(data)} bytes")
        return _Engine(self.device, json.loads(data[len(PLAN_MAGIC):]))


class _Network:
    def __init__(self, flags):
        self.flags = flags


class _Parser:
    def __init__(self, network, logger):
        self.network, self.logger = network, logger
        self.num_errors = 0

    def parse_from_file(self, path):
        self.network.parsed = str(path)
        return True


class _Profile:
    def set_shape(self, name, minimum, optimum, maximum):
        self.shapes = {"name": name, "min": tuple(minimum), "opt": tuple(optimum), "max": tuple(maximum)}


class _TimingCache:
    def __init__(self, data: bytes):
        self.data = data

    def serialize(self):
        return b"timing cache" + self.data


class _BuilderConfig:
    def __init__(self):
        self.flags: list = []  # set_flag calls: a strongly typed build makes none
        self.memory_limits: dict = {}
        self.profiles: list[_Profile] = []
        self.cache = None

    def set_memory_pool_limit(self, pool, size):
        self.memory_limits[pool] = size

    def set_flag(self, flag):
        self.flags.append(flag)

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data):
        return _TimingCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


class _Builder:
    def __init__(self, module, logger):
        if not isinstance(logger, ILogger):
            raise TypeError("Builder(logger): expected a tensorrt.ILogger")
        self.module, self.logger = module, logger

    def create_network(self, flags=0):
        self.module.networks.append(_Network(flags))
        return self.module.networks[-1]

    def create_builder_config(self):
        self.module.configs.append(_BuilderConfig())
        return self.module.configs[-1]

    def create_optimization_profile(self):
        return _Profile()

    def build_serialized_network(self, network, config):
        shapes = config.profiles[0].shapes
        _, _, height, width = shapes["max"]
        self.logger.log(Severity.INFO, f"building {network.parsed}")
        return plan_bytes((height, width), shapes["max"][0])


def fake_tensorrt(device: SimulatedDevice, version: str = "10.3.0") -> types.ModuleType:
    """A `tensorrt` module (module docstring); `networks` and `configs` hold what its builders made."""
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    module.ILogger = ILogger
    module.DataType = DataType
    module.Runtime = lambda logger: _Runtime(device, logger)
    module.Builder = lambda logger: _Builder(module, logger)
    module.OnnxParser = _Parser
    module.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    module.BuilderFlag = enum.Enum("BuilderFlag", "FP16 BF16 INT8")  # what a strongly typed build never sets
    module.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    module.networks, module.configs = [], []
    return module


def install(monkeypatch, device: SimulatedDevice | None = None, version: str = "10.3.0") -> SimulatedDevice:
    """Make `import tensorrt` and the TensorRT backend's CUDA module the stand-ins, for this test."""
    import sys

    import edge.backends.tensorrt

    device = device or SimulatedDevice()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(device, version))
    monkeypatch.setattr(edge.backends.tensorrt, "cuda_rt", FakeCuda(device))
    return device


def write_engine(path, model_dir, device: SimulatedDevice, *, max_batch: int = 4, precision: str = "fp16",
                 gain: float = 1.0, version: str = "10.3.0", **sidecar) -> dict:
    """A plan for `model_dir`'s input size and its sidecar as `hlgfa engine build` writes it on `device`
    (keys in `sidecar` replace the built ones). Returns the sidecar."""
    import hashlib

    from edge.artifacts.engine_sidecar import device_identity, write_sidecar
    from edge.artifacts.model_dir import load_model_info

    path = Path(path)
    info = load_model_info(model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(plan_bytes(info.preprocess.input_size, max_batch, gain))
    properties = device.properties
    data = {**device_identity(version, properties.name, properties.compute_capability, properties.sm_count,
                              properties.total_memory_bytes, properties.sm_clock_khz),
            "model_hash": info.model_hash, "max_batch": max_batch, "precision": precision,
            "onnx_sha256": "a" * 64, "engine_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), **sidecar}
    write_sidecar(path, data)
    return data


def graph_file(path, model_dir, precision: str, max_batch: int = 4) -> Path:
    """An ONNX file carrying what `hlgfa export` writes into its metadata. The stand-in builder does not read
    the graph itself, so it holds one Identity node; the file's sha256 is what the sidecar must record."""
    import onnx
    from onnx import TensorProto, helper

    from edge.artifacts.graph import META_INPUT_SIZE, META_MAX_BATCH, META_MODEL_HASH, META_PRECISION
    from edge.artifacts.model_dir import load_model_info

    path = Path(path)
    info = load_model_info(model_dir)
    height, width = info.preprocess.input_size
    tensor = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, height, width])
    result = helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", 3, height, width])
    proto = helper.make_model(helper.make_graph([helper.make_node("Identity", ["images"], ["anomaly_map"])],
                                                precision, [tensor], [result]))
    for key, value in {META_MODEL_HASH: info.model_hash, META_INPUT_SIZE: f"{height}x{width}",
                       META_PRECISION: precision, META_MAX_BATCH: str(max_batch)}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path
