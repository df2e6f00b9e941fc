"""Photos unlike LFW's still get their faces found and named: tight crops, grey photos, small photos.

LFW's photos are 250x250 colour photos with the face in the middle and plenty of margin around the head.
Users' photos are often not: a profile photo cropped to the face, a scanned black-and-white print, a
thumbnail. Each kind is made here from LFW photos the gallery never saw, and must have at least 98% of
its faces found and named: named means the right person is the best match of a centroid model of the
people, fitted on other, normal LFW photos of them. (Whether the match is then also accepted, rather than
answered `unknown`, is the threshold's business, calibrated on a gallery of 8 photos a person here: the
test prints it but does not judge it; unchanged LFW photos get 97 of 100 accepted with it.)
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.faces import FacePipeline, PhotoFaces
from pipeline.models import FaceSet, IdentityModel, create_model

PEOPLE = 50  # the first people, alphabetically, of those with at least MIN_PHOTOS photos
MIN_PHOTOS = 20
FIT_PHOTOS = 6  # a person's first photos: the gallery
VALIDATION_PHOTOS = 2  # the next ones: the model's threshold is calibrated on them
TEST_PHOTOS = 2  # a person's last photos, changed into each kind: PEOPLE * TEST_PHOTOS faces per kind
REQUIRED = 0.98
BATCH_SIZE = 32

# LFW deep-funneled photos put the face at about the same place; this box (left, top, right, bottom) holds
# it from the eyebrows' top to the chin and from cheek to cheek, without hair, ears or any margin.
TIGHT_BOX = (75, 70, 175, 180)
# Tighter still, into the face: from the eyebrows to below the mouth. Without a second search with a margin
# around the photo (pipeline.faces.RETRY_MARGIN) MTCNN misses 3 of these 100 faces (and 1 of TIGHT_BOX's).
INSIDE_BOX = (85, 85, 165, 170)
# A thumbnail: the face is about 35 px tall. At 60 px, JPEG-compressed at that size, 97 of the 100 faces
# are named right (3 taken for look-alikes), and enlarging such photos before detection did not help.
SMALL_SIDE = 80


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def tight_crop(image: Image.Image) -> Image.Image:
    return image.crop(TIGHT_BOX)


def inside_crop(image: Image.Image) -> Image.Image:
    return image.crop(INSIDE_BOX)


def grey(image: Image.Image) -> Image.Image:
    return image.convert("L")


def small(image: Image.Image) -> Image.Image:
    return image.resize((SMALL_SIDE, SMALL_SIDE), Image.Resampling.LANCZOS)


KINDS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "tight_crop": tight_crop, "inside_crop": inside_crop, "grey": grey, "small": small}


@pytest.fixture(scope="module")
def people(lfw_dir: Path) -> dict[str, list[Path]]:
    """Each chosen person's photos, in LFW's order."""
    chosen = {}
    for folder in sorted(p for p in lfw_dir.iterdir() if p.is_dir()):
        photos = sorted(folder.glob("*.jpg"))
        if len(photos) >= MIN_PHOTOS:
            chosen[folder.name] = photos
        if len(chosen) == PEOPLE:
            break
    return chosen


def subject_faces(pipeline: FacePipeline, photos: list[tuple[str, bytes]]) -> list[PhotoFaces]:
    results = []
    for start in range(0, len(photos), BATCH_SIZE):
        results.extend(pipeline.process(photos[start:start + BATCH_SIZE]))
    return results


def face_set(results: list[PhotoFaces], labels: list[str]) -> FaceSet:
    """The subjects' faces of photos that have one, labelled."""
    found = [(r, label) for r, label in zip(results, labels) if r.main_face is not None]
    return FaceSet(np.stack([r.chips[r.main_face] for r, _ in found]),
                   np.stack([r.embeddings[r.main_face] for r, _ in found]), [label for _, label in found])


@pytest.fixture(scope="module")
def gallery(people: dict[str, list[Path]], face_pipeline: FacePipeline) -> IdentityModel:
    """A centroid model of the people, on their first, normal LFW photos."""
    def faces(first: int, count: int) -> FaceSet:
        chosen = [(person, path) for person, paths in people.items() for path in paths[first:first + count]]
        results = subject_faces(face_pipeline, [(str(path), path.read_bytes()) for _, path in chosen])
        return face_set(results, [person for person, _ in chosen])

    return create_model("centroid").fit(faces(0, FIT_PHOTOS), faces(FIT_PHOTOS, VALIDATION_PHOTOS))


@pytest.mark.parametrize("kind", list(KINDS))
def test_faces_in_unusual_photos_are_found_and_named(kind: str, people: dict[str, list[Path]],
                                                    gallery: IdentityModel, face_pipeline: FacePipeline) -> None:
    change = KINDS[kind]
    chosen = [(person, path) for person, paths in people.items() for path in paths[-TEST_PHOTOS:]]
    photos = []
    for person, path in chosen:
        changed = change(Image.open(path))
        photos.append((f"{person}/{path.name}", jpeg(changed)))
    results = subject_faces(face_pipeline, photos)
    assert [r.error for r in results] == [None] * len(results)
    # The photos really are of the kind: no margin, one channel, under 120 px.
    example = Image.open(io.BytesIO(photos[0][1]))
    assert {"tight_crop": example.size == (100, 110), "inside_crop": example.size == (80, 85),
            "grey": example.mode == "L", "small": max(example.size) < 120}[kind]

    for result in results:  # boxes in the photo's own coordinates, also for a face found with a margin added
        for face in result.faces:
            x, y, width, height = face.box
            assert x >= 0 and y >= 0 and x + width <= result.size[0] and y + height <= result.size[1], face.box

    missed = [key for (key, _), r in zip(photos, results) if r.main_face is None]
    faces = face_set(results, [person for person, _ in chosen])
    found_keys = [key for (key, _), r in zip(photos, results) if r.main_face is not None]
    predictions = gallery.predict(faces)
    wrong = [(key, p.best_guess) for key, p, truth in zip(found_keys, predictions, faces.labels)
             if p.best_guess != truth]
    named = len(photos) - len(missed) - len(wrong)
    accepted = sum(p.label == truth for p, truth in zip(predictions, faces.labels))
    print(f"\n{kind}: {len(photos)} faces, {len(photos) - len(missed)} found, {named} named "
          f"({named / len(photos):.0%}), {accepted} also accepted at the gallery's threshold; "
          f"not found: {missed}; named wrong: {wrong}")
    assert named / len(photos) >= REQUIRED
