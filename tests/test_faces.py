"""The face pipeline on real LFW photos: decode, MTCNN detection, alignment and dlib embeddings.

These run the real models on CPU (about a minute for the whole module).
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.face_resnet import DESCRIPTOR_SIZE
from pipeline.faces import FacePipeline, PhotoFaces

SAMPLE_SIZE = 200
BATCH_SIZE = 32
PEOPLE = 6
PHOTOS_PER_PERSON = 5
DLIB_SAME_PERSON_THRESHOLD = 0.6


def read_photos(paths: list[Path]) -> list[tuple[str, bytes]]:
    return [(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in paths]


def process_in_batches(pipeline: FacePipeline, photos: list[tuple[str, bytes]]) -> list[PhotoFaces]:
    results: list[PhotoFaces] = []
    for start in range(0, len(photos), BATCH_SIZE):
        results.extend(pipeline.process(photos[start:start + BATCH_SIZE]))
    return results


def subject_index(photo: PhotoFaces) -> int:
    """The face LFW is about: LFW centres its subject, so the face whose box centre is nearest the centre."""
    width, height = photo.size
    centres = [(f.box[0] + f.box[2] / 2 - width / 2) ** 2 + (f.box[1] + f.box[3] / 2 - height / 2) ** 2
               for f in photo.faces]
    return int(np.argmin(centres))


@pytest.fixture(scope="module")
def sample(lfw_dir: Path, face_pipeline: FacePipeline) -> list[PhotoFaces]:
    """200 LFW photos spread over the whole alphabet of people (every Nth of the sorted list)."""
    files = sorted(lfw_dir.glob("*/*.jpg"))
    step = len(files) // SAMPLE_SIZE
    chosen = files[::step][:SAMPLE_SIZE]
    assert len(chosen) == SAMPLE_SIZE
    return process_in_batches(face_pipeline, read_photos(chosen))


def test_sample_covers_many_people(sample: list[PhotoFaces]) -> None:
    people = {photo.key.split("/")[0] for photo in sample}
    assert len(people) >= 150


def test_a_face_is_found_in_at_least_99_percent_of_lfw_photos(sample: list[PhotoFaces]) -> None:
    assert all(photo.error is None for photo in sample)
    missed = [photo.key for photo in sample if not photo.faces]
    found_rate = 1 - len(missed) / len(sample)
    print(f"\nface found in {len(sample) - len(missed)}/{len(sample)} LFW photos ({found_rate:.1%}); "
          f"missed: {missed}")
    assert found_rate >= 0.99, f"no face found in {missed}"


def test_every_face_has_a_box_inside_the_image_and_a_score_between_0_and_1(sample: list[PhotoFaces]) -> None:
    for photo in sample:
        assert photo.size == (250, 250)
        width, height = photo.size
        for face in photo.faces:
            x, y, w, h = face.box
            assert w > 0 and h > 0, photo.key
            assert x >= 0 and x + w <= width, (photo.key, face.box)
            assert y >= 0 and y + h <= height, (photo.key, face.box)
            assert 0.0 <= face.score <= 1.0, (photo.key, face.score)


def test_every_face_has_5_landmarks_with_the_eyes_above_the_mouth(sample: list[PhotoFaces]) -> None:
    for photo in sample:
        for face in photo.faces:
            landmarks = np.asarray(face.landmarks)
            assert landmarks.shape == (5, 2), photo.key
            left_eye, right_eye, _nose, mouth_left, mouth_right = landmarks
            assert max(left_eye[1], right_eye[1]) < min(mouth_left[1], mouth_right[1]), (photo.key, landmarks)
            assert left_eye[0] < right_eye[0], (photo.key, landmarks)  # image-left eye first


def test_every_face_has_a_finite_128_d_embedding(sample: list[PhotoFaces]) -> None:
    for photo in sample:
        assert photo.embeddings.shape == (len(photo.faces), DESCRIPTOR_SIZE), photo.key
        assert np.all(np.isfinite(photo.embeddings)), photo.key
        assert np.all(np.linalg.norm(photo.embeddings, axis=1) > 0.1), photo.key  # not a zero vector


def test_the_subject_is_centred_and_the_faces_are_sorted_by_area(sample: list[PhotoFaces]) -> None:
    for photo in sample:
        areas = [face.box[2] * face.box[3] for face in photo.faces]
        assert areas == sorted(areas, reverse=True), photo.key
        if photo.faces:
            x, y, w, h = photo.faces[subject_index(photo)].box
            assert abs(x + w / 2 - 125) < 40 and abs(y + h / 2 - 125) < 40, (photo.key, (x, y, w, h))


@pytest.fixture(scope="module")
def identities(lfw_dir: Path, face_pipeline: FacePipeline) -> tuple[list[str], np.ndarray]:
    """5 photos each of 6 people with at least 10 photos: (names, one subject embedding per photo)."""
    people = sorted(p for p in lfw_dir.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) >= 10)
    chosen = people[:: len(people) // PEOPLE][:PEOPLE]
    paths = [path for person in chosen for path in sorted(person.glob("*.jpg"))[:PHOTOS_PER_PERSON]]
    results = process_in_batches(face_pipeline, read_photos(paths))
    missed = [photo.key for photo in results if not photo.faces]
    assert not missed, f"no face found in {missed}"
    names = [photo.key.split("/")[0] for photo in results]
    embeddings = np.stack([photo.embeddings[subject_index(photo)] for photo in results])
    return names, embeddings


def pair_distances(names: list[str], embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances of all same-person pairs and of all different-person pairs."""
    same, different = [], []
    for i, j in itertools.combinations(range(len(names)), 2):
        distance = float(np.linalg.norm(embeddings[i] - embeddings[j]))
        (same if names[i] == names[j] else different).append(distance)
    return np.asarray(same), np.asarray(different)


def test_photos_of_one_person_are_closer_than_photos_of_different_people(identities) -> None:
    names, embeddings = identities
    same, different = pair_distances(names, embeddings)
    assert len(same) == PEOPLE * 10 and len(different) == 435 - PEOPLE * 10
    print(f"\n{PEOPLE} people: {sorted(set(names))}")
    print(f"mean distance, same person {same.mean():.3f} (max {same.max():.3f}); "
          f"different people {different.mean():.3f} (min {different.min():.3f})")
    assert same.mean() < different.mean()
    assert same.mean() < 0.75 * different.mean()  # clearly apart, not just barely


def test_nearest_neighbour_identifies_at_least_28_of_30_photos(identities) -> None:
    names, embeddings = identities
    distances = np.linalg.norm(embeddings[:, None] - embeddings[None, :], axis=2)
    np.fill_diagonal(distances, np.inf)  # leave one out
    predicted = [names[j] for j in distances.argmin(axis=1)]
    correct = sum(p == n for p, n in zip(predicted, names))
    wrong = [(n, p) for p, n in zip(predicted, names) if p != n]
    print(f"\n1-NN leave-one-out: {correct}/{len(names)} correct; wrong (true, predicted): {wrong}")
    assert correct >= 28


def test_dlib_threshold_0_6_separates_most_pairs(identities) -> None:
    names, embeddings = identities
    same, different = pair_distances(names, embeddings)
    same_below = float(np.mean(same < DLIB_SAME_PERSON_THRESHOLD))
    different_above = float(np.mean(different >= DLIB_SAME_PERSON_THRESHOLD))
    accuracy = (np.sum(same < DLIB_SAME_PERSON_THRESHOLD) + np.sum(different >= DLIB_SAME_PERSON_THRESHOLD)) / (
        len(same) + len(different))
    print(f"\nthreshold {DLIB_SAME_PERSON_THRESHOLD}: same-person pairs below it {same_below:.1%}, "
          f"different-person pairs at or above it {different_above:.1%}, pair accuracy {accuracy:.1%}")
    assert same_below >= 0.9
    assert different_above >= 0.95


def png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 90, 60)).save(buffer, "PNG")
    return buffer.getvalue()


def test_broken_photos_get_an_error_and_do_not_disturb_good_photos_in_the_same_batch(
        lfw_dir: Path, face_pipeline: FacePipeline) -> None:
    good = read_photos([lfw_dir / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg",
                        lfw_dir / "Serena_Williams" / "Serena_Williams_0001.jpg",
                        lfw_dir / "Tony_Blair" / "Tony_Blair_0001.jpg"])
    jpeg = good[0][1]
    broken = {
        "corrupt.jpg": (jpeg[: len(jpeg) // 2], ("corrupt", "truncated")),
        "notes.txt": (b"this is a text file, not a photo\n" * 10, ("not an image",)),
        "empty.jpg": (b"", ("empty",)),
        "dot.png": (png((1, 1)), ("too small",)),
    }
    # Broken photos first, last and between the good ones, so a shifted index would show.
    mixed = [("corrupt.jpg", broken["corrupt.jpg"][0]), good[0], ("notes.txt", broken["notes.txt"][0]),
             good[1], ("empty.jpg", broken["empty.jpg"][0]), good[2], ("dot.png", broken["dot.png"][0])]

    results = face_pipeline.process(mixed)
    alone = {photo.key: photo for photo in face_pipeline.process(good)}

    assert [photo.key for photo in results] == [key for key, _ in mixed]
    for photo in results:
        if photo.key in broken:
            words = broken[photo.key][1]
            assert photo.error is not None and any(w in photo.error.lower() for w in words), (photo.key, photo.error)
            assert photo.faces == []
            assert photo.embeddings.shape == (0, DESCRIPTOR_SIZE)
        else:
            expected = alone[photo.key]
            assert photo.error is None
            assert photo.size == (250, 250)
            assert len(photo.faces) >= 1
            assert [f.box for f in photo.faces] == [f.box for f in expected.faces], photo.key
            np.testing.assert_allclose(photo.embeddings, expected.embeddings, atol=1e-5, err_msg=photo.key)
    # The three good photos are three different people: their subjects' embeddings are far apart.
    subjects = [p.embeddings[subject_index(p)] for p in results if p.key not in broken]
    for a, b in itertools.combinations(subjects, 2):
        assert np.linalg.norm(a - b) > DLIB_SAME_PERSON_THRESHOLD


def test_the_subject_is_the_centred_face_even_when_a_larger_neighbour_reaches_the_centre(
        lfw_dir: Path, face_pipeline: FacePipeline) -> None:
    # In McEnroe's first photo his face and a larger one beside it both hold the photo's centre; his
    # own is nearer it. His second photo has him alone in the centre.
    first, second = face_pipeline.process(read_photos([lfw_dir / "John_McEnroe" / "John_McEnroe_0001.jpg",
                                                       lfw_dir / "John_McEnroe" / "John_McEnroe_0002.jpg"]))
    assert len(first.faces) == 2
    subject = first.faces[first.main_face]
    larger = max(first.faces, key=lambda f: f.box[2] * f.box[3])
    assert subject is not larger
    same_person = np.linalg.norm(first.embeddings[first.main_face] - second.embeddings[second.main_face])
    assert same_person < DLIB_SAME_PERSON_THRESHOLD


def test_a_stream_of_photos_gives_what_batches_give_in_the_same_order(
        lfw_dir: Path, face_pipeline: FacePipeline) -> None:
    """process_stream detects the next batch while embedding this one; the results must not change."""
    photos = read_photos(sorted(lfw_dir.glob("*/*.jpg"))[:70])
    photos.insert(33, ("notes.txt", b"not a photo"))  # a broken photo in the second batch
    by_batch = process_in_batches(face_pipeline, photos)

    streamed = list(face_pipeline.process_stream(iter(photos), batch_size=BATCH_SIZE))

    assert [photo.key for photo in streamed] == [key for key, _ in photos]
    assert streamed[33].error is not None and streamed[33].faces == []
    for photo, expected in zip(streamed, by_batch):
        assert [f.box for f in photo.faces] == [f.box for f in expected.faces], photo.key
        np.testing.assert_array_equal(photo.embeddings, expected.embeddings, err_msg=photo.key)
    assert all(face_pipeline.timings_ms[stage] > 0 for stage in ("decode", "detect", "align", "embed"))


def test_a_batch_of_only_broken_photos_gives_only_errors(face_pipeline: FacePipeline) -> None:
    results = face_pipeline.process([("empty.jpg", b""), ("dot.png", png((1, 1)))])
    assert [bool(photo.error) for photo in results] == [True, True]
    assert all(photo.faces == [] for photo in results)


class RecordingDetector:
    """The session's detector, noting how many photos and pixels each detect() call was given."""

    def __init__(self, detector) -> None:
        self.detector = detector
        self.device = detector.device
        self.calls: list[tuple[int, int]] = []

    def detect(self, images: list[np.ndarray]) -> list:
        self.calls.append((len(images), sum(image.shape[0] * image.shape[1] for image in images)))
        return self.detector.detect(images)


def test_a_stream_of_large_photos_is_batched_by_pixels_not_by_count(
        lfw_dir: Path, face_pipeline: FacePipeline) -> None:
    with Image.open(lfw_dir / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg") as opened:
        face = opened.convert("RGB").resize((1000, 1000))
    large = []
    for i in range(6):  # 4000x3000 photos, 2000x1500 (3 megapixels) at the working size
        photo = Image.new("RGB", (4000, 3000), (60 + 20 * i, 90, 120))
        photo.paste(face, (400 * i, 300 * i))
        buffer = io.BytesIO()
        photo.save(buffer, "JPEG", quality=90)
        large.append((f"large-{i}.jpg", buffer.getvalue()))
    small = read_photos(sorted(lfw_dir.glob("*/*.jpg"))[:20])
    # One detection thread: the calls in the batches' order.
    recording = FacePipeline(RecordingDetector(face_pipeline.detector), face_pipeline.embedder, detection_threads=1)

    results = list(recording.process_stream(iter(small + large), batch_size=32, max_batch_pixels=7_000_000))

    assert [r.key for r in results] == [key for key, _ in small + large]
    # 20 LFW photos (1.25 megapixels) and one large one; a second would pass 7 megapixels. Then two
    # large ones at a time, and the last.
    calls = recording.detector.calls
    assert [count for count, _ in calls] == [21, 2, 2, 1]
    assert all(pixels <= 7_000_000 for _, pixels in calls)
    for i, result in enumerate(results[20:]):  # each face inside the square it was pasted in
        assert result.size == (4000, 3000) and len(result.faces) == 1, result.key
        x, y, w, h = result.faces[0].box
        assert 400 * i < x < x + w < 400 * i + 1000 and 300 * i < y < y + h < 300 * i + 1000, (result.key, (x, y, w, h))
        assert w > 250  # in the 4000x3000 photo's coordinates, not the 2000x1500 working photo's
