"""Erasure through the running system (API and workers on Redis and SeaweedFS), on real LFW photos: an admin
erases a person from a dataset, a centroid model and a face index; afterwards their photo is named by no current
model and matches nothing in the index, their single-photo answer is gone, the receipt (JSON and page, with a
read key) lists what was removed, and bad requests get a 4xx that names the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.face_index import FaceIndex
from tests.system import ADMIN_KEY, READ_KEY, SUBMIT_KEY, call, wait_for_job
from tests.test_cli import facerec

pytestmark = pytest.mark.system

PEOPLE = ["Hugo_Chavez", "Colin_Powell", "Vladimir_Putin", "Serena_Williams"]
# Someone no other test puts into the running system it shares: the storage scan below looks at every object,
# and another test's index holding the same LFW photos of them would rightly still hold their faces.
ERASED = "Vladimir_Putin"


def photo(lfw_dir, person: str, number: int):
    path = sorted((lfw_dir / person).glob("*.jpg"))[number]
    return path.name, path.read_bytes(), "image/jpeg"


def ask(system, path: str, photo, **fields: str) -> dict:
    """A photo sent to /recognize or /search, waiting up to 30 s for the answer (a loaded machine is slow)."""
    response = call(system, "POST", path, files={"photo": photo}, data={**fields, "wait_s": "30"}, key=SUBMIT_KEY)
    assert response.status_code == 200, response.text
    return response.json()


def test_an_admin_erases_a_person_and_the_system_forgets_them(system, lfw_dir, tmp_path):
    files = [(person, photo(lfw_dir, person, n)) for person in PEOPLE for n in range(8)]
    assert call(system, "POST", "/datasets/staff", files=files).status_code == 201
    trained = wait_for_job(system, call(system, "POST", "/jobs/training", json={
        "model": "staff", "dataset_prefix": "datasets/staff", "model_type": "centroid"}).json()["id"])
    assert trained["state"] == "succeeded", trained
    inbox = [("photos", photo(lfw_dir, person, n)) for person in PEOPLE for n in range(8, 11)]
    assert call(system, "POST", "/inboxes/corridor", files=inbox).status_code == 201
    indexed = wait_for_job(system, call(system, "POST", "/jobs/recognition", json={
        "model": "staff", "input_prefix": "inboxes/corridor", "index": "corridor"}).json()["id"])
    assert indexed["state"] == "succeeded", indexed
    probe = photo(lfw_dir, ERASED, 12)  # in neither the dataset nor the index
    before = ask(system, "/recognize", probe, model="staff")
    assert before["faces"][before["main_face"]]["identity"] == ERASED
    found = ask(system, "/search", probe, index="corridor", k="5")
    assert found["matches"] >= 3
    storage, index = system["storage"], FaceIndex(system["storage"], "corridor")
    theirs = [np.asarray(row["vector"], np.float32).tobytes() for row in index.table().to_arrow().to_pylist()
              if f"/{ERASED}_" in row["key"]]
    faces_before = index.count()

    # Bad requests: a clear 4xx each, and nothing erased.
    assert call(system, "POST", "/erasures", json={"person": ERASED, "models": ["staff"]},
                key=SUBMIT_KEY).status_code == 403
    refused = call(system, "POST", "/erasures", json={"person": "../staff", "datasets": ["staff"]}, key=ADMIN_KEY)
    assert refused.status_code == 400 and "person" in refused.text
    refused = call(system, "POST", "/erasures", json={"person": ERASED}, key=ADMIN_KEY)
    assert refused.status_code == 400 and "at least one of models, indexes or datasets" in refused.text
    refused = call(system, "POST", "/erasures", json={"person": ERASED, "indexes": ["nowhere"]}, key=ADMIN_KEY)
    assert refused.status_code == 404 and "no face index named 'nowhere'" in refused.text

    # From the command line, as an admin would: first with the wrong key, then followed to the end.
    done = facerec(system, "erase", ERASED, "--model", "staff", key=SUBMIT_KEY)
    assert done.returncode != 0 and "admin" in done.stderr
    done = facerec(system, "erase", ERASED, "--model", "staff", "--index", "corridor", "--dataset", "staff",
                   "--redact-results", "--watch", "-o", str(tmp_path / "receipt.json"), key=ADMIN_KEY)
    assert done.returncode == 0, done.stderr
    kept = json.loads((tmp_path / "receipt.json").read_text())
    job = wait_for_job(system, kept["id"])
    assert job["state"] == "succeeded", job
    assert f"{ERASED} erased:" in done.stdout + done.stderr
    assert job["result"]["counts"]["index_faces_removed"] == len(theirs) == 3

    after = ask(system, "/recognize", probe, model="staff")
    assert after["faces"][after["main_face"]]["identity"] == "unknown"
    assert after["model_version"] != before["model_version"]
    searched = ask(system, "/search", probe, index="corridor", k="5")
    assert searched["matches"] == 0 and not [f for f in searched["faces"] if f"/{ERASED}_" in f["key"]]
    assert FaceIndex(storage, "corridor").count() == faces_before - 3
    assert not storage.exists(f"interactive/{before['id']}/photo")
    old = call(system, "GET", f"/models/staff/versions/{before['model_version']}/report")
    assert old.status_code == 404 and "retired by erasure" in old.text
    promoted = call(system, "POST", "/models/staff/promote", json={"version": before["model_version"]}, key=ADMIN_KEY)
    assert promoted.status_code == 404 and "retired by erasure" in promoted.text
    listed = {v["version"]: v for v in call(system, "GET", "/models/staff").json()["versions"]}
    assert listed[before["model_version"]]["retired"]["erasure"] == job["id"]
    assert not [key for key in storage.list("datasets/staff/") if f"/{ERASED}/" in key]
    assert not [key for key in storage.list() if any(needle in storage.get(key) for needle in theirs)]

    receipt = call(system, "GET", f"/receipts/{job['id']}", key=READ_KEY)
    assert receipt.status_code == 200 and receipt.json() == kept and kept["person"] == ERASED
    assert receipt.json()["asked_by"] == "test-admin"
    assert {entry["what"] for entry in receipt.json()["deleted"]} >= {"dataset photo", "single-photo request"}
    page = call(system, "GET", f"/receipts/{job['id']}/html", key=READ_KEY)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html") and ERASED in page.text
    assert call(system, "GET", f"/receipts/{trained['id']}", key=READ_KEY).status_code == 409
