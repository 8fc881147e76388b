"""The engine build's decisions that need no GPU: network flags per TensorRT version, the
timing-cache fallback, and `hlgfa engine ensure` keeping the precision `[backend]` names.

TensorRT cannot run on a machine without an NVIDIA GPU, so the builder config here is a stand-in
with IBuilderConfig's two timing-cache calls as TensorRT 10/11 document them:
`create_timing_cache(bytes)` gives no cache for bytes it cannot read, and
`set_timing_cache(cache, ignore_mismatch)` answers False for a cache from another device.
"""

import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge.core.errors import BackendError, ConfigError
from tests.gpu_fakes import graph_file
from edge.backends.tensorrt import tensorrt_major
from engines.tensorrt_build import network_flags, use_timing_cache

VALID = b"timing cache written by this TensorRT on this GPU"
OTHER_DEVICE = b"timing cache written on another GPU"


class FakeBuilderConfig:
    def __init__(self, unreadable_raises: bool = False):
        self.unreadable_raises = unreadable_raises
        self.created: list[bytes] = []
        self.set: list[tuple[bytes, bool]] = []

    def create_timing_cache(self, data):
        self.created.append(bytes(data))
        if data in (b"", VALID, OTHER_DEVICE):
            return SimpleNamespace(data=bytes(data))
        if self.unreadable_raises:
            raise RuntimeError("invalid timing cache")
        return None

    def set_timing_cache(self, cache, ignore_mismatch):
        self.set.append((cache.data, ignore_mismatch))
        return cache.data != OTHER_DEVICE or ignore_mismatch


def test_cache_beside_the_engine_is_used(tmp_path):
    path = tmp_path / "line1.plan.timing-cache"
    path.write_bytes(VALID)
    config = FakeBuilderConfig()
    assert use_timing_cache(config, path).data == VALID
    assert config.set == [(VALID, False)]


def test_no_cache_yet_starts_empty(tmp_path):
    config = FakeBuilderConfig()
    assert use_timing_cache(config, tmp_path / "absent.timing-cache").data == b""
    assert config.created == [b""]


@pytest.mark.parametrize("content, raises", [
    (b"written by TensorRT 10.3, read by 11.1", False),
    (b"\x00truncated", True),
    (OTHER_DEVICE, False),
])
def test_unusable_cache_falls_back_to_an_empty_one(tmp_path, caplog, content, raises):
    path = tmp_path / "line1.plan.timing-cache"
    path.write_bytes(content)
    config = FakeBuilderConfig(unreadable_raises=raises)
    with caplog.at_level(logging.WARNING):
        cache = use_timing_cache(config, path)
    assert cache is not None and cache.data == b""
    assert config.set[-1] == (b"", False)
    assert str(path) in caplog.text and "empty cache" in caplog.text


def test_an_empty_cache_refused_is_an_error(tmp_path):
    config = FakeBuilderConfig()
    config.set_timing_cache = lambda cache, ignore_mismatch: False
    with pytest.raises(BackendError, match="refused an empty timing cache"):
        use_timing_cache(config, tmp_path / "absent.timing-cache")


def trt_of(version):
    return SimpleNamespace(__version__=version,
                           NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1))


def test_strongly_typed_flag_is_passed_to_tensorrt_10_only():
    assert network_flags(trt_of("10.3.0")) == 1 << 1
    assert network_flags(trt_of("11.1.0")) == 0  # deprecated and ignored there: always strongly typed


@pytest.mark.parametrize("version", ["8.6.2", "9.0.1"])
def test_tensorrt_before_10_is_refused_by_name(version):
    with pytest.raises(BackendError, match=f"TensorRT {version} is installed; hlgfa needs TensorRT 10"):
        tensorrt_major(version)


# ---- `hlgfa engine ensure` against TensorRT's builder faked at its API boundary (tests/gpu_fakes.py) ----

@pytest.fixture
def line(tiny_model_dir, tmp_path):
    """A model directory holding both exports, and a camera config naming the TensorRT backend."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model, ignore=shutil.ignore_patterns("*.onnx"))
    graph_file(model / "model.fp16.onnx", model, "fp16")
    graph_file(model / "model.onnx", model, "fp32")

    def config(**backend) -> Path:
        keys = "".join(f'{key} = "{value}"\n' for key, value in {"engine": tmp_path / "engines" / "line1.plan",
                                                                   **backend}.items())
        path = tmp_path / "line1.toml"
        path.write_text(f'camera = "line1"\nmodel = "{model}"\n[source]\nkind = "folder"\npath = "{tmp_path}"\n'
                        f'[backend]\nkind = "tensorrt"\nmax_batch = 4\n{keys}')
        return path

    return model, tmp_path / "engines" / "line1.plan", config


@pytest.mark.parametrize("version, flags", [("10.3.0", 1 << 1), ("11.4.0", 0)])
def test_ensure_builds_the_fp16_engine_strongly_typed_from_the_fp16_graph(line, monkeypatch, capsys, version, flags):
    from edge.artifacts.engine_sidecar import read_sidecar
    from edge.artifacts.model_dir import file_sha256
    from edge.cli import main
    from tests import gpu_fakes

    model, engine, config = line
    gpu_fakes.install(monkeypatch, version=version)
    trt = sys.modules["tensorrt"]
    assert main(["engine", "ensure", "--config", str(config())]) == 0
    [network], [builder_config] = trt.networks, trt.configs
    assert network.flags == flags  # TensorRT 10: STRONGLY_TYPED asked for; 11: strongly typed always
    assert builder_config.flags == []  # no FP16 (weak typing) flag: the graph's own types decide
    assert network.parsed == str(model / "model.fp16.onnx")
    sidecar = read_sidecar(engine)
    assert sidecar["precision"] == "fp16" and sidecar["strongly_typed"] is True
    assert sidecar["onnx_sha256"] == file_sha256(model / "model.fp16.onnx") != file_sha256(model / "model.onnx")
    assert sidecar["engine_sha256"] == file_sha256(engine) and sidecar["tensorrt_version"] == version
    assert "rebuilt" in capsys.readouterr().out

    assert main(["engine", "ensure", "--config", str(config())]) == 0
    assert len(trt.networks) == 1 and "up to date" in capsys.readouterr().out


def test_ensure_refuses_a_graph_of_another_precision_than_configured_and_builds_nothing(line, monkeypatch, capsys):
    from edge.cli import main
    from tests import gpu_fakes

    model, engine, config = line
    gpu_fakes.install(monkeypatch)
    assert main(["engine", "ensure", "--config", str(config(onnx=model / "model.onnx"))]) == ConfigError.exit_code
    error = capsys.readouterr().err
    assert "backend.precision is 'fp16' but the graph" in error and "model.onnx is 'fp32'" in error
    assert sys.modules["tensorrt"].networks == [] and not engine.exists()


def test_ensure_rebuilds_when_the_configured_precision_changes(line, monkeypatch, capsys):
    from edge.artifacts.engine_sidecar import read_sidecar
    from edge.artifacts.model_dir import file_sha256
    from edge.cli import main
    from tests import gpu_fakes

    model, engine, config = line
    gpu_fakes.install(monkeypatch)
    assert main(["engine", "ensure", "--config", str(config())]) == 0
    assert main(["engine", "ensure", "--config", str(config(precision="fp32"))]) == 0
    assert "the engine is 'fp16', backend.precision is 'fp32'" in capsys.readouterr().out
    sidecar = read_sidecar(engine)
    assert sidecar["precision"] == "fp32" and sidecar["onnx_sha256"] == file_sha256(model / "model.onnx")


def test_ensure_with_flags_takes_the_fp16_graph_by_default(line, monkeypatch):
    from edge.artifacts.engine_sidecar import read_sidecar
    from edge.cli import main
    from tests import gpu_fakes

    model, engine, _ = line
    gpu_fakes.install(monkeypatch)
    assert main(["engine", "ensure", "--model", str(model), "--out", str(engine)]) == 0
    assert sys.modules["tensorrt"].networks[0].parsed == str(model / "model.fp16.onnx")
    assert read_sidecar(engine)["precision"] == "fp16"


def test_build_with_a_precision_refuses_a_graph_of_another(line, monkeypatch):
    from edge.cli import main
    from tests import gpu_fakes

    model, engine, _ = line
    gpu_fakes.install(monkeypatch)
    assert main(["engine", "build", "--onnx", str(model / "model.onnx"), "--out", str(engine),
                 "--precision", "fp16"]) == ConfigError.exit_code
    assert not engine.exists()


def test_config_check_accepts_the_tensorrt_backend_on_the_fp16_graph_and_ensure_builds_that(line, monkeypatch, capsys):
    from edge.artifacts.engine_sidecar import read_sidecar
    from edge.artifacts.model_dir import file_sha256, load_model_info
    from edge.artifacts.thresholds import Thresholds
    from edge.cli import main
    from edge.core.paths import write_json_atomic
    from tests.thresholds_file import calibrated_data
    from tests import gpu_fakes

    model, engine, config = line
    write_json_atomic(model / "thresholds.json", calibrated_data(Thresholds(load_model_info(model).model_hash, 1.0, "t1")))
    path = config(onnx=model / "model.fp16.onnx", precision="fp16")
    assert main(["config", "check", str(path)]) == 0
    resolved = json.loads(capsys.readouterr().out)["backend"]
    assert (resolved["onnx"], resolved["precision"]) == (str(model / "model.fp16.onnx"), "fp16")
    gpu_fakes.install(monkeypatch)
    assert main(["engine", "ensure", "--config", str(path)]) == 0
    assert read_sidecar(engine)["onnx_sha256"] == file_sha256(model / "model.fp16.onnx")
