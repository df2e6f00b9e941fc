"""Safe image decoding: bytes in, an RGB uint8 array out, or an ImageError that names the problem."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 50_000_000
MIN_SIDE = 16


class ImageError(ValueError):
    """The input is not a usable photo; the message says why."""


def decode_image(data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
                 min_side: int = MIN_SIDE) -> np.ndarray:
    """Decode photo bytes to an (H, W, 3) uint8 RGB array, upright according to its EXIF orientation.

    Raises ImageError for empty, oversized, truncated, non-image or too-small input.
    """
    if len(data) == 0:
        raise ImageError("empty file (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError(f"file too large: {len(data)} bytes, limit {max_bytes}")
    try:
        with warnings.catch_warnings():
            # Pillow warns before it raises on decompression bombs; we enforce our own limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"image too large: {width}x{height} pixels, limit {max_pixels}")
            image.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image: the bytes are in no format Pillow can read") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"image too large: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"corrupt or truncated image: {err}") from None
    if min(width, height) < min_side:
        raise ImageError(f"image too small: {width}x{height} pixels, need at least {min_side} on each side")
    image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        # Flatten transparency onto white rather than black, as a viewer shows it.
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            image = background
        else:
            image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)
