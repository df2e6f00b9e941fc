"""Housekeeping (workers.housekeeping): single-photo requests expire after FACEREC_INTERACTIVE_TTL_S, a finished
job's working files after FACEREC_JOB_FILES_TTL_S (its record and results stay, and it can no longer be
resumed), and one worker at a time does a pass."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import redis
from flask import render_template

from api import create_app
from api.keys import config_entry
from config import REPO_ROOT
from infra.processes import Processes, environment, wait_for
from pipeline import registry
from pipeline.storage import LocalStorage
from tests.settings import embedded
from workers import interactive
from workers.housekeeping import FileTurn, Housekeeper, RedisTurn, housekeeper
from workers.jobs import NotResumable, open_job_store

KEY = "frk_test-housekeeping-Qm4Vx8Lp2Rd6Hz0K"
DAY = 24 * 3600
WORKING = ("chunks/00000.json", "predictions/00000.jsonl", "stats/00000.json", "deliveries/0123456789abcdef")
KEPT = ("job.json", "plan.json", "output/results.jsonl", "output/summary.json")


def app_with(tmp_path, **settings):
    """The API on the embedded default, with a model to recognise with (its record only: no worker runs)."""
    settings = embedded(tmp_path, api_keys=(config_entry("housekeeping", "submit", KEY),),
                                   **{"housekeeping_s": 0, **settings})  # a pass whenever asked
    app = create_app(settings)
    storage = app.extensions["facerec"].storage
    version = registry.new_version_id()
    registry.publish_version(storage, "m", version, {}, {"model": "m", "version": version})
    registry.set_current(storage, "m", version)
    return app


def call(app, method: str, path: str, **kwargs):
    return app.test_client().open(path, method=method, headers={"X-API-Key": KEY}, **kwargs)


def upload(app, lfw_dir) -> str:
    """A photo uploaded for recognition as a person would: no worker answers within wait_s=0."""
    photo = next((lfw_dir / "Tony_Blair").glob("*.jpg"))
    with photo.open("rb") as file:
        pending = call(app, "POST", "/v1/recognize", data={"photo": (file, "photo.jpg"), "model": "m", "wait_s": "0"})
    assert pending.status_code == 202, pending.text
    return pending.json["id"]


def age(storage: LocalStorage, prefix: str, seconds: float) -> None:
    """Make every object under prefix look written `seconds` ago."""
    then = time.time() - seconds
    for key in storage.list(prefix):
        os.utime(storage.path(key), (then, then))


def test_a_request_older_than_the_ttl_is_gone_after_a_pass_and_answers_404_a_younger_one_stays(tmp_path, lfw_dir):
    app = app_with(tmp_path)
    runtime = app.extensions["facerec"]
    old_answered, old_pending, young = (upload(app, lfw_dir) for _ in range(3))
    for request_id in (old_answered, young):
        interactive.publish_answer(runtime, request_id, {"faces": [], "size": [250, 250]})  # as a worker does
    for request_id in (old_answered, old_pending):
        age(runtime.storage, f"interactive/{request_id}/", DAY + 60)
    assert call(app, "GET", f"/v1/recognize/{old_answered}").status_code == 200
    assert call(app, "GET", f"/v1/recognize/{old_pending}").status_code == 202

    assert housekeeper(runtime).run_pass() == {"requests": 2, "jobs": 0, "broker_messages": 0}

    for request_id in (old_answered, old_pending):
        assert call(app, "GET", f"/v1/recognize/{request_id}").status_code == 404
        assert not (tmp_path / "storage" / "interactive" / request_id).exists(), "its folder goes too"
    assert call(app, "GET", f"/v1/recognize/{young}").json["faces"] == []
    assert sorted(runtime.storage.list("interactive/")) == [f"interactive/{young}/photo",
                                                             f"interactive/{young}/result.json"]


def test_requests_are_kept_for_ever_with_a_ttl_of_0(tmp_path, lfw_dir):
    app = app_with(tmp_path, interactive_ttl_s=0)
    runtime = app.extensions["facerec"]
    request_id = upload(app, lfw_dir)
    age(runtime.storage, "interactive/", 365 * DAY)
    assert housekeeper(runtime).run_pass()["requests"] == 0
    assert call(app, "GET", f"/v1/recognize/{request_id}").status_code == 202


def a_job(runtime, state: str) -> str:
    """A recognition job with the files its tasks write (workers.tasks), left in the given state."""
    jobs, storage = runtime.jobs, runtime.storage
    job_id = jobs.create("recognition", {"model": "m", "input_prefix": "inbox"})[0]["id"]
    for name in WORKING + KEPT[1:]:
        storage.put(f"jobs/{job_id}/{name}", b"{}")
    if state != "queued":
        jobs.start(job_id, total=1)
    if state == "succeeded":
        jobs.succeed(job_id, {"results": f"jobs/{job_id}/output/results.jsonl"})
    elif state == "failed":
        jobs.fail(job_id, "the disk broke")
    elif state == "cancelled":
        jobs.cancel(job_id)
    return job_id


def test_a_finished_jobs_working_files_go_after_the_ttl_and_its_record_and_results_stay(tmp_path):
    app = app_with(tmp_path, job_files_ttl_s=3600)
    runtime = app.extensions["facerec"]
    storage = runtime.storage
    states = ("succeeded", "failed", "cancelled", "queued", "running")
    jobs = {state: a_job(runtime, state) for state in states}
    strays = [f"jobs/{'f' * 32}/chunks/00000.json", f"jobs/{'x' * 200}/chunks/00000.json"]  # no record; not a job
    for key in strays:
        storage.put(key, b"{}")
    every = lambda job_id: sorted(storage.list(f"jobs/{job_id}/"))  # noqa: E731
    whole = {state: every(job_id) for state, job_id in jobs.items()}

    assert housekeeper(runtime).run_pass()["jobs"] == 0, "finished less than an hour ago: kept"
    assert {state: every(job_id) for state, job_id in jobs.items()} == whole

    in_two_hours = time.time() + 2 * 3600
    assert housekeeper(runtime).run_pass(now=in_two_hours)["jobs"] == 3
    for state in ("succeeded", "failed", "cancelled"):
        assert every(jobs[state]) == [f"jobs/{jobs[state]}/{name}" for name in sorted(KEPT)], state
        assert not any((tmp_path / "storage" / "jobs" / jobs[state] / name.split("/")[0]).exists()
                       for name in WORKING), "no empty folders left"
        assert call(app, "GET", f"/v1/jobs/{jobs[state]}").json["working_files_expired_at"]
    for state in ("queued", "running"):
        assert every(jobs[state]) == whole[state], f"a {state} job keeps everything"
    assert [key for key in strays if storage.exists(key)] == strays, "not a job's working files: kept"
    assert housekeeper(runtime).run_pass(now=in_two_hours + 3600)["jobs"] == 0, "nothing left to delete"


def test_a_failed_job_whose_working_files_went_cannot_be_resumed(tmp_path):
    app = app_with(tmp_path, job_files_ttl_s=60)
    runtime = app.extensions["facerec"]
    job_id = a_job(runtime, "failed")
    housekeeper(runtime).run_pass(now=time.time() + 120)

    refused = call(app, "POST", f"/v1/jobs/{job_id}/resume")
    assert refused.status_code == 409
    assert "its working files were deleted" in refused.json["error"] and "submit it again" in refused.json["error"]
    job = call(app, "GET", f"/v1/jobs/{job_id}").json
    assert job["state"] == "failed"
    assert call(app, "GET", "/v1/health").json["queues"]["default"] == 0, "nothing was sent"
    with app.test_request_context():
        page = render_template("job.html", user={"name": "t", "scope": "submit"}, csrf="token", active="jobs", job=job)
    assert f"<dt>Working files deleted</dt><dd>{job['working_files_expired_at']} (it can no longer be resumed)" in page


def test_a_job_resumed_before_its_files_expire_keeps_them(tmp_path):
    jobs = open_job_store(LocalStorage(tmp_path / "storage"), lock_dir=tmp_path / "locks")
    job_id = jobs.create("recognition", {"model": "m", "input_prefix": "inbox"})[0]["id"]
    jobs.start(job_id, total=1)
    jobs.fail(job_id, "the disk broke")
    jobs.resume(job_id, "resumed by a user")
    assert not jobs.expire_working_files(job_id, finished_before=time.time() + 3600), "running again"
    jobs.fail(job_id, "the disk broke again")
    assert jobs.expire_working_files(job_id, finished_before=time.time() + 3600)
    with pytest.raises(NotResumable, match="working files were deleted"):
        jobs.resume(job_id, "resumed by a user")


@pytest.mark.system  # a worker
def test_a_worker_does_the_passes(tmp_path):
    data = tmp_path / "data"
    storage = LocalStorage(data / "storage")
    jobs = open_job_store(storage, lock_dir=data / "locks")
    old_requests(storage, 2)
    job_id = jobs.create("recognition", {"model": "m", "input_prefix": "inbox"})[0]["id"]
    for name in WORKING:
        storage.put(f"jobs/{job_id}/{name}", b"{}")
    jobs.fail(job_id, "the disk broke")
    env = environment(FACEREC_DATA_DIR=str(data), FACEREC_HOUSEKEEPING_S="1", FACEREC_JOB_FILES_TTL_S="1")
    with Processes(env, tmp_path / "logs") as processes:
        processes.start_worker("worker", "default")
        wait_for(lambda: not list(storage.list("interactive/")) and not list(storage.list(f"jobs/{job_id}/chunks/")),
                 120, "the worker's housekeeping pass")
        assert list(storage.list(f"jobs/{job_id}/")) == [f"jobs/{job_id}/job.json"]
        assert "housekeeping deleted" in processes.log_tail("worker", chars=100_000)


def housekeepers(tmp_path, turn_for, count: int = 2) -> list[Housekeeper]:
    storage = LocalStorage(tmp_path / "storage")
    jobs = open_job_store(storage, lock_dir=tmp_path / "locks")
    return [Housekeeper(storage, jobs, turn_for(), every_s=3600, interactive_ttl_s=60, job_files_ttl_s=0)
            for _ in range(count)]


def old_requests(storage: LocalStorage, count: int) -> None:
    for number in range(count):
        storage.put(f"interactive/{number:032x}/photo", b"a photo")
    age(storage, "interactive/", DAY)


@pytest.fixture(params=["files", pytest.param("redis", marks=pytest.mark.system)])
def turn_for(request, tmp_path):
    """Turns of one interval for workers sharing a host's lock folder, or a Redis."""
    if request.param == "files":
        return lambda: FileTurn(tmp_path / "locks" / "housekeeping.lock", every_s=3600)
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    client.delete("facerec:housekeeping")
    return lambda: RedisTurn(client, every_s=3600)


def test_of_two_housekeepers_at_once_one_works_and_the_other_waits_its_turn(tmp_path, turn_for):
    first, second = housekeepers(tmp_path, turn_for)
    old_requests(first.storage, 300)
    passes, start = [], threading.Barrier(2)

    def run(keeper: Housekeeper) -> None:
        start.wait()
        passes.append(keeper.run_pass())

    threads = [threading.Thread(target=run, args=(keeper,)) for keeper in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(passes, key=str) == [None, {"requests": 300, "jobs": 0}]
    assert list(first.storage.list("interactive/")) == []


def test_a_pass_waits_while_another_runs_and_comes_once_per_interval(tmp_path, turn_for):
    first, second = housekeepers(tmp_path, turn_for)
    old_requests(first.storage, 1)
    with first.turn.take() as keep:
        assert keep is not None
        assert second.run_pass() is None, "another pass is running"
    assert second.run_pass() is None, "a pass began less than an interval ago"
    assert list(first.storage.list("interactive/")), "nothing was deleted"


def test_a_worker_process_holding_the_turn_keeps_others_out(tmp_path):
    """flock between processes, as between the workers of one host."""
    lock = tmp_path / "locks" / "housekeeping.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom workers.housekeeping import FileTurn\n"
         f"with FileTurn(Path({str(lock)!r}), every_s=0).take() as keep:\n"
         "    print(keep is not None, flush=True)\n    sys.stdin.read()\n"],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        (keeper,) = housekeepers(tmp_path, lambda: FileTurn(lock, every_s=0), count=1)
        assert keeper.run_pass() is None
    finally:
        holder.communicate("", timeout=30)
    assert keeper.run_pass() == {"requests": 0, "jobs": 0}, "free once the other process let it go"


def test_on_s3_requests_expire_by_the_time_they_were_written(tmp_path, s3_storage):
    jobs = open_job_store(s3_storage, lock_dir=tmp_path / "locks")
    keeper = Housekeeper(s3_storage, jobs, FileTurn(tmp_path / "turn", every_s=0), every_s=0,
                         interactive_ttl_s=60, job_files_ttl_s=0)
    old, young = "a" * 32, "b" * 32
    s3_storage.put(f"interactive/{old}/photo", b"a photo")
    s3_storage.put(f"interactive/{old}/result.json", b"{}")
    time.sleep(2.1)  # S3 keeps the time of a write to the second
    s3_storage.put(f"interactive/{young}/photo", b"a photo")
    written = dict(s3_storage.scan("interactive/"))
    assert set(written) == {f"interactive/{old}/photo", f"interactive/{old}/result.json", f"interactive/{young}/photo"}
    between = (written[f"interactive/{old}/result.json"] + written[f"interactive/{young}/photo"]) / 2
    assert keeper.run_pass(now=between + 60) == {"requests": 1, "jobs": 0}
    assert list(s3_storage.list("interactive/")) == [f"interactive/{young}/photo"]
