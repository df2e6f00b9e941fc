"""decode_image: photo bytes in, an upright (H, W, 3) uint8 RGB array out, or an ImageError that
says what is wrong with the input."""

from __future__ import annotations

import contextlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.decode import MAX_PIXELS, WORKING_SIDE, ImageError, decode_image, decode_photo

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


# -- high bit depths: scaled by their range, not clipped at 255 ------------------------------------

def png_16_bit(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG (grey, or RGB for 3 channels) written by hand: Pillow writes RGB at 8 bits only."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = pixels.shape[:2]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 16, 2 if pixels.ndim == 3 else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def lfw_grey(lfw_pixels: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(lfw_pixels).convert("L"))


def test_16_bit_grey_png_decodes_to_the_same_greys_as_the_8_bit_photo(lfw_grey: np.ndarray) -> None:
    data = png_16_bit(lfw_grey.astype(np.uint16) * 257)  # 0..255 -> 0..65535
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "I;16"
    pixels = decode_image(data)
    assert pixels.shape == (250, 250, 3)
    for channel in range(3):
        assert np.array_equal(pixels[..., channel], lfw_grey)  # not clipped to white


@pytest.mark.parametrize("mode", ["I;16B", "I", "F"])
def test_16_and_32_bit_grey_tiffs_are_scaled_by_their_range(lfw_grey: np.ndarray, mode: str) -> None:
    if mode == "I;16B":
        image = Image.frombytes(mode, (250, 250), (lfw_grey.astype(np.uint16) * 257).astype(">u2").tobytes())
    elif mode == "I":  # 32-bit integers holding 16-bit values, as older Pillow read 16-bit PNGs
        image = Image.fromarray(lfw_grey.astype(np.int32) * 257, "I")
    else:  # floats from 0 to 1
        image = Image.fromarray(lfw_grey.astype(np.float32) / 255, "F")
    data = encode(image, "TIFF")
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.mode == mode
    assert np.array_equal(decode_image(data)[..., 0], lfw_grey)


def test_16_bit_rgb_png_decodes_to_the_8_bit_colours(lfw_pixels: np.ndarray) -> None:
    assert np.array_equal(decode_image(png_16_bit(lfw_pixels.astype(np.uint16) * 257)), lfw_pixels)


# -- large photos: decoded at the working size, with the original's size ---------------------------

def large_photo(lfw_pixels: np.ndarray, size: tuple[int, int], face_at: tuple[int, int], scale: int) -> Image.Image:
    photo = Image.new("RGB", size, (90, 110, 130))
    photo.paste(Image.fromarray(lfw_pixels).resize((250 * scale, 250 * scale)), face_at)
    return photo


def test_a_photo_up_to_the_working_size_is_decoded_at_its_own_size(lfw_photo: Path, lfw_pixels: np.ndarray) -> None:
    photo = decode_photo(lfw_photo.read_bytes())
    assert (photo.width, photo.height) == (250, 250) and photo.scale == (1.0, 1.0)
    assert np.array_equal(photo.pixels, lfw_pixels)
    edge = encode(Image.new("RGB", (WORKING_SIDE, 300)), "PNG")
    assert decode_photo(edge).pixels.shape == (300, WORKING_SIDE, 3)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_large_photo_is_decoded_at_the_working_size_keeping_its_aspect(lfw_pixels: np.ndarray, fmt: str) -> None:
    data = encode(large_photo(lfw_pixels, (7000, 3500), (1000, 500), 8), fmt)
    photo = decode_photo(data)
    assert photo.pixels.shape == (1000, WORKING_SIDE, 3)
    assert (photo.width, photo.height) == (7000, 3500)
    assert photo.scale == (3.5, 3.5)
    # The face lands where it was pasted, scaled: its centre pixel is the LFW photo's centre pixel.
    centre = photo.to_original(np.array([[(1000 + 1000) / 3.5, (500 + 1000) / 3.5]]))
    np.testing.assert_allclose(centre, [[2000 + 1.25, 1500 + 1.25]], atol=0.01)
    x, y = ((1000 + 125 * 8) / 3.5, (500 + 125 * 8) / 3.5)
    assert np.abs(photo.pixels[int(y), int(x)].astype(int) - lfw_pixels[125, 125]).max() < 20
    # Full size when asked for it.
    assert decode_image(data).shape == (3500, 7000, 3)


def test_a_large_sideways_photo_comes_out_upright_with_its_upright_size(lfw_pixels: np.ndarray) -> None:
    stored = large_photo(lfw_pixels, (6000, 3000), (200, 200), 4)  # stored 6000 wide, 3000 high
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    photo = decode_photo(encode(stored, "JPEG", exif=exif, quality=90))
    assert (photo.width, photo.height) == (3000, 6000)
    assert photo.pixels.shape == (WORKING_SIDE, 1000, 3)
    small = np.asarray(stored.resize((2000, 1000)))
    assert np.abs(photo.pixels.astype(int) - np.rot90(small, k=-1)).mean() < 3


def test_animated_gif_decodes_its_first_frame(lfw_pixels: np.ndarray) -> None:
    first = Image.fromarray(lfw_pixels).convert("P", palette=Image.Palette.ADAPTIVE)
    buffer = io.BytesIO()
    first.save(buffer, "GIF", save_all=True, append_images=[Image.new("P", (250, 250), 0)])
    assert np.abs(decode_image(buffer.getvalue()).astype(int) - np.asarray(first.convert("RGB"))).mean() < 1


def test_cmyk_jpeg_decodes_to_its_rgb_colours(lfw_pixels: np.ndarray) -> None:
    cmyk = encode(Image.fromarray(lfw_pixels).convert("CMYK"), "JPEG", quality=95)
    assert np.abs(decode_image(cmyk).astype(int) - lfw_pixels).mean() < 2


def test_a_header_claiming_100000x100000_pixels_is_refused_as_too_large() -> None:
    data = bytearray(png_16_bit(np.zeros((1, 1), np.uint16)))
    data[16:24] = struct.pack(">II", 100_000, 100_000)  # IHDR's width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # and its checksum
    error = assert_image_error(data, "too large")
    assert str(MAX_PIXELS) in str(error)


def test_bytes_no_decoder_expects_give_an_image_error_not_a_crash(lfw_photo: Path) -> None:
    data = bytearray(lfw_photo.read_bytes())
    rng = np.random.default_rng(8)
    for _ in range(30):  # the JPEG with bytes past its header overwritten at random
        spoiled = bytearray(data)
        for at in rng.integers(20, len(data), size=10):
            spoiled[at] = rng.integers(0, 256)
        with contextlib.suppress(ImageError):  # an ImageError is a right answer; any other exception is not
            assert decode_image(bytes(spoiled)).shape == (250, 250, 3)
