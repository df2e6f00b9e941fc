"""Hostile and unusual photos, made here and never stored in the repository, in one stream with good LFW
photos between them: each gets the right answer (its face, at the right place) or an error that names
its problem, and the photos around it are untouched. Real MTCNN and ResNet on CPU.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.faces import FacePipeline, PhotoFaces

EXIF_ORIENTATION = 0x0112
SUBJECT = "Aaron_Eckhart/Aaron_Eckhart_0001.jpg"
GOOD = ["Serena_Williams/Serena_Williams_0001.jpg", "Tony_Blair/Tony_Blair_0001.jpg",
        "Colin_Powell/Colin_Powell_0001.jpg"]


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_16_bit(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG (grey, or RGB when pixels has 3 channels) written by hand: Pillow saves 16-bit grey
    only, and writes RGB at 8 bits."""
    height, width = pixels.shape[:2]
    colour_type = 2 if pixels.ndim == 3 else 0
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))


def bomb_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels in a hundred bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 100))
            + png_chunk(b"IEND", b""))


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def hostile_set(lfw_dir: Path) -> dict[str, tuple[bytes, dict]]:
    """name -> (bytes, what it must get). What it must get is {"error": words one of which the error
    names} or {"face": where the subject's face is, as a function of the subject's box in the plain
    photo, "like": the photo whose subject embedding it must match (cosine > 0.99), "size": (w, h)}."""
    jpeg = (lfw_dir / SUBJECT).read_bytes()
    with Image.open(lfw_dir / SUBJECT) as opened:
        rgb = opened.convert("RGB")
    pixels = np.asarray(rgb)
    grey = rgb.convert("L")
    same = lambda box: box  # noqa: E731 - the face stays where it was

    sideways = rgb.transpose(Image.Transpose.ROTATE_90)  # stored turned left; orientation 6 turns it back
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6

    frames = [rgb.convert("P", palette=Image.Palette.ADAPTIVE), Image.new("P", (250, 250), 0)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)

    big = Image.new("RGB", (7000, 5000), (90, 110, 130))  # 35 megapixels, under the 50 megapixel limit
    big.paste(rgb.resize((1500, 1500), Image.Resampling.BICUBIC), (4000, 2500))
    wide = Image.new("RGB", (9000, 1200), (200, 190, 170))
    wide.paste(rgb.resize((1000, 1000), Image.Resampling.BICUBIC), (6000, 100))

    return {
        "zero.jpg": (b"", {"error": ("empty",)}),
        "notes.jpg": (b"name,score\nalice,0.9\n" * 50, {"error": ("not an image",)}),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], {"error": ("truncated", "corrupt")}),
        "bomb-header.png": (bomb_header(100_000, 100_000), {"error": ("too large",)}),
        "bomb-zeros.png": (encode(Image.new("L", (8000, 7000)), "PNG", optimize=True), {"error": ("too large",)}),
        "dot.png": (encode(Image.new("RGB", (1, 1), "white"), "PNG"), {"error": ("too small",)}),
        "animated.gif": (gif.getvalue(), {"face": same, "like": "palette.png", "size": (250, 250)}),
        "cmyk.jpg": (encode(rgb.convert("CMYK"), "JPEG", quality=95), {"face": same, "like": SUBJECT}),
        "grey.jpg": (encode(grey, "JPEG", quality=95), {"face": same, "like": "grey.png"}),
        "grey.png": (encode(grey, "PNG"), {"face": same}),
        "grey-16-bit.png": (png_16_bit(np.asarray(grey).astype(np.uint16) * 257), {"face": same, "like": "grey.png"}),
        "rgb-16-bit.png": (png_16_bit(pixels.astype(np.uint16) * 257), {"face": same, "like": SUBJECT}),
        "palette.png": (encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), {"face": same}),
        "exif-rotated.jpg": (encode(sideways, "JPEG", quality=95, exif=exif), {"face": same, "like": SUBJECT}),
        "large.jpg": (encode(big, "JPEG", quality=90),
                      {"face": lambda b: (4000 + 6 * b[0], 2500 + 6 * b[1], 6 * b[2], 6 * b[3]), "size": (7000, 5000)}),
        "wide.png": (encode(wide, "PNG"),
                     {"face": lambda b: (6000 + 4 * b[0], 100 + 4 * b[1], 4 * b[2], 4 * b[3]), "size": (9000, 1200)}),
        "sliver.png": (encode(Image.new("RGB", (40_000, 20), "grey"), "PNG"), {"faces": 0, "size": (40_000, 20)}),
    }


@pytest.fixture(scope="module")
def streamed(lfw_dir: Path, face_pipeline: FacePipeline) -> tuple[dict[str, PhotoFaces], list[PhotoFaces], float]:
    """The hostile set, with a good photo after each hostile one, in one stream of batches of 8."""
    hostile = hostile_set(lfw_dir)
    good = [(key, (lfw_dir / key).read_bytes()) for key in [SUBJECT, *GOOD]]
    photos = []
    for i, (name, (data, _)) in enumerate(hostile.items()):
        photos += [(name, data), good[i % len(good)]]
    photos.append(good[0])
    start = time.perf_counter()
    results = list(face_pipeline.process_stream(iter(photos), batch_size=8))
    seconds = time.perf_counter() - start
    assert [r.key for r in results] == [key for key, _ in photos]  # one result per photo, in order
    return {r.key: r for r in results}, results, seconds


def test_every_hostile_photo_gets_its_face_or_an_error_that_names_its_problem(
        streamed, lfw_dir: Path) -> None:
    results, _, seconds = streamed
    subject = results[SUBJECT]
    assert subject.error is None and subject.faces
    plain_box = subject.faces[subject.main_face].box
    table = []
    for name, (_, expected) in hostile_set(lfw_dir).items():
        result = results[name]
        table.append(f"{name:18} {result.error or f'{len(result.faces)} face(s) in {result.size}'}")
        if "error" in expected:
            assert result.error and any(w in result.error.lower() for w in expected["error"]), (name, result.error)
            assert result.faces == [] and len(result.embeddings) == 0
            continue
        assert result.error is None, (name, result.error)
        assert result.size == expected.get("size", (250, 250)), (name, result.size)
        if "faces" in expected:
            assert len(result.faces) == expected["faces"], (name, result.faces)
            continue
        assert result.faces, (name, "no face found")
        want = expected["face"](plain_box)
        found = result.faces[result.main_face]
        assert iou(found.box, want) > 0.8, (name, found.box, want)
        if "like" in expected:
            like = results[expected["like"]]
            similarity = cosine(result.embeddings[result.main_face], like.embeddings[like.main_face])
            assert similarity > 0.99, (name, expected["like"], similarity)
    print("\n" + "\n".join(table) + f"\n({seconds:.1f} s for the stream)")


def test_the_good_photos_between_the_hostile_ones_get_what_they_get_alone(
        streamed, lfw_dir: Path, face_pipeline: FacePipeline) -> None:
    _, in_order, _ = streamed
    alone = {r.key: r for r in face_pipeline.process([(key, (lfw_dir / key).read_bytes()) for key in [SUBJECT, *GOOD]])}
    good = [result for result in in_order if result.key in alone]
    assert len(good) == len(hostile_set(lfw_dir)) + 1
    for result in good:
        expected = alone[result.key]
        assert result.error is None and result.faces
        # The same faces, to float rounding: the networks' sums on a CPU depend a little on the batch a photo
        # or chip shares (how much differs with the CPU: on some, nothing), so the parity bounds of the backends.
        assert len(result.faces) == len(expected.faces), result.key
        np.testing.assert_allclose([f.box for f in result.faces], [f.box for f in expected.faces], atol=0.01,
                                   err_msg=result.key)
        for got, want in zip(result.embeddings, expected.embeddings, strict=True):
            assert cosine(got, want) >= 0.9999, (result.key, cosine(got, want))


def test_16_bit_grey_png_is_not_read_as_a_white_photo(streamed) -> None:
    results, _, _ = streamed
    grey16, grey8 = results["grey-16-bit.png"], results["grey.png"]
    assert len(grey16.faces) == len(grey8.faces) >= 1
    np.testing.assert_allclose([f.box for f in grey16.faces], [f.box for f in grey8.faces], atol=1e-3)


def test_faces_in_a_downscaled_photo_are_in_the_original_photos_coordinates(streamed) -> None:
    results, _, _ = streamed
    large = results["large.jpg"]
    face = large.faces[large.main_face]
    x, y, w, h = face.box
    # The pasted face spans 4000..5500 by 2500..4000 in the 7000x5000 photo.
    assert 4000 < x < x + w < 5500 and 2500 < y < y + h < 4000, face.box
    assert w > 500  # not the size it had in the 2000-pixel working photo
    for px, py in face.landmarks:
        assert x <= px <= x + w and y <= py <= y + h, face.landmarks
