from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from edge.core.errors import ConfigError
from edge.sources.factory import (FolderSourceConfig, GenicamSourceConfig, OpenCVSourceConfig, SourceConfig,
                                  build_source, parse_spec, source_config)
from edge.sources.folder import FolderSource
from edge.sources.opencv import OpenCVSource


def test_short_forms():
    assert parse_spec("folder:/data/x") == {"kind": "folder", "path": "/data/x"}
    assert parse_spec("opencv:0") == {"kind": "opencv", "target": 0}
    assert parse_spec("opencv:rtsp://cam/1") == {"kind": "opencv", "target": "rtsp://cam/1"}
    assert parse_spec("genicam") == {"kind": "genicam", "device": None}
    assert parse_spec("genicam:1234") == {"kind": "genicam", "device": "1234"}
    with pytest.raises(ConfigError, match="expected folder:DIR"):
        parse_spec("webcam:0")


def test_configs_are_discriminated_and_strict():
    class Daemon(BaseModel):
        model_config = ConfigDict(extra="forbid")
        source: SourceConfig

    parsed = Daemon.model_validate({"source": {"kind": "genicam", "device": "7", "settings": {
        "AcquisitionFrameRate": 30, "PixelFormat": "Mono8", "ReverseX": True}}})
    assert isinstance(parsed.source, GenicamSourceConfig)
    assert parsed.source.settings == {"AcquisitionFrameRate": 30, "PixelFormat": "Mono8", "ReverseX": True}
    assert isinstance(source_config({"kind": "folder", "path": "x"}), FolderSourceConfig)
    assert isinstance(source_config("opencv:a.avi"), OpenCVSourceConfig)
    with pytest.raises(ConfigError, match="fsp"):
        source_config({"kind": "folder", "path": "x", "fsp": 3})
    with pytest.raises(ConfigError, match="buffers"):
        source_config({"kind": "genicam", "buffers": 0})


def test_build_source_picks_the_module_of_the_kind(tmp_path):
    folder = build_source(f"folder:{tmp_path}")
    assert isinstance(folder, FolderSource) and folder.path == Path(tmp_path)
    opencv = build_source({"kind": "opencv", "target": "clip.avi", "loop": True, "source_id": "line3"})
    assert isinstance(opencv, OpenCVSource) and opencv.loop and opencv.source_id == "line3"
