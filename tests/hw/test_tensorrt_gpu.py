"""TensorRT engine build and backend on a real GPU; skipped with a reason where there is none.

Runs where the documented GPU install runs (docs/DEPLOYMENT.md): TensorRT, pycuda and
onnxruntime, no torch. The model and images come from

    HLGFA_GPU_MODEL=DIR   a model directory holding model.onnx and model.fp16.onnx
    HLGFA_GPU_IMAGES=DIR  8 or more real part images (the first 16 in name order are used)

(a Jetson: export both graphs where torch is installed and copy them over), or, where torch and
the dev extras are installed, from the session's tiny model exported here and 16 ELPV cells.
The reference is ONNX Runtime running the FP32 graph on the CPU, with the FP16 tolerances of
engines/gpu_check.py (documented there).
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from engines.gpu_check import load_batch, parity, parity_failures, run_in_batches

pytestmark = pytest.mark.gpu
MAX_BATCH = 4


@pytest.fixture(scope="module")
def gpu():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (GPU boxes only)")
    cuda = pytest.importorskip("pycuda.driver", reason="pycuda is not installed (GPU boxes only)")
    pytest.importorskip("onnxruntime", reason="onnxruntime is the reference; install the onnx extra")
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            pytest.skip("no CUDA device")
    except cuda.Error as error:
        pytest.skip(f"no usable CUDA device ({error})")


@pytest.fixture(scope="module")
def inputs(gpu, request, tmp_path_factory) -> tuple[Path, Path]:
    """(model directory with both graphs, image folder), copied so the engines land beside nothing shared."""
    folder = tmp_path_factory.mktemp("trt")
    model = folder / "model"
    if os.environ.get("HLGFA_GPU_MODEL"):
        if not os.environ.get("HLGFA_GPU_IMAGES"):
            pytest.fail("HLGFA_GPU_MODEL is set but HLGFA_GPU_IMAGES is not: give a folder of 8+ part images")
        shutil.copytree(os.environ["HLGFA_GPU_MODEL"], model)
        return model, Path(os.environ["HLGFA_GPU_IMAGES"])
    try:
        import torch  # noqa: F401
    except ImportError:
        pytest.skip("no torch to train and export a model here: set HLGFA_GPU_MODEL and HLGFA_GPU_IMAGES")
    from engines.export import export_onnx

    shutil.copytree(request.getfixturevalue("tiny_model_dir"), model)
    export_onnx(model, max_batch=MAX_BATCH)
    export_onnx(model, model / "model.fp16.onnx", fp16=True, max_batch=MAX_BATCH)
    elpv = request.getfixturevalue("elpv_images")
    images = folder / "images"
    images.mkdir()
    for path in elpv["good"][30:38] + elpv["defect"][:8]:
        shutil.copy(path, images / path.name)
    return model, images


@pytest.fixture(scope="module")
def built(inputs):
    from engines.tensorrt_build import build_engine

    model, images = inputs
    engine = model.parent / "engines" / "line.plan"
    sidecar = build_engine(model / "model.fp16.onnx", engine, max_batch=MAX_BATCH, model_dir=model)
    return {"model": model, "images": images, "engine": engine, "sidecar": sidecar}


@pytest.fixture(scope="module")
def batch(built):
    return load_batch(built["model"], built["images"])[0]


@pytest.fixture(scope="module")
def reference(built, batch):
    from edge.backends.base import open_backend

    backend = open_backend("onnxruntime", built["model"], onnx=built["model"] / "model.onnx", max_batch=MAX_BATCH)
    try:
        return run_in_batches(backend, batch, MAX_BATCH)
    finally:
        backend.close()


def test_build_writes_engine_sidecar_and_timing_cache(built):
    from edge.artifacts.engine_sidecar import read_sidecar, sidecar_path, timing_cache_path
    from edge.backends.tensorrt import running_environment

    assert built["engine"].stat().st_size > 0
    assert timing_cache_path(built["engine"]).stat().st_size > 0
    sidecar = read_sidecar(built["engine"])
    assert sidecar == json.loads(sidecar_path(built["engine"]).read_text())
    assert sidecar["precision"] == "fp16" and sidecar["max_batch"] == MAX_BATCH and sidecar["opt_batch"] == 1
    running = running_environment()
    assert {key: sidecar[key] for key in running} == running  # SM count and memory included
    assert running["gpu_sm_count"] > 0 and running["gpu_memory_gib"] > 0


def test_unreadable_timing_cache_still_builds(built, tmp_path):
    from edge.artifacts.engine_sidecar import timing_cache_path
    from engines.tensorrt_build import build_engine

    engine = tmp_path / "again.plan"
    timing_cache_path(engine).write_bytes(b"\x00not a timing cache of any TensorRT")
    build_engine(built["model"] / "model.fp16.onnx", engine, max_batch=MAX_BATCH, model_dir=built["model"])
    assert engine.stat().st_size > 0
    assert timing_cache_path(engine).read_bytes()[:8] != b"\x00not a t"  # replaced by a real cache


def test_fp16_engine_matches_onnxruntime_fp32_at_every_batch_size(built, batch, reference):
    from edge.backends.base import open_backend

    backend = open_backend("tensorrt", built["model"], engine=built["engine"], max_batch=MAX_BATCH)
    try:
        backend.warmup()
        for size in (1, MAX_BATCH, 3):  # batch 1 first: the line's case, and the shape set on the first frame
            maps, scores = run_in_batches(backend, batch, size)
            assert maps.dtype == np.float32 and maps.shape == reference[0].shape
            figures = parity(reference, (maps, scores))
            assert parity_failures(figures) == [], (size, figures)
        with pytest.raises(Exception, match=f"batch of {MAX_BATCH + 1}"):
            backend.infer(np.zeros((MAX_BATCH + 1,) + batch.shape[1:], np.float32))
        with pytest.raises(Exception, match="float32"):
            backend.infer(batch[:1].astype(np.float16))
    finally:
        backend.close()
        backend.close()


def test_stale_or_truncated_engine_is_refused(built, tmp_path):
    from edge.backends.base import open_backend
    from edge.core.errors import ModelFileError
    from edge.artifacts.engine_sidecar import sidecar_path

    copy = tmp_path / "copy.plan"
    shutil.copy(built["engine"], copy)
    sidecar = json.loads(sidecar_path(built["engine"]).read_text())
    shutil.copy(sidecar_path(built["engine"]), sidecar_path(copy))
    with pytest.raises(ModelFileError, match=f"max_batch {MAX_BATCH * 2} .*rebuild with"):
        open_backend("tensorrt", built["model"], engine=copy, max_batch=MAX_BATCH * 2)
    for key, value in (("tensorrt_version", "0.0.0"), ("gpu_sm_count", 1)):
        sidecar_path(copy).write_text(json.dumps({**sidecar, key: value}))
        with pytest.raises(ModelFileError, match=f"{key} .*rebuild with `hlgfa engine build"):
            open_backend("tensorrt", built["model"], engine=copy)
    sidecar_path(copy).write_text(json.dumps(sidecar))
    truncated = built["engine"].read_bytes()[:1000]
    copy.write_bytes(truncated)
    with pytest.raises(ModelFileError, match="not the file its sidecar describes"):
        open_backend("tensorrt", built["model"], engine=copy)
    import hashlib

    sidecar_path(copy).write_text(json.dumps({**sidecar, "engine_sha256": hashlib.sha256(truncated).hexdigest()}))
    with pytest.raises(ModelFileError, match="cannot be deserialised"):
        open_backend("tensorrt", built["model"], engine=copy)
