"""decode_image: photo bytes in, an upright (H, W, 3) uint8 RGB array out, or an ImageError that
says what is wrong with the input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.decode import MAX_PIXELS, ImageError, decode_image

EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def lfw_photo(lfw_dir: Path) -> Path:
    return lfw_dir / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"


@pytest.fixture(scope="module")
def lfw_pixels(lfw_photo: Path) -> np.ndarray:
    """The photo as Pillow decodes it, for comparison."""
    with Image.open(lfw_photo) as image:
        return np.asarray(image.convert("RGB"))


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_lfw_photo_decodes_to_250x250_rgb_uint8(lfw_photo: Path, lfw_pixels: np.ndarray) -> None:
    pixels = decode_image(lfw_photo.read_bytes())
    assert pixels.shape == (250, 250, 3)
    assert pixels.dtype == np.uint8
    assert np.array_equal(pixels, lfw_pixels)
    assert pixels.std() > 20  # a photo, not a blank


def test_exif_orientation_6_is_applied_so_the_photo_comes_out_upright(lfw_pixels: np.ndarray) -> None:
    # A landscape crop stored sideways: orientation 6 says "rotate 90 degrees clockwise to display".
    stored = Image.fromarray(lfw_pixels).crop((0, 40, 200, 160))  # 200 wide, 120 high
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    data = encode(stored, "JPEG", exif=exif, quality=95)
    with Image.open(io.BytesIO(data)) as raw:
        as_stored = np.asarray(raw.convert("RGB"))
    assert as_stored.shape == (120, 200, 3)

    pixels = decode_image(data)
    assert pixels.shape == (200, 120, 3)
    assert np.array_equal(pixels, np.rot90(as_stored, k=-1))  # clockwise


def test_photo_without_exif_orientation_is_left_as_stored(lfw_pixels: np.ndarray) -> None:
    data = encode(Image.fromarray(lfw_pixels).crop((0, 40, 200, 160)), "PNG")
    assert decode_image(data).shape == (120, 200, 3)


def test_rgba_png_becomes_rgb_with_transparency_flattened_onto_white(lfw_pixels: np.ndarray) -> None:
    rgba = np.dstack([lfw_pixels, np.full((250, 250), 255, np.uint8)])
    rgba[:, :125, 3] = 0  # left half fully transparent
    pixels = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert pixels.shape == (250, 250, 3)
    assert np.all(pixels[:, :125] == 255)
    assert np.array_equal(pixels[:, 125:], lfw_pixels[:, 125:])


def test_grayscale_png_becomes_rgb_with_equal_channels(lfw_pixels: np.ndarray) -> None:
    gray = Image.fromarray(lfw_pixels).convert("L")
    pixels = decode_image(encode(gray, "PNG"))
    assert pixels.shape == (250, 250, 3)
    for channel in range(3):
        assert np.array_equal(pixels[..., channel], np.asarray(gray))


def test_palette_png_becomes_rgb_with_the_palette_colours(lfw_pixels: np.ndarray) -> None:
    palette = Image.fromarray(lfw_pixels).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pixels = decode_image(encode(palette, "PNG"))
    assert pixels.shape == (250, 250, 3)
    assert np.array_equal(pixels, np.asarray(palette.convert("RGB")))


def test_palette_png_with_a_transparent_colour_flattens_it_onto_white() -> None:
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 0, 0, 200, 30, 30])  # colour 0 black (transparent), colour 1 red
    palette.paste(1, (20, 0, 40, 40))
    pixels = decode_image(encode(palette, "PNG", transparency=0))
    assert np.all(pixels[:, :20] == 255)
    assert np.all(pixels[:, 20:] == [200, 30, 30])


def assert_image_error(data: bytes, *words: str, **limits) -> ImageError:
    with pytest.raises(ImageError) as raised:
        decode_image(data, **limits)
    message = str(raised.value).lower()
    assert any(word in message for word in words), f"{message!r} names none of {words}"
    return raised.value


def test_zero_byte_file_is_refused_as_empty() -> None:
    assert_image_error(b"", "empty")


def test_text_file_is_refused_as_not_an_image() -> None:
    assert_image_error(b"name,box\nalice,1 2 3 4\n" * 20, "not an image")


def test_truncated_jpeg_is_refused_as_truncated_or_corrupt(lfw_photo: Path) -> None:
    data = lfw_photo.read_bytes()
    assert_image_error(data[: len(data) // 2], "truncated", "corrupt")


def test_image_error_is_a_value_error() -> None:
    assert issubclass(ImageError, ValueError)


def test_1x1_image_is_refused_as_too_small() -> None:
    assert_image_error(encode(Image.new("RGB", (1, 1), "white"), "PNG"), "too small")


def test_image_above_max_pixels_is_refused_as_too_large(lfw_photo: Path) -> None:
    data = lfw_photo.read_bytes()
    assert decode_image(data, max_pixels=250 * 250).shape == (250, 250, 3)  # at the limit: fine
    error = assert_image_error(data, "too large", max_pixels=250 * 250 - 1)
    assert "250x250" in str(error)


def test_image_above_the_default_pixel_limit_is_refused_as_too_large() -> None:
    # A tiny file that would decode to 8000x7000 = 56 million pixels (a decompression bomb).
    assert MAX_PIXELS < 8000 * 7000
    data = encode(Image.new("1", (8000, 7000)), "PNG")
    assert len(data) < 100_000
    assert_image_error(data, "too large")


def test_file_above_max_bytes_is_refused_as_too_large(lfw_photo: Path) -> None:
    data = lfw_photo.read_bytes()
    assert_image_error(data, "too large", max_bytes=len(data) - 1)
