"""Face quality on real LFW faces: good faces are `ok`; the same faces shrunk, blurred or turned fail for that
reason and score lower; the pose read from the landmarks ignores a tilted head; every face of a recognition
result carries its quality."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from pipeline.detect import Face
from pipeline.models import create_model
from pipeline.quality import (
    BLURRED,
    MAX_YAW,
    MIN_INTEROCULAR_PX,
    MIN_SHARPNESS,
    OK,
    PROFILE,
    TOO_SMALL,
    face_quality,
    passes,
    pose,
)
from pipeline.recognize import LoadedModel, recognize

# Frontal, sharp, well-lit LFW faces.
GOOD = ["Laurent_Gbagbo/Laurent_Gbagbo_0002.jpg", "Ari_Fleischer/Ari_Fleischer_0011.jpg",
        "Mike_Tyson/Mike_Tyson_0003.jpg"]
# Turned well away from the camera.
TURNED = "Jacques_Chirac/Jacques_Chirac_0006.jpg"


def subject(face_pipeline, data: bytes) -> tuple[Face, np.ndarray]:
    found = face_pipeline.process([("photo.jpg", data)])[0]
    assert found.main_face is not None, "no face found"
    return found.faces[found.main_face], found.chips[found.main_face]


def jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95)
    return out.getvalue()


def shrunk(data: bytes, factor: float) -> bytes:
    """The photo shrunk by factor, in the middle of a mid-grey canvas of its own size: a small face in a photo."""
    photo = Image.open(io.BytesIO(data)).convert("RGB")
    small = photo.resize((round(photo.width * factor), round(photo.height * factor)), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", photo.size, (128, 128, 128))
    canvas.paste(small, ((photo.width - small.width) // 2, (photo.height - small.height) // 2))
    return jpeg(canvas)


@pytest.fixture(scope="module")
def good(face_pipeline, lfw_dir) -> list[tuple[bytes, Face, np.ndarray]]:
    photos = [(lfw_dir / name).read_bytes() for name in GOOD]
    return [(data, *subject(face_pipeline, data)) for data in photos]


def test_sharp_frontal_faces_are_ok_and_score_high(good):
    for _, face, chip in good:
        quality = face_quality(face, chip)
        assert quality.verdict == OK, quality
        assert 0.8 < quality.score <= 1
        assert quality.interocular_px > 40 and abs(quality.yaw) < 15 and quality.confidence > 0.99


def test_a_face_shrunk_below_the_minimum_size_is_too_small_and_scores_lower(face_pipeline, good):
    for data, face, chip in good:
        before = face_quality(face, chip)
        factor = 0.8 * MIN_INTEROCULAR_PX / before.interocular_px
        after = face_quality(*subject(face_pipeline, shrunk(data, factor)))
        assert after.verdict == TOO_SMALL, after
        assert after.interocular_px == pytest.approx(0.8 * MIN_INTEROCULAR_PX, rel=0.15)
        assert after.score < before.score / 2


def test_a_blurred_face_is_blurred_and_scores_lower(face_pipeline, good):
    for data, face, chip in good:
        before = face_quality(face, chip)
        photo = Image.open(io.BytesIO(data)).convert("RGB").filter(ImageFilter.GaussianBlur(3))
        after = face_quality(*subject(face_pipeline, jpeg(photo)))
        assert after.verdict == BLURRED, after
        assert after.sharpness < MIN_SHARPNESS < before.sharpness
        assert after.score < before.score / 2


def test_a_face_turned_away_is_a_profile(face_pipeline, lfw_dir):
    quality = face_quality(*subject(face_pipeline, (lfw_dir / TURNED).read_bytes()))
    assert quality.verdict in (PROFILE, TOO_SMALL, BLURRED)  # a turned face also looks narrow and soft
    assert abs(quality.yaw) > MAX_YAW


def test_landmarks_with_the_nose_moved_towards_one_eye_read_as_a_profile(good):
    _, face, chip = good[0]
    turned = face.landmarks.copy()
    interocular = np.linalg.norm(turned[1] - turned[0])
    turned[2, 0] += 0.4 * interocular  # the nose tip towards the image-right eye: the head turned
    quality = face_quality(Face(face.box, face.score, turned), chip)
    assert quality.verdict == PROFILE and quality.yaw > MAX_YAW
    assert quality.score < face_quality(face, chip).score / 2


def test_a_tilted_head_is_not_read_as_turned(good):
    for _, face, _ in good:
        yaw, pitch = pose(face.landmarks)
        centre = face.landmarks.mean(axis=0)
        for degrees in (-40, 25, 90):
            angle = np.radians(degrees)
            rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            tilted = (face.landmarks - centre) @ rotation.T + centre
            assert pose(tilted) == pytest.approx((yaw, pitch), abs=1e-6)


def test_no_minimum_keeps_every_face_and_a_minimum_keeps_those_at_or_above_it(good):
    quality = face_quality(*good[0][1:])
    assert passes(quality, 0.0) and passes(quality.to_json(), 0.0)
    assert passes(quality, quality.score) and not passes(quality, min(1.0, quality.score + 0.01))


def test_each_face_of_a_recognition_result_carries_its_quality(face_pipeline, good):
    model = create_model("centroid")
    model.labels_, model.centroids_, model.threshold_ = ["someone"], np.ones((1, 128)) / np.sqrt(128), 0.5
    loaded = LoadedModel("m", "v", model, embedder=face_pipeline.embedder_name)
    data, face, chip = good[0]
    factor = 0.8 * MIN_INTEROCULAR_PX / face_quality(face, chip).interocular_px
    photos = [("good.jpg", data), ("small.jpg", shrunk(data, factor))]
    results = list(recognize(face_pipeline, loaded, photos))
    qualities = [result["faces"][result["main_face"]]["quality"] for result in results]
    for quality in qualities:
        assert set(quality) == {"score", "verdict", "interocular_px", "sharpness", "yaw", "pitch", "confidence"}
        assert 0 <= quality["score"] <= 1
    assert [quality["verdict"] for quality in qualities] == [OK, TOO_SMALL]
