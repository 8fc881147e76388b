import cv2
import numpy as np
import pytest

from edge.core.errors import InputDataError
from edge.imaging.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec, preprocess, resize_to

SPEC = PreprocessSpec(64)


def expected_level(level: int) -> np.ndarray:
    return (level / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)


@pytest.mark.parametrize("level", [0, 1, 128, 254, 255])
def test_uniform_mono_image_normalises_to_the_imagenet_formula(level):
    batch = preprocess([np.full((100, 80), level, np.uint8)], SPEC)
    assert batch.shape == (1, 3, 64, 64) and batch.dtype == np.float32
    assert np.allclose(batch[0].mean(axis=(1, 2)), expected_level(level), atol=1e-6)
    assert np.ptp(batch[0], axis=(1, 2)).max() == 0


def test_mono_and_its_replicated_rgb_give_identical_tensors():
    mono = np.random.default_rng(0).integers(0, 256, (300, 500), dtype=np.uint8)
    rgb = np.repeat(mono[:, :, None], 3, axis=2)
    single_channel = mono[:, :, None]
    reference = preprocess([rgb], SPEC)
    assert np.array_equal(preprocess([mono], SPEC), reference)
    assert np.array_equal(preprocess([single_channel], SPEC), reference)


def test_rgb_channels_keep_their_order():
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 0, 128
    channels = preprocess([image], SPEC)[0, :, 0, 0]
    assert np.allclose(channels, [expected_level(255)[0], expected_level(0)[1], expected_level(128)[2]], atol=1e-6)


def test_shrinking_averages_areas_so_fine_detail_does_not_alias():
    checkerboard = (np.indices((256, 256)).sum(axis=0) % 2 * 255).astype(np.uint8)
    red = preprocess([checkerboard], SPEC)[0, 0]
    assert np.allclose(red, (127.5 / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], atol=0.01)


def test_batch_of_different_sizes():
    images = [np.zeros((30, 40), np.uint8), np.full((700, 500, 3), 255, np.uint8)]
    batch = preprocess(images, SPEC)
    assert np.allclose(batch[0].mean(axis=(1, 2)), expected_level(0), atol=1e-6)
    assert np.allclose(batch[1].mean(axis=(1, 2)), expected_level(255), atol=1e-6)


@pytest.mark.parametrize("image, expected", [
    (np.zeros((8, 8), np.uint16), "dtype uint16"),
    (np.zeros((8, 8, 4), np.uint8), "shape (8, 8, 4)"),
    (np.zeros((0, 8), np.uint8), "empty image"),
    ([[0, 1]], "dtype list"),
])
def test_bad_images_are_refused_with_what_was_expected(image, expected):
    with pytest.raises(InputDataError, match="expected|empty") as error:
        preprocess([np.zeros((8, 8), np.uint8), image], SPEC)
    assert expected in str(error.value)


def _textured(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    return cv2.GaussianBlur(rng.integers(0, 256, (height, width), dtype=np.uint8), (0, 0), 1.5)


@pytest.mark.parametrize("shape", [(300, 300), (511, 700), (1024, 1280), (512, 768)],
                         ids=["under 2x", "under 2x one way", "whole factors", "whole factors 2x3"])
def test_frames_without_block_averaging_are_one_area_resize(shape):
    image = _textured(*shape)
    expected = cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA)
    assert np.array_equal(resize_to(image, (256, 256)), expected)


@pytest.mark.parametrize("shape", [(600, 600), (1200, 1920), (2048, 2448), (513, 700)])
def test_large_frames_averaged_in_blocks_first_stay_within_a_grey_level_of_one_area_resize(shape, elpv_images):
    # A real solar cell scaled up to the sensor size: what a camera delivers.
    cell = cv2.imread(str(elpv_images["good"][0]), cv2.IMREAD_GRAYSCALE)
    image = cv2.resize(cell, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    single = cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA).astype(int)
    difference = np.abs(resize_to(image, (256, 256)).astype(int) - single)
    assert difference.mean() < 1.0 and difference.max() <= 16


@pytest.mark.parametrize("channels", [1, 3])
def test_block_averaging_drops_no_pixel_at_the_padded_edges(channels):
    # 1201×1923 with blocks of 4: one row and one column are padded; a bright last row and last
    # column must still brighten the output's last row and column.
    image = np.full((1201, 1923) + ((3,) if channels == 3 else ()), 50, np.uint8)
    image[-1], image[:, -1] = 255, 255
    out = resize_to(image, (256, 256)).astype(int)
    assert out[-1].min() > 50 and out[:, -1].min() > 50
    assert out[:-1, :-1].max() == 50


def test_a_non_square_input_keeps_height_and_width_apart():
    # A tall frame into a wide input: rows and columns must not be swapped on the way.
    spec = PreprocessSpec((64, 192))
    image = np.zeros((300, 100), np.uint8)
    image[:150] = 255  # top half white
    batch = preprocess([image], spec)
    assert batch.shape == (1, 3, 64, 192)
    assert batch[0, 0, :30].min() > batch[0, 0, 34:].max()


def test_the_preprocessing_description_round_trips_a_non_square_input():
    assert PreprocessSpec.from_dict(PreprocessSpec((64, 192)).to_dict()).input_size == (64, 192)
