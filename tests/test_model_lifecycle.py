"""A model's life through the API, on the running system: enrolment into a centroid model (measured
on the enrolled photos, the rest marked inherited), promotion only when a new version is not worse on
photos neither version was fitted or tuned on, manual promotion and roll back, and scheduled
retraining that trains nothing when the data has not changed since the current version or since the
schedule's last (rejected) candidate."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import redis

from tests.system import call, upload_photos, wait_for_job

PEOPLE = ["Ariel_Sharon", "Hugo_Chavez", "Jean_Chretien", "John_Ashcroft"]
NEWCOMER = "Serena_Williams"


def run_job(system, path: str, body: dict) -> dict:
    response = call(system, "POST", path, json=body)
    assert response.status_code == 202, response.text
    job = wait_for_job(system, response.json()["id"])
    assert job["state"] == "succeeded", job
    return job


def model_info(system, name: str) -> dict:
    response = call(system, "GET", f"/models/{name}")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def datasets(system, lfw_dir):
    """A gallery of 4 people (10 photos each), a newcomer's 10 photos, a validation manifest of other
    photos of the gallery people, an inbox of 2 further photos of everyone, and a manifest of the
    gallery photos with every label moved to the wrong person."""
    storage = system["storage"]
    gallery = upload_photos(storage, lfw_dir, PEOPLE, "lifecycle/gallery", 0, 10)
    upload_photos(storage, lfw_dir, [NEWCOMER], "lifecycle/newcomer", 0, 10)
    validation = upload_photos(storage, lfw_dir, PEOPLE, "lifecycle/validation", 10, 14)
    storage.put("lifecycle/validation.jsonl", "".join(
        json.dumps({"key": key, "label": person}) + "\n" for key, person in validation.items()).encode())
    inbox = upload_photos(storage, lfw_dir, [*PEOPLE, NEWCOMER], "lifecycle/inbox", 14, 16, by_person=False)
    # Each person's photos labelled as the next person: a challenger trained on these is worse.
    wrong = {person: PEOPLE[(i + 1) % len(PEOPLE)] for i, person in enumerate(PEOPLE)}
    storage.put("lifecycle/shuffled.jsonl", "".join(
        json.dumps({"key": key, "label": wrong[person]}) + "\n" for key, person in gallery.items()).encode())
    return {"inbox": inbox}


@pytest.fixture(scope="module")
def incumbent(system, datasets) -> dict:
    """The first version of model `promo`: trained on true labels, so it becomes current."""
    job = run_job(system, "/jobs/training", {"model": "promo", "dataset_prefix": "lifecycle/gallery",
                                             "validation_manifest": "lifecycle/validation.jsonl"})
    assert job["result"]["promotion"]["promote"] is True
    return job["result"]


def test_enrolling_adds_a_person_to_a_centroid_model_without_retraining_anyone_else(system, datasets):
    trained = run_job(system, "/jobs/training", {"model": "gallery", "model_type": "centroid",
                                                 "dataset_prefix": "lifecycle/gallery"})["result"]
    assert trained["model_type"] == "centroid"

    enrolled = run_job(system, "/jobs/enroll", {"model": "gallery", "dataset_prefix": "lifecycle/newcomer"})
    result = enrolled["result"]
    assert result["enrolled"] == [NEWCOMER] and result["version"] != trained["version"]
    model = model_info(system, "gallery")
    assert model["current_version"] == result["version"]
    # Versions made within the same second have no order between them: find it by its id.
    assert {v["version"]: v for v in model["versions"]}[result["version"]]["base_version"] == trained["version"]
    # Its figures are its own, measured on the enrolled photos; the others' are marked as the trained version's.
    assert result["metrics"]["evaluated_on"].startswith("leave-one-photo-out") and result["metrics"]["images"] == 10
    assert result["inherited_metrics"]["source_version"] == trained["version"]
    assert result["inherited_metrics"]["metrics"] == trained["metrics"]
    assert "leave one photo out" in call(system, "GET", f"/models/gallery/versions/{result['version']}/report").text

    storage = system["storage"]
    before = np.load(io.BytesIO(storage.get(f"{trained['model_prefix']}/model/centroids.npy")))
    after = np.load(io.BytesIO(storage.get(f"{result['model_prefix']}/model/centroids.npy")))
    assert after.shape == (len(PEOPLE) + 1, 128)
    np.testing.assert_array_equal(after[: len(PEOPLE)], before)  # nobody else changed

    job = run_job(system, "/jobs/recognition", {"model": "gallery", "input_prefix": "lifecycle/inbox"})
    assert job["result"]["model_version"] == result["version"]
    lines = [json.loads(line) for line in storage.get(job["result"]["results"]).decode().splitlines()]
    named = {line["key"]: line["faces"][line["main_face"]]["identity"] for line in lines if line["faces"]}
    newcomer = [key for key, person in datasets["inbox"].items() if person == NEWCOMER]
    assert all(named.get(key) == NEWCOMER for key in newcomer), named
    others = [key for key, person in datasets["inbox"].items() if person != NEWCOMER]
    assert sum(named.get(key) == datasets["inbox"][key] for key in others) >= len(others) - 1


def test_enrolling_into_a_model_that_is_not_a_centroid_model_fails_naming_the_problem(system, incumbent):
    response = call(system, "POST", "/jobs/enroll", json={"model": "promo", "dataset_prefix": "lifecycle/newcomer"})
    job = wait_for_job(system, response.json()["id"])
    assert job["state"] == "failed"
    assert "needs a centroid model" in job["error"]["message"]


def test_a_worse_challenger_is_not_promoted_and_the_job_records_both_scores(system, incumbent):
    job = run_job(system, "/jobs/training", {
        "model": "promo", "dataset_manifest": "lifecycle/shuffled.jsonl",
        "validation_manifest": "lifecycle/validation.jsonl", "promotion_margin": 0.05})
    promotion = job["result"]["promotion"]
    assert promotion["promote"] is False
    assert promotion["current_version"] == incumbent["version"]
    assert promotion["candidate_accuracy"] < promotion["current_accuracy"] - 0.05
    assert promotion["current_accuracy"] >= 0.8
    # Decided on the validation manifest's 16 photos, which neither version was fitted or tuned on.
    assert promotion["photos_source"] == "the validation manifest" and promotion["photos"] == 16
    assert promotion["photos_left_out"] == {"fitted_or_tuned_by_current": 0, "fitted_or_tuned_by_this_version": 0}
    low, high = promotion["current_accuracy_interval"]
    assert low <= promotion["current_accuracy"] <= high and promotion["intervals_overlap"] is False
    model = model_info(system, "promo")
    assert model["current_version"] == incumbent["version"]
    assert job["result"]["version"] in [v["version"] for v in model["versions"]]


def test_promote_and_roll_back_move_the_current_pointer(system, incumbent):
    challenger = next(v["version"] for v in model_info(system, "promo")["versions"]
                      if v["version"] != incumbent["version"])
    promoted = call(system, "POST", "/models/promo/promote", json={"version": challenger})
    assert promoted.status_code == 200 and promoted.json()["current_version"] == challenger
    rolled_back = call(system, "POST", "/models/promo/rollback")
    assert rolled_back.status_code == 200 and rolled_back.json()["current_version"] == incumbent["version"]
    assert call(system, "POST", "/models/promo/promote", json={"version": "nope"}).status_code == 404


def test_a_scheduled_run_on_unchanged_data_trains_nothing(system, incumbent):
    body = {"model": "promo", "dataset_prefix": "lifecycle/gallery", "cron": "0 3 * * *", "promotion_margin": 0.01}
    created = call(system, "POST", "/schedules", json=body)
    assert created.status_code == 201, created.text
    schedule = created.json()
    beat = redis.Redis.from_url(system["redis_url"])
    assert beat.exists(f"redbeat:facerec-schedule-{schedule['id']}")
    assert schedule["id"] in [s["id"] for s in call(system, "GET", "/schedules").json()["schedules"]]

    versions_before = len(model_info(system, "promo")["versions"])
    response = call(system, "POST", f"/schedules/{schedule['id']}/run")
    assert response.status_code == 202, response.text
    job = wait_for_job(system, response.json()["id"])
    assert job["state"] == "succeeded" and job["result"]["trained"] is False
    assert "unchanged" in job["result"]["decision"]
    assert len(model_info(system, "promo")["versions"]) == versions_before

    assert call(system, "DELETE", f"/schedules/{schedule['id']}").status_code == 204
    assert not beat.exists(f"redbeat:facerec-schedule-{schedule['id']}")
    assert call(system, "GET", f"/schedules/{schedule['id']}").status_code == 404
    assert call(system, "DELETE", f"/schedules/{schedule['id']}").status_code == 404
    assert call(system, "POST", f"/schedules/{schedule['id']}/run").status_code == 404


def test_a_schedule_whose_candidate_was_rejected_does_not_train_it_again_on_the_next_tick(system, incumbent):
    body = {"model": "promo", "dataset_manifest": "lifecycle/shuffled.jsonl", "cron": "0 3 * * *",
            "promotion_margin": 0.01, "validation_manifest": "lifecycle/validation.jsonl"}
    created = call(system, "POST", "/schedules", json=body)
    assert created.status_code == 201, created.text
    schedule = created.json()

    def tick() -> dict:
        response = call(system, "POST", f"/schedules/{schedule['id']}/run")
        assert response.status_code == 202, response.text
        job = wait_for_job(system, response.json()["id"])
        assert job["state"] == "succeeded", job
        return job["result"]

    first = tick()  # the labels are wrong: trained, and rejected on the schedule's validation photos
    assert first["trained"] is True and first["promotion"]["promote"] is False
    assert first["promotion"]["photos_source"] == "the validation manifest"
    versions = len(model_info(system, "promo")["versions"])
    second = tick()
    assert second["trained"] is False
    assert "since this schedule last trained, in job" in second["decision"]
    assert first["version"] in second["decision"] and "not made current" in second["decision"]
    assert len(model_info(system, "promo")["versions"]) == versions
    assert model_info(system, "promo")["current_version"] == incumbent["version"]
    # What it remembers goes with the schedule.
    assert call(system, "DELETE", f"/schedules/{schedule['id']}").status_code == 204
    assert not list(system["storage"].list(f"schedules/{schedule['id']}"))


def test_a_schedule_with_an_invalid_cron_expression_is_refused(system):
    for cron, message in [("every day", "5 fields"), ("99 * * * *", "invalid cron")]:
        response = call(system, "POST", "/schedules", json={"model": "promo", "dataset_prefix": "lifecycle/gallery",
                                                           "cron": cron})
        assert response.status_code == 400 and message in response.json()["error"], response.text


def test_holding_out_strangers_adds_open_set_figures_to_the_report(system, datasets):
    job = run_job(system, "/jobs/training", {"model": "open", "dataset_prefix": "lifecycle/gallery",
                                             "stranger_fraction": 0.25})
    metrics = job["result"]["metrics"]
    assert 0 <= metrics["stranger_rejection"] <= 1 and 0 <= metrics["known_accuracy"] <= 1
    report = system["storage"].get_json(job["result"]["report"])
    assert report["split"]["stranger_photos"] == 10  # one of the 4 people, 10 photos
    assert report["evaluation"]["images"] == 6  # the 3 known people's test photos, 2 each
    assert metrics["known_accuracy_interval"][0] <= metrics["known_accuracy"] <= metrics["known_accuracy_interval"][1]
    assert len(report["open_set"]["curve"]["thresholds"]) == 50
    page = call(system, "GET", f"/models/open/versions/{job['result']['version']}/report").text
    assert "Open set" in page
