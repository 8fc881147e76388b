"""The TensorRT backend's real open → infer → close path, run without a GPU.

TensorRT and pycuda cannot run on a machine without an NVIDIA GPU, so the backend runs here against
tests/gpu_fakes.py: a stand-in for `edge.backends.cuda_rt` (the one module holding every CUDA call)
over a simulated device whose streams run queued copies and executions only when synchronised, and a
`tensorrt` module with the calls of TensorRT 10/11's documented Python API. They check what the
backend asks of CUDA and TensorRT and in which order, not TensorRT itself; tests/hw runs the real
thing on a GPU.
"""

import hashlib
import json
import logging
import shutil
import threading

import numpy as np
import pytest

from edge.artifacts.engine_sidecar import sidecar_path
from edge.artifacts.graph import INPUT_NAME, OUTPUT_NAMES
from edge.backends.tensorrt import ShapeBinding, TensorRTBackend, TensorRTConfig, io_type_errors
from edge.core.errors import BackendError, ModelFileError
from edge.core.logs import camera_log
from tests import gpu_fakes
from tests.gpu_fakes import ORIN_NANO_8GB, ORIN_NX_8GB, FakeCuda, SimulatedDevice, write_engine

INFER_CALLS = ["copy_to_device", "execute", "copy_to_host", "copy_to_host", "synchronize"]


@pytest.fixture
def device(monkeypatch):
    return gpu_fakes.install(monkeypatch)


@pytest.fixture
def model(tiny_model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy, ignore=shutil.ignore_patterns("*.onnx"))
    return copy


@pytest.fixture
def engine(model, device, tmp_path):
    path = tmp_path / "engines" / "line1.plan"
    write_engine(path, model, device)
    return path


def open_backend(model, engine, device, log=None, **keys) -> TensorRTBackend:
    return TensorRTBackend(model, TensorRTConfig(engine=engine, **{"max_batch": 4, **keys}), log, FakeCuda(device))


def images(model, count, seed=0):
    from edge.artifacts.model_dir import load_model_info

    size = load_model_info(model).preprocess.input_size
    return np.random.default_rng(seed).standard_normal((count, 3, *size)).astype(np.float32)


def test_open_infer_close_queues_copy_execute_copy_then_synchronises(model, engine, device):
    backend = open_backend(model, engine, device)
    opened = len(device.calls)
    batch = images(model, 2)
    maps, scores = backend.infer(batch)
    assert device.calls[opened:] == ["set_input_shape", *INFER_CALLS]
    np.testing.assert_allclose(maps, batch.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(scores, maps.reshape(2, -1).max(axis=1))
    backend.close()
    backend.close()
    assert device.calls[-1] == "release_context" and device.calls.count("release_context") == 1
    assert device.live == set(), "a buffer, stream or the context outlived close()"
    with pytest.raises(BackendError, match="after close"):
        backend.infer(batch)


def test_the_simulated_stream_shows_a_result_read_before_it_synchronised(model, engine, device):
    """What the fake catches: without the synchronise the copies have not run and the output is NaN."""
    backend = open_backend(model, engine, device)
    backend._stream.synchronize = lambda: None
    maps, scores = backend.infer(images(model, 1))
    assert np.isnan(maps).all() and np.isnan(scores).all()


def test_opened_in_one_thread_and_run_in_another_as_the_daemon_does(model, engine, device):
    backend = open_backend(model, engine, device)
    results, batch = [], images(model, 1, seed=3)
    worker = threading.Thread(target=lambda: results.append(backend.infer(batch)))
    worker.start()
    worker.join(60)
    np.testing.assert_allclose(results[0][0], batch.mean(axis=1), rtol=1e-6)
    assert device.depth() == 0  # every push popped
    backend.close()


def test_shape_is_set_only_when_the_batch_size_changes_and_results_are_sliced_to_it(model, engine, device):
    backend = open_backend(model, engine, device)
    for count in (1, 1, 3, 3, 1, 4):
        batch = images(model, count, seed=count)
        maps, scores = backend.infer(batch)
        assert maps.shape == (count, *batch.shape[2:]) and scores.shape == (count,)
        np.testing.assert_allclose(maps, batch.mean(axis=1), rtol=1e-6)
    assert [shape[0] for shape in backend._exec.shape_calls] == [1, 3, 1, 4]
    backend.close()


def test_results_are_copies_that_the_next_batch_does_not_overwrite(model, engine, device):
    backend = open_backend(model, engine, device)
    first_maps, _ = backend.infer(images(model, 2, seed=1))
    kept = first_maps.copy()
    backend.infer(images(model, 2, seed=2))
    np.testing.assert_array_equal(first_maps, kept)
    backend.close()


def test_tensorrt_log_goes_into_the_cameras_log(model, engine, device, caplog):
    with caplog.at_level(logging.INFO, logger="edge.backends"):
        open_backend(model, engine, device, camera_log("edge.backends", "line1")).close()
    assert any(record.getMessage().startswith("camera line1: TensorRT: Loaded engine size")
               and record.levelno == logging.INFO for record in caplog.records)


def test_a_missing_engine_is_named_as_missing_not_as_a_missing_sidecar(model, device, tmp_path):
    absent = tmp_path / "engines" / "absent.plan"
    with pytest.raises(ModelFileError, match=f"engine {absent} does not exist; build it with `hlgfa engine build "
                                             f"--onnx {model / 'model.fp16.onnx'} --out {absent}"):
        open_backend(model, absent, device)
    assert device.calls == []


def test_an_engine_its_sidecar_does_not_describe_is_refused(model, engine, device):
    engine.write_bytes(gpu_fakes.plan_bytes((128, 128), 4))  # rebuilt, the old sidecar left beside it
    with pytest.raises(ModelFileError, match="not the file its sidecar describes"):
        open_backend(model, engine, device)


def test_an_engine_of_another_precision_than_configured_is_refused(model, device, tmp_path):
    engine = tmp_path / "fp32.plan"
    write_engine(engine, model, device, precision="fp32")
    with pytest.raises(ModelFileError, match="backend.precision is 'fp16', the engine is 'fp32'.*rebuild with"):
        open_backend(model, engine, device)
    open_backend(model, engine, device, precision="fp32").close()


def test_an_engine_built_on_an_orin_nx_is_rebuilt_on_an_orin_nano_of_the_same_size(model, tmp_path, monkeypatch):
    engine = tmp_path / "nx.plan"
    write_engine(engine, model, SimulatedDevice(ORIN_NX_8GB))
    nano = gpu_fakes.install(monkeypatch, SimulatedDevice(ORIN_NANO_8GB))
    with pytest.raises(ModelFileError, match="gpu_sm_clock_mhz is 625 here, the engine was built for 765"):
        open_backend(model, engine, nano)


@pytest.mark.parametrize("max_batch, message", [(8, "max_batch 8 is asked for"), (4, None)])
def test_an_engine_built_for_a_smaller_batch_is_refused(model, engine, device, max_batch, message):
    if message is None:
        open_backend(model, engine, device, max_batch=max_batch).close()
        return
    with pytest.raises(ModelFileError, match=message):
        open_backend(model, engine, device, max_batch=max_batch)


def test_an_engine_tensorrt_cannot_deserialise_leaves_nothing_allocated(model, engine, device, caplog):
    data = b"\x00truncated plan"
    engine.write_bytes(data)
    sidecar = json.loads(sidecar_path(engine).read_text())
    sidecar_path(engine).write_text(json.dumps({**sidecar, "engine_sha256": hashlib.sha256(data).hexdigest()}))
    with caplog.at_level(logging.ERROR), pytest.raises(ModelFileError, match="cannot be deserialised"):
        open_backend(model, engine, device)
    assert "TensorRT: IRuntime::deserializeCudaEngine" in caplog.text
    assert device.live == set() and device.calls == ["retain_context", "release_context"]


def test_failed_execution_is_a_backend_error_and_pops_the_context(model, engine, device):
    backend = open_backend(model, engine, device)
    backend._exec.execute_async_v3 = lambda handle: False
    with pytest.raises(BackendError, match="execute_async_v3 failed on .*line1.plan"):
        backend.infer(images(model, 1))
    assert device.depth() == 0
    backend.close()


def test_batch_over_the_engine_maximum_and_wrong_dtype_are_refused_before_the_gpu(model, engine, device):
    backend = open_backend(model, engine, device, max_batch=2)
    opened = len(device.calls)
    with pytest.raises(BackendError, match="batch of 3"):
        backend.infer(images(model, 3))
    with pytest.raises(BackendError, match="float32"):
        backend.infer(images(model, 1).astype(np.float16))
    assert device.calls[opened:] == []
    backend.close()


class StandInContext:
    """IExecutionContext's shape calls only, for ShapeBinding alone."""

    def __init__(self, max_batch, size=(8, 6)):
        self.max_batch, self.size, self.shape_calls, self.input_shape = max_batch, size, [], None

    def set_input_shape(self, name, shape):
        self.shape_calls.append(tuple(shape))
        if tuple(shape[1:]) != (3, *self.size) or not 1 <= shape[0] <= self.max_batch:
            return False
        self.input_shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        batch = self.input_shape[0]
        return {OUTPUT_NAMES[0]: (batch, *self.size), OUTPUT_NAMES[1]: (batch,)}[name]

    def set_tensor_address(self, name, address):
        return False


def test_refused_shape_names_the_tensor_and_the_next_call_sets_it_again():
    context = StandInContext(max_batch=2)
    binding = ShapeBinding(context, (8, 6), "line1.plan")
    binding.prepare(2)
    with pytest.raises(BackendError, match=f"refused shape \\(3, 3, 8, 6\\) for tensor {INPUT_NAME}"):
        binding.prepare(3)
    assert binding.batch is None
    with pytest.raises(BackendError, match="before an input shape was set"):
        binding.execute(0)
    binding.prepare(2)  # the same size as before the refusal: set again, not assumed
    assert context.shape_calls == [(2, 3, 8, 6), (3, 3, 8, 6), (2, 3, 8, 6)]


def test_refused_tensor_address_names_the_tensor():
    with pytest.raises(BackendError, match=f"device address of tensor {INPUT_NAME}"):
        ShapeBinding(StandInContext(1), (8, 6), "line1.plan").bind_addresses({INPUT_NAME: 0x1000})


def test_output_shape_that_does_not_follow_the_batch_is_refused():
    context = StandInContext(max_batch=4)
    context.get_tensor_shape = lambda name: (1, 8, 6) if name == OUTPUT_NAMES[0] else (1,)
    with pytest.raises(BackendError, match=f"tensor {OUTPUT_NAMES[0]} shape \\(1, 8, 6\\) for a batch of 2"):
        ShapeBinding(context, (8, 6), "line1.plan").prepare(2)


def test_io_types_other_than_float32_are_named_without_numpy_conversion():
    # bf16 and fp8 have no numpy type: comparing TensorRT's own types cannot raise TypeError.
    assert io_type_errors({INPUT_NAME: "FLOAT", OUTPUT_NAMES[0]: "BF16", OUTPUT_NAMES[1]: "FP8"}, "FLOAT") == [
        f"tensor {OUTPUT_NAMES[0]} is BF16", f"tensor {OUTPUT_NAMES[1]} is FP8"]
