"""TensorRT engine build and backend on a real GPU; skipped with a reason where there is none."""

import json
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (GPU boxes only)")
    cuda = pytest.importorskip("pycuda.driver", reason="pycuda is not installed (GPU boxes only)")
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            pytest.skip("no CUDA device")
    except cuda.Error as error:
        pytest.skip(f"no usable CUDA device ({error})")
    pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def built(gpu, tiny_model_dir, tmp_path_factory):
    from engines.export import export_onnx
    from engines.tensorrt_build import build_engine

    folder = tmp_path_factory.mktemp("trt")
    model = folder / "model"
    shutil.copytree(tiny_model_dir, model)
    fp32 = export_onnx(model, max_batch=4)
    fp16 = export_onnx(model, folder / "fp16.onnx", fp16=True, max_batch=4)
    engine = folder / "engines" / "tiny.plan"
    sidecar = build_engine(fp16, engine, max_batch=4, model_dir=model)
    return {"model": model, "fp32": fp32, "engine": engine, "sidecar": sidecar}


@pytest.fixture(scope="module")
def real_batch(built, elpv_images):
    from calibrate.dataset import read_image
    from edge.model_dir import load_model_info
    from edge.preprocess import preprocess

    spec = load_model_info(built["model"]).preprocess
    return preprocess([read_image(p) for p in elpv_images["defect"][:2] + elpv_images["good"][40:41]], spec)


def test_build_writes_engine_sidecar_and_timing_cache(built):
    from engines.sidecar import read_sidecar, sidecar_path, timing_cache_path

    assert built["engine"].stat().st_size > 0
    assert timing_cache_path(built["engine"]).stat().st_size > 0
    sidecar = read_sidecar(built["engine"])
    assert sidecar == json.loads(sidecar_path(built["engine"]).read_text())
    assert sidecar["precision"] == "fp16" and sidecar["max_batch"] == 4
    assert {"tensorrt_version", "gpu_name", "compute_capability", "onnx_sha256", "model_hash"} <= set(sidecar)


def test_fp16_engine_matches_onnxruntime_fp32(built, real_batch):
    from scipy.stats import spearmanr

    from edge.backends.base import open_backend

    reference = open_backend("onnxruntime", built["model"], onnx=built["fp32"], max_batch=4)
    backend = open_backend("tensorrt", built["model"], engine=built["engine"], max_batch=4)
    try:
        backend.warmup()
        maps, scores = backend.infer(real_batch)
        ref_maps, ref_scores = reference.infer(real_batch)
        assert maps.shape == ref_maps.shape and maps.dtype == np.float32
        assert np.abs(maps - ref_maps).max() <= 0.02 * (ref_maps.max() - ref_maps.min())
        assert spearmanr(scores, ref_scores).statistic >= 0.99
        one_maps, one_scores = backend.infer(real_batch[1:2])  # the CUDA-graph path
        assert np.abs(one_maps[0] - maps[1]).max() <= 1e-3 * (ref_maps.max() - ref_maps.min()) + 1e-6
        with pytest.raises(Exception, match="batch of 5|shape"):
            backend.infer(np.zeros((5, 3, 128, 128), np.float32))
        with pytest.raises(Exception, match="float32"):
            backend.infer(real_batch.astype(np.float16))
    finally:
        backend.close()
        backend.close()
        reference.close()


def test_stale_or_truncated_engine_is_refused(built, tmp_path):
    from edge.backends.base import open_backend
    from edge.errors import ModelFileError
    from engines.sidecar import sidecar_path

    copy = tmp_path / "copy.plan"
    shutil.copy(built["engine"], copy)
    sidecar = json.loads(sidecar_path(built["engine"]).read_text())
    shutil.copy(sidecar_path(built["engine"]), sidecar_path(copy))
    with pytest.raises(ModelFileError, match="max_batch 8 .*rebuild with"):
        open_backend("tensorrt", built["model"], engine=copy, max_batch=8)
    sidecar_path(copy).write_text(json.dumps({**sidecar, "tensorrt_version": "0.0.0"}))
    with pytest.raises(ModelFileError, match="tensorrt_version .*rebuild with `hlgfa engine build"):
        open_backend("tensorrt", built["model"], engine=copy)
    sidecar_path(copy).write_text(json.dumps(sidecar))
    copy.write_bytes(built["engine"].read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="cannot be deserialised"):
        open_backend("tensorrt", built["model"], engine=copy)
