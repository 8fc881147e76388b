import cv2
import numpy as np
import pytest

from edge.core.errors import ConfigError
from edge.sources.base import SourceExhausted, SourceUnavailable
from edge.sources.opencv import OpenCVSource


@pytest.fixture
def video(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG .avi")
    for index in range(4):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, :, 2] = 60 * index  # red channel in BGR order grows per frame
        writer.write(frame)
    writer.release()
    return path


def test_reads_a_real_video_as_rgb8_then_exhausts(video):
    source = OpenCVSource(str(video))
    source.open()
    frames = [source.read(1.0) for _ in range(4)]
    with pytest.raises(SourceExhausted):
        source.read(1.0)
    source.close()
    source.close()
    assert [f.frame_id for f in frames] == [0, 1, 2, 3]
    assert frames[0].pixel_format == "RGB8" and frames[0].image.shape == (48, 64, 3)
    reds = [int(f.image[:, :, 0].mean()) for f in frames]
    assert reds == sorted(reds) and abs(reds[3] - 180) < 10
    assert int(frames[3].image[:, :, 2].mean()) < 10


def test_loop_rewinds(video):
    source = OpenCVSource(str(video), loop=True)
    source.open()
    ids = [source.read(1.0).frame_id for _ in range(6)]
    assert ids == list(range(6))


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        OpenCVSource(str(tmp_path / "none.avi")).open()


def test_undecodable_file_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.avi"
    path.write_bytes(b"not a video at all")
    with pytest.raises(SourceUnavailable, match="could not open file"):
        OpenCVSource(str(path)).open()


def test_close_and_reopen_from_another_thread_never_break_a_read(video):
    """The daemon's acquire stage reads while the main thread may close (shutdown) the source:
    a read must see an open capture or a clear "not open", never a capture released under it."""
    import threading

    source = OpenCVSource(str(video), loop=True)
    source.open()
    errors = []
    stop = threading.Event()
    read_done = threading.Semaphore(0)  # paces the closes: each cycle starts after a read returned

    def reader():
        while not stop.is_set():
            try:
                source.read(1.0)
                read_done.release()
            except SourceExhausted:
                pass  # closed: "not open"
            except Exception as error:  # what an unserialised close causes
                errors.append(repr(error))

    thread = threading.Thread(target=reader)
    thread.start()
    cycles = 0
    for _ in range(200):
        if not read_done.acquire(timeout=10):
            break
        source.close()
        source.open()
        cycles += 1
    stop.set()
    thread.join(10)
    source.close()
    assert errors == [] and cycles == 200, f"the reader stopped reading after {cycles} close/open cycles"
