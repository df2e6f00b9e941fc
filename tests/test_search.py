"""Face search through the running system (API and workers on Redis and SeaweedFS), on real LFW photos: a
recognition job with "index" adds every face it finds once; POST /v1/search finds a person's photos from
a photo of them, from a face of a job's results and from the person of a model, with filters and match
flags; the photos of the faces found can be fetched from their links; a search job lists, per person of a
gallery, the photos where they appear; and bad requests get a 4xx that names the problem."""

from __future__ import annotations

import json

import pytest

from pipeline.face_index import FaceIndex
from tests.system import READ_KEY, call, wait_for_job

PEOPLE = ["Hugo_Chavez", "Serena_Williams", "Colin_Powell", "Jean_Chretien"]
STRANGERS = ["Tony_Blair", "Gerhard_Schroeder"]
TRAIN = 8  # photos of each person to train on; the next INBOX go to the archive
INBOX = 4


_archives: dict[str, dict] = {}  # per running system: made once, whichever module asks first


@pytest.fixture(scope="module")
def archive(system, lfw_dir):
    """A centroid model of PEOPLE, and a recognition job that indexed an inbox of their other photos and
    strangers' into the index "archive" (the job)."""
    if system["base"] not in _archives:
        _archives[system["base"]] = make_archive(system, lfw_dir)
    return _archives[system["base"]]


def make_archive(system, lfw_dir) -> dict:
    # The model is "album", not "gallery": test_model_lifecycle trains its own "gallery" on the same
    # running system, and a later search job would have found its people.
    files = [(person, (path.name, path.read_bytes(), "image/jpeg"))
             for person in PEOPLE for path in sorted((lfw_dir / person).glob("*.jpg"))[:TRAIN]]
    assert call(system, "POST", "/datasets/album", files=files).status_code == 201
    job = wait_for_job(system, call(system, "POST", "/jobs/training", json={
        "model": "album", "dataset_prefix": "datasets/album", "model_type": "centroid"}).json()["id"])
    assert job["state"] == "succeeded", job
    inbox = [("photos", (path.name, path.read_bytes(), "image/jpeg"))
             for person in PEOPLE + STRANGERS for path in sorted((lfw_dir / person).glob("*.jpg"))[TRAIN:TRAIN + INBOX]]
    assert call(system, "POST", "/inboxes/archive", files=inbox).status_code == 201
    response = call(system, "POST", "/jobs/recognition", json={"model": "album", "input_prefix": "inboxes/archive",
                                                               "index": "archive"})
    assert response.status_code == 202, response.text
    job = wait_for_job(system, response.json()["id"])
    assert job["state"] == "succeeded", job
    return job


def results_of(system, job_id: str) -> list[dict]:
    response = call(system, "GET", f"/jobs/{job_id}/results", params={"redirect": "false"})
    return [json.loads(line) for line in response.text.splitlines()]


def test_a_recognition_job_adds_every_face_it_found_to_the_index_once(system, archive):
    index = FaceIndex(system["storage"], "archive")
    assert index.count() == archive["result"]["faces"] == index.count(f"job = '{archive['id']}'")
    assert index.info()["created_by"]["model"] == "album"
    listed = {i["name"]: i for i in call(system, "GET", "/indexes").json()["indexes"]}
    assert listed["archive"]["created_by"]["job"] == archive["id"]
    assert listed["archive"]["calibration"]["genuine"] > 0
    assert listed["archive"]["calibration"]["figure"].endswith("roc_det.png")


def test_a_photo_of_someone_finds_their_photos_in_the_archive(system, archive, lfw_dir):
    person = "Hugo_Chavez"
    photo = sorted((lfw_dir / person).glob("*.jpg"))[TRAIN + INBOX]  # in neither the gallery nor the archive
    response = call(system, "POST", "/search", files={"photo": (photo.name, photo.read_bytes(), "image/jpeg")},
                    data={"index": "archive", "k": "5"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["query"]["kind"] == "photo" and answer["query"]["box"]
    found = answer["faces"]
    assert [face["key"].rsplit("/", 1)[-1].rsplit("_", 1)[0] for face in found[:INBOX]] == [person] * INBOX
    assert all(face["match"] for face in found[:INBOX]) and answer["threshold"] is not None
    assert found == sorted(found, key=lambda face: -face["similarity"])
    # The photo of a face found comes from its link, without a key (as an <img> fetches it).
    image = call(system, "GET", found[0]["photo_url"].removeprefix("/v1"), key=None)
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/jpeg"
    assert image.content[:2] == b"\xff\xd8"
    assert call(system, "GET", "/search/photos/forged-token", key=None).status_code == 404


def test_a_face_of_a_jobs_results_and_a_person_of_a_model_find_the_same_person(system, archive):
    results = results_of(system, archive["id"])
    line = next(r for r in results if r["key"].endswith("Serena_Williams_0010.jpg"))
    body = {"index": "archive", "job": archive["id"], "key": line["key"], "face": line["main_face"], "k": 4}
    found = call(system, "POST", "/search", json=body).json()["faces"]
    assert found[0]["key"] == line["key"] and found[0]["similarity"] == pytest.approx(1, abs=1e-3)
    assert all("Serena_Williams" in face["key"] for face in found)

    person = call(system, "POST", "/search", json={"index": "archive", "model": "album", "person": "Colin_Powell",
                                                   "k": 8}).json()
    matched = [face["key"] for face in person["faces"] if face["match"]]
    assert len(matched) >= INBOX - 1 and all("Colin_Powell" in key for key in matched)
    assert person["threshold_rule"].startswith("model album version")

    # Filters: a key prefix no face has finds nothing; the job's own id finds its faces.
    assert call(system, "POST", "/search", json={**body, "key_prefix": "elsewhere/"}).json()["faces"] == []
    # (Each face's photo link is signed with the time: two searches a second apart differ only in it.)
    same_job = call(system, "POST", "/search", json={**body, "in_jobs": [archive["id"]]}).json()["faces"][0]
    assert {**same_job, "photo_url": None} == {**found[0], "photo_url": None}


def test_a_search_job_lists_per_person_the_photos_where_they_appear(system, archive):
    response = call(system, "POST", "/jobs/search", json={"model": "album", "index": "archive", "k": 20})
    assert response.status_code == 202, response.text
    job = wait_for_job(system, response.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["people_searched"] == len(PEOPLE) == job["result"]["people_found"]
    lines = [json.loads(line) for line in call(system, "GET", f"/jobs/{job['id']}/people").text.splitlines()]
    for line in lines:
        assert len(line["photos"]) >= INBOX - 1 and all(line["person"] in key for key in line["photos"]), line
    report = call(system, "GET", f"/jobs/{job['id']}/people/report")
    assert report.headers["Content-Type"].startswith("text/html")
    assert report.text.count("data:image/jpeg;base64,") == sum(len(line["faces"]) for line in lines)
    assert call(system, "GET", f"/jobs/{archive['id']}/people").status_code == 409  # a recognition job


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"index": "nowhere", "model": "album", "person": "Hugo_Chavez"}, 404, "no face index named 'nowhere'"),
    ({"index": "archive"}, 400, "search with exactly one of"),
    ({"index": "archive", "model": "album"}, 400, 'needs both "model" and "person"'),
    ({"index": "archive", "job": "0" * 32, "key": "x.jpg", "face": 0}, 404, "no job with id"),
    ({"index": "archive", "model": "album", "person": "Nobody"}, 404, "has no person 'Nobody'"),
    ({"index": "archive", "model": "album", "person": "Hugo_Chavez", "k": 0}, 400, "k: Input should be greater"),
    ({"index": "archive", "model": "album", "person": "Hugo_Chavez", "far": 0.01}, 400, "own threshold"),
    ({"index": "archive", "model": "album", "person": "Hugo_Chavez", "far": 0.1, "threshold": 0.5}, 400,
     "at most one of far, gallery_far, threshold"),
])
def test_a_bad_search_gets_a_4xx_that_names_the_problem(system, archive, body, status, message):
    response = call(system, "POST", "/search", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_bad_searches_with_a_photo_or_a_job_face_are_refused_with_the_reason(system, archive, lfw_dir):
    job_face = {"index": "archive", "job": archive["id"], "key": "inboxes/archive/none.jpg", "face": 0}
    response = call(system, "POST", "/search", json=job_face)
    assert response.status_code == 404 and "holds no face 0 of photo" in response.json()["error"]
    not_a_photo = call(system, "POST", "/search", files={"photo": ("x.jpg", b"not a photo", "image/jpeg")},
                       data={"index": "archive"})
    assert not_a_photo.status_code == 400 and "not a photo" in not_a_photo.json()["error"]
    photo = sorted((lfw_dir / "Hugo_Chavez").glob("*.jpg"))[0]
    too_rare = call(system, "POST", "/search", files={"photo": (photo.name, photo.read_bytes(), "image/jpeg")},
                    data={"index": "archive", "far": "1e-9"})
    assert too_rare.status_code == 400 and "below what the" in too_rare.json()["error"]
    assert call(system, "POST", "/search", key=READ_KEY, json=job_face).status_code == 403


def test_an_index_refuses_a_model_of_another_embedder_at_submit(system, archive):
    storage = system["storage"]
    storage.put_json("indexes/other/index.json", {"name": "other", "embedder": "some-other-embedder", "dim": 128,
                                                  "calibration": None})
    response = call(system, "POST", "/jobs/recognition", json={"model": "album", "input_prefix": "inboxes/archive",
                                                               "index": "other"})
    assert response.status_code == 409 and "holds some-other-embedder embeddings" in response.json()["error"]
