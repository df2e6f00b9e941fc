"""Annotated copies of photos: every face boxed and labelled with its name (or `unknown`) and confidence,
as the original notebook showed its predictions beside the photos."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

from pipeline.decode import decode_photo

KNOWN_COLOUR, UNKNOWN_COLOUR = (46, 204, 113), (231, 76, 60)


def annotate(data: bytes, result: dict, quality: int = 90) -> bytes:
    """A JPEG of the photo (at the decoder's working size, upright) with the faces of its recognition
    result (pipeline.recognize) drawn on it. Raises ImageError if the photo cannot be decoded."""
    photo = decode_photo(data)
    image = Image.fromarray(photo.pixels)
    draw = ImageDraw.Draw(image)
    x_scale, y_scale = photo.scale
    line = max(2, round(max(image.size) / 300))
    font = ImageFont.load_default(size=max(12, round(max(image.size) / 40)))
    for face in result.get("faces", []):
        x, y, width, height = face["box"]
        box = (x / x_scale, y / y_scale, (x + width) / x_scale, (y + height) / y_scale)
        colour = UNKNOWN_COLOUR if face["identity"] == "unknown" else KNOWN_COLOUR
        draw.rectangle(box, outline=colour, width=line)
        label = f"{face['identity']} {face['confidence']:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), label, font=font)
        top_edge = max(0, box[1] - (bottom - top) - 2 * line)  # above the box, or inside it at the top
        draw.rectangle((box[0], top_edge, box[0] + (right - left) + 2 * line, top_edge + (bottom - top) + 2 * line),
                       fill=colour)
        draw.text((box[0] + line, top_edge + line - (top - box[1])), label, fill=(255, 255, 255), font=font)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()
