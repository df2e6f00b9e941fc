"""Hostile photos through the whole system: uploaded to an inbox, recognised by a bulk job through the
API on real workers, Redis and SeaweedFS. Every photo comes back exactly once in results.jsonl, with its
faces where it has an LFW face, or with an error naming its problem; the job succeeds and the good
photos between the hostile ones are still named.

The photos are made here from LFW photos and never stored in the repository.
"""

from __future__ import annotations

import io
import json
import struct
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.system import call, upload_photos, wait_for_job

PEOPLE = ["Colin_Powell", "George_W_Bush", "Tony_Blair"]
SOURCE = "Tony_Blair/Tony_Blair_0020.jpg"  # the face in the hostile photos that have one; not trained on
EXIF_ORIENTATION = 0x0112
MB = 1024 * 1024
HUGE_SCALE, HUGE_AT = 4, (3000, 4000)  # the LFW photo is pasted 4x larger at this place in a 7000x7000 photo
SERVER_PATHS = ("/tmp", "/work", "/root", "/home", "/var", "\\")


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header claims width x height RGB pixels: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
            + chunk(b"IEND", b""))


def hostile_set(lfw_dir: Path) -> dict[str, tuple[bytes, dict]]:
    """name -> (bytes, what must come back): {"error": words one of which the error names} or
    {"face_at": (x, y) the main face's centre in the upright original, "size": (width, height)}."""
    jpeg = (lfw_dir / SOURCE).read_bytes()
    with Image.open(lfw_dir / SOURCE) as opened:
        face = opened.convert("RGB")
    centre = (125, 125)  # LFW centres its subject in 250x250

    grey16 = (np.asarray(face.convert("L")).astype(np.uint16) * 257).astype("<u2")
    animated = encode(face.convert("P", palette=Image.Palette.ADAPTIVE), "GIF", save_all=True,
                      append_images=[Image.new("P", face.size, 0)], duration=100, loop=0)
    # Upright 250 wide and 400 high with the face on top, stored sideways: orientation 6 says
    # "rotate 90 degrees clockwise to display".
    upright = Image.new("RGB", (250, 400), (200, 200, 200))
    upright.paste(face, (0, 0))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    rotated = encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)
    huge = Image.new("RGB", (7000, 7000), (90, 120, 150))
    huge.paste(face.resize((250 * HUGE_SCALE, 250 * HUGE_SCALE), Image.Resampling.BICUBIC), HUGE_AT)

    return {
        "zero-bytes.jpg": (b"", {"error": ("empty",)}),
        "text.jpg": (b"name,box\nalice,1 2 3 4\n" * 20, {"error": ("not an image",)}),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], {"error": ("truncated", "corrupt")}),
        "bomb.png": (png_claiming(100_000, 100_000), {"error": ("too large",)}),
        "one-pixel.png": (encode(Image.new("RGB", (1, 1), "white"), "PNG"), {"error": ("too small",)}),
        "over-50-megapixels.png": (encode(Image.new("L", (8000, 7000)), "PNG"), {"error": ("too large",)}),
        # More bytes than the decoder takes: refused by its size, before it is downloaded.
        "over-50-mb.jpg": (jpeg + b"\0" * (50 * MB), {"error": ("too large",)}),
        "animated.gif": (animated, {"face_at": centre, "size": (250, 250)}),
        "cmyk.jpg": (encode(face.convert("CMYK"), "JPEG", quality=95), {"face_at": centre, "size": (250, 250)}),
        "sixteen-bit.png": (encode(Image.frombytes("I;16", face.size, grey16.tobytes()), "PNG"),
                            {"face_at": centre, "size": (250, 250)}),
        "exif-rotated.jpg": (rotated, {"face_at": centre, "size": (250, 400)}),
        "grey.jpg": (encode(face.convert("L"), "JPEG", quality=95), {"face_at": centre, "size": (250, 250)}),
        "palette.png": (encode(face.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
                        {"face_at": centre, "size": (250, 250)}),
        "huge.jpg": (encode(huge, "JPEG", quality=90),
                     {"face_at": (HUGE_AT[0] + centre[0] * HUGE_SCALE, HUGE_AT[1] + centre[1] * HUGE_SCALE),
                      "size": (7000, 7000), "tolerance": 30 * HUGE_SCALE}),
    }


@pytest.fixture(scope="module")
def model(system, lfw_dir: Path) -> str:
    """A centroid model of 3 LFW people, trained on 6 photos each through the API."""
    name = f"hostile-{uuid.uuid4().hex[:8]}"
    upload_photos(system["storage"], lfw_dir, PEOPLE, f"datasets/{name}", 0, 6)
    response = call(system, "POST", "/jobs/training",
                    json={"model": name, "dataset_prefix": f"datasets/{name}", "model_type": "centroid"})
    assert response.status_code == 202, response.text
    job = wait_for_job(system, response.json()["id"])
    assert job["state"] == "succeeded", job
    return name


@pytest.fixture(scope="module")
def inbox(system, lfw_dir: Path, model: str) -> tuple[str, dict[str, dict], dict[str, str]]:
    """The hostile photos with good LFW photos of the trained people between them: (prefix, hostile
    key -> expectation, good key -> person)."""
    storage, prefix = system["storage"], f"inbox-{model}"
    good = upload_photos(storage, lfw_dir, PEOPLE, f"{prefix}/good", 10, 12, by_person=False)
    expected = {}
    for name, (data, expectation) in hostile_set(lfw_dir).items():
        storage.put(f"{prefix}/{name}", data)
        expected[f"{prefix}/{name}"] = expectation
    return prefix, expected, good


def test_a_bulk_job_over_hostile_photos_answers_every_photo_once_and_goes_on(system, model, inbox) -> None:
    prefix, hostile, good = inbox
    response = call(system, "POST", "/jobs/recognition", json={"model": model, "input_prefix": prefix})
    assert response.status_code == 202, response.text
    job = wait_for_job(system, response.json()["id"])
    assert job["state"] == "succeeded", job
    lines = [json.loads(line) for line in system["storage"].get(job["result"]["results"]).decode().splitlines()]

    keys = [line["key"] for line in lines]
    assert sorted(keys) == sorted([*hostile, *good]), "every input photo exactly once"
    by_key = {line["key"]: line for line in lines}
    for key in hostile:
        result = by_key[key]
        print(f"{key.rpartition('/')[2]:24s} " + (f"error: {result['error']}" if "error" in result else
              f"{result['width']}x{result['height']}, faces at {[f['box'] for f in result['faces']]}"))

    for key, expectation in hostile.items():
        result = by_key[key]
        if "error" in expectation:
            error = result.get("error", "")
            assert any(word in error.lower() for word in expectation["error"]), (key, result)
            assert not any(path in error for path in SERVER_PATHS), (key, error)
            assert "faces" not in result, result
            continue
        assert "error" not in result, result
        assert (result["width"], result["height"]) == expectation["size"], result
        assert result["main_face"] is not None, f"{key}: no face found"
        x, y, width, height = result["faces"][result["main_face"]]["box"]
        centre_x, centre_y = expectation["face_at"]
        tolerance = expectation.get("tolerance", 30)
        assert abs(x + width / 2 - centre_x) < tolerance and abs(y + height / 2 - centre_y) < tolerance, (
            key, result["faces"])

    # The good photos between the hostile ones are still named (a centroid of 6 photos names at least 5 of 6).
    named = [by_key[key]["faces"][by_key[key]["main_face"]]["identity"] == person
             for key, person in good.items() if by_key[key].get("main_face") is not None]
    assert sum(named) >= len(good) - 1, [by_key[key] for key in good]

    summary = system["storage"].get_json(job["result"]["summary"])
    errors = sum("error" in e for e in hostile.values())
    assert summary["images"] == len(hostile) + len(good) and summary["errors"] == errors, summary
