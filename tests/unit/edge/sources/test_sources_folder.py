import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.core.errors import ConfigError, InputDataError
from edge.sources.base import FrameError, SourceExhausted
from edge.sources.folder import FolderSource

ELPV_IMAGES = Path(__import__("elpv_dataset").__file__).parent / "data" / "images"


@pytest.fixture
def elpv_folder(tmp_path):
    images = sorted(ELPV_IMAGES.glob("*.png"))[:3]
    if len(images) < 3:
        pytest.skip(f"elpv-dataset images not found under {ELPV_IMAGES}")
    for index, image in enumerate(images):
        shutil.copy(image, tmp_path / f"cell_{index}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_reads_real_grayscale_images_in_name_order_as_mono8(elpv_folder):
    source = FolderSource(elpv_folder)
    source.open()
    frames = [source.read(1.0) for _ in range(3)]
    with pytest.raises(SourceExhausted):
        source.read(1.0)
    assert [f.frame_id for f in frames] == [0, 1, 2]
    assert [Path(f.meta["file"]).name for f in frames] == ["cell_0.png", "cell_1.png", "cell_2.png"]
    expected = cv2.imread(str(elpv_folder / "cell_1.png"), cv2.IMREAD_GRAYSCALE)
    assert frames[1].pixel_format == "Mono8" and frames[1].image.shape == (300, 300)
    assert np.array_equal(frames[1].image, expected)
    assert source.stats()["frames"] == 3


def test_colour_image_becomes_rgb8(tmp_path):
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[:] = (10, 20, 30)
    cv2.imwrite(str(tmp_path / "a.png"), bgr)
    source = FolderSource(tmp_path)
    source.open()
    frame = source.read(1.0)
    assert frame.pixel_format == "RGB8"
    assert frame.image[0, 0].tolist() == [30, 20, 10]


def claiming_size(png: bytes, width: int, height: int) -> bytes:
    """A real PNG whose IHDR chunk (CRC fixed up) claims `width`×`height` px."""
    import struct
    import zlib

    ihdr = png[12:16] + struct.pack(">II", width, height) + png[24:29]
    return png[:8] + png[8:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


@pytest.mark.parametrize("damage", ["truncated PNG", "zero bytes", "PNG claiming 60000x60000 px",
                                    "JPEG claiming 65000x65000 px"])
def test_a_corrupt_empty_or_oversized_file_is_one_frame_error_naming_it_and_the_next_read_continues(
        elpv_folder, damage):
    target = elpv_folder / "cell_1.png"
    if damage == "truncated PNG":
        target.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    elif damage == "zero bytes":
        target.write_bytes(b"")
    elif damage.startswith("PNG"):
        target.write_bytes(claiming_size(target.read_bytes(), 60000, 60000))
    else:
        ok, jpeg = cv2.imencode(".jpg", np.full((8, 8), 128, np.uint8))
        jpeg = bytearray(jpeg.tobytes())
        sof = jpeg.index(b"\xff\xc0")
        jpeg[sof + 5:sof + 9] = (65000).to_bytes(2, "big") * 2
        target.write_bytes(bytes(jpeg))
    source = FolderSource(elpv_folder)
    source.open()
    assert source.read(1.0).frame_id == 0
    with pytest.raises(FrameError, match="cell_1.png") as error:
        source.read(1.0)
    assert error.value.frame_id == 1
    assert source.read(1.0).frame_id == 2
    assert source.stats()["frame_errors"] == 1


def test_a_recording_index_that_is_not_utf8_is_an_input_error_naming_it(tmp_path):
    (tmp_path / "frames.jsonl").write_bytes(b'{"file": "\xff.png", "frame_id": 0}\n')
    with pytest.raises(InputDataError, match="frames.jsonl.*UTF-8"):
        FolderSource(tmp_path).open()


def test_loop_keeps_frame_ids_increasing(elpv_folder):
    source = FolderSource(elpv_folder, loop=True)
    source.open()
    ids = [source.read(1.0).frame_id for _ in range(7)]
    assert ids == [0, 1, 2, 3, 4, 5, 6]
    assert source.stats()["passes"] == 2


def test_empty_folder_fails_at_open(tmp_path):
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(InputDataError, match="no images"):
        FolderSource(tmp_path).open()


def test_missing_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        FolderSource(tmp_path / "nope").open()


def test_recording_replay_reuses_ids_and_timestamps_and_counts_gaps(tmp_path):
    for frame_id in (5, 6, 9):
        cv2.imwrite(str(tmp_path / f"f{frame_id}.png"), np.full((2, 2), frame_id, np.uint8))
    lines = [{"frame_id": i, "device_timestamp_ns": 1000 * i, "receive_ns": 1, "pixel_format": "Mono8",
              "file": f"f{i}.png"} for i in (5, 6, 9)]
    (tmp_path / "frames.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    source = FolderSource(tmp_path)
    source.open()
    frames = [source.read(1.0) for _ in range(3)]
    assert [(f.frame_id, f.device_timestamp_ns, int(f.image[0, 0])) for f in frames] == [
        (5, 5000, 5), (6, 6000, 6), (9, 9000, 9)]
    assert source.stats()["dropped"] == 2


def test_bad_recording_index_names_the_line(tmp_path):
    (tmp_path / "frames.jsonl").write_text('{"file": "a.png", "frame_id": 0}\nnot json\n')
    with pytest.raises(InputDataError, match="frames.jsonl:2"):
        FolderSource(tmp_path).open()


def test_fps_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="fps"):
        FolderSource(tmp_path, fps=0)


def _recording(folder: Path, frame_ids) -> None:
    for index, frame_id in enumerate(frame_ids):
        cv2.imwrite(str(folder / f"f{index}.png"), np.full((2, 2), index, np.uint8))
    (folder / "frames.jsonl").write_text("".join(json.dumps({"file": f"f{index}.png", "frame_id": frame_id}) + "\n"
                                                 for index, frame_id in enumerate(frame_ids)))


@pytest.mark.parametrize("frame_id", [-1, 2 ** 64, 1.5, "7", True, None])
def test_a_recording_with_a_frame_id_no_camera_counter_has_is_refused_naming_the_line(tmp_path, frame_id):
    _recording(tmp_path, [0, frame_id])
    with pytest.raises(InputDataError, match=r"frames.jsonl:2: frame_id .*expected an integer from 0 to 2\*\*64 - 1"):
        FolderSource(tmp_path).open()


@pytest.mark.parametrize("first", [2 ** 63 - 1, 2 ** 64 - 3])
def test_a_looped_recording_near_the_end_of_the_id_range_starts_again_from_its_own_ids(tmp_path, first):
    _recording(tmp_path, [first, first + 1])
    source = FolderSource(tmp_path, loop=True)
    source.open()
    ids = [source.read(1.0).frame_id for _ in range(6)]
    assert all(0 <= frame_id < 2 ** 64 for frame_id in ids)
    assert ids[:2] == [first, first + 1] and ids[2:] == ids[:2] * 2
    assert source.stats()["passes"] == 2 and source.stats()["dropped"] == 0


def _tiff(width: int, height: int) -> bytes:
    """A real TIFF (cv2 writes it) whose first image directory then claims `width`×`height` px."""
    import struct

    ok, data = cv2.imencode(".tiff", np.full((8, 8), 128, np.uint8))
    data = bytearray(data.tobytes())
    assert data[:4] == b"II*\x00"
    offset = struct.unpack("<I", data[4:8])[0]
    for index in range(struct.unpack("<H", data[offset:offset + 2])[0]):
        entry = offset + 2 + index * 12
        tag, kind = struct.unpack("<HH", data[entry:entry + 4])
        if tag in (256, 257):
            data[entry + 2:entry + 4] = struct.pack("<H", 4)  # LONG, whatever cv2 chose
            data[entry + 8:entry + 12] = struct.pack("<I", width if tag == 256 else height)
    return bytes(data)


def test_a_tiff_is_read_and_one_claiming_more_pixels_than_a_frame_may_have_is_refused_from_its_header(elpv_folder):
    for name in ("cell_0.png", "cell_1.png"):
        (elpv_folder / name).unlink()
    (elpv_folder / "cell_0.tif").write_bytes(_tiff(8, 8))
    (elpv_folder / "cell_1.tif").write_bytes(_tiff(20000, 20000))  # 593 bytes; 1.2 GB decoded
    source = FolderSource(elpv_folder)
    source.open()
    assert source.read(1.0).image.shape[:2] == (8, 8)
    with pytest.raises(FrameError, match="cell_1.tif: header claims 20000×20000 px"):
        source.read(1.0)
    assert source.read(1.0).frame_id == 2


def test_a_format_whose_size_is_not_read_before_decoding_is_one_frame_error(elpv_folder):
    ok, ppm = cv2.imencode(".ppm", np.full((8, 8, 3), 128, np.uint8))
    (elpv_folder / "cell_1.png").write_bytes(ppm.tobytes())  # a PPM named like a PNG
    source = FolderSource(elpv_folder)
    source.open()
    source.read(1.0)
    with pytest.raises(FrameError, match=r"cell_1.png: not a PNG, JPEG, BMP or TIFF image whose header states"):
        source.read(1.0)
    assert source.read(1.0).frame_id == 2


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_a_recording_entry_that_is_no_regular_file_is_one_frame_error_at_once(tmp_path, kind):
    import os

    _recording(tmp_path, [0, 1, 2])
    target = tmp_path / "f1.png"
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)  # no writer: a plain read would block for ever
    elif kind == "device":
        target.symlink_to("/dev/zero")  # a read that never ends
    else:
        target.mkdir()
    source = FolderSource(tmp_path)
    source.open()
    assert source.read(1.0).frame_id == 0
    with pytest.raises(FrameError, match=f"f1.png: a {'FIFO' if kind == 'fifo' else kind}, not a regular file"):
        source.read(1.0)
    assert source.read(1.0).frame_id == 2


def test_entries_of_a_plain_folder_that_are_not_replayed_are_named_in_one_warning(elpv_folder, caplog):
    import os

    (elpv_folder / "clip.gif").write_bytes(b"GIF89a")
    os.mkfifo(elpv_folder / "cell_9.png")
    (elpv_folder / ".hidden.png").write_bytes(b"")
    with caplog.at_level("WARNING", logger="edge.imaging.files"):
        source = FolderSource(elpv_folder)
        source.open()
    assert len(source.frame_files()) == 3
    (line,) = [r.getMessage() for r in caplog.records]
    assert "left out 3 entries" in line and "cell_9.png (not a regular file), clip.gif, notes.txt" in line
