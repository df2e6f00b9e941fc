"""Data in and out over HTTP, and one photo recognised while the client waits: on the whole running system.

A dataset is uploaded through POST /v1/datasets (multipart, a person per field), trained on, and then
single LFW photos of the trained people are sent to POST /v1/recognize; an inbox is uploaded as a zip,
recognised as a bulk job whose results and summary are read back through the API.
"""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import requests

from tests.system import READ_KEY, SUBMIT_KEY, call, wait_for_job

PEOPLE = ["Colin_Powell", "Donald_Rumsfeld", "George_W_Bush", "Tony_Blair"]
STRANGER = "Jennifer_Aniston"


def _files(lfw_dir, people, first: int, last: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart files: field = person, LFW photos number first..last-1 of each."""
    return [(person, (path.name, path.read_bytes(), "image/jpeg"))
            for person in people for path in sorted((lfw_dir / person).glob("*.jpg"))[first:last]]


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def trained(system, lfw_dir):
    response = call(system, "POST", "/datasets/four", files=_files(lfw_dir, PEOPLE, 0, 10), key=SUBMIT_KEY)
    assert response.status_code == 201, response.text
    assert response.json()["photos"] == 40 and response.json()["people"] == 4
    response = call(system, "POST", "/jobs/training", json={"model": "four", "dataset_prefix": "datasets/four"})
    assert response.status_code == 202 and response.headers["Location"] == f"/v1/jobs/{response.json()['id']}"
    job = wait_for_job(system, response.json()["id"])
    assert job["state"] == "succeeded", job
    return job


def test_an_uploaded_dataset_is_stored_by_person_under_datasets(system, trained):
    keys = set(system["storage"].list("datasets/four/"))
    assert {key.split("/")[2] for key in keys if not key.endswith(".json")} == set(PEOPLE)
    assert "datasets/four/George_W_Bush/George_W_Bush_0001.jpg" in keys
    assert trained["result"]["photos"]["used"] == 40


def test_one_photo_is_recognised_while_the_client_waits(system, trained, lfw_dir):
    for person in PEOPLE:
        path = sorted((lfw_dir / person).glob("*.jpg"))[12]  # not a training photo
        response = call(system, "POST", "/recognize", files={"photo": (path.name, path.read_bytes())},
                        data={"model": "four"}, key=SUBMIT_KEY)
        assert response.status_code == 200, response.text
        answer = response.json()
        main = answer["faces"][answer["main_face"]]
        assert main["identity"] == person and main["best_guess"] == person
        assert answer["model"] == "four" and answer["model_version"] == trained["result"]["version"]
        assert 0 < answer["threshold"] <= main["score"]
        assert answer["width"] == 250 and len(main["box"]) == 4 and len(main["landmarks"]) == 5
        # Stored under a key the server chose, never one the client named.
        assert system["storage"].get(f"interactive/{answer['id']}/photo") == path.read_bytes()


def test_a_stranger_is_unknown_and_a_stored_photo_can_be_named_by_its_key(system, trained, lfw_dir):
    path = sorted((lfw_dir / STRANGER).glob("*.jpg"))[0]
    system["storage"].put("elsewhere/stranger.jpg", path.read_bytes())
    response = call(system, "POST", "/recognize", json={"model": "four", "key": "elsewhere/stranger.jpg"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["key"] == "elsewhere/stranger.jpg"
    assert answer["faces"][answer["main_face"]]["identity"] == "unknown"


def test_a_request_not_answered_in_time_gets_202_and_can_be_polled(system, trained, lfw_dir):
    path = sorted((lfw_dir / "Tony_Blair").glob("*.jpg"))[15]
    response = call(system, "POST", "/recognize", files={"photo": (path.name, path.read_bytes())},
                    data={"model": "four", "wait_s": "0"})
    assert response.status_code == 202, response.text
    location = response.headers["Location"]
    assert location == response.json()["location"] == f"/v1/recognize/{response.json()['id']}"

    def answered():
        polled = call(system, "GET", location.removeprefix("/v1"), key=READ_KEY)
        assert polled.status_code in (200, 202), polled.text
        return polled.json() if polled.status_code == 200 else None

    from tests.system import wait_for
    answer = wait_for(answered, 60, "the answer")
    assert answer["faces"][answer["main_face"]]["identity"] == "Tony_Blair"
    assert call(system, "GET", "/recognize/" + "0" * 32).status_code == 404


def test_bad_single_photo_requests_get_a_clear_error(system, trained, lfw_dir):
    photo = (lfw_dir / "Tony_Blair" / "Tony_Blair_0001.jpg").read_bytes()
    cases = [
        ({"files": {"photo": ("notes.jpg", b"this is not a photo")}, "data": {"model": "four"}}, 400, "not a photo"),
        ({"files": {"picture": ("a.jpg", photo)}, "data": {"model": "four"}}, 400, '"photo"'),
        ({"files": {"photo": ("a.jpg", photo)}, "data": {"model": "nobody"}}, 404, "nobody"),
        ({"files": {"photo": ("a.jpg", photo)}, "data": {"model": "four", "wait_s": "600"}}, 400, "wait_s"),
        ({"json": {"model": "four", "key": "nothing/here.jpg"}}, 404, "nothing/here.jpg"),
        ({"json": {"model": "four", "key": "../../etc/passwd"}}, 400, "'..'"),
        ({"json": {"model": "four"}}, 400, "photo"),
    ]
    for kwargs, status, words in cases:
        response = call(system, "POST", "/recognize", **kwargs)
        assert response.status_code == status, (kwargs.get("data") or kwargs.get("json"), response.text)
        assert words in response.json()["error"]
    assert call(system, "POST", "/recognize", key=READ_KEY, json={"key": "x.jpg"}).status_code == 403


def test_uploads_refuse_path_tricks_and_never_overwrite(system, trained, lfw_dir):
    storage = system["storage"]
    photo = (lfw_dir / "Tony_Blair" / "Tony_Blair_0001.jpg").read_bytes()
    zip_headers = {"Content-Type": "application/zip"}
    for entries, words in [({"../evil/x.jpg": photo}, "'..'"), ({"/abs/x.jpg": photo}, "absolute"),
                           ({"Ada/x.jpg": photo, "Ada/sub/y.jpg": photo}, "<person>/<photo>"),
                           ({"Ada/.hidden/x.jpg": photo, "Ad\x01a/x.jpg": photo}, "not allowed")]:
        response = call(system, "POST", "/datasets/tricks", data=_zip(entries), headers=zip_headers)
        assert response.status_code == 400 and words in response.json()["error"], response.text
    response = call(system, "POST", "/datasets/..", files={"Ada": ("x.jpg", photo)})
    assert response.status_code in (400, 404)
    response = call(system, "POST", "/datasets/tricks", files={"../Ada": ("x.jpg", photo)})
    assert response.status_code == 400 and "person" in response.json()["error"]
    assert not list(storage.list("datasets/tricks/"))

    # The dataset trained on exists: a new upload under its name is refused, nothing replaced.
    before = storage.get("datasets/four/Tony_Blair/Tony_Blair_0001.jpg")
    other = (lfw_dir / "Colin_Powell" / "Colin_Powell_0001.jpg").read_bytes()
    response = call(system, "POST", "/datasets/four", files={"Tony_Blair": ("Tony_Blair_0001.jpg", other)})
    assert response.status_code == 409 and "append" in response.json()["error"]
    response = call(system, "POST", "/datasets/four?append=true",
                    files=[("Tony_Blair", ("new.jpg", other)), ("Tony_Blair", ("Tony_Blair_0001.jpg", other))])
    assert response.status_code == 409 and "Tony_Blair_0001.jpg" in response.json()["error"]
    assert storage.get("datasets/four/Tony_Blair/Tony_Blair_0001.jpg") == before
    assert not storage.exists("datasets/four/Tony_Blair/new.jpg")  # a refused upload writes nothing
    response = call(system, "POST", "/datasets/four?append=true", files={"Tony_Blair": ("new.jpg", photo)})
    assert response.status_code == 201 and response.json()["photos"] == 1 and response.json()["appended"]
    storage.delete("datasets/four/Tony_Blair/new.jpg")


def test_an_inbox_zip_is_recognised_and_its_results_read_back_through_the_api(system, trained, lfw_dir):
    paths = [p for person in PEOPLE for p in sorted((lfw_dir / person).glob("*.jpg"))[20:22]]
    paths += sorted((lfw_dir / STRANGER).glob("*.jpg"))[:2]
    entries = {f"press/{path.name}": path.read_bytes() for path in paths}
    entries["press/readme.txt"] = b"not a photo"
    entries["__MACOSX/press/._x.jpg"] = b"resource fork"
    response = call(system, "POST", "/inboxes/press", data=_zip(entries), headers={"Content-Type": "application/zip"})
    assert response.status_code == 201, response.text
    assert response.json()["photos"] == 10 and "press/readme.txt" in response.json()["skipped"]

    response = call(system, "POST", "/jobs/recognition", json={"model": "four", "input_prefix": "inboxes/press"})
    assert response.status_code == 202 and response.headers["Location"].startswith("/v1/jobs/")
    job_id = response.json()["id"]
    early = call(system, "GET", f"/jobs/{job_id}/results")
    assert early.status_code in (200, 302, 409)  # 409 while it runs (a fast worker may be done already)
    job = wait_for_job(system, job_id)
    assert job["state"] == "succeeded", job

    # On S3 the results are a redirect to a presigned URL, fetched without the API key.
    response = call(system, "GET", f"/jobs/{job_id}/results", key=READ_KEY, allow_redirects=False)
    assert response.status_code == 302
    lines = requests.get(response.headers["Location"], timeout=30).text.splitlines()
    streamed = call(system, "GET", f"/jobs/{job_id}/results?redirect=false", key=READ_KEY)
    assert streamed.status_code == 200 and streamed.text.splitlines() == lines
    results = [json.loads(line) for line in lines]
    assert len(results) == 10
    named = {r["key"].split("/")[-1].rsplit("_", 1)[0]: r["faces"][r["main_face"]]["identity"] for r in results}
    assert {person: named[person] for person in PEOPLE} == {person: person for person in PEOPLE}
    assert named[STRANGER] == "unknown"

    summary = call(system, "GET", f"/jobs/{job_id}/summary", key=READ_KEY)
    assert summary.status_code == 200 and summary.json()["images"] == 10 and summary.json()["errors"] == 0
    assert call(system, "GET", f"/jobs/{trained['id']}/results").status_code == 409  # a training job
    assert call(system, "GET", f"/jobs/{'0' * 32}/summary").status_code == 404


def test_lists_are_paginated(system, trained):
    page = call(system, "GET", "/models?limit=1&offset=0").json()
    assert page["limit"] == 1 and page["offset"] == 0 and len(page["models"]) == 1 and page["total"] >= 1
    assert call(system, "GET", "/models?limit=0").status_code == 400
    jobs = call(system, "GET", "/jobs?limit=1").json()
    assert len(jobs["jobs"]) == 1 and jobs["total"] >= 2
