"""Our batched MTCNN against the `mtcnn` package's own pipeline, on real LFW photos.

The package's default call, MTCNN().detect_faces(image), is the reference: the same networks and
weights, one photo at a time. It takes about a minute on 2 CPU cores for the 200 photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.detection import package_with_stable_ties
from pipeline.detect import Face, FaceDetector, _suppress_per_image

SAMPLE_SIZE = 200
EXACT_SAMPLE_SIZE = 20
KEYPOINTS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
# The package's default output rounds boxes and landmarks to whole pixels.
ROUNDING_TOLERANCE_PX = 0.5 + 1e-3
# Against its unrounded output only float32 round-off separates the two (measured: about 1e-4 px).
EXACT_TOLERANCE_PX = 0.01
# A batch against one photo at a time: oneDNN's convolutions sum in a batch-dependent order.
BATCH_TOLERANCE = 1e-3


@pytest.fixture(scope="module", autouse=True)
def stable_ties():
    """The package's equal scores in a fixed order, as ours (its own order depends on the CPU)."""
    with package_with_stable_ties():
        yield


def load_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def package():
    from mtcnn import MTCNN

    return MTCNN()


@pytest.fixture(scope="module")
def photos(lfw_dir: Path) -> list[np.ndarray]:
    """200 LFW photos spread over the whole alphabet of people (every Nth of the sorted list)."""
    files = sorted(lfw_dir.glob("*/*.jpg"))
    chosen = files[::len(files) // SAMPLE_SIZE][:SAMPLE_SIZE]
    return [load_rgb(path) for path in chosen]


@pytest.fixture(scope="module")
def ours(detector: FaceDetector, photos: list[np.ndarray]) -> list[list[Face]]:
    return detector.detect(photos)


@pytest.fixture(scope="module")
def theirs(package, photos: list[np.ndarray]) -> list[list[dict]]:
    return [package.detect_faces(photo) for photo in photos]


def selected(scores: list[float], detector: FaceDetector) -> list[int]:
    """Indices of the faces our detector keeps: those at min_score, else the best one at fallback_score."""
    kept = [i for i, score in enumerate(scores) if score >= detector.min_score]
    if kept or not scores:
        return kept
    best = int(np.argmax(scores))
    return [best] if scores[best] >= detector.fallback_score else []


def package_faces(faces: list[dict], detector: FaceDetector) -> list[tuple[np.ndarray, np.ndarray]]:
    """(box, landmarks) of the package's JSON faces that our detector keeps, largest box first."""
    kept = [(np.asarray(faces[i]["box"], float), np.asarray([faces[i]["keypoints"][k] for k in KEYPOINTS], float))
            for i in selected([f["confidence"] for f in faces], detector)]
    return sorted(kept, key=lambda face: face[0][2] * face[0][3], reverse=True)


def test_finds_a_face_in_as_many_photos_as_the_package(ours: list[list[Face]], theirs: list[list[dict]]) -> None:
    found_ours = sum(bool(faces) for faces in ours)
    found_theirs = sum(bool(faces) for faces in theirs)
    print(f"\nface found in {found_ours}/{SAMPLE_SIZE} photos by ours, {found_theirs} by the package")
    assert found_ours >= found_theirs - 1


def test_boxes_and_landmarks_match_the_package(ours: list[list[Face]], theirs: list[list[dict]],
                                                detector: FaceDetector) -> None:
    landmark_distances = []
    for index, (our_faces, their_faces) in enumerate(zip(ours, theirs)):
        reference = package_faces(their_faces, detector)
        assert len(our_faces) == len(reference), f"photo {index}: {len(our_faces)} faces, package {len(reference)}"
        for face, (box, landmarks) in zip(our_faces, reference):
            assert np.abs(np.asarray(face.box) - box).max() <= ROUNDING_TOLERANCE_PX, (index, face.box, box)
            assert np.abs(face.landmarks - landmarks).max() <= ROUNDING_TOLERANCE_PX, (index, face.landmarks)
            landmark_distances.extend(np.linalg.norm(face.landmarks - landmarks, axis=1))
    print(f"\nmean landmark distance to the package's whole-pixel output: {np.mean(landmark_distances):.3f} px "
          f"over {len(landmark_distances) // 5} faces")
    assert np.mean(landmark_distances) < 1.0


def test_matches_the_package_unrounded_output_to_a_hundredth_of_a_pixel(ours: list[list[Face]], package,
                                                                        photos: list[np.ndarray],
                                                                        detector: FaceDetector) -> None:
    for index in range(EXACT_SAMPLE_SIZE):
        rows = np.asarray(package.detect_faces(photos[index], output_type="numpy")).reshape(-1, 16)
        rows = rows[selected(list(rows[:, 5]), detector)]
        rows = rows[np.argsort(-rows[:, 3] * rows[:, 4], kind="stable")]
        assert len(ours[index]) == len(rows), index
        for face, row in zip(ours[index], rows):
            assert np.abs(np.asarray(face.box) - row[1:5]).max() <= EXACT_TOLERANCE_PX, (index, face.box, row)
            # The package's rows hold the five landmarks' x, then their y.
            assert np.abs(face.landmarks - row[6:16].reshape(2, 5).T).max() <= EXACT_TOLERANCE_PX, index
            assert face.score == pytest.approx(row[5], abs=1e-5)


def test_a_batch_of_two_photo_sizes_gives_each_photo_what_it_gets_alone(detector: FaceDetector,
                                                                          photos: list[np.ndarray]) -> None:
    # 200x300 photos: the middle 200 columns of an LFW photo, stretched to 300 rows.
    tall = [np.asarray(Image.fromarray(photo[:, 25:225]).resize((200, 300))) for photo in photos[:3]]
    batch = [photos[10], tall[0], photos[11], photos[12], tall[1], tall[2], photos[13]]
    together = detector.detect(batch)
    for image, faces in zip(batch, together):
        alone = detector.detect([image])[0]
        assert faces, image.shape
        assert len(faces) == len(alone)
        for face, reference in zip(faces, alone):
            np.testing.assert_allclose(face.box, reference.box, atol=BATCH_TOLERANCE)
            np.testing.assert_allclose(face.landmarks, reference.landmarks, atol=BATCH_TOLERANCE)
            assert face.score == pytest.approx(reference.score, abs=1e-5)


def tied_rows() -> np.ndarray:
    """Candidate rows (image, x1, y1, x2, y2, score) around a few faces in each of 10 photos (1 to 400 each,
    one with none), scores to 2 decimals so that many are tied, in shuffled order."""
    rng = np.random.default_rng(7)
    rows = []
    for image, count in enumerate([1, 2, 30, 400, 0, 17, 90, 5, 250, 3]):
        centres = rng.uniform(20, 230, (3, 2))[rng.integers(0, 3, count)] + rng.normal(0, 6, (count, 2))
        sides = rng.uniform(15, 80, (count, 1))
        scores = np.round(rng.uniform(0.6, 1.0, count), 2)
        rows.append(np.column_stack([np.full(count, image), centres - sides / 2, centres + sides / 2, scores]))
    return np.concatenate(rows)[rng.permutation(sum(len(r) for r in rows))]


@pytest.mark.parametrize("overlap, threshold", [("union", 0.5), ("union", 0.7), ("min", 0.7)])
def test_suppression_of_a_batch_keeps_what_the_package_keeps_photo_by_photo(overlap: str, threshold: float) -> None:
    """Our suppression runs many photos' boxes at once; the package's (smart_nms_from_bboxes) runs on one
    photo's. Clusters of boxes around a few faces, photos with 1 to 400 boxes, and tied scores (kept in
    the order they came, by both)."""
    from mtcnn.utils.bboxes import smart_nms_from_bboxes

    rows = tied_rows()
    ours = _suppress_per_image(rows, threshold, overlap)
    theirs = [smart_nms_from_bboxes(rows[rows[:, 0] == image], threshold, method=overlap)
              for image in np.unique(rows[:, 0])]
    np.testing.assert_array_equal(ours, np.concatenate(theirs))
    assert 10 < len(ours) < len(rows) / 2


@pytest.mark.parametrize("overlap, threshold", [("union", 0.5), ("union", 0.7), ("min", 0.7)])
def test_suppression_in_the_tensorflow_graph_keeps_what_numpy_keeps(overlap: str, threshold: float) -> None:
    import tensorflow as tf

    from pipeline.mtcnn_graph import suppress_per_image

    rows = tied_rows()
    in_graph = suppress_per_image(tf.constant(rows), threshold, overlap).numpy()
    np.testing.assert_array_equal(in_graph, _suppress_per_image(rows, threshold, overlap))
    assert suppress_per_image(tf.constant(rows[:0]), threshold, overlap).shape == (0, 6)


def test_detection_in_one_graph_finds_what_the_stages_one_by_one_find(detector: FaceDetector, ours: list[list[Face]],
                                                                      photos: list[np.ndarray]) -> None:
    """The default detector under TensorFlow runs a batch in one graph call; graph=False calls the
    networks one by one and suppresses in NumPy (as under JAX). Same faces, to float32's round-off."""
    one_by_one = FaceDetector(graph=False, batch_size=detector.batch_size).detect(photos)
    assert [len(faces) for faces in one_by_one] == [len(faces) for faces in ours]
    for faces, references in zip(ours, one_by_one):
        for face, reference in zip(faces, references):
            np.testing.assert_allclose(face.box, reference.box, atol=1e-6)
            np.testing.assert_allclose(face.landmarks, reference.landmarks, atol=1e-6)
            assert face.score == reference.score


def test_no_face_in_a_gray_or_noise_image(detector: FaceDetector) -> None:
    gray = np.full((250, 250, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (250, 250, 3), dtype=np.uint8)
    assert detector.detect([gray, noise]) == [[], []]
    # Smaller than PNet's 12-pixel window: no pyramid level at all.
    assert detector.detect([gray[:10, :10]]) == [[]]
    assert FaceDetector(graph=False).detect([gray[:10, :10]]) == [[]]


def test_min_face_size_skips_smaller_faces_and_keeps_larger_ones(photos: list[np.ndarray]) -> None:
    # min_face_size sets the finest pyramid scale, not a hard cut: the box regression still reaches
    # faces down to about half of it. So the small faces here are about a quarter of the larger one.
    large = photos[:4]
    small = []
    for photo in large:
        canvas = np.full_like(photo, 128)
        # The photo shrunk to a quarter of its side onto a gray canvas of the same size: a face about 22 px wide.
        canvas[:62, :62] = np.asarray(Image.fromarray(photo).resize((62, 62), Image.Resampling.LANCZOS))
        small.append(canvas)

    fine, coarse = FaceDetector(min_face_size=20), FaceDetector(min_face_size=80)
    for faces in fine.detect(small):
        assert faces and 15 <= faces[0].box[2] <= 35, faces
    assert coarse.detect(small) == [[]] * len(small)
    for faces in coarse.detect(large):
        assert faces and faces[0].box[2] >= 80, faces


def test_a_photo_with_no_confident_face_keeps_its_best_face_above_the_fallback_score(photos: list[np.ndarray]) -> None:
    sample = photos[:10]
    # Nothing reaches a score above 1, so every photo falls back to its single best face...
    assert [len(faces) for faces in FaceDetector(min_score=1.01).detect(sample)] == [1] * len(sample)
    # ...unless the fallback score cannot be reached either.
    assert FaceDetector(min_score=1.01, fallback_score=1.01).detect(sample) == [[] for _ in sample]


def test_a_coarser_pyramid_runs_fewer_levels_and_still_finds_the_lfw_faces(detector: FaceDetector,
                                                                          ours: list[list[Face]],
                                                                          photos: list[np.ndarray]) -> None:
    from pipeline.detect import pyramid_scales

    default, coarse = pyramid_scales(250, 250, 20), pyramid_scales(250, 250, 20, scale_factor=0.5)
    np.testing.assert_allclose(coarse, 0.6 * 0.5 ** np.arange(len(coarse)))
    assert len(coarse) < len(default) and 250 * coarse[-1] >= 12 > 250 * coarse[-1] * 0.5

    found = FaceDetector(scale_factor=0.5).detect(photos[:20])
    for faces, expected in zip(found, ours[:20]):
        assert faces and np.linalg.norm(np.subtract(faces[0].box, expected[0].box)) < 0.2 * expected[0].box[2]
