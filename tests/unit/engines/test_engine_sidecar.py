"""Engine staleness rules (`hlgfa engine ensure/check`), which run without TensorRT."""

import shutil

import pytest

from edge.core.errors import BackendError, ConfigError, ModelFileError
from edge.backends.tensorrt import TensorRTConfig
from engines.engine_cli import stale_reasons
from edge.artifacts.engine_sidecar import device_identity, mismatches, read_sidecar, sidecar_path, write_sidecar

GIB = 2**30
# Illustrative module descriptions (SM counts from NVIDIA's module data sheets: 2048 and 1024
# CUDA cores, 128 per SM, and their maximum GPU clocks; memory as the CUDA driver reports a module's
# shared RAM, a little under the nominal size).
AGX_ORIN_64GB = device_identity("10.3.0", "Orin", (8, 7), 16, int(61.4 * GIB), 1_300_000)
ORIN_NX_8GB = device_identity("10.3.0", "Orin", (8, 7), 8, int(7.4 * GIB), 765_000)
ORIN_NANO_8GB = device_identity("10.3.0", "Orin", (8, 7), 8, int(7.4 * GIB), 625_000)
RUNNING = AGX_ORIN_64GB


@pytest.fixture
def model(tiny_model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy, ignore=shutil.ignore_patterns("*.onnx"))
    (copy / "model.fp16.onnx").write_bytes(b"stand-in graph bytes")  # only its sha256 is compared here
    return copy


def built_engine(model, tmp_path, **changes):
    from edge.artifacts.model_dir import file_sha256, load_model_info

    engine = tmp_path / "engines" / "line1.plan"
    engine.parent.mkdir(exist_ok=True)
    engine.write_bytes(b"plan")
    write_sidecar(engine, {**RUNNING, "model_hash": load_model_info(model).model_hash, "max_batch": 4,
                           "precision": "fp16", "onnx_sha256": file_sha256(model / "model.fp16.onnx"),
                           "engine_sha256": file_sha256(engine), **changes})
    return engine


def settings(engine, max_batch=4, **keys):
    return TensorRTConfig(engine=engine, max_batch=max_batch, **keys)


def test_matching_engine_is_kept(model, tmp_path):
    engine = built_engine(model, tmp_path)
    assert stale_reasons(model, settings(engine), RUNNING) == []
    assert read_sidecar(engine)["format"] == "hlgfa-engine/1"


@pytest.mark.parametrize("change, expected", [
    ({"tensorrt_version": "10.1.0"}, "tensorrt_version is '10.3.0' here"),
    ({"compute_capability": "7.2"}, "compute_capability"),
    ({"gpu_sm_count": 8}, "gpu_sm_count is 16 here, the engine was built for 8"),
    ({"gpu_memory_gib": 7}, "gpu_memory_gib is 61 here, the engine was built for 7"),
    ({"model_hash": "0" * 64}, "model_hash"),
    ({"max_batch": 2}, "max_batch 4 is asked for"),
    ({"onnx_sha256": "f" * 64}, "ONNX file changed"),
    ({"gpu_sm_clock_mhz": 625}, "gpu_sm_clock_mhz is 1300 here, the engine was built for 625"),
    ({"precision": "fp32"}, "the engine is 'fp32', backend.precision is 'fp16'"),
    ({"engine_sha256": "0" * 64}, "not the one its sidecar describes"),
])
def test_any_mismatch_means_rebuild(model, tmp_path, change, expected):
    engine = built_engine(model, tmp_path, **change)
    reasons = stale_reasons(model, settings(engine), RUNNING)
    assert len(reasons) == 1 and expected in reasons[0]


def test_missing_engine_or_damaged_sidecar_means_rebuild(model, tmp_path):
    engine = tmp_path / "absent.plan"
    assert "does not exist" in stale_reasons(model, settings(engine, 1), RUNNING)[0]
    engine = built_engine(model, tmp_path)
    sidecar_path(engine).write_text("{not json")
    assert "not valid JSON" in stale_reasons(model, settings(engine, 1), RUNNING)[0]
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

    code = main(["engine", "build", "--onnx", str(model / "model.fp16.onnx"), "--out", str(tmp_path / "x.plan")])
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


def test_jetson_modules_with_the_same_name_and_capability_do_not_match():
    assert AGX_ORIN_64GB["gpu_name"] == ORIN_NANO_8GB["gpu_name"]
    assert AGX_ORIN_64GB["compute_capability"] == ORIN_NANO_8GB["compute_capability"] == "8.7"
    reasons = mismatches({**AGX_ORIN_64GB, "model_hash": "a"}, {**ORIN_NANO_8GB, "model_hash": "a"})
    assert [reason.split()[0] for reason in reasons] == ["gpu_sm_count", "gpu_memory_gib", "gpu_sm_clock_mhz"]


def test_orin_nx_8gb_and_orin_nano_8gb_differ_by_their_sm_clock_only():
    same = {key for key in ORIN_NX_8GB if ORIN_NX_8GB[key] == ORIN_NANO_8GB[key]}
    assert set(ORIN_NX_8GB) - same == {"gpu_sm_clock_mhz"}
    reasons = mismatches({**ORIN_NX_8GB, "model_hash": "a"}, {**ORIN_NANO_8GB, "model_hash": "a"})
    assert reasons == ["gpu_sm_clock_mhz is 625 here, the engine was built for 765"]


def test_memory_is_compared_in_whole_gib():
    # A kernel carve-out that moves the reported size by some MiB is the same module.
    assert device_identity("10.3.0", "Orin", (8, 7), 8, int(7.4 * GIB), 765_000)["gpu_memory_gib"] == \
        device_identity("10.3.0", "Orin", (8, 7), 8, int(7.2 * GIB), 765_000)["gpu_memory_gib"] == 7


def test_sidecar_without_the_module_keys_means_rebuild(model, tmp_path):
    engine = built_engine(model, tmp_path)
    old = read_sidecar(engine)
    for key in ("gpu_sm_count", "gpu_sm_clock_mhz"):
        del old[key]
    write_sidecar(engine, {key: value for key, value in old.items() if key != "format"})
    reasons = stale_reasons(model, settings(engine), RUNNING)
    assert len(reasons) == 2 and all("does not record it" in reason for reason in reasons)
