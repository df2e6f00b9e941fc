"""Jobs at scale, on the whole system: a dry run reads only each photo's header and names the photos the
pipeline would refuse, with no model; jobs share the workers, so a small job submitted behind a large one
ends long before it; and a job's priority puts its tasks ahead of normal ones on Redis."""

from __future__ import annotations

import dataclasses
import io
import json
import time
import uuid

from PIL import Image

from config import load_settings
from tests.system import call, upload_photos, wait_for_job
from workers import task_names
from workers.runtime import Runtime

PEOPLE = ["Colin_Powell", "Donald_Rumsfeld", "Tony_Blair", "Gerhard_Schroeder"]


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_dry_run_reads_each_header_names_what_would_be_refused_and_needs_no_model(system, lfw_dir):
    storage = system["storage"]
    inbox = f"dry-{uuid.uuid4().hex[:8]}"
    photos = upload_photos(storage, lfw_dir, PEOPLE[:2], inbox, 0, 3, by_person=False)
    storage.put(f"{inbox}/not-a-photo.jpg", b"shopping list")
    storage.put(f"{inbox}/sliver.png", png(4000, 8))
    response = call(system, "POST", "/jobs/recognition",
                    json={"model": "no-such-model", "input_prefix": inbox, "dry_run": True})
    assert response.status_code == 202, response.text
    job = wait_for_job(system, response.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["dry_run"] is True and job["result"]["model_version"] is None
    lines = {line["key"]: line for line in map(json.loads, storage.get(job["result"]["results"]).splitlines())}
    assert sorted(lines) == sorted([*photos, f"{inbox}/not-a-photo.jpg", f"{inbox}/sliver.png"])
    for key in photos:
        assert lines[key]["format"] == "JPEG" and (lines[key]["width"], lines[key]["height"]) == (250, 250)
        assert lines[key]["bytes"] == len(storage.get(key)) and "error" not in lines[key]
    assert "not a photo" in lines[f"{inbox}/not-a-photo.jpg"]["error"]
    assert "a side shorter than 16" in lines[f"{inbox}/sliver.png"]["error"]
    summary = storage.get_json(job["result"]["summary"])
    assert (summary["images"], summary["readable"], summary["errors"]) == (8, 6, 2)
    assert summary["formats"] == {"JPEG": 6} and summary["dry_run"] is True


def test_a_small_job_submitted_behind_a_large_one_ends_long_before_it(system, lfw_dir):
    storage = system["storage"]
    upload_photos(storage, lfw_dir, PEOPLE, "sharing/people", 0, 5)
    upload_photos(storage, lfw_dir, PEOPLE, "sharing/large", 5, 35, by_person=False)  # 120 photos, 30 chunks
    upload_photos(storage, lfw_dir, PEOPLE[:1], "sharing/small", 35, 39, by_person=False)  # 4 photos, 1 chunk
    trained = call(system, "POST", "/jobs/training",
                   json={"model": "sharing", "dataset_prefix": "sharing/people", "model_type": "centroid"})
    assert wait_for_job(system, trained.json()["id"])["state"] == "succeeded"

    large = call(system, "POST", "/jobs/recognition", json={"model": "sharing", "input_prefix": "sharing/large"})
    while call(system, "GET", f"/jobs/{large.json()['id']}").json()["progress"]["done"] < 8:
        time.sleep(0.5)
    submitted = time.monotonic()
    small = call(system, "POST", "/jobs/recognition", json={"model": "sharing", "input_prefix": "sharing/small"})
    small_job = wait_for_job(system, small.json()["id"])
    waited = time.monotonic() - submitted
    large_now = call(system, "GET", f"/jobs/{large.json()['id']}").json()
    assert small_job["state"] == "succeeded"
    assert large_now["state"] == "running" and large_now["progress"]["done"] < 100, \
        f"the small job ended after {waited:.0f} s, the large one had done {large_now['progress']['done']} photos"
    assert wait_for_job(system, large.json()["id"])["state"] == "succeeded"


def test_on_redis_a_job_of_higher_priority_is_taken_first(redis_url, tmp_path):
    settings = dataclasses.replace(load_settings(), redis_url=redis_url, data_dir=tmp_path,
                                   queue_gpu=f"priorities-{uuid.uuid4().hex[:8]}")
    runtime = Runtime(settings)
    sent = [("normal", "n1"), ("low", "l1"), ("normal", "n2"), ("high", "h1"), ("low", "l2"), ("high", "h2")]
    for priority, job_id in sent:
        runtime.send(task_names.RECOGNIZE_CHUNK, [job_id], priority=priority)
    with runtime.celery.connection_for_read() as connection:
        queue = connection.SimpleQueue(settings.queue_gpu)
        taken = []
        for _ in sent:
            message = queue.get(timeout=5)
            taken.append(message.payload[0][0])
            message.ack()
        queue.close()
    assert taken == ["h1", "h2", "n1", "n2", "l1", "l2"]
