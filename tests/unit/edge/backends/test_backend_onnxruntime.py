"""The onnxruntime backend against the torch reference, on real images and the tiny trained model."""

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from edge.backends.base import open_backend  # noqa: E402
from edge.core.errors import BackendError, ModelFileError  # noqa: E402


@pytest.fixture(scope="module")
def model_with_onnx(tiny_model_dir, tmp_path_factory):
    """A copy of the tiny model with its default MODEL/model.onnx (the shared fixture stays untouched)."""
    from engines.export import export_onnx

    copy = tmp_path_factory.mktemp("ort") / "model"
    shutil.copytree(tiny_model_dir, copy)
    export_onnx(copy, max_batch=4)
    return copy


@pytest.fixture(scope="module")
def real_batch(model_with_onnx, elpv_images):
    from calibrate.dataset import read_image
    from edge.artifacts.model_dir import load_model_info
    from edge.imaging.preprocess import preprocess

    spec = load_model_info(model_with_onnx).preprocess
    return preprocess([read_image(p) for p in elpv_images["defect"][:2] + elpv_images["good"][40:41]], spec)


def test_matches_torch_at_batch_1_and_3(model_with_onnx, real_batch):
    reference = open_backend("torch", model_with_onnx, max_batch=4)
    backend = open_backend("onnxruntime", model_with_onnx, max_batch=4, threads=1)
    try:
        backend.warmup()
        assert backend.kind == "onnxruntime" and backend.input_size == real_batch.shape[-2:]
        maps, scores = backend.infer(real_batch)
        ref_maps, ref_scores = reference.infer(real_batch)
        assert maps.dtype == np.float32 and maps.shape == ref_maps.shape
        assert scores.dtype == np.float32 and scores.shape == (3,)
        # Relative to the map's scale: the fused map's units are its good-image quantiles, and a
        # defect lies far above them.
        scale = float(np.abs(ref_maps).max())
        assert np.abs(maps - ref_maps).max() <= 1e-5 * scale
        assert list(np.argsort(scores)) == list(np.argsort(ref_scores))
        single_maps, single_scores = backend.infer(real_batch[1:2])
        assert np.abs(single_maps[0] - maps[1]).max() <= 1e-6 * scale
        assert single_scores.shape == (1,)
    finally:
        backend.close()
        reference.close()


def test_wrong_shape_dtype_and_batch_are_refused(model_with_onnx, real_batch):
    backend = open_backend("onnxruntime", model_with_onnx, max_batch=2)
    with pytest.raises(BackendError, match="float32"):
        backend.infer(real_batch.astype(np.float64))
    with pytest.raises(BackendError, match="shape"):
        backend.infer(real_batch[:, :, :64, :64])
    with pytest.raises(BackendError, match="batch of 3"):
        backend.infer(real_batch)
    backend.close()
    with pytest.raises(BackendError, match="after close"):
        backend.infer(real_batch[:1])


def truncated_onnx(model_dir, tmp_path):
    """The model's ONNX file cut to a third: what an interrupted copy leaves."""
    truncated = tmp_path / "truncated.onnx"
    data = (model_dir / "model.onnx").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    return truncated


def model_of_another_hash(model_dir, tmp_path):
    """A copy of the model directory whose hash changed (a refitted constant), keeping the old ONNX."""
    from edge.artifacts.model_dir import compute_model_hash

    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    description = json.loads((other / "model.json").read_text())
    description["fitted"]["reliability_strength"] = 1.5
    description["hash"] = compute_model_hash(description, other / "module.pt")
    (other / "model.json").write_text(json.dumps(description))
    return other


def test_missing_and_truncated_onnx(model_with_onnx, tmp_path):
    missing = tmp_path / "absent.onnx"
    with pytest.raises(ModelFileError, match="does not exist.*hlgfa export"):
        open_backend("onnxruntime", model_with_onnx, onnx=missing)
    with pytest.raises(ModelFileError, match="truncated.*hlgfa export"):
        open_backend("onnxruntime", model_with_onnx, onnx=truncated_onnx(model_with_onnx, tmp_path))


def test_onnx_of_another_model_is_refused(model_with_onnx, tmp_path):
    with pytest.raises(ModelFileError, match="exported from model .*re-export with `hlgfa export --model"):
        open_backend("onnxruntime", model_of_another_hash(model_with_onnx, tmp_path))


def test_auto_refuses_a_named_onnx_file_that_cannot_be_used_instead_of_running_torch(model_with_onnx, tmp_path):
    with pytest.raises(ModelFileError, match="backend auto: the ONNX file .*truncated.onnx was named"):
        open_backend("auto", model_with_onnx, onnx=truncated_onnx(model_with_onnx, tmp_path))


def test_auto_refuses_the_models_own_onnx_file_when_it_is_from_another_model(model_with_onnx, tmp_path):
    with pytest.raises(ModelFileError, match="model.onnx is present but cannot be used.*exported from model"):
        open_backend("auto", model_of_another_hash(model_with_onnx, tmp_path))


def test_auto_says_at_warning_which_backend_it_chose_and_why(tiny_model_dir, caplog):
    with caplog.at_level("WARNING", logger="edge.backends.base"):
        backend = open_backend("auto", tiny_model_dir)
    backend.close()
    assert backend.kind == "torch"
    chose = [r for r in caplog.records if r.getMessage().startswith("backend auto: chose torch")]
    assert chose and chose[0].levelname == "WARNING" and "onnxruntime skipped" in chose[0].getMessage()
    assert "model.onnx does not exist" in chose[0].getMessage()


def test_auto_without_an_exported_graph_is_an_error_naming_export_where_torch_is_not_allowed(tiny_model_dir):
    with pytest.raises(ModelFileError, match="hlgfa export --model .*--backend torch"):
        open_backend("auto", tiny_model_dir, allow_torch=False)


@pytest.mark.parametrize("kind", ["tensorrt", "onnxruntime", "torch"])
def test_each_backend_kind_has_its_settings_model_beside_its_code_and_takes_only_it(kind):
    import importlib
    import inspect

    from edge.backends.base import config_class

    module = importlib.import_module(f"edge.backends.{kind}")
    model = config_class(kind)
    assert model.__module__ == module.__name__ and model.model_fields["kind"].default == kind
    backend_class = next(v for v in vars(module).values() if inspect.isclass(v) and getattr(v, "kind", None) == kind)
    parameters = inspect.signature(backend_class.__init__).parameters
    # Settings come only in the model; besides it: where to log, and (TensorRT) the CUDA module its tests replace.
    assert list(parameters)[:3] == ["self", "model_dir", "config"]
    assert {name: parameters[name].default for name in list(parameters)[3:]} == (
        {"log": None, "cuda": None} if kind == "tensorrt" else {"log": None})


def test_a_key_the_named_backend_does_not_have_is_a_config_error_naming_it(model_with_onnx):
    from edge.core.errors import ConfigError

    with pytest.raises(ConfigError, match="backend onnxruntime: key device: unknown key"):
        open_backend("onnxruntime", model_with_onnx, device="cuda")
    with pytest.raises(ConfigError, match="backend tensorrt: key threads: unknown key"):
        open_backend("tensorrt", model_with_onnx, engine="x.plan", threads=2)


def test_auto_gives_each_candidate_only_the_options_it_takes(model_with_onnx):
    backend = open_backend("auto", model_with_onnx, max_batch=2, threads=1, device="cpu")
    try:
        assert backend.kind == "onnxruntime" and backend.max_batch == 2
    finally:
        backend.close()
