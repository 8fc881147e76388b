"""The genicam source's fetch timeouts: idle for a hardware-triggered camera that still answers, a
fault otherwise.

viky.cti has no trigger nodes, so a stand-in takes the place of harvesters' ImageAcquirer: its
fetch() times out as a camera's does while no trigger comes, and its TriggerMode answers, or fails,
as the device would. Free-running timeouts against viky itself: tests/integration/test_genicam_viky.py.
"""

from types import SimpleNamespace

import pytest

pytest.importorskip("harvesters")
gentl = pytest.importorskip("genicam.gentl")

from edge.sources.base import SourceIdle, SourceUnavailable  # noqa: E402
from edge.sources.genicam import GenicamSource  # noqa: E402


class ArmedCamera:
    """Waits for a trigger that does not come. A read of TriggerMode returns `trigger_mode`, or raises
    it when it is an exception (the device does not answer)."""

    def __init__(self, trigger_mode):
        self.trigger_mode = trigger_mode
        self.remote_device = SimpleNamespace(node_map=SimpleNamespace(TriggerMode=self))
        self.cache_bypassed: list[bool] = []
        self.destroyed = False

    def is_valid(self) -> bool:
        return not self.destroyed

    def fetch(self, timeout):
        raise gentl.TimeoutException(f"no buffer within {timeout} s")

    def to_string(self, verify: bool, ignore_cache: bool) -> str:
        self.cache_bypassed.append(ignore_cache)
        if isinstance(self.trigger_mode, Exception):
            raise self.trigger_mode
        return self.trigger_mode

    def destroy(self) -> None:
        self.destroyed = True

    def __exit__(self, *exc) -> None:  # how the source destroys an acquirer (see GenicamSource._destroy)
        self.destroy()


@pytest.fixture
def open_source(tmp_path, monkeypatch, request):
    """`open_source(camera, trigger)`: an open GenicamSource whose connection yields `camera`."""
    producer = tmp_path / "vendor.cti"  # never loaded: the connection is the stand-in's
    producer.write_bytes(b"")

    def connect_to(camera: ArmedCamera):
        def connect(source):
            source._ia = camera
            source._consecutive_timeouts = 0
        return connect

    def open_source(camera: ArmedCamera, trigger: str) -> GenicamSource:
        monkeypatch.setattr(GenicamSource, "_connect", connect_to(camera))
        source = GenicamSource(cti=producer, trigger=trigger, reconnect_after_timeouts=1)
        source.open()
        request.addfinalizer(source.close)
        return source

    return open_source


def test_hardware_trigger_timeout_is_idle_while_the_camera_answers_armed(open_source):
    camera = ArmedCamera("On")
    source = open_source(camera, "hardware")
    for _ in range(3):  # an idle line may stay idle for hours: never a forced reconnect
        with pytest.raises(SourceIdle, match="no hardware trigger within 0.01 s"):
            source.read(0.01)
    assert camera.cache_bypassed == [True] * 3, "TriggerMode must be read from the device, not GenApi's cache"
    stats = source.stats()
    assert stats["timeouts"] == 3 and stats["lost"] == 0 and not camera.destroyed


@pytest.mark.parametrize("trigger_mode, says", [
    (gentl.TimeoutException("port read timed out"), "does not answer"),
    ("Off", "TriggerMode reads 'Off'"),
], ids=["no answer", "settings lost"])
def test_hardware_trigger_timeout_is_a_lost_camera_when_it_does_not_answer_armed(open_source, trigger_mode, says):
    camera = ArmedCamera(trigger_mode)
    source = open_source(camera, "hardware")
    with pytest.raises(SourceUnavailable, match=says):
        source.read(0.01)
    assert source.stats()["lost"] == 1 and camera.destroyed


def test_free_running_timeout_is_unavailable_without_asking_for_a_trigger(open_source):
    camera = ArmedCamera("On")
    source = open_source(camera, "free")
    with pytest.raises(SourceUnavailable, match="1 fetch timeouts of 0.01 s in a row"):
        source.read(0.01)
    assert camera.cache_bypassed == []
