"""What a photo's first bytes say, without decoding it: its format, size and orientation, and whether the
pipeline would refuse it. A dry run of a bulk job reads this for every photo (one ranged read each)."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from pipeline.decode import EXIF_ORIENTATION, MAX_BYTES, MAX_PIXELS, MIN_SIDE

HEAD_BYTES = 256 * 1024  # enough for a JPEG's header and its EXIF block, which precede the pixels


def photo_header(head: bytes, size: int) -> dict:
    """{"format", "width", "height", "orientation", "bytes", "megapixels"} of a photo of `size` bytes whose
    first bytes are `head`, or {"error": ...} naming why the pipeline would refuse it."""
    if size > MAX_BYTES:
        return {"bytes": size, "error": f"the photo is {size / 2**20:.0f} MB: larger than {MAX_BYTES // 2**20} MB"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(head))
            width, height = image.size
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return {"bytes": size, "error": f"not a photo Pillow can read ({type(err).__name__})"}
    header = {"format": image.format, "width": width, "height": height, "orientation": orientation,
              "bytes": size, "megapixels": round(width * height / 1e6, 3)}
    if width * height > MAX_PIXELS:
        header["error"] = f"{width}x{height} pixels: more than {MAX_PIXELS // 1_000_000} megapixels"
    elif min(width, height) < MIN_SIDE:
        header["error"] = f"{width}x{height} pixels: a side shorter than {MIN_SIDE}"
    return header
