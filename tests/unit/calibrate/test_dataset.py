import shutil

import cv2
import numpy as np
import pytest

from calibrate.dataset import list_images, read_image, read_mask, evaluation_samples, training_folder
from edge.core.errors import InputDataError


def write_png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def make_mvtec(root, elpv_images, with_truth=True):
    goods, defects = elpv_images["good"], elpv_images["defect"]
    for path in goods[:3]:
        write_png(root / "train" / "good" / path.name, cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
    for path in goods[3:5]:
        write_png(root / "test" / "good" / path.name, cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
    for path in defects[:2]:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        write_png(root / "test" / "crack" / path.name, image)
        if with_truth:
            mask = np.zeros_like(image)
            mask[10:20, 10:20] = 255
            write_png(root / "ground_truth" / "crack" / f"{path.stem}_mask.png", mask)
    return root


def test_reads_mvtec_layout_with_labels_and_masks(tmp_path, elpv_images):
    root = make_mvtec(tmp_path / "cells", elpv_images)
    samples = evaluation_samples(root)
    assert [s.label for s in samples] == [1, 1, 0, 0]
    assert {s.defect_class for s in samples} == {"crack", "good"}
    crack = [s for s in samples if s.label == 1][0]
    mask = read_mask(crack.mask_path, read_image(crack.path).shape)
    assert mask.dtype == bool and mask.sum() == 100
    assert training_folder(root) == root / "train" / "good"
    assert training_folder(root / "train" / "good") == root / "train" / "good"


def test_class_without_ground_truth_is_allowed_for_image_metrics(tmp_path, elpv_images):
    root = make_mvtec(tmp_path / "cells", elpv_images, with_truth=False)
    defects = [s for s in evaluation_samples(root) if s.label == 1]
    assert defects and all(s.mask_path is None for s in defects)


def test_grayscale_and_colour_images_read_as_mono8_and_rgb8(tmp_path):
    colour = np.zeros((5, 7, 3), np.uint8)
    colour[..., 0] = 200  # blue in OpenCV's BGR order
    write_png(tmp_path / "c.png", colour)
    image = read_image(tmp_path / "c.png")
    assert image.shape == (5, 7, 3) and image[0, 0].tolist() == [0, 0, 200]
    write_png(tmp_path / "g.png", np.full((4, 6), 9, np.uint8))
    assert read_image(tmp_path / "g.png").shape == (4, 6)
    deep = np.full((3, 3), 0x1234, np.uint16)
    write_png(tmp_path / "d.png", deep)
    assert read_image(tmp_path / "d.png")[0, 0] == 0x12


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputDataError, match="no images"):
        list_images(tmp_path)


def test_non_image_files_are_skipped_with_a_warning(tmp_path, elpv_images, caplog):
    shutil.copy(elpv_images["good"][0], tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.png"]
    assert "labels.csv" in caplog.text


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InputDataError, match="broken.png"):
        read_image(tmp_path / "broken.png")


def test_mask_of_another_size_is_refused(tmp_path, elpv_images):
    write_png(tmp_path / "m.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(InputDataError, match="does not match"):
        read_mask(tmp_path / "m.png", (300, 300))


def test_missing_mask_for_a_defect_image_is_a_clear_error(tmp_path, elpv_images):
    root = make_mvtec(tmp_path / "cells", elpv_images)
    next((root / "ground_truth" / "crack").iterdir()).unlink()
    with pytest.raises(InputDataError, match="has no mask"):
        evaluation_samples(root)
