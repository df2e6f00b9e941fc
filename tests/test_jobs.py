"""Jobs a careless or hostile user cannot turn into wrong answers: outputs belong to the job that
wrote them, idempotency keys mean one request, bad lines and missing inputs are named, cancels hold.

Runs against the whole system (API, Celery workers, Redis, SeaweedFS) on a small model of 3 LFW people.
"""

from __future__ import annotations

import io
import json
import uuid

import pytest

from tests.system import call, upload_photos, wait_for_job

PEOPLE = ["Colin_Powell", "Donald_Rumsfeld", "Tony_Blair"]


@pytest.fixture(scope="module")
def model(system, lfw_dir) -> str:
    """A centroid model of 3 people x 6 photos (fast to train), and an inbox of 2 other photos each."""
    storage = system["storage"]
    upload_photos(storage, lfw_dir, PEOPLE, "datasets/jobs-three", 0, 6)
    upload_photos(storage, lfw_dir, PEOPLE, "jobs-inbox", 6, 8, by_person=False)
    response = call(system, "POST", "/jobs/training", json={
        "model": "jobs-three", "dataset_prefix": "datasets/jobs-three", "model_type": "centroid"})
    assert response.status_code == 202, response.text
    job = wait_for_job(system, response.json()["id"])
    assert job["state"] == "succeeded", job
    return "jobs-three"


def results(system, job: dict) -> list[dict]:
    return [json.loads(line) for line in system["storage"].get(job["result"]["results"]).decode().splitlines()]


def test_an_output_prefix_belongs_to_one_job_and_a_second_job_into_it_is_refused(system, model):
    output = f"out-{uuid.uuid4().hex[:8]}"
    first = call(system, "POST", "/jobs/recognition",
                 json={"model": model, "input_prefix": "jobs-inbox", "output_prefix": output})
    assert first.status_code == 202, first.text
    second = call(system, "POST", "/jobs/recognition",
                  json={"model": model, "input_prefix": "datasets/jobs-three", "output_prefix": output})
    assert second.status_code == 409 and output in second.json()["error"]

    job = wait_for_job(system, first.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["results"] == f"{output}/results.jsonl"
    assert len(results(system, job)) == 6
    # Done or not, the prefix stays the first job's.
    third = call(system, "POST", "/jobs/recognition",
                 json={"model": model, "input_prefix": "datasets/jobs-three", "output_prefix": output + "/"})
    assert third.status_code == 409


@pytest.mark.parametrize("output", ["schedules", "jobs", "models/jobs-three", "idempotency", "datasets/x"])
def test_outputs_never_land_on_the_systems_own_records(system, model, output):
    response = call(system, "POST", "/jobs/recognition",
                    json={"model": model, "input_prefix": "jobs-inbox", "output_prefix": output})
    assert response.status_code == 400 and "reserved" in response.json()["error"]
    assert call(system, "GET", "/schedules").status_code == 200


def test_an_idempotency_key_belongs_to_one_route_and_one_request(system, model):
    key = {"Idempotency-Key": f"key-{uuid.uuid4().hex}"}
    recognition = call(system, "POST", "/jobs/recognition", json={"model": model, "input_prefix": "jobs-inbox"},
                       headers=dict(key))
    assert recognition.status_code == 202
    training = call(system, "POST", "/jobs/training", headers=dict(key), json={
        "model": "jobs-other", "dataset_prefix": "datasets/jobs-three", "model_type": "centroid"})
    assert training.status_code == 202 and training.json()["id"] != recognition.json()["id"]
    assert training.json()["type"] == "training"

    replay = call(system, "POST", "/jobs/recognition", json={"model": model, "input_prefix": "jobs-inbox"},
                  headers=dict(key))
    assert replay.status_code == 200 and replay.json()["id"] == recognition.json()["id"]
    different = call(system, "POST", "/jobs/recognition",
                     json={"model": model, "input_prefix": "datasets/jobs-three"}, headers=dict(key))
    assert different.status_code == 422 and "different request" in different.json()["error"]
    for job in (recognition, training):
        assert wait_for_job(system, job.json()["id"])["state"] == "succeeded"


def test_a_bad_line_in_a_manifest_is_that_photos_error_and_the_rest_go_on(system, model):
    storage = system["storage"]
    good = sorted(k for k in storage.list("jobs-inbox/"))
    bad = ["../../etc/passwd", "/etc/passwd", "jobs-inbox/nobody-here.jpg"]
    storage.put("manifests/bad-lines.txt", "\n".join(good[:2] + bad + good[2:]).encode())
    response = call(system, "POST", "/jobs/recognition",
                    json={"model": model, "input_manifest": "manifests/bad-lines.txt"})
    assert response.status_code == 202, response.text
    job = wait_for_job(system, response.json()["id"])
    assert job["state"] == "succeeded", job
    by_key = {r["key"]: r for r in results(system, job)}
    assert sorted(by_key) == sorted(good + bad)
    assert "'..'" in by_key["../../etc/passwd"]["error"]
    assert "relative path" in by_key["/etc/passwd"]["error"]
    assert "no such key" in by_key["jobs-inbox/nobody-here.jpg"]["error"]
    assert all(by_key[k]["faces"] for k in good)
    assert job["result"]["errors"] == 3


def test_a_training_manifest_can_be_recognised_as_it_is(system, model):
    storage = system["storage"]
    lines = [json.dumps({"key": k, "label": k.split("/")[2]}) for k in sorted(storage.list("datasets/jobs-three/"))]
    storage.put("manifests/training-format.jsonl", "\n".join(lines).encode())
    response = call(system, "POST", "/jobs/recognition",
                    json={"model": model, "input_manifest": "manifests/training-format.jsonl"})
    job = wait_for_job(system, response.json()["id"])
    assert job["state"] == "succeeded" and job["result"]["errors"] == 0, job
    named = [r["faces"][r["main_face"]]["identity"] for r in results(system, job)]
    assert named == [json.loads(line)["label"] for line in lines]


def test_missing_inputs_and_versions_are_refused_at_submit(system, model):
    cases = [
        ("/jobs/recognition", {"model": model, "input_manifest": "manifests/never-written.txt"}, "never-written"),
        ("/jobs/recognition", {"model": model, "input_prefix": "no-such-folder"}, "no-such-folder"),
        ("/jobs/recognition", {"model": model, "input_prefix": "jobs-inbox",
                               "model_version": "20260101T000000Z-abcdef"}, "no version"),
        ("/jobs/recognition", {"model": "never-trained", "input_prefix": "jobs-inbox"}, "never-trained"),
        ("/jobs/training", {"model": "x", "dataset_manifest": "manifests/never-written.jsonl"}, "never-written"),
        ("/jobs/enroll", {"model": "never-trained", "dataset_prefix": "datasets/jobs-three"}, "never-trained"),
    ]
    for path, body, named in cases:
        response = call(system, "POST", path, json=body)
        assert response.status_code == 404, (body, response.text)
        assert named in response.json()["error"]


def test_a_prefix_takes_every_photo_format_the_decoder_reads(system, lfw_dir):
    from PIL import Image

    storage = system["storage"]
    for person in PEOPLE[:2]:
        for i, path in enumerate(sorted((lfw_dir / person).glob("*.jpg"))[:4]):
            grey = Image.open(path).convert("L")
            data = io.BytesIO()
            grey.save(data, format="PPM")  # a .pgm: greyscale portable anymap
            storage.put(f"datasets/pgm-people/{person}/{i}.pgm", data.getvalue())
    response = call(system, "POST", "/jobs/training", json={
        "model": "pgm-people", "dataset_prefix": "datasets/pgm-people", "model_type": "centroid"})
    job = wait_for_job(system, response.json()["id"])
    assert job["state"] == "succeeded", job
    report = system["storage"].get_json(job["result"]["report"])
    assert report["dataset"]["photos"] == 8


def test_ids_of_any_length_are_not_found_rather_than_errors(system, model):
    for path in ("/jobs/" + "a" * 5000, "/jobs/" + "0" * 32, f"/models/{model}/versions/{'1' * 5000}/report"):
        assert call(system, "GET", path).status_code == 404, path
    for path in ("/jobs/" + "a" * 5000 + "/cancel", "/jobs/" + "a" * 5000 + "/resume"):
        assert call(system, "POST", path).status_code == 404, path
    promote = call(system, "POST", f"/models/{model}/promote", json={"version": "1" * 5000})
    assert promote.status_code in (400, 404), promote.text


def test_a_cancelled_training_never_makes_a_version_current(system, model):
    before = call(system, "GET", f"/models/{model}").json()["current_version"]
    response = call(system, "POST", "/jobs/training", json={
        "model": model, "dataset_prefix": "datasets/jobs-three", "model_type": "centroid"})
    job_id = response.json()["id"]
    assert call(system, "POST", f"/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    # The GPU worker runs one task at a time, in order: once a later job is done, the cancelled one was seen.
    later = call(system, "POST", "/jobs/recognition", json={"model": model, "input_prefix": "jobs-inbox"})
    assert wait_for_job(system, later.json()["id"])["state"] == "succeeded"
    assert call(system, "GET", f"/jobs/{job_id}").json()["state"] == "cancelled"
    assert call(system, "GET", f"/models/{model}").json()["current_version"] == before


def test_only_a_failed_job_can_be_resumed(system, model):
    response = call(system, "POST", "/jobs/recognition", json={"model": model, "input_prefix": "jobs-inbox"})
    job = wait_for_job(system, response.json()["id"])
    resumed = call(system, "POST", f"/jobs/{job['id']}/resume")
    assert resumed.status_code == 409 and "only a failed job" in resumed.json()["error"]


@pytest.mark.parametrize("params, named", [
    ({"epochs": -5}, "epochs"), ({"epochs": 1e9}, "epochs"), ({"bogus": 1}, "bogus"),
    ({"cache_dir": "/any/path"}, "cache_dir"), ({"epochs": "5"}, "epochs"),
])
def test_model_params_are_checked_at_submit_naming_the_parameter(system, params, named):
    response = call(system, "POST", "/jobs/training",
                    json={"model": "params", "dataset_prefix": "datasets/jobs-three", "model_params": params})
    assert response.status_code == 400, response.text
    assert named in response.json()["error"]


def test_a_bulk_job_can_write_annotated_copies_with_each_face_boxed_and_named(system, model):
    from PIL import Image

    from pipeline.annotate import KNOWN_COLOUR

    response = call(system, "POST", "/jobs/recognition",
                    json={"model": model, "input_prefix": "jobs-inbox", "annotate": True})
    job = wait_for_job(system, response.json()["id"])
    assert job["state"] == "succeeded", job
    storage = system["storage"]
    for result in results(system, job):
        copy = Image.open(io.BytesIO(storage.get(f"{job['result']['annotated']}{result['key']}.jpg"))).convert("RGB")
        assert copy.size == (result["width"], result["height"])
        face = result["faces"][result["main_face"]]
        assert face["identity"] in PEOPLE
        x, y, width, height = (round(v) for v in face["box"])
        # The box's bottom edge is drawn in the colour of a named face (JPEG blurs it a little).
        rows = range(y + height - 2, y + height + 1)
        edge = [copy.getpixel((x + width // 2, min(row, copy.height - 1))) for row in rows]
        assert any(all(abs(a - b) < 60 for a, b in zip(pixel, KNOWN_COLOUR)) for pixel in edge), edge
