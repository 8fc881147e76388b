"""Engine staleness rules (`hlgfa engine ensure/check`), which run without TensorRT."""

import shutil

import pytest

from edge.errors import BackendError, ConfigError, ModelFileError
from engines.engine_cli import stale_reasons
from engines.sidecar import mismatches, read_sidecar, sidecar_path, write_sidecar

RUNNING = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}


@pytest.fixture
def model(tiny_model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy, ignore=shutil.ignore_patterns("*.onnx"))
    (copy / "model.onnx").write_bytes(b"stand-in graph bytes")  # only its sha256 is compared here
    return copy


def built_engine(model, tmp_path, **changes):
    from edge.model_dir import file_sha256, load_model_info

    engine = tmp_path / "engines" / "line1.plan"
    engine.parent.mkdir(exist_ok=True)
    engine.write_bytes(b"plan")
    write_sidecar(engine, {**RUNNING, "model_hash": load_model_info(model).model_hash, "max_batch": 4,
                           "onnx_sha256": file_sha256(model / "model.onnx"), **changes})
    return engine


def test_matching_engine_is_kept(model, tmp_path):
    engine = built_engine(model, tmp_path)
    assert stale_reasons(model, model / "model.onnx", engine, 4, RUNNING) == []
    assert read_sidecar(engine)["format"] == "hlgfa-engine/1"


@pytest.mark.parametrize("change, expected", [
    ({"tensorrt_version": "10.1.0"}, "tensorrt_version is '10.3.0' here"),
    ({"compute_capability": "7.2"}, "compute_capability"),
    ({"model_hash": "0" * 64}, "model_hash"),
    ({"max_batch": 2}, "max_batch 4 is asked for"),
    ({"onnx_sha256": "f" * 64}, "ONNX file changed"),
])
def test_any_mismatch_means_rebuild(model, tmp_path, change, expected):
    engine = built_engine(model, tmp_path, **change)
    reasons = stale_reasons(model, model / "model.onnx", engine, 4, RUNNING)
    assert len(reasons) == 1 and expected in reasons[0]


def test_missing_engine_or_damaged_sidecar_means_rebuild(model, tmp_path):
    engine = tmp_path / "absent.plan"
    assert "does not exist" in stale_reasons(model, model / "model.onnx", engine, 1, RUNNING)[0]
    engine = built_engine(model, tmp_path)
    sidecar_path(engine).write_text("{not json")
    assert "not valid JSON" in stale_reasons(model, model / "model.onnx", engine, 1, RUNNING)[0]
    with pytest.raises(ModelFileError, match="rebuild with `hlgfa engine build`"):
        read_sidecar(engine)


def test_mismatches_ignores_keys_not_known_here():
    assert mismatches({**RUNNING, "model_hash": "a"}, {"model_hash": "a"}) == []


def test_ensure_skips_non_tensorrt_config_and_requires_targets(tiny_model_dir, tmp_path, capsys):
    from edge.cli import main

    config = tmp_path / "line1.toml"
    config.write_text(f'camera = "line1"\nmodel = "{tiny_model_dir}"\n[source]\nkind = "folder"\npath = "{tmp_path}"\n'
                      f'[backend]\nkind = "onnxruntime"\n')
    assert main(["engine", "ensure", "--config", str(config)]) == 0
    assert main(["engine", "ensure", "--model", str(tiny_model_dir)]) == ConfigError.exit_code


def test_engine_build_without_tensorrt_is_a_clear_error(model, tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; tests/hw covers the build")
    except ImportError:
        pass
    from edge.cli import main

    code = main(["engine", "build", "--onnx", str(model / "model.onnx"), "--out", str(tmp_path / "x.plan")])
    assert code == BackendError.exit_code
    assert not (tmp_path / "x.plan").exists()


def test_tensorrt_backend_without_tensorrt_is_a_clear_error(model, tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; tests/hw covers the backend")
    except ImportError:
        pass
    from edge.backends.base import open_backend

    with pytest.raises(BackendError, match="TensorRT is not installed"):
        open_backend("tensorrt", model, engine=tmp_path / "line1.plan")
