"""The engine build's decisions that need no GPU: network flags per TensorRT version and the
timing-cache fallback.

TensorRT cannot run on a machine without an NVIDIA GPU, so the builder config here is a stand-in
with IBuilderConfig's two timing-cache calls as TensorRT 10/11 document them:
`create_timing_cache(bytes)` gives no cache for bytes it cannot read, and
`set_timing_cache(cache, ignore_mismatch)` answers False for a cache from another device.
"""

import logging
from types import SimpleNamespace

import pytest

from edge.core.errors import BackendError
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
