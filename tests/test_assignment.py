"""One name per person per photo: a group photo of real LFW faces with two photos of one person names them
once, and the other face's answer says why; a photo with one face, or whose faces all have different best
people, is named exactly as one by one."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.assignment import NEXT_BEST, assign, name_jointly
from pipeline.models import UNKNOWN, FaceSet, create_model
from pipeline.recognize import LoadedModel, recognize

PEOPLE = ["Tony_Blair", "Colin_Powell", "Hugo_Chavez", "Serena_Williams"]
FITTED = range(1, 9)  # photo numbers the model is fitted on
CALIBRATED = range(9, 13)  # and calibrated on
TILE = 150


def photo_path(lfw_dir, person: str, number: int):
    return lfw_dir / person / f"{person}_{number:04d}.jpg"


def group_photo(lfw_dir, photos: list[tuple[str, int]]) -> bytes:
    """The middle TILE pixels of each LFW photo, side by side on mid grey."""
    canvas = Image.new("RGB", (20 + len(photos) * (TILE + 20), TILE + 40), (128, 128, 128))
    for i, (person, number) in enumerate(photos):
        photo = Image.open(photo_path(lfw_dir, person, number)).convert("RGB")
        margin = (photo.width - TILE) // 2
        canvas.paste(photo.crop((margin, margin, margin + TILE, margin + TILE)), (20 + i * (TILE + 20), 20))
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=95)
    return out.getvalue()


@pytest.fixture(scope="module")
def loaded(face_pipeline, lfw_dir) -> LoadedModel:
    """A centroid model of PEOPLE, fitted and calibrated on photos the tests do not show it."""
    def faces(numbers) -> FaceSet:
        photos = [(person, photo_path(lfw_dir, person, n).read_bytes()) for person in PEOPLE for n in numbers]
        found = face_pipeline.process(photos)
        return FaceSet(np.stack([f.chips[f.main_face] for f in found]),
                       np.stack([f.embeddings[f.main_face] for f in found]), [f.key for f in found])

    model = create_model("centroid").fit(faces(FITTED), faces(CALIBRATED))
    return LoadedModel("group", "v1", model, embedder=face_pipeline.embedder_name)


def test_a_group_photo_with_two_photos_of_one_person_names_them_once_and_says_why(face_pipeline, lfw_dir, loaded):
    photos = [("Tony_Blair", 20), ("Colin_Powell", 20), ("Tony_Blair", 30), ("Hugo_Chavez", 20)]
    data = group_photo(lfw_dir, photos)
    result = next(recognize(face_pipeline, loaded, [("group.jpg", data)]))
    faces = sorted(result["faces"], key=lambda face: face["box"][0])  # left to right, as pasted
    assert len(faces) == 4

    # One by one, the model names Tony Blair twice: the case joint naming is for.
    found = face_pipeline.process([("group.jpg", data)])[0]
    one_by_one = loaded.model.predict(FaceSet(found.chips, found.embeddings))
    assert sorted(p.label for p in one_by_one if p.label != UNKNOWN).count("Tony_Blair") == 2

    identities = [face["identity"] for face in faces]
    assert identities.count("Tony_Blair") == 1
    assert [identities[1], identities[3]] == ["Colin_Powell", "Hugo_Chavez"]
    kept, lost = (0, 2) if identities[0] == "Tony_Blair" else (2, 0)
    loser = faces[lost]
    assert loser["assigned"] in (UNKNOWN, NEXT_BEST) and loser["best_match"] == "Tony_Blair"
    assert result["faces"][loser["best_match_given_to"]] is faces[kept]
    assert loser["best_guess"] != "Tony_Blair"  # a page re-labelling at another threshold shows him once too
    if loser["assigned"] == UNKNOWN:
        assert loser["identity"] == UNKNOWN and loser["score"] < loaded.model.threshold_
        assert "Tony_Blair" in loser["unknown_because"]
    for face in (faces[1], faces[3], faces[kept]):
        assert "assigned" not in face


def test_a_photo_with_one_face_is_named_exactly_as_one_by_one(face_pipeline, lfw_dir, loaded):
    photos = [(f"{person}-{n}.jpg", photo_path(lfw_dir, person, n).read_bytes())
              for person in PEOPLE for n in (20, 21)] + [("stranger.jpg", (lfw_dir / "Jacques_Chirac" /
                                                                        "Jacques_Chirac_0001.jpg").read_bytes())]
    results = list(recognize(face_pipeline, loaded, photos))
    found = face_pipeline.process(photos)
    for result, photo in zip(results, found):
        assert len(result["faces"]) == len(photo.faces) == 1
        expected = loaded.model.predict(FaceSet(photo.chips, photo.embeddings))[0]
        face = result["faces"][0]
        assert (face["identity"], face["best_guess"]) == (expected.label, expected.best_guess)
        assert (face["score"], face["confidence"]) == (round(expected.score, 4), round(expected.confidence, 4))
        assert not {"assigned", "best_match", "best_match_given_to", "unknown_because"} & set(face)
    assert {result["faces"][0]["identity"] for result in results[:-1]} == set(PEOPLE)


def test_faces_whose_best_people_differ_are_named_as_one_by_one_whatever_the_scores():
    model = create_model("centroid")
    model.labels_, model.threshold_ = [f"p{i}" for i in range(6)], 0.4
    rng = np.random.default_rng(0)
    for faces in (1, 1, 1, 2, 3, 5):
        for _ in range(50):
            # Class scores and acceptance differ, as for the embedding model (softmax, cosine to centroids).
            scores, acceptance = rng.random((faces, 6)), rng.random((faces, 6))
            scores[np.arange(faces), rng.permutation(6)[:faces]] += 1  # each face's best person its own
            named = name_jointly(model, scores, acceptance)
            assert [n.prediction for n in named] == model.predictions(scores, acceptance)
            assert all(n.assigned is None and n.to_json() == {} for n in named)


def test_the_assignment_maximises_the_total_with_each_person_once_and_only_allowed_pairs():
    weights = np.array([[0.9, 0.8, 0.1], [0.85, 0.2, 0.1], [0.7, 0.6, 0.5]])
    allowed = weights >= 0.5
    # 0.8 + 0.85 + 0.5 beats every other choice; a face with nothing left stays unassigned.
    assert assign(weights, allowed) == [1, 0, 2]
    assert assign(weights[:, :2], allowed[:, :2]) == [1, 0, None]
    assert assign(weights, np.zeros_like(allowed)) == [None, None, None]
    assert assign(np.zeros((0, 3)), np.zeros((0, 3), bool)) == []
    # A tie: the face keeps its own best person rather than another of the same total.
    assert assign(np.array([[0.7, 0.7]]), np.array([[True, True]])) == [0]
