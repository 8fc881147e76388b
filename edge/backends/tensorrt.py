"""TensorRT backend: a prebuilt engine (`hlgfa engine build|ensure`), on one CUDA stream.

Page-locked host buffers and device buffers are allocated once for the largest batch and their
addresses bound to the execution context once; each batch is one H2D copy, one
`execute_async_v3`, two D2H copies and a synchronise on the backend's own stream. The input
shape is set on the context only when the batch size differs from the previous call's. Every
CUDA call goes through `edge.backends.cuda_rt` (the `cuda` argument: tests hand in a recording
stand-in); the CUDA context is current around every call, so the backend may be opened in one
thread and used from another (the daemon's inference thread).

Opening checks, in order: the engine file exists and is read, then its sidecar, which must describe
that very file (its sha256), this TensorRT and GPU, the model, a batch this large and the precision
`[backend]` names. TensorRT's own log goes through a `trt.ILogger` into the backend's log (the
camera's, in the daemon). tensorrt is imported in open(); pycuda by `cuda_rt` on first use.
"""

import hashlib
import logging
from pathlib import Path
from typing import Literal

import numpy as np

from edge.artifacts.engine_sidecar import build_command, device_identity, mismatches, read_sidecar
from edge.artifacts.graph import INPUT_NAME, OUTPUT_NAMES
from edge.artifacts.model_dir import load_model_info
from edge.backends import cuda_rt
from edge.backends.base import BackendSettings, check_batch
from edge.core.errors import BackendError, ModelFileError

log = logging.getLogger(__name__)


class TensorRTConfig(BackendSettings):
    kind: Literal["tensorrt"] = "tensorrt"
    # The engine file (`hlgfa engine build|ensure` writes it, with its sidecar NAME.json).
    engine: Path
    # The exported graph the engine is built from, and the precision that graph must have: every build
    # is strongly typed (engines/tensorrt_build.py), so the graph decides the engine's precision.
    # Default: MODEL/model.fp16.onnx for fp16, MODEL/model.onnx for fp32.
    onnx: Path | None = None
    precision: Literal["fp16", "fp32"] = "fp16"
    # Which engine the thresholds may run on. "exact": the engine file they were calibrated on (its
    # sha256). "parity": also an engine rebuilt from the same graph on the same GPU model whose sidecar
    # holds a passed `hlgfa engine parity` record for these thresholds (edge/artifacts/engine_sidecar.py).
    engine_binding: Literal["exact", "parity"] = "exact"

    def source_graph(self, model_dir) -> Path:
        from edge.artifacts.model_dir import DEFAULT_ONNX, DEFAULT_ONNX_FP16

        if self.onnx is not None:
            return Path(self.onnx)
        return Path(model_dir) / (DEFAULT_ONNX_FP16 if self.precision == "fp16" else DEFAULT_ONNX)

    def rebuild_command(self, model_dir) -> str:
        return build_command(self.source_graph(model_dir), self.engine, self.max_batch, model_dir)


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as error:
        raise BackendError(f"TensorRT is not installed ({error}); on a Jetson install JetPack's python3-libnvinfer "
                           f"and use a virtualenv made with --system-site-packages, elsewhere pip install -c "
                           f"constraints.txt '.[tensorrt-cu12]' or '.[tensorrt-cu13]' to match the driver "
                           f"(docs/DEPLOYMENT.md §1)") from error
    tensorrt_major(tensorrt.__version__)
    return tensorrt


def running_environment(trt=None, cuda=None) -> dict:
    """TensorRT version and device 0's identity, as the sidecar records them (edge/artifacts/engine_sidecar.py MATCH_KEYS)."""
    trt = trt or import_tensorrt()
    device = (cuda or cuda_rt).device_properties(0)
    return device_identity(trt.__version__, device.name, device.compute_capability, device.sm_count,
                           device.total_memory_bytes, device.sm_clock_khz)


def tensorrt_major(version: str) -> int:
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise BackendError(f"TensorRT version {version!r}: expected MAJOR.MINOR.PATCH") from None
    if major < 10:
        raise BackendError(f"TensorRT {version} is installed; hlgfa needs TensorRT 10 or later (JetPack 6.1+, "
                           f"or NVIDIA's tensorrt-cu12 / tensorrt-cu13 wheels)")
    return major


def tensorrt_logger(trt, destination):
    """A `trt.ILogger` that writes TensorRT's messages into `destination` (a logger or the camera's log
    adapter), VERBOSE as DEBUG. TensorRT keeps a reference only: the caller holds the object as long as
    the builder, runtime or engine it was given to."""
    severity = trt.ILogger.Severity
    levels = {severity.INTERNAL_ERROR: logging.CRITICAL, severity.ERROR: logging.ERROR,
              severity.WARNING: logging.WARNING, severity.INFO: logging.INFO, severity.VERBOSE: logging.DEBUG}

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)  # pybind11: the base must be initialised explicitly

        def log(self, level, message):
            destination.log(levels.get(level, logging.WARNING), "TensorRT: %s", message)

    return Logger()


def io_shapes(count: int, input_size: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """The shape of every engine tensor for a batch of `count`."""
    height, width = input_size
    return {INPUT_NAME: (count, 3, height, width), OUTPUT_NAMES[0]: (count, height, width),
            OUTPUT_NAMES[1]: (count,)}


def io_type_errors(tensor_types: dict[str, object], float32) -> list[str]:
    """Tensors whose type is not `float32` (TensorRT's DataType.FLOAT), as messages.

    Compared as TensorRT types rather than through `trt.nptype`, which raises TypeError for
    types numpy lacks (bf16, fp8) instead of letting the engine be refused cleanly.
    """
    return [f"tensor {name} is {kind}" for name, kind in tensor_types.items() if kind != float32]


def read_engine(path: Path, rebuild: str) -> tuple[bytes, dict]:
    """The engine's bytes and its sidecar, the file checked first: a missing engine is named as such,
    and a sidecar describing another file (an engine copied without its sidecar) is refused."""
    if not path.is_file():
        raise ModelFileError(f"tensorrt backend: engine {path} does not exist; build it with `{rebuild}` "
                             f"(or `hlgfa engine ensure --config FILE`)")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelFileError(f"tensorrt backend: engine {path} cannot be read ({error})") from error
    sidecar = read_sidecar(path)
    actual = hashlib.sha256(data).hexdigest()
    if sidecar.get("engine_sha256") != actual:
        raise ModelFileError(f"tensorrt backend: engine {path} is not the file its sidecar describes (sha256 "
                             f"{actual[:12]}, sidecar {str(sidecar.get('engine_sha256'))[:12]}); rebuild with "
                             f"`{rebuild}`")
    return data, sidecar


class ShapeBinding:
    """What one execution context has bound: tensor addresses once, the input shape per batch size.

    Every call TensorRT answers with a boolean is checked; a refusal is a BackendError naming the
    tensor and the engine. Holds no CUDA state, so it runs in tests against a stand-in context.
    """

    def __init__(self, context, input_size: tuple[int, int], engine_path):
        self._context = context
        self._input_size = tuple(input_size)
        self._engine_path = engine_path
        self.batch = None  # the batch size the context's input shape is set for; None: not set yet

    def bind_addresses(self, addresses: dict[str, int]) -> None:
        for name, address in addresses.items():
            if not self._context.set_tensor_address(name, address):
                raise BackendError(f"tensorrt backend: engine {self._engine_path} refused the device address "
                                   f"of tensor {name}")

    def prepare(self, count: int) -> None:
        """Make the context ready for a batch of `count` (sets the input shape only when it changes)."""
        if count == self.batch:
            return
        shapes = io_shapes(count, self._input_size)
        self.batch = None  # a refused shape leaves the context in no known state
        if not self._context.set_input_shape(INPUT_NAME, shapes[INPUT_NAME]):
            raise BackendError(f"tensorrt backend: engine {self._engine_path} refused shape "
                               f"{shapes[INPUT_NAME]} for tensor {INPUT_NAME} (outside its optimisation profile)")
        for name in OUTPUT_NAMES:
            produced = tuple(self._context.get_tensor_shape(name))
            if produced != shapes[name]:
                raise BackendError(f"tensorrt backend: engine {self._engine_path} gives tensor {name} shape "
                                   f"{produced} for a batch of {count}, expected {shapes[name]}")
        self.batch = count

    def execute(self, stream_handle: int) -> None:
        if self.batch is None:
            raise BackendError(f"tensorrt backend: engine {self._engine_path} run before an input shape was set")
        if not self._context.execute_async_v3(stream_handle):
            raise BackendError(f"tensorrt backend: execute_async_v3 failed on {self._engine_path} "
                               f"(batch {self.batch}; see the TensorRT log)")


class TensorRTBackend:
    kind = "tensorrt"

    def __init__(self, model_dir, config: TensorRTConfig, log: logging.Logger | logging.LoggerAdapter | None = None,
                 cuda=None):
        self.log = log if log is not None else logging.getLogger(__name__)
        self._cuda = cuda = cuda or cuda_rt
        trt = import_tensorrt()
        running = running_environment(trt, cuda)
        info = load_model_info(model_dir)
        path = Path(config.engine)
        rebuild = config.rebuild_command(model_dir)
        data, sidecar = read_engine(path, rebuild)
        reasons = mismatches(sidecar, {**running, "model_hash": info.model_hash}, max_batch=config.max_batch)
        if sidecar.get("precision") != config.precision:
            reasons.append(f"backend.precision is {config.precision!r}, the engine is {sidecar.get('precision')!r}")
        if reasons:
            raise ModelFileError(f"tensorrt backend: engine {path} does not fit: {'; '.join(reasons)}; "
                                 f"rebuild with `{rebuild}`")
        self.input_size = info.preprocess.input_size
        self.max_batch = config.max_batch
        self.model_hash = info.model_hash
        self.engine_path = path
        self.engine_sidecar = sidecar
        self.precision = sidecar["precision"]
        self._context = cuda.Context(0)
        opened = False
        try:
            with self._context.current():
                try:
                    self._open(trt, data, rebuild)
                    opened = True
                finally:
                    if not opened:
                        self._release()
        except RuntimeError as error:  # TensorRT's own errors; CUDA's arrive as cuda_rt.CudaError (a BackendError)
            # As a BackendError, so backend "auto" can go on to the next backend.
            raise BackendError(f"tensorrt backend: cannot load {path}: {error}") from error
        finally:
            if not opened:
                self._context.close()
                self._context = None
        self.log.info("tensorrt backend: %s (%s, batch ≤ %d, TensorRT %s on %s)", path, self.precision, self.max_batch,
                      running["tensorrt_version"], running["gpu_name"])

    def _open(self, trt, data: bytes, rebuild: str) -> None:
        path = self.engine_path
        self._trt_logger = tensorrt_logger(trt, self.log)  # held: TensorRT keeps only a reference
        self._runtime = trt.Runtime(self._trt_logger)
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise ModelFileError(f"tensorrt backend: engine {path} cannot be deserialised (truncated, or built by "
                                 f"another TensorRT); rebuild with `{rebuild}`")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        if sorted(names) != sorted((INPUT_NAME, *OUTPUT_NAMES)):
            raise ModelFileError(f"tensorrt backend: engine {path} has tensors {names}, expected "
                                 f"{[INPUT_NAME, *OUTPUT_NAMES]}; rebuild with `{rebuild}`")
        largest = io_shapes(self.max_batch, self.input_size)[INPUT_NAME]
        _, _, built_max = self._engine.get_tensor_profile_shape(INPUT_NAME, 0)
        if tuple(built_max)[1:] != largest[1:] or built_max[0] < self.max_batch:
            raise ModelFileError(f"tensorrt backend: engine {path} takes up to {tuple(built_max)}, expected "
                                 f"{largest}; rebuild with `{rebuild}`")
        wrong_types = io_type_errors({name: self._engine.get_tensor_dtype(name) for name in names},
                                     trt.DataType.FLOAT)
        if wrong_types:
            raise ModelFileError(f"tensorrt backend: engine {path}: {', '.join(wrong_types)}, expected float32 "
                                 f"I/O (the FP16 graph keeps FP32 inputs and outputs); rebuild with `{rebuild}`")
        self._exec = self._engine.create_execution_context()
        if self._exec is None:
            raise BackendError(f"tensorrt backend: no execution context for {path} (out of device memory?)")
        self._allocate()

    def _allocate(self) -> None:
        """The stream and the buffers for the largest batch, bound to the execution context once."""
        cuda = self._cuda
        self._stream = cuda.Stream()
        shapes = io_shapes(self.max_batch, self.input_size)
        self._host = {name: cuda.PinnedBuffer(shape, np.float32) for name, shape in shapes.items()}
        self._device = {name: cuda.DeviceBuffer(self._host[name].array.nbytes) for name in shapes}
        self._binding = ShapeBinding(self._exec, self.input_size, self.engine_path)
        self._binding.bind_addresses({name: buffer.address for name, buffer in self._device.items()})

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._context is None:
            raise BackendError("tensorrt backend: infer() after close()")
        batch = check_batch(batch, self.input_size, self.max_batch, self.kind)
        count = batch.shape[0]
        cuda, stream = self._cuda, self._stream
        # Slices of the leading axis of C-contiguous page-locked arrays stay contiguous and pinned.
        images, maps, scores = (self._host[name].array[:count] for name in (INPUT_NAME, *OUTPUT_NAMES))
        with self._context.current():
            self._binding.prepare(count)
            images[...] = batch  # before the copy is queued: the stream reads the page-locked buffer later
            cuda.copy_to_device(self._device[INPUT_NAME], images, stream)
            self._binding.execute(stream.handle)
            cuda.copy_to_host(maps, self._device[OUTPUT_NAMES[0]], stream)
            cuda.copy_to_host(scores, self._device[OUTPUT_NAMES[1]], stream)
            stream.synchronize()
        # Copies: the next batch overwrites the page-locked buffers.
        return maps.copy(), scores.copy()

    def warmup(self) -> None:
        self.infer(np.zeros((1, 3) + self.input_size, dtype=np.float32))

    def _release(self) -> None:
        """Drop TensorRT's objects and free the buffers; the context must be current."""
        for name in ("_binding", "_exec", "_engine", "_runtime"):
            setattr(self, name, None)
        for buffer in (*getattr(self, "_device", {}).values(), *getattr(self, "_host", {}).values()):
            buffer.free()
        self._device = {}
        self._host = {}
        self._stream = None

    def close(self) -> None:
        context = getattr(self, "_context", None)
        if context is None:
            return
        try:
            with context.current():
                self._release()
        finally:
            self._context = None
            context.close()
