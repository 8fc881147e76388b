import numpy as np
import pytest

from edge.sources import pixel_formats
from edge.core.errors import InputDataError


def pack_lsb_first(values: np.ndarray, bits: int) -> bytes:
    """Reference GenICam packer: the values as one little-endian bit stream."""
    stream = 0
    for index, value in enumerate(values.tolist()):
        stream |= int(value) << (index * bits)
    return stream.to_bytes(-(-values.size * bits // 8), "little")


def test_mono8_copies_and_drops_line_padding():
    raw = np.array([1, 2, 3, 99, 4, 5, 6, 99], dtype=np.uint8)
    image = pixel_formats.convert(raw, 3, 2, "Mono8", padding_x=1)
    assert image.tolist() == [[1, 2, 3], [4, 5, 6]]
    raw[0] = 200
    assert image[0, 0] == 1, "the image must not be a view of the producer's buffer"


@pytest.mark.parametrize("name,bits", [("Mono10", 10), ("Mono12", 12), ("Mono16", 16)])
def test_mono_16bit_containers_shift_to_8bit(name, bits):
    full = (1 << bits) - 1
    values = np.array([0, full, 1 << (bits - 1), 3 << (bits - 8)], dtype="<u2")
    image = pixel_formats.convert(values.tobytes(), 2, 2, name)
    assert image.dtype == np.uint8
    assert image.tolist() == [[0, 255], [128, 3]]


def test_mono10_ignores_garbage_in_unused_high_bits():
    values = np.array([0xFC00 | 1023], dtype="<u2")
    assert pixel_formats.convert(values.tobytes(), 1, 1, "Mono10")[0, 0] == 255


def test_mono10p_unpacks_known_bytes():
    # Four pixels 0x3FF, 0x000, 0x155, 0x2AA packed LSB first into five bytes.
    packed = pack_lsb_first(np.array([0x3FF, 0x000, 0x155, 0x2AA]), 10)
    assert packed == bytes([0xFF, 0x03, 0x50, 0x95, 0xAA])
    assert pixel_formats.unpack_mono10p(np.frombuffer(packed, np.uint8), 4).tolist() == [0x3FF, 0, 0x155, 0x2AA]
    assert pixel_formats.convert(packed, 2, 2, "Mono10p").tolist() == [[255, 0], [0x155 >> 2, 0x2AA >> 2]]


@pytest.mark.parametrize("name,bits,width,height", [("Mono10p", 10, 7, 3), ("Mono12p", 12, 5, 3)])
def test_packed_mono_roundtrips_random_values(name, bits, width, height):
    rng = np.random.default_rng(1)
    values = rng.integers(0, 1 << bits, size=width * height)
    image = pixel_formats.convert(pack_lsb_first(values, bits), width, height, name)
    assert image.shape == (height, width)
    assert np.array_equal(image.reshape(-1), (values >> (bits - 8)).astype(np.uint8))


def test_mono12p_known_bytes():
    packed = bytes([0x21, 0x43, 0x65])  # pixels 0x321 and 0x654
    assert pixel_formats.unpack_mono12p(np.frombuffer(packed, np.uint8), 2).tolist() == [0x321, 0x654]


def test_packed_mono_accepts_harvesters_expanded_uint16():
    values = np.array([1023, 4, 512, 0], dtype=np.uint16)
    assert pixel_formats.convert(values, 2, 2, "Mono10p").tolist() == [[255, 1], [128, 0]]


@pytest.mark.parametrize(
    "name,pixel",
    [("RGB8", [10, 20, 30]), ("BGR8", [30, 20, 10]), ("RGBa8", [10, 20, 30, 77]), ("BGRa8", [30, 20, 10, 77])],
)
def test_colour_formats_become_rgb8(name, pixel):
    raw = np.array(pixel * 6, dtype=np.uint8)
    image = pixel_formats.convert(raw, 3, 2, name)
    assert image.shape == (2, 3, 3)
    assert image.flags["C_CONTIGUOUS"]
    assert (image == np.array([10, 20, 30], np.uint8)).all()


BAYER_OFFSETS = {  # GenICam name → (row, col) of R and of B in the top-left 2×2 cell
    "BayerRG8": ((0, 0), (1, 1)),
    "BayerBG8": ((1, 1), (0, 0)),
    "BayerGR8": ((0, 1), (1, 0)),
    "BayerGB8": ((1, 0), (0, 1)),
}


@pytest.mark.parametrize("name", sorted(BAYER_OFFSETS))
def test_bayer_demosaic_recovers_a_known_colour(name):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:] = (200, 100, 40)
    (r_row, r_col), (b_row, b_col) = BAYER_OFFSETS[name]
    mosaic = rgb[:, :, 1].copy()
    mosaic[r_row::2, r_col::2] = rgb[r_row::2, r_col::2, 0]
    mosaic[b_row::2, b_col::2] = rgb[b_row::2, b_col::2, 2]
    image = pixel_formats.convert(mosaic.tobytes(), 16, 16, name)
    assert image.shape == (16, 16, 3)
    interior = image[2:-2, 2:-2].reshape(-1, 3)
    assert np.abs(interior.astype(int) - [200, 100, 40]).max() <= 1


def test_unsupported_format_names_it_and_lists_supported():
    with pytest.raises(InputDataError) as error:
        pixel_formats.convert(b"\0" * 16, 2, 2, "YCbCr422_8")
    message = str(error.value)
    assert "YCbCr422_8" in message and "Mono10p" in message and "BayerRG8" in message


def test_short_buffer_is_a_clear_error():
    with pytest.raises(InputDataError, match="RGB8 buffer holds 5 bytes, expected at least 12"):
        pixel_formats.convert(b"\0" * 5, 2, 2, "RGB8")


def test_output_format():
    assert pixel_formats.output_format("Mono12p") == "Mono8"
    assert pixel_formats.output_format("BayerGB8") == "RGB8"


@pytest.mark.parametrize("name,channels", [("RGB8", 3), ("BGR8", 3), ("RGBa8", 4), ("BGRa8", 4)])
def test_colour_formats_with_line_padding_keep_pixel_positions(name, channels):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(3, 5, 3), dtype=np.uint8)
    pixels = rgb[:, :, ::-1] if name.startswith("BGR") else rgb
    if channels == 4:
        pixels = np.concatenate([pixels, np.full((3, 5, 1), 9, np.uint8)], axis=2)
    rows = np.concatenate([pixels.reshape(3, -1), np.full((3, 2), 77, np.uint8)], axis=1)
    image = pixel_formats.convert(rows.tobytes(), 5, 3, name, padding_x=2)
    assert np.array_equal(image, rgb)
