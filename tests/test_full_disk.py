"""A full data disk on the embedded default: a submit answers 507 naming the problem and leaves nothing
behind (no job record without its message, no claimed output folder), and the same submit works once space
is freed. (A worker whose disk fills mid-job: tests/test_faults.py.)"""

from __future__ import annotations

import pytest

from api import create_app
from api.keys import config_entry
from pipeline import registry
from tests.disk import fill, small_disk
from tests.settings import embedded

KEY = "frk_test-full-disk-Hw3Kp8Zq1Nd5Rt7Y"


@pytest.fixture
def disk(tmp_path):
    with small_disk(tmp_path / "disk", megabytes=4) as mounted:
        yield mounted


@pytest.fixture
def app(disk):
    settings = embedded(disk / "data", api_keys=(config_entry("submitter", "submit", KEY),))
    app = create_app(settings)
    storage = app.extensions["facerec"].storage
    for person in ("ada", "bob"):
        storage.put(f"datasets/two/{person}/1.jpg", b"not read at submit")
    storage.put("inbox/1.jpg", b"not read at submit")
    return app


def submit(app, path: str, body: dict, idempotency_key: str):
    return app.test_client().post(path, json=body, headers={"X-API-Key": KEY, "Idempotency-Key": idempotency_key})


# Free bytes left on the disk: none at all, or a few KB, enough for a job record but not for its message.
@pytest.mark.parametrize("left", [0, 4096, 32768])
@pytest.mark.parametrize(("path", "body"), [
    ("/v1/jobs/training", {"model": "m", "dataset_prefix": "datasets/two"}),
    ("/v1/jobs/recognition", {"model": "m", "input_prefix": "inbox", "output_prefix": "results/run1"}),
])
def test_a_submit_on_a_full_disk_answers_507_leaves_nothing_and_works_once_space_is_freed(app, disk, left, path, body):
    storage = app.extensions["facerec"].storage
    # A model to recognise with: only its record and pointer count at submit.
    version = registry.new_version_id()
    registry.publish_version(storage, "m", version, {}, {"model": "m", "version": version})
    registry.set_current(storage, "m", version)
    before = set(storage.list())
    filler = fill(disk, leave_bytes=left)

    refused = submit(app, path, body, "once")
    assert refused.status_code == 507, refused.text
    message = refused.json["error"]
    assert "storage is full" in message and "nothing of this request was recorded" in message
    filler.unlink()
    assert set(storage.list()) == before, "no job record, idempotency record or output claim was left behind"
    listed = app.test_client().get("/v1/jobs", headers={"X-API-Key": KEY}).json
    assert all(job["params"] != body for job in listed["jobs"])

    accepted = submit(app, path, body, "once")
    assert accepted.status_code == 202, accepted.text
