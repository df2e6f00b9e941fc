"""Chips cut on the device (align.ChipCutter, one call per batch) against Pillow's face by face (align_face),
on real LFW photos and faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.align import CHIP_TEMPLATE, ChipCutter, align_faces, similarity_transform, similarity_transforms
from pipeline.faces import FacePipeline

PHOTOS = 40
# float32 against Pillow's double: a blend within about 1e-3 of a whole number may truncate one level
# apart (measured on 152 LFW faces: 4 pixels in 100,000).
MAX_SHARE_ONE_LEVEL_APART = 1e-3


@pytest.fixture(scope="module")
def photos(lfw_dir: Path) -> list[np.ndarray]:
    files = sorted(lfw_dir.glob("*/*.jpg"))
    return [np.asarray(Image.open(path).convert("RGB")) for path in files[::len(files) // PHOTOS][:PHOTOS]]


@pytest.fixture(scope="module")
def landmarks(photos: list[np.ndarray], face_pipeline: FacePipeline) -> list[np.ndarray]:
    """Each photo's faces' landmarks, (faces, 5, 2)."""
    return [np.asarray([face.landmarks for face in faces]).reshape(-1, 5, 2)
            for faces in face_pipeline.detector.detect(photos)]


def pillow_chips(photos: list[np.ndarray], landmarks: list[np.ndarray]) -> np.ndarray:
    return np.stack([chip for photo, points in zip(photos, landmarks) for chip in align_faces(photo, list(points))])


def assert_pillows(chips: np.ndarray, expected: np.ndarray) -> None:
    assert chips.dtype == np.uint8 and chips.shape == expected.shape
    apart = np.abs(chips.astype(int) - expected.astype(int))
    assert apart.max() <= 1
    assert (apart > 0).mean() <= MAX_SHARE_ONE_LEVEL_APART


def test_the_transforms_of_a_batch_are_those_of_each_face(landmarks: list[np.ndarray]) -> None:
    points = np.concatenate(landmarks)
    one_by_one = np.stack([similarity_transform(p, CHIP_TEMPLATE) for p in points])
    np.testing.assert_allclose(similarity_transforms(points, CHIP_TEMPLATE), one_by_one, atol=1e-9)


def test_chips_cut_in_one_call_are_pillows_to_within_one_level(photos, landmarks) -> None:
    assert sum(map(len, landmarks)) >= PHOTOS  # every photo has a face, some several
    assert_pillows(ChipCutter().cut(photos, landmarks), pillow_chips(photos, landmarks))


def test_photos_of_several_sizes_and_photos_without_a_face_share_a_call(photos, landmarks) -> None:
    """The photos go over as one buffer of pixels: each face must read its own photo, whatever its size."""
    cropped = photos[1][20:230, 10:200]  # 210 x 190
    mixed = [photos[0], np.zeros((60, 80, 3), np.uint8), cropped, photos[2]]
    points = [landmarks[0], np.zeros((0, 5, 2)), landmarks[1] - [10, 20], landmarks[2]]
    chips = ChipCutter().cut(mixed, points)
    assert len(chips) == len(landmarks[0]) + len(landmarks[1]) + len(landmarks[2])
    assert_pillows(chips, pillow_chips(mixed, points))


def test_a_face_over_the_photos_edge_is_black_outside_as_pillow_cuts_it(photos, landmarks) -> None:
    points = [landmarks[0][:1] - [110, 90]]  # the face's upper left beyond the photo's corner
    chips = ChipCutter().cut(photos[:1], points)
    expected = pillow_chips(photos[:1], points)
    assert (expected == 0).all(axis=-1).mean() > 0.2
    assert_pillows(chips, expected)


def test_no_face_gives_no_chip() -> None:
    assert ChipCutter().cut([np.zeros((50, 50, 3), np.uint8)], [np.zeros((0, 5, 2))]).shape == (0, 150, 150, 3)


def test_the_pipeline_aligning_on_the_device_finds_what_it_finds_with_pillow(lfw_dir: Path,
                                                                             face_pipeline: FacePipeline) -> None:
    files = sorted(lfw_dir.glob("*/*.jpg"))[::500][:20]
    photos = [(path.name, path.read_bytes()) for path in files]
    on_device = FacePipeline(face_pipeline.detector, face_pipeline.embedder, align_on_device=True)
    on_host = FacePipeline(face_pipeline.detector, face_pipeline.embedder, align_on_device=False)
    assert on_device.chip_cutter is not None and on_host.chip_cutter is None
    for device, host in zip(on_device.process(photos), on_host.process(photos)):
        assert [face.box for face in device.faces] == [face.box for face in host.faces]
        assert_pillows(device.chips, host.chips)
        cosines = np.sum(device.embeddings * host.embeddings, axis=1) / (
            np.linalg.norm(device.embeddings, axis=1) * np.linalg.norm(host.embeddings, axis=1))
        assert cosines.min() >= 0.9999


def test_a_pipeline_on_the_cpu_aligns_with_pillow_by_default(face_pipeline: FacePipeline) -> None:
    assert FacePipeline(face_pipeline.detector, face_pipeline.embedder).chip_cutter is None
