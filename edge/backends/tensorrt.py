"""TensorRT backend: a prebuilt engine (`hlgfa engine build`), pycuda buffers, one stream.

Page-locked host buffers and device buffers are allocated once for the largest batch, their
addresses bound to the execution context once; each batch is one H2D copy, one
`execute_async_v3`, two D2H copies and a synchronise on the backend's own stream. Batch 1 (the
usual line case) can be replayed as a captured CUDA graph, which removes the per-layer launch
overhead that dominates small engines.

The CUDA context is pushed around every call, so the backend may be opened in one thread and
used from another (the daemon's inference thread). tensorrt and pycuda are imported in open().
"""

import logging
from pathlib import Path

import numpy as np

from edge.backends.base import check_batch
from edge.errors import BackendError, ModelFileError
from edge.model_dir import load_model_info

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("anomaly_map", "score")
OPTIONS = frozenset({"engine", "max_batch"})


class TensorRTBackend:
    kind = "tensorrt"

    def __init__(self, model_dir, engine=None, max_batch: int = 1, cuda_graph: bool = True, **_):
        from engines.sidecar import mismatches, read_sidecar
        from engines.tensorrt_build import import_tensorrt, running_environment

        trt = import_tensorrt()
        running = running_environment(trt)
        import pycuda.driver as cuda

        info = load_model_info(model_dir)
        if engine is None:
            raise BackendError("tensorrt backend: no engine file given (backend.engine / --engine); "
                               f"build one with `hlgfa engine build --onnx ONNX --out ENGINE --model {model_dir}`")
        path = Path(engine)
        sidecar = read_sidecar(path)
        rebuild = sidecar.get("rebuild") or f"hlgfa engine build --onnx ONNX --out {path} --model {model_dir}"
        if not path.is_file():
            raise ModelFileError(f"tensorrt backend: engine {path} does not exist; rebuild with `{rebuild}`")
        reasons = mismatches(sidecar, {**running, "model_hash": info.model_hash}, max_batch=max_batch)
        if reasons:
            raise ModelFileError(f"tensorrt backend: engine {path} does not fit: {'; '.join(reasons)}; "
                                 f"rebuild with `{rebuild}`")
        self._cuda = cuda
        self.input_size = info.preprocess.input_size
        self.max_batch = max_batch
        self.model_hash = info.model_hash
        self.engine_path = path
        self.precision = sidecar.get("precision")
        self._context = cuda.Device(0).retain_primary_context()
        self._context.push()
        try:
            self._open(trt, path, rebuild, cuda_graph)
        except Exception:
            self._release()
            raise
        finally:
            self._context.pop()
        log.info("tensorrt backend: %s (%s, batch ≤ %d, TensorRT %s on %s)", path, self.precision, max_batch,
                 running["tensorrt_version"], running["gpu_name"])

    def _open(self, trt, path: Path, rebuild: str, cuda_graph: bool) -> None:
        cuda = self._cuda
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise ModelFileError(f"tensorrt backend: engine {path} cannot be deserialised (truncated, or built by "
                                 f"another TensorRT); rebuild with `{rebuild}`")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        if sorted(names) != sorted((INPUT_NAME, *OUTPUT_NAMES)):
            raise ModelFileError(f"tensorrt backend: engine {path} has tensors {names}, expected "
                                 f"{[INPUT_NAME, *OUTPUT_NAMES]}; rebuild with `{rebuild}`")
        height, width = self.input_size
        _, _, largest = self._engine.get_tensor_profile_shape(INPUT_NAME, 0)
        if tuple(largest)[1:] != (3, height, width) or largest[0] < self.max_batch:
            raise ModelFileError(f"tensorrt backend: engine {path} takes up to {tuple(largest)}, expected "
                                 f"({self.max_batch}, 3, {height}, {width}); rebuild with `{rebuild}`")
        for name in names:
            if trt.nptype(self._engine.get_tensor_dtype(name)) != np.float32:
                raise ModelFileError(f"tensorrt backend: engine {path} tensor {name} is "
                                     f"{self._engine.get_tensor_dtype(name)}, expected float32 I/O")
        self._exec = self._engine.create_execution_context()
        self._stream = cuda.Stream()
        shapes = {INPUT_NAME: (self.max_batch, 3, height, width), OUTPUT_NAMES[0]: (self.max_batch, height, width),
                  OUTPUT_NAMES[1]: (self.max_batch,)}
        self._host = {name: cuda.pagelocked_empty(shape, np.float32) for name, shape in shapes.items()}
        self._device = {name: cuda.mem_alloc(self._host[name].nbytes) for name in shapes}
        for name in shapes:
            self._exec.set_tensor_address(name, int(self._device[name]))
        self._graph = None
        self._graph_exec = None
        if cuda_graph:
            self._capture_batch1_graph()

    def _enqueue(self, count: int) -> None:
        cuda, stream = self._cuda, self._stream
        cuda.memcpy_htod_async(self._device[INPUT_NAME], self._host[INPUT_NAME][:count], stream)
        if not self._exec.execute_async_v3(stream.handle):
            raise BackendError(f"tensorrt backend: execute_async_v3 failed on {self.engine_path}")
        # Slices of the leading axis of C-contiguous page-locked arrays stay contiguous and pinned.
        cuda.memcpy_dtoh_async(self._host[OUTPUT_NAMES[0]][:count], self._device[OUTPUT_NAMES[0]], stream)
        cuda.memcpy_dtoh_async(self._host[OUTPUT_NAMES[1]][:count], self._device[OUTPUT_NAMES[1]], stream)

    def _capture_batch1_graph(self) -> None:
        """Capture copy-in, inference and copy-out of batch 1 once; replay it for every single frame."""
        cuda = self._cuda
        capturing = False
        try:
            self._exec.set_input_shape(INPUT_NAME, (1, 3) + self.input_size)
            self._enqueue(1)  # TensorRT must see the shape once outside capture
            self._stream.synchronize()
            self._stream.begin_capture()
            capturing = True
            self._enqueue(1)
            self._graph = self._stream.end_capture()
            capturing = False
            self._graph_exec = self._graph.instance()
        except (AttributeError, TypeError, cuda.Error, BackendError) as error:
            # Older pycuda lacks stream capture; the plain path gives the same answers, a little slower.
            log.warning("tensorrt backend: CUDA graph for batch 1 not available (%s); using plain launches", error)
            if capturing:
                try:
                    self._stream.end_capture()
                except Exception:  # the capture is discarded either way
                    pass
            self._graph = self._graph_exec = None
            self._stream.synchronize()
        self._current_batch = 1

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if getattr(self, "_exec", None) is None:
            raise BackendError("tensorrt backend: infer() after close()")
        batch = check_batch(batch, self.input_size, self.max_batch, self.kind)
        count = batch.shape[0]
        self._context.push()
        try:
            self._host[INPUT_NAME][:count] = batch
            if count == 1 and self._graph_exec is not None:
                if self._current_batch != 1:
                    self._exec.set_input_shape(INPUT_NAME, (1, 3) + self.input_size)
                    self._current_batch = 1
                self._graph_exec.launch(self._stream)
            else:
                if count != self._current_batch:
                    if not self._exec.set_input_shape(INPUT_NAME, (count, 3) + self.input_size):
                        raise BackendError(f"tensorrt backend: engine {self.engine_path} refused batch {count}")
                    self._current_batch = count
                self._enqueue(count)
            self._stream.synchronize()
        except self._cuda.Error as error:
            raise BackendError(f"tensorrt backend: CUDA error during inference: {error}") from error
        finally:
            self._context.pop()
        return self._host[OUTPUT_NAMES[0]][:count].copy(), self._host[OUTPUT_NAMES[1]][:count].copy()

    def warmup(self) -> None:
        self.infer(np.zeros((1, 3) + self.input_size, dtype=np.float32))

    def _release(self) -> None:
        for name in ("_graph_exec", "_graph", "_exec", "_engine", "_runtime"):
            setattr(self, name, None)
        for allocation in getattr(self, "_device", {}).values():
            allocation.free()
        self._device = {}
        self._host = {}
        self._stream = None

    def close(self) -> None:
        context = getattr(self, "_context", None)
        if context is None:
            return
        context.push()
        try:
            self._release()
        finally:
            context.pop()
            context.detach()
            self._context = None


def open(model_dir, **options) -> TensorRTBackend:  # noqa: A001 - the backend registry's entry point
    return TensorRTBackend(model_dir, **options)
